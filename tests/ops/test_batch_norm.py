"""Tests of caffe_unstable/ops/batch_norm.py (Caffe's layers/batch_norm_layer.cpp)."""
import numpy as np
import pytest
from google.protobuf import text_format

from caffe_unstable.errors import CaffeUnstableError
from caffe_unstable.net.blob import Blob
from caffe_unstable.ops import layer_class
from caffe_unstable.proto import caffe_pb2
from tests.golden import run_layer_case
from tests.ops.gradcheck import check_gradient, layer_from_text


def _blob(values):
    values = np.asarray(values, np.float32)
    b = Blob(values.shape)
    b.data[...] = values
    return b


def _bn(text="", phase=caffe_pb2.TRAIN):
    return layer_from_text(f'type: "BatchNorm" {text}', phase=phase)


@pytest.mark.parametrize("case", ["batchnorm_train", "batchnorm_global"])
def test_golden(shared, case):
    run_layer_case(case, rtol=1e-4, atol=1e-5)  # also checks BatchNorm's data_after_forward


def test_train_known_answer_and_running_sums():
    # channel 0 holds 1, 3 | 5, 7 (mean 4, var 5); channel 1 is constant 2 (var 0)
    x = np.array([[[1, 3], [2, 2]], [[5, 7], [2, 2]]], np.float32)  # (N=2, C=2, S=2)
    layer = _bn("batch_norm_param { moving_average_fraction: 0.5 eps: 1e-5 }")
    bottom, top = [_blob(x)], [Blob()]
    layer.setup(bottom, top)
    assert [b.shape for b in layer.blobs] == [(2,), (2,), (1,)]
    assert all(not b.data.any() for b in layer.blobs)
    layer.forward(bottom, top)
    expected = np.array([[[-3, -1], [0, 0]], [[1, 3], [0, 0]]]) / np.sqrt([5 + 1e-5, 1e-5])[None, :, None]
    np.testing.assert_allclose(top[0].data, expected, rtol=1e-5, atol=1e-6)
    # factor = 0*0.5 + 1; mean_sum = mu; var_sum = m/(m-1) * var with m = 4
    np.testing.assert_allclose(layer.blobs[2].data, [1.0])
    np.testing.assert_allclose(layer.blobs[0].data, [4.0, 2.0])
    np.testing.assert_allclose(layer.blobs[1].data, [5.0 * 4 / 3, 0.0], rtol=1e-6)
    layer.forward(bottom, top)  # a second step decays the sums by maf
    np.testing.assert_allclose(layer.blobs[2].data, [1.5])
    np.testing.assert_allclose(layer.blobs[0].data, [6.0, 3.0])
    np.testing.assert_allclose(layer.blobs[1].data, [10.0, 0.0], rtol=1e-6)


def test_train_backward_formula():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3, 2, 4)).astype(np.float32)
    dy = rng.normal(size=x.shape).astype(np.float32)
    layer = _bn()
    bottom, top = [_blob(x)], [Blob()]
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    top[0].diff[...] = dy
    layer.backward(top, [True], bottom)
    mu = x.mean(axis=(0, 2), keepdims=True)
    std = np.sqrt(x.var(axis=(0, 2), keepdims=True) + 1e-5)
    y = (x - mu) / std
    dx = (dy - dy.mean(axis=(0, 2), keepdims=True) - y * (dy * y).mean(axis=(0, 2), keepdims=True)) / std
    np.testing.assert_allclose(bottom[0].diff, dx, rtol=1e-4, atol=1e-5)
    assert all(not b.diff.any() for b in layer.blobs)  # statistics get no gradient


def test_global_stats_default_in_test_phase():
    x = np.arange(12, dtype=np.float32).reshape(2, 3, 2)
    layer = _bn(phase=caffe_pb2.TEST)
    bottom, top = [_blob(x)], [Blob()]
    layer.setup(bottom, top)
    layer.blobs[0].data[...] = [2, 4, 6]
    layer.blobs[1].data[...] = [8, 2, 0]
    layer.blobs[2].data[...] = 2  # mean = sums / factor = 1, 2, 3; var = 4, 1, 0
    layer.forward(bottom, top)
    std = np.sqrt(np.array([4, 1, 0]) + 1e-5)[None, :, None]
    np.testing.assert_allclose(top[0].data, (x - np.array([1, 2, 3])[None, :, None]) / std, rtol=1e-5)
    np.testing.assert_array_equal(layer.blobs[2].data, [2])  # untouched
    top[0].diff[...] = 1
    layer.backward(top, [True], bottom)
    np.testing.assert_allclose(bottom[0].diff, np.broadcast_to(1 / std, x.shape), rtol=1e-5)


