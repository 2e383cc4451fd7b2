"""caffe.accel.open(...) with fault models (interface.md "Accelerator API", faults.md §3.1, §7.3, §11): a fresh
seeded plan per forward keyed by the net's or the solver's state, replays, layer selection, profile lookup."""
import os
from pathlib import Path

import numpy as np
import pytest

import caffe_unstable as caffe
from caffe_unstable.accel.faults import FaultPlan
from caffe_unstable.errors import CaffeUnstableError

TABLES = Path(__file__).resolve().parents[2] / "models/quant"


@pytest.fixture(scope="module")
def lenet(shared):
    folder = shared / "models/lenet_mnist"
    x = np.random.default_rng(0).random((4, 1, 28, 28), dtype=np.float32)
    return str(folder / "lenet.prototxt"), str(folder / "lenet_iter_10000.caffemodel"), x


def lenet_net(lenet, **faults):
    model, weights, x = lenet
    acc = caffe.accel.open("numba", quant=str(TABLES / "lenet.quant.yaml"), **faults)
    net = caffe.Net(model, weights, caffe.TEST, accel=acc)
    net.blobs["data"].reshape(*x.shape)
    net.blobs["data"].data[...] = x
    return net, acc


def test_same_seed_same_sequence_of_plans(lenet):
    net_a, acc_a = lenet_net(lenet, ser=1e-3, seed=11)
    net_b, acc_b = lenet_net(lenet, ser=1e-3, seed=11)
    plans = []
    for _ in range(2):
        net_a.forward()
        net_b.forward()
        assert acc_a.last_plan.equals(acc_b.last_plan)
        plans.append(acc_a.last_plan)
    assert [(p.phase, p.iteration, p.pass_) for p in plans] == [(1, 0, 0), (1, 0, 1)]     # TEST net, counter
    assert not plans[0].equals(plans[1])
    assert [lp.layer_name for lp in plans[0].layers] == ["conv1", "conv2", "ip1", "ip2"]
    assert [lp.layer_index for lp in plans[0].layers] == [net_a._layer_names.index(n)
                                                          for n in ("conv1", "conv2", "ip1", "ip2")]
    stats = acc_a.last_stats["conv2"]
    assert stats["images"] == 4 and stats["mac_flips"] == len(plans[1].layer("conv2").mac_events) > 0
    _, acc_c = lenet_net(lenet, ser=1e-3, seed=12)
    assert not acc_c.seed_drawn


def test_seed_is_drawn_and_reported_when_not_given(lenet):
    _, acc = lenet_net(lenet, ser=1e-5)
    assert acc.seed_drawn and 0 <= acc.seed < 2 ** 63


def test_fixed_plan_is_replayed_on_every_forward(lenet, tmp_path):
    net, acc = lenet_net(lenet, ser=1e-3, seed=3)
    net.forward()
    sampled = acc.last_plan
    sampled.save(tmp_path / "p.faultplan.npz")
    acc.fixed_plan = FaultPlan.load(tmp_path / "p.faultplan.npz")
    for _ in range(2):
        net.forward()
        assert acc.last_plan is acc.fixed_plan and acc.last_plan.equals(sampled)
    acc.fixed_plan = None
    net.forward()
    assert not acc.last_plan.equals(sampled)


def test_explicit_single_fault_is_validated_against_the_layer(lenet):
    net, acc = lenet_net(lenet)
    acc.fixed_plan = FaultPlan.single("conv2", 0, 50, 0, 0, 3, 30)         # o = 50 >= O = 50
    with pytest.raises(CaffeUnstableError, match="conv2"):
        net.forward()


def test_fault_layers_select_the_layers(lenet):
    net, acc = lenet_net(lenet, ser=1e-3, seed=5, fault_layers=["ip1"])
    net.forward()
    assert [lp.layer_name for lp in acc.last_plan.layers] == ["ip1"]
    assert acc.last_stats["conv2"]["mac_flips"] == 0 and acc.last_stats["ip1"]["mac_flips"] > 0


def test_a_clock_without_a_profile_uses_the_shipped_one(lenet):
    net, acc = lenet_net(lenet, freq_mhz=260, seed=1)
    assert acc.profile.name == "pipecnn_kcu1500" and [m.name for m in acc.models] == ["carry_horizon"]
    net.forward()
    stats = acc.last_stats["conv2"]
    # faults.md §5.5: at 260 MHz P(K=26, 27) = 0.0531, 0.9469
    assert stats["k_min"] == 26 and stats["k_mean"] == pytest.approx(27 - 0.0531, abs=1e-3)
    timing = acc.last_plan.layer("conv2").timing
    assert timing.thresholds.shape == (16, 31) and timing.keys.shape == (4,)
    _, safe = lenet_net(lenet, freq_mhz=210, seed=1)
    assert safe.models == []                                                # no timing draws at the safe clock


