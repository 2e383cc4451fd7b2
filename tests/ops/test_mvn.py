"""Tests of caffe_unstable/ops/mvn.py (Caffe's layers/mvn_layer.cpp)."""
import numpy as np
import pytest

from caffe_unstable.errors import CaffeUnstableError
from caffe_unstable.net.blob import Blob
from tests.ops.gradcheck import check_gradient, layer_from_text


def _run(param, x, top_diff=None, in_place=False):
    layer = layer_from_text(f'type: "MVN" mvn_param {{ {param} }}')
    bottom = [Blob(np.shape(x))]
    bottom[0].data[...] = x
    top = bottom if in_place else [Blob()]
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    if top_diff is not None:
        top[0].diff[...] = top_diff
        layer.backward(top, [True], bottom)
    return top[0], bottom[0]


def test_per_channel_known_answer():
    x = np.array([[[[1.0, 3.0]], [[2.0, 2.0]]]], np.float32)  # (1, 2, 1, 2)
    top, _ = _run("", x)
    # channel 0: mean 2, std 1 -> -1, 1; channel 1: constant -> 0 (std 0 + eps)
    np.testing.assert_allclose(top.data, [[[[-1, 1]], [[0, 0]]]], atol=1e-6)


def test_eps_added_after_sqrt():
    x = np.array([[[[0.0, 2.0]]]], np.float32)  # mean 1, std 1
    top, _ = _run("eps: 0.5", x)
    np.testing.assert_allclose(top.data, [[[[-1 / 1.5, 1 / 1.5]]]], rtol=1e-6)


def test_mean_only_and_across_channels():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 2, 2)).astype(np.float32)
    top, _ = _run("normalize_variance: false", x)
    np.testing.assert_allclose(top.data, x - x.mean(axis=(2, 3), keepdims=True), atol=1e-6)
    top, _ = _run("across_channels: true", x)
    centred = x - x.mean(axis=(1, 2, 3), keepdims=True)
    np.testing.assert_allclose(top.data, centred / (centred.std(axis=(1, 2, 3), keepdims=True) + 1e-9), rtol=1e-5)


def test_backward_caffe_formula():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 2, 3, 1)).astype(np.float32)
    dy = rng.normal(size=x.shape).astype(np.float32)
    top, bottom = _run("", x, top_diff=dy)
    y = top.data
    axes = (2, 3)
    std = x.std(axis=axes, keepdims=True) + 1e-9
    expected = (dy - dy.mean(axis=axes, keepdims=True) - y * (dy * y).mean(axis=axes, keepdims=True)) / std
    np.testing.assert_allclose(bottom.diff, expected, rtol=1e-4, atol=1e-6)
    _, bottom = _run("normalize_variance: false", x, top_diff=dy)
    np.testing.assert_allclose(bottom.diff, dy - dy.mean(axis=axes, keepdims=True), atol=1e-6)


def test_top_is_four_dimensional_like_caffe():
    top, _ = _run("", np.arange(6.0).reshape(2, 3))
    assert top.shape == (2, 3, 1, 1)  # per (n, c) of a (2, 3) blob: each value alone -> 0
    np.testing.assert_array_equal(top.data, 0)
    top, _ = _run("across_channels: true", np.arange(6.0).reshape(2, 3))
    np.testing.assert_allclose(top.data.reshape(2, 3), [[-1.2247449, 0, 1.2247449]] * 2, rtol=1e-6)


def test_in_place_matches_out_of_place():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 2, 2, 3)).astype(np.float32)
    dy = rng.normal(size=x.shape).astype(np.float32)
    top_a, bottom_a = _run("", x, top_diff=dy)
    top_b, bottom_b = _run("", x, top_diff=dy, in_place=True)
    np.testing.assert_allclose(top_b.data, top_a.data, rtol=1e-6)
    np.testing.assert_allclose(bottom_b.diff, bottom_a.diff, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("param", ["", "normalize_variance: false", "across_channels: true",
                                   "across_channels: true normalize_variance: false"])
def test_gradient(param):
    check_gradient(lambda: layer_from_text(f'type: "MVN" mvn_param {{ {param} }}'), [(2, 3, 2, 3)], eps=1e-3)


def test_more_than_four_axes_rejected():
    with pytest.raises(CaffeUnstableError, match="Cannot use legacy accessors on Blobs with > 4 axes."):
        _run("", np.ones((1, 1, 1, 1, 2)))