def test_global_stats_with_zero_factor_uses_zero_mean_and_var():
    layer = _bn("batch_norm_param { use_global_stats: true }")
    bottom, top = [_blob([[1.0, -2.0]])], [Blob()]
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    np.testing.assert_allclose(top[0].data, [[1 / np.sqrt(1e-5), -2 / np.sqrt(1e-5)]], rtol=1e-5)


def test_explicit_use_global_stats_false_in_test_phase_updates_sums():
    layer = _bn("batch_norm_param { use_global_stats: false }", phase=caffe_pb2.TEST)
    bottom, top = [_blob(np.ones((2, 1, 3)))], [Blob()]
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    np.testing.assert_allclose(layer.blobs[2].data, [1.0])
    np.testing.assert_allclose(layer.blobs[0].data, [1.0])


@pytest.mark.parametrize("global_stats", ["false", "true"])
def test_in_place_matches_out_of_place(global_stats):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(4, 3, 2, 2)).astype(np.float32)
    dy = rng.normal(size=x.shape).astype(np.float32)
    results = []
    for in_place in (False, True):
        layer = _bn(f"batch_norm_param {{ use_global_stats: {global_stats} }}")
        bottom = [_blob(x)]
        top = bottom if in_place else [Blob()]
        layer.setup(bottom, top)
        layer.blobs[0].data[...] = [0.5, -1, 2]
        layer.blobs[1].data[...] = [1, 2, 3]
        layer.blobs[2].data[...] = 1
        layer.forward(bottom, top)
        y = top[0].data.copy()
        top[0].diff[...] = dy
        layer.backward(top, [True], bottom)
        results.append((y, bottom[0].diff.copy(), [b.data.copy() for b in layer.blobs]))
    (y0, dx0, p0), (y1, dx1, p1) = results
    np.testing.assert_array_equal(y0, y1)
    np.testing.assert_allclose(dx0, dx1, rtol=1e-6, atol=1e-7)
    for a, b in zip(p0, p1):
        np.testing.assert_array_equal(a, b)


def test_gradient_batch_stats():
    check_gradient(lambda: _bn(), [(3, 2, 2, 3)], check_params=False)


def _bn_with_stats():
    lp = caffe_pb2.LayerParameter()
    text_format.Parse('name: "bn" type: "BatchNorm" batch_norm_param { use_global_stats: true }', lp)
    for values in ([0.2, -0.4], [3.0, 1.0], [2.0]):
        lp.blobs.add(shape=caffe_pb2.BlobShape(dim=[len(values)]), data=values)
    lp.phase = caffe_pb2.TRAIN
    return layer_class("BatchNorm")(lp, np.random.default_rng(0))


def test_gradient_global_stats():
    check_gradient(_bn_with_stats, [(2, 2, 3)], check_params=False, random_params=False)


def test_given_blobs_are_kept():
    layer = _bn_with_stats()
    bottom, top = [_blob(np.zeros((1, 2, 1)))], [Blob()]
    layer.setup(bottom, top)
    np.testing.assert_allclose(layer.blobs[1].data, [3.0, 1.0])


def test_learnable_statistics_rejected():
    layer = _bn("param { lr_mult: 0 } param { lr_mult: 1 }")
    message = "Cannot configure batch normalization statistics as layer parameters."
    with pytest.raises(CaffeUnstableError, match=message):
        layer.setup([_blob(np.zeros((2, 3)))], [Blob()])


def test_channel_count_change_rejected():
    layer = _bn()
    bottom, top = [_blob(np.zeros((2, 3)))], [Blob()]
    layer.setup(bottom, top)
    bottom[0].reshape((2, 4))
    with pytest.raises(CaffeUnstableError, match=r"shape\(1\) == channels_ \(4 vs. 3\)"):
        layer.reshape(bottom, top)