def test_profile_sets_the_build_and_keywords_override(shared):
    profile = Path(caffe.__file__).parent / "profiles/pipecnn_kcu1500_vgg.devprofile.yaml"
    acc = caffe.accel.open("numba", profile=str(profile), vec_size=8, width_product=19)
    assert (acc.hw.vec_size, acc.hw.lane_num, acc.hw.pipe_depth, acc.hw.lrn_overflow) == (8, 16, 6, "clamp")
    assert (acc.hw.width_product, acc.hw.width_accumulator) == (19, 32)
    assert acc.profile.timing["safe_mhz"] == 190 and acc.models == []       # no flag: the safe clock


def test_fault_options_need_the_accelerator():
    with pytest.raises(CaffeUnstableError, match="needs the simulated accelerator"):
        caffe.accel.open("float", ser=1e-5)
    with pytest.raises(CaffeUnstableError, match=r"--ser: must be a rate per MAC in \[0, 0.01\], got 0.5"):
        caffe.accel.open("numba", ser=0.5)


def test_solver_state_keys_the_plans(shared, monkeypatch):
    """TRAIN forwards are keyed (0, iter, sub-batch), the test net j's (1 + j, iter, batch) (faults.md §3.1)."""
    monkeypatch.chdir(shared / "golden/solvers")
    quant = {"conv1": (8, 7, 5), "conv2": (8, 5, 4), "ip1": (8, 4, 4), "ip2": (8, 4, 3)}
    acc = caffe.accel.open("numba", quant=quant, ser=1e-3, seed=2)
    param = caffe.proto.caffe_pb2.SolverParameter()
    from google.protobuf import text_format

    text_format.Merge(open("sgd_step.solver.prototxt").read(), param)
    param.snapshot = 0
    param.test_interval, param.test_iter[:] = 2, [2]
    solver = caffe.solvers.create_solver(param, os.path.abspath("sgd_step.solver.prototxt"), accel=acc)
    seen = []
    original = acc.begin_pass

    def spy(phase=1, iteration=0, pass_=0):
        seen.append((phase, iteration, pass_))
        original(phase, iteration, pass_)

    monkeypatch.setattr(acc, "begin_pass", spy)
    solver.step(3)
    assert seen == [(1, 0, 0), (1, 0, 1), (0, 0, 0), (0, 1, 0), (1, 2, 0), (1, 2, 1), (0, 2, 0)]


def _real_batch(shared, net_name, n=8):
    from caffe_unstable.data.datasets import read_cifar_bin, read_idx
    from caffe_unstable.io.blobproto import blobproto_to_array
    from caffe_unstable.io.prototxt import read_blob_proto

    if net_name == "lenet":
        x = read_idx(shared / "data/mnist/t10k-images-idx3-ubyte.gz")[:n].astype(np.float32) * np.float32(1 / 256)
        return x[:, None]
    images, _ = read_cifar_bin(shared / "data/cifar10/test_batch.bin.xz")
    mean = blobproto_to_array(read_blob_proto(shared / "models/cifar10_quick/mean.binaryproto"))[0]
    return images[:n].astype(np.float32) - mean


@pytest.mark.parametrize("net_name,model,weights,table", [
    ("lenet", "lenet_mnist/lenet.prototxt", "lenet_mnist/lenet_iter_10000.caffemodel", "lenet.quant.yaml"),
    ("cifar10_quick", "cifar10_quick/cifar10_quick.prototxt", "cifar10_quick/cifar10_quick_iter_5000.caffemodel.h5",
     "cifar10_quick.quant.yaml")])
def test_outputs_hit_are_nested_in_frequency(shared, net_name, model, weights, table):
    """faults.md §13 item 5: with one seed and per-add jitter, the outputs hit at f are a subset of those hit at
    f + 5 MHz, f = 240 ... 300 (each layer alone gets faults, so it sees the same input at every clock)."""
    x = _real_batch(shared, net_name)
    clean = caffe.Net(str(shared / "models" / model), str(shared / "models" / weights), caffe.TEST,
                      accel=caffe.accel.open("numba", quant=str(TABLES / table)))
    convs = [n for n in clean._layer_names if clean.layer_dict[n].type in ("Convolution", "InnerProduct")]
    grew = 0
    for layer in convs:
        previous = None
        for f in range(240, 305, 5):
            acc = caffe.accel.open("numba", quant=str(TABLES / table), freq_mhz=f, seed=3, fault_layers=[layer])
            net = caffe.Net(str(shared / "models" / model), str(shared / "models" / weights), caffe.TEST, accel=acc)
            net.blobs[net.inputs[0]].reshape(*x.shape)
            net.blobs[net.inputs[0]].data[...] = x
            net.forward()
            hit = acc.last_hits.get(layer)
            hit = np.zeros(net.blobs[net.top_names[layer][0]].data.shape, bool) if hit is None else hit
            assert int(hit.sum()) == acc.last_stats[layer]["outputs_hit"]
            if previous is not None:
                assert not (previous & ~hit).any(), (layer, f)        # hit at f - 5 => hit at f
                grew += int(hit.sum() > previous.sum())
            previous = hit
        assert previous.any(), layer                                    # 300 MHz hits every layer
    assert grew >= len(convs)
