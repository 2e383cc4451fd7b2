"""Every golden `caffe train` run reproduced through the Python API, from init.caffemodel (golden/solvers).

Weights and solver history at iterations 1, 2, 5 and 20 against <name>_trajectory.h5: 1e-6 absolute through
iteration 5, 1e-5 at 20; the adaptive solvers (AdaGrad, RMSProp, AdaDelta, Adam) may also differ by 1e-4
relative, because their 1/(sqrt(h)+delta) amplifies last-bit gradient differences (golden/README.md).
About 0.2 s per solver.
"""
import platform

import h5py
import numpy as np
import pytest

import caffe_unstable as caffe
from caffe_unstable.solvers import AdaDeltaSolver, AdamSolver, SGDSolver

from .golden_runs import ADAPTIVE, GOLDEN_SOLVERS, solver_cases, solver_type, trajectory, working_copy

CHECKPOINTS = (1, 2, 5, 20)


def _tolerances(name, k):
    atol = 1e-6 if k <= 5 else 1e-5
    rtol = 1e-4 if solver_type(name) in ADAPTIVE else 0.0
    return atol, rtol


def _check(what, ours, theirs, atol, rtol):
    diff = np.abs(ours - theirs)
    bad = diff > atol + rtol * np.abs(theirs)
    assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} != {theirs.shape}"
    assert not bad.any(), f"{what}: maxdiff {diff.max():.3g} ({int(bad.sum())} elements beyond atol={atol} rtol={rtol})"


@pytest.mark.parametrize("name", solver_cases())
def test_trajectory_matches_caffe(name, shared, tmp_path, monkeypatch):
    monkeypatch.chdir(working_copy(tmp_path))
    solver = caffe.get_solver(f"{name}.solver.prototxt")
    assert solver.type == solver_type(name)
    solver.net.copy_from("init.caffemodel")
    golden = trajectory(name)
    for k in CHECKPOINTS:
        solver.step(k - solver.iter)
        assert solver.iter == k
        weights, history = golden[k]
        atol, rtol = _tolerances(name, k)
        for layer, blobs in solver.net.params.items():
            for i, blob in enumerate(blobs):
                _check(f"iter {k} {layer}/{i}", blob.data, weights[(layer, i)], atol, rtol)
        assert len(solver.history) == len(history)
        for j, (ours, theirs) in enumerate(zip(solver.history, history)):
            _check(f"iter {k} history/{j}", ours, theirs, atol, rtol)


@pytest.mark.parametrize("name", solver_cases())
def test_first_update_from_caffes_gradients_is_bit_exact(name, shared, tmp_path, monkeypatch):
    """The update arithmetic alone: Caffe's own gradients at init.caffemodel (init_gradients.h5, batch 0) in the
    diffs, one ApplyUpdate, and the weights and history must equal Caffe's snapshot bit for bit.

    sgd_itersize2 sums two batches inside the layers' GEMMs, which a plain float sum of the two stored gradients
    only approximates, so it gets 1e-8. glibc's powf (the adaptive solvers' caffe_powx) is matched by calling it."""
    monkeypatch.chdir(working_copy(tmp_path))
    solver = caffe.get_solver(f"{name}.solver.prototxt")
    solver.net.copy_from("init.caffemodel")
    batches = (0, 1) if name == "sgd_itersize2" else (0,)
    with h5py.File(GOLDEN_SOLVERS / "init_gradients.h5", "r") as f:
        for layer, blobs in solver.net.params.items():
            for i, blob in enumerate(blobs):
                blob.diff[...] = sum(np.asarray(f[f"batch_{b}/{layer}/{i}"]) for b in batches)
    solver.apply_update()
    weights, history = trajectory(name)[1]
    atol = 1e-8 if name == "sgd_itersize2" else 0.0
    if solver_type(name) in ADAPTIVE and platform.libc_ver()[0] != "glibc":
        atol = 1e-9      # another C library's powf rounds differently (Caffe's golden build used glibc 2.36)
    for layer, blobs in solver.net.params.items():
        for i, blob in enumerate(blobs):
            _check(f"{layer}/{i}", blob.data, weights[(layer, i)], atol, 0.0)
    if name != "sgd_itersize2":
        for j, (ours, theirs) in enumerate(zip(solver.history, history)):
            _check(f"history/{j}", ours, theirs, atol, 0.0)


@pytest.mark.parametrize("name", solver_cases())
def test_second_update_is_bit_exact_where_the_gradient_is_zero(name, shared, tmp_path, monkeypatch):
    """From Caffe's own iteration-1 weights and history, elements whose batch gradient is exactly zero (ReLU-dead
    units of ip1/ip2) are updated from Caffe's numbers alone: w2 and h2 there must be Caffe's bit for bit. This
    pins down the rounding of every rule with a non-zero history (saxpby's fused multiply-add among them)."""
    if solver_type(name) in ADAPTIVE and platform.libc_ver()[0] != "glibc":
        pytest.skip("Caffe's golden build used glibc's powf; another C library's rounds differently")
    monkeypatch.chdir(working_copy(tmp_path))
    solver = caffe.get_solver(f"{name}.solver.prototxt")
    solver.net.copy_from("init.caffemodel")
    solver.step(1)                                   # consumes batch 0 (and 1 with iter_size 2), as Caffe did
    weights1, history1 = trajectory(name)[1]
    weights2, history2 = trajectory(name)[2]
    params = [(layer, i) for layer, blobs in solver.net.params.items() for i in range(len(blobs))]
    for (layer, i), blob in zip(params, solver.net.learnable_params):
        blob.data[...] = weights1[(layer, i)]
    for h, h1 in zip(solver.history, history1):
        h[...] = h1
    solver.net.clear_param_diffs()
    for _ in range(solver.param.iter_size):
        solver.net.forward_backward()
    zero = [blob.diff == 0 for blob in solver.net.learnable_params]
    assert sum(int(z.sum()) for z in zero) > 100     # enough dead units to test on
    solver.apply_update()
    n = len(params)
    for j, ((layer, i), blob) in enumerate(zip(params, solver.net.learnable_params)):
        z = zero[j]
        np.testing.assert_array_equal(blob.data[z], weights2[(layer, i)][z], err_msg=f"{layer}/{i}")
        for k in range(solver.history_sets):
            np.testing.assert_array_equal(solver.history[j + k * n][z], history2[j + k * n][z],
                                          err_msg=f"history/{j + k * n}")


def test_classes_and_history_layout(shared, tmp_path, monkeypatch):
    """pycaffe's classes take a solver path and use their own rule whatever `type` says; AdaDelta and Adam keep two
    history sets (first all first moments, then all second ones)."""
    monkeypatch.chdir(working_copy(tmp_path))
    assert type(caffe.get_solver("adam.solver.prototxt")) is AdamSolver
    sgd = caffe.SGDSolver("adam.solver.prototxt")
    assert type(sgd) is SGDSolver and len(sgd.history) == 8
    adadelta = caffe.AdaDeltaSolver("adadelta.solver.prototxt")
    assert isinstance(adadelta, AdaDeltaSolver) and len(adadelta.history) == 16
    assert [h.shape for h in adadelta.history[:8]] == [b.shape for b in adadelta.net.learnable_params]
    assert [h.shape for h in adadelta.history[8:]] == [b.shape for b in adadelta.net.learnable_params]
