"""cu-test against real `caffe test` runs: golden/training/lenet_fmnist_test.log (LeNet, all 10,000 Fashion-MNIST
test images, LMDBs built by cu-data) and golden/solvers/logs/sgd_step_caffe_test.log (tiny LeNet, HDF5 data)."""
import json
import re

import lmdb
import numpy as np
import pytest
from click.testing import CliRunner

from caffe_unstable.cli.test import main
from caffe_unstable.proto import caffe_pb2
from tests.fmnist import build_lmdb, glog_messages, lenet_train_test

F32 = np.float32
NUMBER = re.compile(r"-?\d+(?:\.\d*)?(?:e[+-]\d+)?")


def cu_test(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.stderr


def assert_same_lines(ours, caffes, atol):
    """Same file:line tokens and messages; numbers may differ by `atol` (Caffe's float sums are BLAS-ordered)."""
    assert len(ours) == len(caffes), (len(ours), len(caffes))
    for (src, msg), (csrc, cmsg) in zip(ours, caffes):
        assert (src, NUMBER.sub("#", msg)) == (csrc, NUMBER.sub("#", cmsg)), (msg, cmsg)
        for a, b in zip(NUMBER.findall(msg), NUMBER.findall(cmsg)):
            assert abs(float(a) - float(b)) <= atol, (msg, cmsg)


@pytest.fixture(scope="module")
def fmnist_test_lmdb(tmp_path_factory):
    return build_lmdb("test", tmp_path_factory.mktemp("fmnist") / "fmnist_test_lmdb")


@pytest.fixture
def lenet_model(shared, tmp_path, fmnist_test_lmdb):
    model = tmp_path / "lenet_train_test.prototxt"
    model.write_text(lenet_train_test(shared, tmp_path / "no_train_lmdb", fmnist_test_lmdb))
    return model


def test_lenet_on_all_fashion_mnist_test_images_is_caffes(shared, tmp_path, lenet_model):
    """Acceptance: Caffe's own lenet_fmnist_iter_500.caffemodel scores accuracy 0.8166, loss 0.500666 (~5 s)."""
    weights = shared / "golden/nets/lenet/lenet_fmnist_iter_500.caffemodel"
    out = tmp_path / "score.json"
    code, err = cu_test("--model", lenet_model, "--weights", weights, "--iterations", 100, "--json", out)
    assert code == 0, err[-2000:]
    ours = glog_messages(err)
    caffes = glog_messages((shared / "golden/training/lenet_fmnist_test.log").read_text())
    summary = [m for src, m in ours if src in ("caffe.cpp:309", "caffe.cpp:321")]
    assert summary[1] == "accuracy = 0.8166"                       # every one of the 10,000 images as Caffe
    loss = float(summary[0].split(": ")[1])
    assert abs(loss - 0.500666) <= 1e-5
    # per batch accuracies exactly, losses to 1e-5; the net lines (net.cpp) and the order of everything as Caffe's
    batches = [(m, c) for (_, m), (_, c) in zip(ours, caffes) if m.startswith("Batch") and "accuracy" in m]
    assert len(batches) == 100 and all(m == c for m, c in batches)
    assert_same_lines(ours, caffes, atol=1e-5)
    report = json.loads(out.read_text())
    assert report["outputs"]["accuracy"] == pytest.approx(0.8166, abs=1e-7)
    assert report["outputs"]["loss"] == pytest.approx(0.500666, abs=1e-5)
    assert (report["accel"], report["freq_mhz"], report["ser"], report["images"]) == ("float", None, None, 10000)


def test_tiny_lenet_log_is_caffe_test_log(shared, monkeypatch):
    """`caffe test --iterations=2` of the sgd_step snapshot: per-batch and summary lines exactly as Caffe's."""
    monkeypatch.chdir(shared / "golden/solvers")                   # the HDF5 lists hold relative paths
    code, err = cu_test("--model=tiny_lenet.prototxt", "--weights=snapshots/sgd_step_iter_20.caffemodel",
                        "--iterations=2")
    assert code == 0, err[-2000:]
    ours = glog_messages(err)
    caffes = glog_messages((shared / "golden/solvers/logs/sgd_step_caffe_test.log").read_text())
    assert ours[-7:] == caffes[-7:] == [
        ("caffe.cpp:304", "Batch 0, accuracy = 0.3"), ("caffe.cpp:304", "Batch 0, loss = 2.20891"),
        ("caffe.cpp:304", "Batch 1, accuracy = 0.1"), ("caffe.cpp:304", "Batch 1, loss = 2.22671"),
        ("caffe.cpp:309", "Loss: 2.21781"), ("caffe.cpp:321", "accuracy = 0.2"),
        ("caffe.cpp:321", "loss = 2.21781 (* 1 = 2.21781 loss)")]
    assert ours == caffes


def test_a_missing_lmdb_is_one_line(shared, tmp_path):
    model = tmp_path / "m.prototxt"
    model.write_text(lenet_train_test(shared, tmp_path / "a", tmp_path / "missing_lmdb"))
    code, err = cu_test("--model", model, "--weights", shared / "golden/nets/lenet/lenet_fmnist_iter_500.caffemodel")
    assert code == 1
    assert err.splitlines()[-1] == (f"error: {model} layer 'mnist': {tmp_path / 'missing_lmdb'}: Check failed: "
                                    "mdb_status == 0 (2 vs. 0) No such file or directory")
    assert sum(line.startswith("error:") for line in err.splitlines()) == 1 and "Traceback" not in err


def write_datums(path, datums):
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for i, d in enumerate(datums):
            txn.put(b"%08d" % i, d.SerializeToString())
    env.close()


def test_wrong_sized_records_are_one_line(shared, tmp_path):
    weights = shared / "golden/nets/lenet/lenet_fmnist_iter_500.caffemodel"
    short = tmp_path / "short_lmdb"              # a record whose data disagrees with its 1x28x28 header
    write_datums(short, [caffe_pb2.Datum(channels=1, height=28, width=28, data=bytes(700), label=1)] * 3)
    big = tmp_path / "big_lmdb"                  # well-formed 32x32 records: the weights no longer fit ip1
    write_datums(big, [caffe_pb2.Datum(channels=1, height=32, width=32, data=bytes(1024), label=1)] * 3)
    model = tmp_path / "m.prototxt"
    model.write_text(lenet_train_test(shared, tmp_path / "a", short))
    code, err = cu_test("--model", model, "--weights", weights, "--iterations", 1)
    assert (code, err.splitlines()[-1]) == (1, f"error: layer 'mnist': {short}: record '00000000': data has 700 "
                                               "bytes, but channels*height*width = 1*28*28 = 784")
    model.write_text(lenet_train_test(shared, tmp_path / "a", big))
    code, err = cu_test("--model", model, "--weights", weights, "--iterations", 1)
    assert (code, err.splitlines()[-1]) == (1, f"error: {weights} layer 'ip1': Cannot copy param 0 weights from "
                                               "layer 'ip1'; shape mismatch.  Source param shape is 500 800 "
                                               "(400000); target param shape is 500 1250 (625000). To learn this "
                                               "layer's parameters from scratch rather than copying from a saved "
                                               "net, rename the layer.")


def test_sweeps_are_refused_for_now(tmp_path):
    code, err = cu_test("--model", "m.prototxt", "--weights", "w.caffemodel", "--freq", "210:280:10")
    assert (code, err) == (1, "error: --freq: sweeps (210:280:10) are not supported yet; give a single value\n")
    code, err = cu_test("--model", "m.prototxt", "--weights", "w.caffemodel", "--ser", "1e-7:1e-4:0.5")
    assert (code, err) == (1, "error: --ser: sweeps (1e-7:1e-4:0.5) are not supported yet; give a single value\n")


def test_means_are_float32_sums_over_int_counts():
    """caffe.cpp keeps float sums and divides by the int iteration count; three batches of 0.1 show the rounding."""
    from caffe_unstable.cli.test import run_batches

    class FakeBlob:
        def __init__(self):
            self.data = np.array([0.1], F32)
            self.count = 1

    class FakeNet:
        outputs = ["accuracy"]
        blobs = {"accuracy": FakeBlob()}

        def forward_prefilled(self):
            return 0.1

    from caffe_unstable.log import NullLogger

    means, loss = run_batches(FakeNet(), 3, NullLogger())
    expected = (F32(0.1) + F32(0.1) + F32(0.1)) / F32(3)
    assert means["accuracy"].dtype == F32 and means["accuracy"][0] == expected and loss == expected
