"""cu-test against real `caffe test` runs: golden/training/lenet_fmnist_test.log (LeNet, all 10,000 Fashion-MNIST
test images, LMDBs built by cu-data) and golden/solvers/logs/sgd_step_caffe_test.log (tiny LeNet, HDF5 data); fault
options and canary checks (faults.md §9) on the numba accelerator."""
import json
import re
from pathlib import Path

import lmdb
import numpy as np
import pytest
from click.testing import CliRunner

from caffe_unstable.accel.faults.canaries import CanarySet
from caffe_unstable.cli.characterize import main as characterize
from caffe_unstable.cli.test import main
from caffe_unstable.proto import caffe_pb2
from tests.fmnist import build_lmdb, glog_messages, lenet_train_test

F32 = np.float32
TABLES = Path(__file__).resolve().parents[2] / "models/quant"
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


def test_freq_and_ser_together_are_refused():
    code, err = cu_test("--model", "m.prototxt", "--weights", "w.caffemodel", "--freq", "260", "--ser", "1e-5")
    assert (code, err) == (1, "error: --freq and --ser are exclusive; put soft errors in the profile to combine "
                              "them\n")
    code, err = cu_test("--model", "m.prototxt", "--weights", "w.caffemodel", "--freq", "210:280:10", "--ser", "1e-5")
    assert (code, err) == (1, "error: --freq and --ser are exclusive; put soft errors in the profile to combine "
                              "them\n")


def test_bad_sweeps_are_one_line():
    code, err = cu_test("--model", "m.prototxt", "--weights", "w.caffemodel", "--ser", "0:1e-3:0.5")
    assert (code, err) == (1, "error: --ser: a rate sweep steps in log10 and needs LO > 0, got '0:1e-3:0.5'\n")
    code, err = cu_test("--model", "m.prototxt", "--weights", "w.caffemodel", "--freq", "280:210:10")
    assert (code, err) == (1, "error: --freq: a sweep needs LO <= HI and STEP > 0, got '280:210:10'\n")


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

    means, loss, tally = run_batches(FakeNet(), 3, NullLogger())
    assert tally is None
    expected = (F32(0.1) + F32(0.1) + F32(0.1)) / F32(3)
    assert means["accuracy"].dtype == F32 and means["accuracy"][0] == expected and loss == expected


