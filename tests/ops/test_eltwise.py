"""Tests of caffe_unstable/ops/eltwise.py (Caffe's layers/eltwise_layer.cpp)."""
import numpy as np
import pytest

from caffe_unstable.errors import CaffeUnstableError
from caffe_unstable.net.blob import Blob
from tests.golden import GOLDEN, run_layer_case
from tests.ops.gradcheck import check_gradient, layer_from_text


def _blob(values):
    values = np.asarray(values, np.float32)
    b = Blob(values.shape)
    b.data[...] = values
    return b


def _run(text, *bottoms, top_diff=None):
    layer = layer_from_text(f'type: "Eltwise" {text}')
    bottom, top = [_blob(b) for b in bottoms], [Blob()]
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    if top_diff is not None:
        top[0].diff[...] = top_diff
        layer.backward(top, [True] * len(bottom), bottom)
    return layer, bottom, top


@pytest.mark.parametrize("case", ["eltwise_sum_coeff", "eltwise_prod", "eltwise_max"])
def test_golden(shared, case):
    run_layer_case(case, rtol=1e-4, atol=1e-5)


def test_golden_max_routing_is_exact(shared):
    h5py = pytest.importorskip("h5py")
    with h5py.File(GOLDEN / "layers" / "eltwise_max.h5", "r") as f:
        xs = [f["inputs"][n][()] for n in ("a", "b", "c")]
        _, bottom, top = _run("eltwise_param { operation: MAX }", *xs, top_diff=f["top_diffs_given"]["y"][()])
        np.testing.assert_array_equal(top[0].data, f["blobs"]["y"]["data"][()])
        for name, b in zip("abc", bottom):
            np.testing.assert_array_equal(b.diff, f["blobs"][name]["diff"][()])


def test_sum_default_and_coefficients():
    a, b = np.array([1.0, 2.0]), np.array([10.0, 20.0])
    np.testing.assert_array_equal(_run("", a, b)[2][0].data, [11, 22])
    layer, bottom, top = _run("eltwise_param { coeff: 2 coeff: -0.5 }", a, b, top_diff=[1.0, 3.0])
    np.testing.assert_array_equal(top[0].data, [-3, -6])
    np.testing.assert_array_equal(bottom[0].diff, [2, 6])
    np.testing.assert_array_equal(bottom[1].diff, [-0.5, -1.5])


def test_prod_gradients_stable_and_unstable():
    a, b, c = np.array([2.0, 0.0]), np.array([3.0, 5.0]), np.array([-1.0, 4.0])
    _, bottom, top = _run("eltwise_param { operation: PROD }", a, b, c, top_diff=[1.0, 2.0])
    np.testing.assert_array_equal(top[0].data, [-6, 0])
    np.testing.assert_array_equal(bottom[0].diff, [-3, 40])  # product of the others, even where a == 0
    np.testing.assert_array_equal(bottom[1].diff, [-2, 0])
    np.testing.assert_array_equal(bottom[2].diff, [6, 0])
    _, bottom, _ = _run("eltwise_param { operation: PROD stable_prod_grad: false }", a[:1], b[:1], c[:1],
                        top_diff=[1.0])
    np.testing.assert_array_equal([bottom[0].diff[0], bottom[1].diff[0], bottom[2].diff[0]], [-3, -2, 6])
    _, bottom, _ = _run("eltwise_param { operation: PROD stable_prod_grad: false }", a, b, top_diff=[1.0, 1.0])
    assert np.isnan(bottom[0].diff[1])  # y / x_i with x_i = 0, as Caffe's caffe_div


def test_max_tie_rule():
    # position 0: tie of bottoms 0 and 1 -> bottom 1; position 1: bottom 0 > bottom 1 -> 0;
    # position 2: later bottom equal to the running max does not win; position 3: strictly greater wins
    a = np.array([5.0, 7.0, 1.0, 1.0])
    b = np.array([5.0, 3.0, 2.0, 2.0])
    c = np.array([4.0, 7.0, 2.0, 3.0])
    layer, bottom, top = _run("eltwise_param { operation: MAX }", a, b, c, top_diff=[1.0, 2.0, 3.0, 4.0])
    np.testing.assert_array_equal(top[0].data, [5, 7, 2, 3])
    np.testing.assert_array_equal(layer.max_idx, [1, 0, 1, 2])
    np.testing.assert_array_equal(bottom[0].diff, [0, 2, 0, 0])
    np.testing.assert_array_equal(bottom[1].diff, [1, 0, 3, 0])
    np.testing.assert_array_equal(bottom[2].diff, [0, 0, 0, 4])


def test_propagate_down_false_leaves_diff():
    layer = layer_from_text('type: "Eltwise"')
    bottom, top = [_blob([1.0]), _blob([2.0])], [Blob()]
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    top[0].diff[...] = 5
    bottom[1].diff[...] = 9
    layer.backward(top, [True, False], bottom)
    np.testing.assert_array_equal(bottom[0].diff, [5])
    np.testing.assert_array_equal(bottom[1].diff, [9])


def test_in_place_sum():
    layer = layer_from_text('type: "Eltwise" eltwise_param { coeff: 1 coeff: 3 }')
    bottom = [_blob([1.0, 2.0]), _blob([1.0, 1.0])]
    top = [bottom[0]]
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    np.testing.assert_array_equal(top[0].data, [4, 5])
    top[0].diff[...] = [1, 2]
    layer.backward(top, [True, True], bottom)
    np.testing.assert_array_equal(bottom[0].diff, [1, 2])
    np.testing.assert_array_equal(bottom[1].diff, [3, 6])


@pytest.mark.parametrize("text", ["eltwise_param { coeff: 0.5 coeff: -2 coeff: 1 }",
                                  "eltwise_param { operation: PROD }",
                                  "eltwise_param { operation: PROD stable_prod_grad: false }"])
def test_gradient(text):
    check_gradient(lambda: layer_from_text(f'type: "Eltwise" {text}'), [(2, 3, 2)] * 3)


def test_gradient_max():
    # values 0.1 apart (more than the 1e-2 step) so no perturbation changes the winner
    rng = np.random.default_rng(4)
    values = rng.permutation(36).astype(np.float32).reshape(3, 2, 3, 2) * 0.1
    check_gradient(lambda: layer_from_text('type: "Eltwise" eltwise_param { operation: MAX }'), [(2, 3, 2)] * 3,
                   bottom_data=list(values))


def test_error_coeff_count():
    with pytest.raises(CaffeUnstableError, match="Eltwise Layer takes one coefficient per bottom blob."):
        _run("eltwise_param { coeff: 1 }", [1.0], [2.0])


def test_error_prod_coeff():
    with pytest.raises(CaffeUnstableError, match="Eltwise layer only takes coefficients for summation."):
        _run("eltwise_param { operation: PROD coeff: 1 coeff: 2 }", [1.0], [2.0])


def test_error_shape_mismatch():
    with pytest.raises(CaffeUnstableError, match=r"bottom\[0\]: 2 3 \(6\), bottom\[1\]: 3 2 \(6\)"):
        _run("", np.ones((2, 3)), np.ones((3, 2)))


def test_error_one_bottom():
    with pytest.raises(CaffeUnstableError, match="Eltwise Layer takes at least 2 bottom blob"):
        _run("", [1.0])
