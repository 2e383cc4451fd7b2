"""Tests of caffe_unstable/ops/reduction.py (Caffe's layers/reduction_layer.cpp)."""
import numpy as np
import pytest

from caffe_unstable.net.blob import Blob
from tests.ops.gradcheck import check_gradient, layer_from_text

X = np.array([[[1.0, -2.0], [3.0, 0.0]], [[-1.0, 4.0], [0.5, -0.5]]], np.float32)  # (2, 2, 2)


def _run(param, x=X, top_diff=None):
    layer = layer_from_text(f'type: "Reduction" reduction_param {{ {param} }}')
    bottom, top = [Blob(x.shape)], [Blob()]
    bottom[0].data[...] = x
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    if top_diff is not None:
        top[0].diff[...] = top_diff
        layer.backward(top, [True], bottom)
    return top[0], bottom[0]


@pytest.mark.parametrize("op,expected", [("SUM", X.sum()), ("ASUM", np.abs(X).sum()),
                                         ("SUMSQ", (X ** 2).sum()), ("MEAN", X.mean())])
def test_axis0_is_a_scalar(op, expected):
    top, _ = _run(f"operation: {op}")
    assert top.shape == ()
    np.testing.assert_allclose(top.data, expected, rtol=1e-6)


def test_default_is_sum_over_everything():
    top, _ = _run("")
    np.testing.assert_allclose(top.data, X.sum())


def test_axis_and_coeff():
    top, bottom = _run("operation: MEAN axis: 1 coeff: 3", top_diff=[1.0, 2.0])
    assert top.shape == (2,)
    np.testing.assert_allclose(top.data, 3 * X.reshape(2, 4).mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(bottom.diff, np.broadcast_to(np.array([0.75, 1.5])[:, None, None], X.shape))
    top, _ = _run("operation: SUMSQ axis: -1 coeff: -1")
    assert top.shape == (2, 2)
    np.testing.assert_allclose(top.data, -(X ** 2).sum(axis=2))


def test_backward_known_answers():
    dy = np.array([2.0, -1.0], np.float32)
    g = dy[:, None, None]
    _, bottom = _run("operation: SUM axis: 1 coeff: 0.5", top_diff=dy)
    np.testing.assert_allclose(bottom.diff, np.broadcast_to(0.5 * g, X.shape))
    _, bottom = _run("operation: ASUM axis: 1 coeff: 2", top_diff=dy)
    np.testing.assert_allclose(bottom.diff, 2 * g * np.sign(X))  # sign(0) = 0, as caffe_cpu_sign
    _, bottom = _run("operation: SUMSQ axis: 1", top_diff=dy)
    np.testing.assert_allclose(bottom.diff, 2 * g * X)


@pytest.mark.parametrize("param", ["operation: SUM axis: 1 coeff: -2", "operation: MEAN axis: 2",
                                   "operation: SUMSQ axis: 0 coeff: 0.5", "operation: ASUM axis: 1"])
def test_gradient(param):
    check_gradient(lambda: layer_from_text(f'type: "Reduction" reduction_param {{ {param} }}'), [(2, 3, 2)],
                   kink=0.0, kink_range=0.02)


def test_axis_out_of_range():
    from caffe_unstable.errors import CaffeUnstableError

    with pytest.raises(CaffeUnstableError, match="axis 3 out of range"):
        _run("axis: 3")
