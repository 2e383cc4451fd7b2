"""Snapshots in Caffe's layouts (caffe.md §1.5, §1.7, §1.8): binary caffemodel + solverstate, HDF5 pair, restore."""
import h5py
import numpy as np
import pytest

import caffe_unstable as caffe
from caffe_unstable.errors import CaffeUnstableError
from caffe_unstable.io import solverstate
from caffe_unstable.proto import caffe_pb2

from .golden_runs import GOLDEN_SOLVERS, working_copy

SNAPSHOTS = GOLDEN_SOLVERS / "snapshots"


def _golden_states():
    return sorted(p.name for p in SNAPSHOTS.glob("*.solverstate")) if SNAPSHOTS.is_dir() else []


@pytest.mark.parametrize("state", _golden_states() or [pytest.param(None, marks=pytest.mark.skip("no golden"))])
def test_caffe_solverstates_reserialize_byte_identical(state, shared):
    """Read every Caffe .solverstate and write it back through our writer: the same bytes."""
    raw = (SNAPSHOTS / state).read_bytes()
    data = solverstate.read_state(SNAPSHOTS / state)
    assert data.learned_net == f"snapshots/{state[:-len('.solverstate')]}.caffemodel"
    assert solverstate.state_bytes(data.iter, data.learned_net, data.current_step, data.history) == raw


def _run(tmp_path, monkeypatch, name, iters, **overrides):
    monkeypatch.chdir(working_copy(tmp_path))
    solver = caffe.get_solver(f"{name}.solver.prototxt")
    for field, value in overrides.items():
        setattr(solver.param, field, value)
    solver.net.copy_from("init.caffemodel")
    solver.step(iters)
    return solver


def _layout(net_param):
    """Everything but the float values: layer order, every layer field, blob shapes, whether diffs are present."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net_param)
    for layer in out.layer:
        for blob in layer.blobs:
            blob.data[:] = [0.0] * len(blob.data)
            blob.diff[:] = [0.0] * len(blob.diff)
    return out


def test_binary_snapshot_has_caffes_layout(shared, tmp_path, monkeypatch):
    solver = _run(tmp_path, monkeypatch, "sgd_step", 5)
    ours = tmp_path / "snapshots" / "sgd_step_iter_5.caffemodel"
    theirs = SNAPSHOTS / "sgd_step_iter_5.caffemodel"
    mine = caffe_pb2.NetParameter.FromString(ours.read_bytes())
    caffes = caffe_pb2.NetParameter.FromString(theirs.read_bytes())
    assert _layout(mine) == _layout(caffes)          # TRAIN net only, phase set, loss_weight added, no diff
    assert [l.name for l in mine.layer] == ["data", "conv1", "pool1", "conv2", "pool2", "ip1", "relu1", "ip2", "loss"]
    assert ours.stat().st_size == theirs.stat().st_size
    state = solverstate.read_state(tmp_path / "snapshots" / "sgd_step_iter_5.solverstate")
    golden = solverstate.read_state(SNAPSHOTS / "sgd_step_iter_5.solverstate")
    assert (state.iter, state.learned_net, state.current_step) == (5, "snapshots/sgd_step_iter_5.caffemodel", 0)
    assert [h.shape for h in state.history] == [h.shape for h in golden.history]
    assert (tmp_path / "snapshots" / "sgd_step_iter_5.solverstate").stat().st_size == \
        (SNAPSHOTS / "sgd_step_iter_5.solverstate").stat().st_size
    assert sorted(p.name for p in (tmp_path / "snapshots").iterdir()) == [
        "sgd_step_iter_5.caffemodel", "sgd_step_iter_5.solverstate"]     # no temporary files left behind
    # our snapshot loads in our Net
    net = caffe.Net("tiny_lenet.prototxt", caffe.TEST, weights=str(ours))
    np.testing.assert_array_equal(net.params["conv1"][0].data, solver.net.params["conv1"][0].data)


def test_identical_weights_give_caffes_bytes(shared, tmp_path, monkeypatch):
    """With Caffe's iteration-5 weights and history in the solver, our snapshot is Caffe's files byte for byte."""
    monkeypatch.chdir(working_copy(tmp_path, snapshots=["sgd_step_iter_5.caffemodel", "sgd_step_iter_5.solverstate"]))
    solver = caffe.get_solver("sgd_step.solver.prototxt")
    solver.restore("snapshots/sgd_step_iter_5.solverstate")
    solver.param.snapshot_prefix = "mine/sgd_step"            # a missing folder is created
    state = solver.snapshot()
    assert state == "mine/sgd_step_iter_5.solverstate"
    assert (tmp_path / "mine/sgd_step_iter_5.caffemodel").read_bytes() == \
        (SNAPSHOTS / "sgd_step_iter_5.caffemodel").read_bytes()
    ours = solverstate.read_state(tmp_path / state)
    assert ours.learned_net == "mine/sgd_step_iter_5.caffemodel"
    assert solverstate.state_bytes(ours.iter, "snapshots/sgd_step_iter_5.caffemodel", ours.current_step,
                                   ours.history) == (SNAPSHOTS / "sgd_step_iter_5.solverstate").read_bytes()


def _h5_layout(path):
    items = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            t = obj.id.get_type()
            string = (t.get_strpad(), t.get_cset(), t.get_size()) if obj.dtype.kind == "S" else None
            items[name] = ("dataset", obj.dtype.str, obj.shape, string, obj.compression, obj.chunks,
                           sorted(obj.attrs))
        else:
            items[name] = ("group", sorted(obj.attrs))

    with h5py.File(path, "r") as f:
        f.visititems(visit)
        items["/"] = ("root", sorted(f.attrs))
    return items


def test_hdf5_snapshot_has_caffes_layout(shared, tmp_path, monkeypatch):
    _run(tmp_path, monkeypatch, "sgd_step_h5", 5)
    for suffix in ("caffemodel.h5", "solverstate.h5"):
        ours = _h5_layout(tmp_path / "snapshots" / f"sgd_step_h5_iter_5.{suffix}")
        theirs = _h5_layout(SNAPSHOTS / f"sgd_step_h5_iter_5.{suffix}")
        assert ours == theirs, suffix
    with h5py.File(tmp_path / "snapshots" / "sgd_step_h5_iter_5.solverstate.h5", "r") as f:
        assert f["iter"].dtype == np.int32 and f["iter"].shape == (1,) and f["iter"][0] == 5
        assert f["current_step"].dtype == np.int32 and f["current_step"].shape == (1,)
        learned = f["learned_net"]
        assert learned.shape == () and learned.id.get_type().get_strpad() == h5py.h5t.STR_NULLTERM
        assert learned[()] == b"snapshots/sgd_step_h5_iter_5.caffemodel.h5"
        assert learned.id.get_type().get_size() == len(b"snapshots/sgd_step_h5_iter_5.caffemodel.h5") + 1


def test_hdf5_restore_reads_caffes_state(shared, tmp_path, monkeypatch):
    """Resuming from Caffe's .solverstate.h5 gives the same weights and history as from its binary twin."""
    monkeypatch.chdir(working_copy(tmp_path, snapshots=[
        "sgd_step_h5_iter_5.caffemodel.h5", "sgd_step_h5_iter_5.solverstate.h5",
        "sgd_step_iter_5.caffemodel", "sgd_step_iter_5.solverstate"]))
    a = caffe.get_solver("sgd_step_h5.solver.prototxt")
    a.restore("snapshots/sgd_step_h5_iter_5.solverstate.h5")
    b = caffe.get_solver("sgd_step.solver.prototxt")
    b.restore("snapshots/sgd_step_iter_5.solverstate")
    assert a.iter == b.iter == 5 and a.current_step == b.current_step == 0
    for x, y in zip(a.net.learnable_params, b.net.learnable_params):
        np.testing.assert_array_equal(x.data, y.data)
    for x, y in zip(a.history, b.history):
        np.testing.assert_array_equal(x, y)


