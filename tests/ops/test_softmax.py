"""Softmax (caffe_unstable/ops/softmax.py) against golden Caffe data, known values and numerical gradients."""
import numpy as np
import pytest

from caffe_unstable.errors import CaffeUnstableError
from tests.ops.gradcheck import check_gradient, layer_from_text
from tests.ops.test_neuron import assert_golden, run


def test_golden_softmax_axis1(shared):
    assert_golden(shared, "softmax")


def test_known_values_and_stability():
    x = np.array([[0.0, np.log(3.0)], [1000.0, 1000.0]], np.float32)  # 1000: max-subtraction avoids overflow
    top, bottom = run(layer_from_text('type: "Softmax"'), x, top_diff=np.array([[1, 0], [0, 0]], np.float32))
    np.testing.assert_allclose(top[0].data, [[0.25, 0.75], [0.5, 0.5]], rtol=1e-6)
    # dx = y (dy - sum(dy y)): row 0: [0.25 (1 - 0.25), 0.75 (0 - 0.25)]
    np.testing.assert_allclose(bottom[0].diff, [[0.1875, -0.1875], [0.0, 0.0]], rtol=1e-6)


@pytest.mark.parametrize("axis, sum_axis", [(1, 1), (0, 0), (-1, 3), (2, 2)])
def test_axis_sums_to_one(axis, sum_axis):
    x = np.random.default_rng(0).normal(size=(2, 3, 4, 5)).astype(np.float32)
    top, _ = run(layer_from_text(f'type: "Softmax" softmax_param {{ axis: {axis} }}'), x)
    np.testing.assert_allclose(top[0].data.sum(axis=sum_axis), 1.0, rtol=1e-6)
    e = np.exp(x.astype(np.float64) - x.max(axis=sum_axis, keepdims=True))
    np.testing.assert_allclose(top[0].data, e / e.sum(axis=sum_axis, keepdims=True), rtol=1e-5)


@pytest.mark.parametrize("axis", [1, -1, 0])
def test_gradient(axis):
    check_gradient(lambda: layer_from_text(f'type: "Softmax" softmax_param {{ axis: {axis} }}'), [(2, 3, 2, 2)])


def test_in_place_is_right():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 4, 3)).astype(np.float32)
    dy = rng.normal(size=x.shape).astype(np.float32)
    ref_top, ref_bottom = run(layer_from_text('type: "Softmax"'), x, top_diff=dy)
    top, bottom = run(layer_from_text('type: "Softmax"'), x, top_diff=dy, in_place=True)
    np.testing.assert_array_equal(top[0].data, ref_top[0].data)
    np.testing.assert_array_equal(bottom[0].diff, ref_bottom[0].diff)


def test_axis_out_of_range():
    with pytest.raises(CaffeUnstableError, match="axis 4 out of range for a 2-D blob"):
        run(layer_from_text('type: "Softmax" softmax_param { axis: 4 }'), np.ones((2, 3), np.float32))
