"""Solver construction and the loop around the update (solver.cpp): nets, weights, seeds, testing, display,
signals, callbacks, and the one-line errors for bad solver files. A tiny DummyData net keeps each test fast."""
import io
import re

import numpy as np
import pytest

import caffe_unstable as caffe
from caffe_unstable.errors import CaffeUnstableError
from caffe_unstable.log import GlogLogger

NET = """name: "Mini"
layer { name: "data" type: "DummyData" top: "data" top: "target"
  dummy_data_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 2 }
                     data_filler { type: "gaussian" std: 1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "probe" type: "InnerProduct" bottom: "data" top: "probe" include { phase: TEST }
  inner_product_param { num_output: 1 weight_filler { type: "constant" value: 3 } } }
layer { name: "only_deploy" type: "Power" bottom: "ip" top: "deployed" include { stage: "deploy" } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "target" top: "loss" }
"""

BASE = """net: "mini.prototxt"
base_lr: 0.1
lr_policy: "fixed"
max_iter: 4
display: 1
random_seed: 5
"""


def _logger():
    stream = io.StringIO()
    return GlogLogger(stream=stream, min_level=0), stream


def _messages(stream):
    return [m.group(1) for m in re.finditer(r"^I\d{4} \S+ +\d+ \S+\] (.*)$", stream.getvalue(), re.M)]


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mini.prototxt").write_text(NET)
    return tmp_path


def _solver(folder, extra="", name="s.prototxt", log=None, base=BASE):
    (folder / name).write_text(base + extra)
    return caffe.get_solver(name, log=log)


def test_several_test_nets_in_caffes_order(folder):
    (folder / "test_a.prototxt").write_text(NET.replace('name: "Mini"', 'name: "FromFile"'))
    inline = "test_net_param { " + NET.replace('name: "Mini"', 'name: "Inline"').replace("\n", " ") + " }\n"
    log, stream = _logger()
    solver = _solver(folder, inline + 'test_net: "test_a.prototxt"\ntest_iter: 1\ntest_iter: 2\ntest_iter: 3\n'
                     "test_interval: 2\ntest_state { stage: 'deploy' }\ntest_state { }\ntest_state { }\n", log=log)
    assert [n.name for n in solver.test_nets] == ["Inline", "FromFile", "Mini"]
    assert [m for m in _messages(stream) if m.startswith("Creating test net")] == [
        "Creating test net (#0) specified by test_net_param",
        "Creating test net (#1) specified by test_net file: test_a.prototxt",
        "Creating test net (#2) specified by net file: mini.prototxt"]
    # test_state[0] adds the 'deploy' stage to test net 0 only
    assert "only_deploy" in solver.test_nets[0]._layer_names
    assert "only_deploy" not in solver.test_nets[1]._layer_names
    assert "probe" not in solver.net._layer_names and "probe" in solver.test_nets[2]._layer_names


def test_test_nets_share_the_train_nets_params_by_layer_name(folder):
    log, stream = _logger()
    solver = _solver(folder, "test_iter: 3\ntest_interval: 2\n", log=log)
    solver.step(3)
    train, test = solver.net, solver.test_nets[0]
    assert test.params["ip"][0] is train.params["ip"][0]             # the same memory, updated by training
    np.testing.assert_array_equal(test.params["probe"][0].data, 3)     # a TEST-only layer keeps its own weights
    tests = [m for m in _messages(stream) if "Test net output" in m or "Testing net" in m]
    # outputs sorted by name: loss (weighted) before probe, whose 4 elements (batch 4) are numbered on
    assert tests[0] == "Iteration 0, Testing net (#0)" and tests[6] == "Iteration 2, Testing net (#0)"
    assert re.fullmatch(r"    Test net output #0: loss = \S+ \(\* 1 = \S+ loss\)", tests[1])
    assert [t.split(" = ")[0] for t in tests[2:6]] == [f"    Test net output #{k}: probe" for k in range(1, 5)]


def test_test_output_is_the_mean_over_test_iter(folder):
    log, stream = _logger()
    solver = _solver(folder, "test_iter: 3\ntest_interval: 100\ntest_compute_loss: true\n", log=log)
    test = solver.test_nets[0]
    losses, probes = [], []
    # what the test should see: replay the same DummyData draws on a twin net with the same seed
    twin = _solver(folder, "test_iter: 3\ntest_interval: 100\n", name="twin.prototxt")
    twin.test_nets[0].share_with(twin.net)
    for _ in range(3):
        losses.append(np.float32(twin.test_nets[0].forward_prefilled()))
        probes.append(twin.test_nets[0].blobs["probe"].data.copy())
    solver.test_all()
    assert test.blobs["probe"].count == 4
    lines = _messages(stream)
    mean_loss = np.float32(losses[0] + losses[1] + losses[2]) / np.float32(3)
    assert f"Test loss: {'%g' % mean_loss}" in lines
    first_probe = (probes[0][0, 0] + probes[1][0, 0] + probes[2][0, 0]) / np.float32(3)
    assert f"    Test net output #1: probe = {'%g' % first_probe}" in lines