def test_snapshot_diff_writes_diffs(shared, tmp_path, monkeypatch):
    solver = _run(tmp_path, monkeypatch, "sgd_step", 1, snapshot_diff=True, snapshot=0)
    solver.snapshot()
    saved = caffe_pb2.NetParameter.FromString((tmp_path / "snapshots/sgd_step_iter_1.caffemodel").read_bytes())
    conv1 = next(l for l in saved.layer if l.name == "conv1")
    assert len(conv1.blobs[0].diff) == 100
    np.testing.assert_array_equal(np.float32(conv1.blobs[0].diff), solver.net.params["conv1"][0].diff.reshape(-1))


@pytest.mark.parametrize("other, message", [
    ("adam_iter_5.solverstate", "Incorrect length of history blobs: the state holds 16, a SGD solver of net "
                                "'TinyLeNet' needs 8 (a state of another net or solver type?)"),
    ("small.solverstate", "history blob 2 has shape 4 4 5 5 (400); the SGD solver of net 'TinyLeNet' needs "
                          "8 4 5 5 (800) (a state of another net?)"),
])
def test_restore_rejects_a_state_of_another_net(other, message, shared, tmp_path, monkeypatch):
    monkeypatch.chdir(working_copy(tmp_path, snapshots=["adam_iter_5.solverstate", "sgd_step_iter_5.solverstate"]))
    golden = solverstate.read_state("snapshots/sgd_step_iter_5.solverstate")
    history = list(golden.history)
    history[2] = history[2][:4]                        # a net with 4 conv2 filters instead of 8
    solverstate.write_binary_state("snapshots/small.solverstate", 5, "nowhere.caffemodel", 0, history)
    solver = caffe.get_solver("sgd_step.solver.prototxt")
    with pytest.raises(CaffeUnstableError) as err:
        solver.restore(f"snapshots/{other}")
    assert err.value.line() == f"snapshots/{other}: {message}"
    assert solver.iter == 0


def test_truncated_state_is_refused(shared, tmp_path):
    raw = (SNAPSHOTS / "sgd_step_iter_5.solverstate").read_bytes()
    (tmp_path / "cut.solverstate").write_bytes(raw[:-100])
    with pytest.raises(CaffeUnstableError) as err:
        solverstate.read_state(tmp_path / "cut.solverstate")
    assert "truncated or corrupt" in err.value.what