def test_a_sweep_runs_every_point_on_the_same_images(shared, tmp_path, lenet_model):
    """--ser LO:HI:STEP (log10 step): the clean baseline, then each rate, same seed; CSV + PNG next to --json."""
    weights = shared / "golden/nets/lenet/lenet_fmnist_iter_500.caffemodel"
    quant = TABLES / "lenet.quant.yaml"
    out = tmp_path / "sweep.json"
    code, err = cu_test("--model", lenet_model, "--weights", weights, "--quant", quant, "--iterations", 2,
                        "--ser", "1e-6:1e-3:1.5", "--seed", 5, "--json", out)
    assert code == 0, err[-2000:]
    report = json.loads(out.read_text())
    assert [r["ser"] for r in report["rows"]] == pytest.approx([None, 1e-6, 10 ** -4.5, 1e-3])
    assert report["seed"] == 5 and report["images"] == 200
    flips = [r["faults"]["mac_flips"] for r in report["rows"][1:]]
    assert 0 <= flips[0] < flips[1] < flips[2]
    rows = (tmp_path / "sweep.csv").read_text().splitlines()
    assert rows[0].startswith("ser,images,accuracy,loss,accuracy_se,mac_flips,")
    assert [r.split(",")[0] for r in rows[1:]] == ["clean", "1e-06", "3.16228e-05", "0.001"]
    assert (tmp_path / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_faults_reach_the_log_json_and_fault_log(shared, tmp_path, lenet_model):
    weights = shared / "golden/nets/lenet/lenet_fmnist_iter_500.caffemodel"
    out, flog = tmp_path / "r.json", tmp_path / "f.jsonl"
    code, err = cu_test("--model", lenet_model, "--weights", weights, "--quant", TABLES / "lenet.quant.yaml",
                        "--iterations", 2, "--ser", "1e-4", "--seed", 9, "--json", out, "--fault-log", flog,
                        "--fault-layers", "conv2,ip1")
    assert code == 0, err[-2000:]
    messages = [m for _, m in glog_messages(err, files=("faults.cpp",))]
    assert ("Fault model: mac_flip, rate 0.0001 per MAC, site product, bits [0, 17], count hardware, "
            "N_MAC/image 2,473,984 (247 flips expected), seed 9") in messages
    assert any(m.startswith("Faults TEST 0: mac_flips ") for m in messages)
    report = json.loads(out.read_text())
    assert (report["accel"], report["ser"], report["seed"], report["images"]) == ("numba", 1e-4, 9, 200)
    records = [json.loads(line) for line in flog.read_text().splitlines()]
    assert [(r["pass"], r["layer"]) for r in records] == [(p, name) for p in (0, 1)
                                                          for name in ("conv1", "conv2", "ip1", "ip2")]
    assert [r["mac_flips"] > 0 for r in records] == [False, True, True, False] * 2      # only --fault-layers
    assert all(r["phase"] == 1 and r["images"] == 100 for r in records)
    assert report["faults"]["mac_flips"] == pytest.approx(sum(r["mac_flips"] for r in records) / 200)


def test_fault_layers_must_be_accelerated_layers(shared, tmp_path, lenet_model):
    weights = shared / "golden/nets/lenet/lenet_fmnist_iter_500.caffemodel"
    code, err = cu_test("--model", lenet_model, "--weights", weights, "--quant", TABLES / "lenet.quant.yaml",
                        "--iterations", 1, "--ser", "1e-4", "--fault-layers", "pool1")
    assert (code, err.splitlines()[-1]) == (1, "error: --fault-layers: layer 'pool1' is not an accelerated "
                                               "Convolution/InnerProduct layer of net 'LeNet' (those are: conv1, "
                                               "conv2, ip1, ip2)")


# -- canaries (faults.md §9) ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def canary_setup(shared, tmp_path_factory, fmnist_test_lmdb):
    """(model, weights, set): LeNet and 16 canaries from its first TEST batch, expected exact at the safe clock."""
    folder = tmp_path_factory.mktemp("canaries")
    model = folder / "lenet_train_test.prototxt"
    model.write_text(lenet_train_test(shared, folder / "no_train_lmdb", fmnist_test_lmdb))
    weights = shared / "golden/nets/lenet/lenet_fmnist_iter_500.caffemodel"
    out = folder / "lenet.canaries.npz"
    result = CliRunner().invoke(characterize, [str(a) for a in (
        "canaries", "--model", model, "--weights", weights, "--quant", TABLES / "lenet.quant.yaml",
        "--iterations", 1, "--freq", 210, "--seed", 3, "--out", out)])
    assert result.exit_code == 0, result.stderr
    return model, weights, out


def canary_lines(err):
    return [m for _, m in glog_messages(err, files=("faults.cpp",)) if m.startswith("Canary check")]


def test_canaries_at_the_safe_clock_are_exact(canary_setup, tmp_path):
    model, weights, canaries = canary_setup
    out = tmp_path / "r.json"
    code, err = cu_test("--model", model, "--weights", weights, "--quant", TABLES / "lenet.quant.yaml",
                        "--iterations", 3, "--freq", 210, "--seed", 1, "--canaries", canaries, "--canary-every", 2,
                        "--canary-strict", "--json", out)
    assert code == 0, err[-2000:]
    ok = "level 0 exact (exact 16/16, top-1 16/16, top-5 16/16; expected 0): OK"
    assert canary_lines(err) == [f"Canary check 0 (before the first batch): {ok}",
                                 f"Canary check 1 (after batch 2): {ok}", f"Canary check 2 (after batch 3): {ok}"]
    report = json.loads(out.read_text())
    assert [(c["check"], c["after_batch"], c["level"], c["exact"], c["expected"], c["drift"])
            for c in report["canaries"]] == [(0, None, 0, 16, 0, False), (1, 2, 0, 16, 0, False),
                                             (2, 3, 0, 16, 0, False)]
    assert report["outputs"]["accuracy"] == pytest.approx(0.816667, abs=1e-6)     # the batches are untouched


def test_canaries_under_heavy_soft_errors_drift_and_strict_exits_3(canary_setup, tmp_path):
    """--ser 1e-3 with accumulator flips (~2,500 per LeNet image): no check is exact; the set has no expectation
    at this point, so level >= 2 is a drift, and --canary-strict makes the exit code 3 after the run."""
    model, weights, canaries = canary_setup
    out = tmp_path / "r.json"
    args = ("--model", model, "--weights", weights, "--quant", TABLES / "lenet.quant.yaml", "--iterations", 2,
            "--ser", "1e-3", "--seed", 1, "--canaries", canaries, "--json", out)
    code, err = cu_test(*args)
    assert code == 0, err[-2000:]
    checks = json.loads(out.read_text())["canaries"]
    assert [c["after_batch"] for c in checks] == [None, 2]
    assert all(c["level"] >= 2 and c["exact"] < 16 and c["drift"] and c["expected"] is None for c in checks)
    assert all(line.endswith("): DRIFT") and "; expected" not in line for line in canary_lines(err))
    code, err = cu_test(*args, "--canary-strict")
    assert code == 3 and err.splitlines()[-1] == "warning: --canary-strict: 2 of 2 canary checks drifted"
    assert json.loads(out.read_text())["outputs"]["accuracy"] < 0.4               # the run itself completed


def test_the_profiles_canary_set(canary_setup, tmp_path):
    model, weights, canaries = canary_setup
    profile = tmp_path / "board.devprofile.yaml"
    shipped = (Path(__file__).resolve().parents[2] / "caffe_unstable/profiles/pipecnn_kcu1500.devprofile.yaml")
    profile.write_text(shipped.read_text() + f"canaries: {{set: {canaries}, degraded_min: 0.8}}\n")
    code, err = cu_test("--model", model, "--weights", weights, "--quant", TABLES / "lenet.quant.yaml",
                        "--iterations", 1, "--profile", profile, "--freq", 210, "--canaries", "profile")
    assert code == 0, err[-2000:]
    assert len(canary_lines(err)) == 2 and all(line.endswith("expected 0): OK") for line in canary_lines(err))
    code, err = cu_test("--model", model, "--weights", weights, "--quant", TABLES / "lenet.quant.yaml",
                        "--iterations", 1, "--freq", 210, "--canaries", "profile")
    assert (code, err.splitlines()[-1]) == (1, "error: --canaries profile: profile pipecnn_kcu1500 has no "
                                               "canaries.set (give --profile P with a canaries: {set: ...} entry, "
                                               "or a *.canaries.npz path)")


def test_a_set_for_another_model_is_refused(canary_setup, tmp_path):
    model, weights, canaries = canary_setup
    other = tmp_path / "other.prototxt"
    other.write_text(model.read_text().replace('name: "LeNet"', 'name: "LeNet2"'))
    code, err = cu_test("--model", other, "--weights", weights, "--quant", TABLES / "lenet.quant.yaml",
                        "--iterations", 1, "--canaries", canaries)
    sha = CanarySet.load(canaries).meta["model_sha256"]
    assert (code, err.splitlines()[-1]) == (1, f"error: {canaries}: canary set was made for a different model "
                                               f"(sha256 {sha})")


@pytest.mark.parametrize("args, message", [
    (("--canary-strict",), "--canary-strict: needs --canaries PATH"),
    (("--canaries", "set.npz", "--ser", "1e-6:1e-4:1"), "--canaries: canary checks run at one operating point; "
                                                         "not with a sweep"),
    (("--canaries", "set.npz"), "--canaries: canary checks run on the accelerator (--accel numba with --quant, or "
                                "--freq/--ser/--profile)"),
])
def test_canary_option_refusals(canary_setup, args, message):
    model, weights, _ = canary_setup
    code, err = cu_test("--model", model, "--weights", weights, "--iterations", 1, *args)
    assert (code, err.splitlines()[-1]) == (1, f"error: {message}")


def test_a_folder_of_images_is_a_canary_set(canary_setup, tmp_path):
    """--canaries DIR (faults.md §9): every image of the folder, decoded through the TEST data layer's transform
    (one channel for LeNet), with references from the clean numba accelerator; exact at the safe clock, drifting
    under heavy soft errors (no expectation: level >= 2 is a drift)."""
    import cv2

    from caffe_unstable.data.datasets import read_idx
    from tests.fmnist import FILES, fashion_mnist_dir

    model, weights, _ = canary_setup
    images = read_idx(fashion_mnist_dir() / FILES["test"][0])[:6]
    folder = tmp_path / "pictures"
    folder.mkdir()
    for k, img in enumerate(images):
        cv2.imwrite(str(folder / f"pic{k}.png"), img)
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "r.json"
    code, err = cu_test("--model", model, "--weights", weights, "--quant", TABLES / "lenet.quant.yaml",
                        "--iterations", 1, "--freq", 210, "--canaries", folder, "--json", out)
    assert code == 0, err[-2000:]
    assert f"Canary set from {folder}: 6 images, references from the clean numba accelerator" in err
    ok = "level 0 exact (exact 6/6, top-1 6/6, top-5 6/6): OK"
    assert canary_lines(err) == [f"Canary check 0 (before the first batch): {ok}",
                                 f"Canary check 1 (after batch 1): {ok}"]
    code, err = cu_test("--model", model, "--weights", weights, "--quant", TABLES / "lenet.quant.yaml",
                        "--iterations", 1, "--ser", "1e-3", "--seed", 1, "--canaries", folder, "--json", out)
    assert code == 0, err[-2000:]
    checks = json.loads(out.read_text())["canaries"]
    assert all(c["exact"] < 6 and c["level"] >= 1 for c in checks)
    empty = tmp_path / "empty"
    empty.mkdir()
    code, err = cu_test("--model", model, "--weights", weights, "--quant", TABLES / "lenet.quant.yaml",
                        "--iterations", 1, "--canaries", empty)
    assert (code, err.splitlines()[-1].split(" (looked")[0]) == (1, f"error: {empty}: no images in the canary folder")