def test_weights_comma_split_in_order_into_every_net(folder):
    donor = caffe.Net("mini.prototxt", caffe.TEST, rng=1)
    donor.params["ip"][0].data[...] = 7
    donor.save("a.caffemodel")
    donor.params["ip"][0].data[...] = 8
    donor.params["probe"][0].data[...] = 9
    donor.save("b.caffemodel")
    log, stream = _logger()
    solver = _solver(folder, 'weights: " a.caffemodel , b.caffemodel"\ntest_iter: 1\ntest_interval: 1\n', log=log)
    np.testing.assert_array_equal(solver.net.params["ip"][0].data, 8)              # later files win
    np.testing.assert_array_equal(solver.test_nets[0].params["probe"][0].data, 9)
    assert [m for m in _messages(stream) if m.startswith("Finetuning")] == [
        "Finetuning from a.caffemodel", "Finetuning from b.caffemodel"] * 2


def test_random_seed_seeds_the_fillers_and_data(folder):
    a = _solver(folder, name="a.prototxt")
    b = _solver(folder, name="b.prototxt")
    c = _solver(folder, name="c.prototxt", base=BASE.replace("random_seed: 5", "random_seed: 6"))
    np.testing.assert_array_equal(a.net.params["ip"][0].data, b.net.params["ip"][0].data)
    assert not np.array_equal(a.net.params["ip"][0].data, c.net.params["ip"][0].data)
    a.step(2), b.step(2)
    np.testing.assert_array_equal(a.net.params["ip"][0].data, b.net.params["ip"][0].data)


def test_python_solvers_have_no_train_state_additions(folder):
    """caffe train adds level and stage "" to train_state; a solver made from Python does not."""
    solver = _solver(folder)
    state = solver.net._param.state
    assert state.phase == caffe.TRAIN and not state.HasField("level") and list(state.stage) == []


def test_display_smoothed_loss_and_final_forward(folder):
    log, stream = _logger()
    solver = _solver(folder, "average_loss: 2\nsnapshot_after_train: false\n", log=log)
    solver.solve()
    lines = _messages(stream)
    shown = [float(m.split("loss = ")[1]) for m in lines if re.match(r"Iteration \d+ \(", m)]
    raw = [float(m.split(" = ")[1].split(" ")[0]) for m in lines if "Train net output" in m]
    assert len(shown) == len(raw) == 4
    assert shown[0] == pytest.approx(raw[0], rel=1e-6)
    for k in range(1, 4):
        assert shown[k] == pytest.approx((raw[k - 1] + raw[k]) / 2, rel=1e-5)
    assert re.fullmatch(r"Iteration 4, loss = \S+", lines[-2]) and lines[-1] == "Optimization Done."
    assert [m for m in lines if "lr = " in m] == [f"Iteration {i}, lr = 0.1" for i in range(4)]


def test_stop_request_snapshots_and_stops_early(folder):
    log, stream = _logger()
    solver = _solver(folder, log=log)
    requests = iter(["none", "snapshot", "stop"])
    solver.set_action_function(lambda: next(requests, "none"))
    starts = []
    solver.add_callback(lambda: starts.append(solver.iter), lambda: None)
    solver.solve()
    assert starts == [0, 1, 2] and solver.iter == 3
    lines = _messages(stream)
    snaps = [m for m in lines if m.startswith("Snapshotting to")]
    assert snaps == ["Snapshotting to binary proto file s_iter_2.caffemodel",
                     "Snapshotting to binary proto file s_iter_3.caffemodel"]     # SIGHUP, then after the stop
    assert lines[-1] == "Optimization stopped early."
    assert (folder / "s_iter_3.solverstate").exists()


def test_stop_request_between_test_batches(folder):
    log, stream = _logger()
    solver = _solver(folder, "test_iter: 3\ntest_interval: 2\n", log=log)
    calls = []
    solver.set_action_function(lambda: "stop" if calls.append(1) or len(calls) == 2 else "none")
    solver.solve()
    lines = _messages(stream)
    assert lines[-4:] == ["Test interrupted.", "Snapshotting to binary proto file s_iter_0.caffemodel",
                          "Snapshotting solver state to binary proto file s_iter_0.solverstate",
                          "Optimization stopped early."]
    assert not any("Test net output" in m for m in lines)
    assert solver.iter == 0


def test_test_initialization_false_and_iter_size(folder):
    log, stream = _logger()
    solver = _solver(folder, "test_iter: 1\ntest_interval: 2\ntest_initialization: false\niter_size: 3\n", log=log)
    solver.step(3)
    assert [m for m in _messages(stream) if "Testing net" in m] == ["Iteration 2, Testing net (#0)"]
    # 3 forward passes per iteration: the DummyData generator advanced 9 times (data refilled each forward)
    # the train and test DummyData layers draw from the solver's one generator: 6 train, 1 test, 3 train draws
    twin = _solver(folder, "test_iter: 1\ntest_interval: 2\n", name="t.prototxt")
    for net in [twin.net] * 6 + twin.test_nets + [twin.net] * 3:
        net.forward_prefilled()
    np.testing.assert_array_equal(twin.net.blobs["data"].data, solver.net.blobs["data"].data)


@pytest.mark.parametrize("extra, where, message", [
    ('type: "Adamm"\n', "s.prototxt:7", "Unknown solver type: Adamm (known types: AdaDelta, AdaGrad, Adam, "
                                        "Nesterov, RMSProp, SGD)"),
    ('type: "AdaGrad"\nmomentum: 0.9\n', "s.prototxt:8", "Momentum cannot be used with AdaGrad."),
    ('type: "RMSProp"\nrms_decay: 1.5\n', "s.prototxt:8", "rms_decay should lie between 0 and 1 (0 <= rms_decay "
                                                          "< 1; got 1.5)"),
    ("average_loss: 0\n", "s.prototxt:7", "average_loss should be non-negative (>= 1; got 0)"),
    ('regularization_type: "L3"\nweight_decay: 1\n', "s.prototxt:7", "Unknown regularization type: L3 (known "
                                                                     "types: L1, L2)"),
    ('lr_policy: "step"\ngamma: -0.5\nstepsize: 2\n', "s.prototxt:7", 'lr_policy "step" needs gamma >= 0 '
                                                                      "(got -0.5)"),
    ("test_iter: 1\n", "s.prototxt", "test_interval must be > 0 when there are test nets (got 0, 1 test nets)"),
    ('test_net: "mini.prototxt"\n', "s.prototxt", "test_iter must be specified for each test network (0 test_iter "
                                                  "for 1 test_net/test_net_param)"),
    ('train_net: "mini.prototxt"\n', "s.prototxt:7", "SolverParameter must not contain more than one of these "
                                                     "fields specifying a train_net: net, net_param, train_net, "
                                                     "train_net_param (found net, train_net)"),
])
def test_bad_solver_files(folder, extra, where, message):
    base = BASE.replace('lr_policy: "fixed"\n', "") if "lr_policy" in extra else BASE
    (folder / "s.prototxt").write_text(base + extra)
    with pytest.raises(CaffeUnstableError) as err:
        caffe.get_solver("s.prototxt")
    assert err.value.line() == f"{where}: {message}"


def test_missing_net_file(folder):
    (folder / "s.prototxt").write_text(BASE.replace("mini.prototxt", "nets/missing.prototxt"))
    with pytest.raises(CaffeUnstableError) as err:
        caffe.get_solver("s.prototxt")
    assert err.value.line() == (f's.prototxt:1: net: "nets/missing.prototxt" does not exist (net paths in a '
                                f"solver are relative to the working directory, {folder})")


def test_unwritable_snapshot_prefix(folder):
    (folder / "blocker").write_text("a file where the snapshot folder should be")
    (folder / "s.prototxt").write_text(BASE + 'snapshot: 2\nsnapshot_prefix: "blocker/run"\n')
    with pytest.raises(CaffeUnstableError) as err:
        caffe.get_solver("s.prototxt")
    assert err.value.line() == ("s.prototxt:8: Cannot write to snapshot prefix 'blocker/run'.  Make sure that the "
                                "directory exists and is writable.")


def test_missing_snapshot_folder_is_created(folder):
    solver = _solver(folder, 'snapshot: 2\nsnapshot_prefix: "deep/er/run"\n')
    assert (folder / "deep" / "er").is_dir()
    solver.step(2)
    assert (folder / "deep/er/run_iter_2.caffemodel").exists() and (folder / "deep/er/run_iter_2.solverstate").exists()


@pytest.mark.parametrize("extra", ["momentum: 0.9\nweight_decay: 0.01\n", "momentum: 0.5\n",
                                   "momentum: 0.9\nweight_decay: 0.01\niter_size: 2\n"])
def test_fused_sgd_update_equals_caffes_steps(folder, monkeypatch, extra):
    """Plain SGD's one-pass update (blas.sgd_update) gives the bits of regularize, ComputeUpdateValue and
    Net::Update run one after another: weights, history and the diffs left holding the update."""
    from caffe_unstable.solvers import SGDSolver

    results = []
    for fused in (True, False):
        monkeypatch.setattr(SGDSolver, "_fused_update", lambda self, f=fused: f)
        solver = _solver(folder, extra, base=BASE.replace('"fixed"', '"inv"\ngamma: 0.1\npower: 0.75'))
        solver.net.params["ip"][0].data[0, 0] = 0.0          # a zero weight: decay adds exactly nothing
        solver.step(3)
        results.append([a.copy() for blob in solver.net.params["ip"] for a in (blob.data, blob.diff)]
                       + [h.copy() for h in solver.history])
    for ours, steps in zip(*results):
        np.testing.assert_array_equal(ours, steps)
    assert not np.array_equal(results[0][0], results[0][1])
