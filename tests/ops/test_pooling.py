"""Pooling: golden Caffe cases, a naive-loop reference of pooling_layer.cpp, gradients, parameter errors."""
import math

import numpy as np
import pytest

from caffe_unstable.errors import CaffeUnstableError
from caffe_unstable.net.blob import Blob
from tests.ops.gradcheck import assert_golden_layer, check_gradient, layer_from_text

FLT_MAX = float(np.finfo(np.float32).max)


def naive_pool(x, method, k, s, p, ceil_mode=True):
    """pooling_layer.cpp Forward_cpu written as loops (the reference the vectorized code must equal)."""
    n, c, h, w = x.shape
    oh = (math.ceil if ceil_mode else math.floor)((h + 2 * p[0] - k[0]) / s[0]) + 1
    ow = (math.ceil if ceil_mode else math.floor)((w + 2 * p[1] - k[1]) / s[1]) + 1
    if p[0] or p[1]:
        oh -= (oh - 1) * s[0] >= h + p[0]
        ow -= (ow - 1) * s[1] >= w + p[1]
    y = np.zeros((n, c, oh, ow), np.float32)
    mask = np.full((n, c, oh, ow), -1.0, np.float32)
    for ni in range(n):
        for ci in range(c):
            for i in range(oh):
                for j in range(ow):
                    hs, ws = i * s[0] - p[0], j * s[1] - p[1]
                    if method == "MAX":
                        he, we = min(hs + k[0], h), min(ws + k[1], w)
                        best = -FLT_MAX
                        for hh in range(max(hs, 0), he):
                            for ww in range(max(ws, 0), we):
                                if x[ni, ci, hh, ww] > best:
                                    best = x[ni, ci, hh, ww]
                                    mask[ni, ci, i, j] = hh * w + ww
                        y[ni, ci, i, j] = best
                    else:
                        he, we = min(hs + k[0], h + p[0]), min(ws + k[1], w + p[1])
                        size = (he - hs) * (we - ws)
                        acc = np.float32(0)
                        for hh in range(max(hs, 0), min(he, h)):
                            for ww in range(max(ws, 0), min(we, w)):
                                acc += x[ni, ci, hh, ww]
                        y[ni, ci, i, j] = acc / size
    return y, mask


def run(text, x, ntop=1):
    layer = layer_from_text(text)
    bottom, top = [Blob(x.shape)], [Blob() for _ in range(ntop)]
    bottom[0].data[...] = x
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    return layer, bottom, top


# -- golden Caffe cases ----------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["pool_max_ceil", "pool_ave_ceil", "pool_max_pad_clip", "pool_ave_pad",
                                  "pool_max_ties", "pool_global_ave", "pool_global_max"])
def test_golden(case, shared):
    report = assert_golden_layer(case, shared / "golden", exact=("mask",))
    assert report and max(report.values()) < 1e-5


# -- forward against the loop reference -----------------------------------------------------------------
SHAPES = [
    # (pooling_param, x shape, kernel, stride, pad, ceil)
    ("kernel_size: 3 stride: 2", (2, 2, 7, 8), (3, 3), (2, 2), (0, 0), True),
    ("kernel_size: 2 stride: 2 pad: 1", (1, 2, 5, 5), (2, 2), (2, 2), (1, 1), True),
    ("kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 3 pad_h: 1 pad_w: 1", (2, 1, 6, 7), (3, 2), (2, 3), (1, 1), True),
    ("kernel_size: 3 stride: 2 pad: 1 round_mode: FLOOR", (1, 2, 6, 6), (3, 3), (2, 2), (1, 1), False),
    ("kernel_size: 4 stride: 3", (1, 1, 5, 5), (4, 4), (3, 3), (0, 0), True),
    ("kernel_size: 3 stride: 1 pad: 2", (1, 2, 4, 3), (3, 3), (1, 1), (2, 2), True),
    ("kernel_h: 2 kernel_w: 3 stride: 2 pad_h: 1 pad_w: 0", (1, 1, 5, 6), (2, 3), (2, 2), (1, 0), True),
]


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("pp,shape,k,s,p,ceil_mode", SHAPES)
def test_forward_matches_reference(method, pp, shape, k, s, p, ceil_mode):
    x = np.random.default_rng(3).integers(-4, 5, shape).astype(np.float32)   # integers: many ties
    ntop = 2 if method == "MAX" else 1
    layer, bottom, top = run(f'type: "Pooling" pooling_param {{ pool: {method} {pp} }}', x, ntop)
    want, mask = naive_pool(x, method, k, s, p, ceil_mode)
    assert top[0].shape == want.shape
    if method == "MAX":
        np.testing.assert_array_equal(top[0].data, want)
        np.testing.assert_array_equal(top[1].data, mask)
    else:
        np.testing.assert_allclose(top[0].data, want, rtol=1e-6, atol=1e-6)


def test_known_answers():
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    _, _, top = run('type: "Pooling" pooling_param { pool: MAX kernel_size: 2 stride: 2 }', x, 2)
    np.testing.assert_array_equal(top[0].data[0, 0], [[5, 7], [13, 15]])
    np.testing.assert_array_equal(top[1].data[0, 0], [[5, 7], [13, 15]])
    # AVE 3x3 stride 2 pad 1 on 4x4: ceil((4+2-3)/2)+1 = 3 windows; the last (start 3) fits inside 4+1
    _, _, top = run('type: "Pooling" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 }', x)
    # window (0,0) covers rows/cols -1..1: cells 0,1,4,5 sum 10, divisor 9 (padding counts)
    # window (2,2) covers rows/cols 3..5 clipped to [.., 4+1): divisor 2*2 = 4, cells {15} -> 15/4
    assert top[0].shape == (1, 1, 3, 3)
    np.testing.assert_allclose(top[0].data[0, 0, 0, 0], 10 / 9, rtol=1e-6)
    np.testing.assert_allclose(top[0].data[0, 0, 2, 2], 15 / 4, rtol=1e-6)
    # global pooling
    _, _, top = run('type: "Pooling" pooling_param { pool: AVE global_pooling: true }', x)
    assert top[0].shape == (1, 1, 1, 1) and top[0].data.item() == pytest.approx(7.5)


def test_max_ignores_nan_and_marks_empty_windows():
    x = np.array([[[[np.nan, 1.0], [-np.inf, -np.inf]]]], np.float32)
    x = np.concatenate([x, x], axis=3)
    x[0, 0, :, 2:] = [[-np.inf, np.nan], [-np.inf, -np.inf]]
    _, _, top = run('type: "Pooling" pooling_param { pool: MAX kernel_size: 2 stride: 2 }', x, 2)
    np.testing.assert_array_equal(top[0].data[0, 0, 0], [1.0, -FLT_MAX])
    np.testing.assert_array_equal(top[1].data[0, 0, 0], [1.0, -1.0])
    _, _, top = run('type: "Pooling" pooling_param { pool: MAX global_pooling: true }', x[:, :, :, 2:], 2)
    assert top[0].data.item() == -FLT_MAX and top[1].data.item() == -1


def test_max_backward_routes_to_first_maximum_and_sums_shared_cells():
    x = np.zeros((1, 1, 3, 3), np.float32)
    x[0, 0, 1, 1] = 5
    layer, bottom, top = run('type: "Pooling" pooling_param { pool: MAX kernel_size: 2 stride: 1 }', x)
    top[0].diff[...] = [[[[1, 2], [3, 4]]]]
    layer.backward(top, [True], bottom)
    want = np.zeros((3, 3), np.float32)
    want[1, 1] = 10
    np.testing.assert_array_equal(bottom[0].diff[0, 0], want)
    x = np.ones((1, 1, 2, 2), np.float32)   # all tied: the first cell wins
    layer, bottom, top = run('type: "Pooling" pooling_param { pool: MAX kernel_size: 2 }', x)
    top[0].diff[...] = 3
    layer.backward(top, [True], bottom)
    np.testing.assert_array_equal(bottom[0].diff[0, 0], [[3, 0], [0, 0]])


def test_backward_uses_the_mask_top():
    """With a mask top Caffe routes by top[1]'s data (an edited mask changes the routing)."""
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    layer, bottom, top = run('type: "Pooling" pooling_param { pool: MAX kernel_size: 2 stride: 2 }', x, 2)
    top[1].data[...] = 0
    top[0].diff[...] = 1
    layer.backward(top, [True, False], bottom)
    assert bottom[0].diff[0, 0, 0, 0] == 4 and bottom[0].diff.sum() == 4


def test_ave_backward_spreads_by_divisor():
    x = np.zeros((1, 1, 4, 4), np.float32)
    layer, bottom, top = run('type: "Pooling" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 }', x)
    top[0].diff[...] = 0
    top[0].diff[0, 0, 0, 0] = 9
    top[0].diff[0, 0, 2, 2] = 8
    layer.backward(top, [True], bottom)
    want = np.zeros((4, 4), np.float32)
    want[:2, :2] = 1
    want[3, 3] = 2
    np.testing.assert_allclose(bottom[0].diff[0, 0], want)


@pytest.mark.parametrize("pp", ["pool: AVE kernel_size: 3 stride: 2 pad: 1", "pool: AVE global_pooling: true",
                                "pool: MAX kernel_size: 3 stride: 2 pad: 1", "pool: MAX global_pooling: true",
                                "pool: MAX kernel_h: 2 kernel_w: 3 stride: 1"])
def test_gradient(pp):
    shape = (2, 2, 5, 6)
    # distinct values far apart (> 2 eps), so the finite differences never move an argmax
    x = np.random.default_rng(0).permutation(np.prod(shape)).reshape(shape).astype(np.float32) * 0.1
    check_gradient(lambda: layer_from_text(f'type: "Pooling" pooling_param {{ {pp} }}'), [shape],
                   bottom_data=[x], eps=1e-2)


# -- parameter errors ------------------------------------------------------------------------------------
ERRORS = [
    ("pool: MAX kernel_size: 2 kernel_h: 2 kernel_w: 2", "Filter size is kernel_size OR kernel_h and kernel_w; not both"),
    ("pool: MAX kernel_h: 2", "Filter size is kernel_size OR kernel_h and kernel_w; not both"),
    ("pool: MAX", "Filter size is kernel_size OR kernel_h and kernel_w; not both"),
    ("pool: MAX global_pooling: true kernel_size: 2", "With Global_pooling: true Filter size cannot specified"),
    ("pool: MAX global_pooling: true stride: 2", "With Global_pooling: true; only pad = 0 and stride = 1"),
    ("pool: MAX kernel_size: 2 pad: 1 pad_h: 1 pad_w: 1", "pad is pad OR pad_h and pad_w are required."),
    ("pool: MAX kernel_size: 2 stride_h: 2", "Stride is stride OR stride_h and stride_w are required."),
    ("pool: MAX kernel_size: 0", "Filter dimensions cannot be zero."),
    ("pool: AVE kernel_size: 3 pad: 3", "Check failed: pad_h_ < kernel_h_ (3 vs. 3)"),
    ("pool: MAX kernel_h: 3 kernel_w: 2 pad_h: 1 pad_w: 2", "Check failed: pad_w_ < kernel_w_ (2 vs. 2)"),
    ("pool: STOCHASTIC kernel_size: 3 pad: 1", "Padding implemented only for average and max pooling."),
]


@pytest.mark.parametrize("pp,message", ERRORS)
def test_parameter_errors(pp, message):
    layer = layer_from_text(f'name: "p" type: "Pooling" pooling_param {{ {pp} }}')
    with pytest.raises(CaffeUnstableError) as err:
        layer.setup([Blob((1, 1, 6, 6))], [Blob()])
    assert err.value.what == message
    assert err.value.where == "layer 'p'"


def test_stochastic_is_not_implemented():
    layer = layer_from_text('type: "Pooling" pooling_param { pool: STOCHASTIC kernel_size: 2 stride: 2 }')
    bottom, top = [Blob((1, 1, 4, 4))], [Blob()]
    layer.setup(bottom, top)
    assert top[0].shape == (1, 1, 2, 2)
    with pytest.raises(CaffeUnstableError, match="Not Implemented Yet"):
        layer.forward(bottom, top)


def test_arity_and_axes():
    with pytest.raises(CaffeUnstableError, match="Pooling Layer produces at most 1 top blob"):
        layer_from_text('type: "Pooling" pooling_param { pool: AVE kernel_size: 2 }').setup(
            [Blob((1, 1, 4, 4))], [Blob(), Blob()])
    with pytest.raises(CaffeUnstableError, match="Pooling Layer produces at most 2 top blob"):
        layer_from_text('type: "Pooling" pooling_param { pool: MAX kernel_size: 2 }').setup(
            [Blob((1, 1, 4, 4))], [Blob(), Blob(), Blob()])
    with pytest.raises(CaffeUnstableError, match="Input must have 4 axes"):
        layer_from_text('type: "Pooling" pooling_param { pool: MAX kernel_size: 2 }').setup(
            [Blob((1, 4, 4))], [Blob()])
    assert layer_from_text('type: "Pooling" pooling_param { kernel_size: 2 }').accel_op == "pool"


def test_global_pooling_follows_input_size():
    layer, bottom, top = run('type: "Pooling" pooling_param { pool: MAX global_pooling: true }',
                             np.zeros((1, 2, 3, 3), np.float32))
    bottom[0].reshape((1, 2, 5, 4))
    bottom[0].data[...] = np.arange(40).reshape(1, 2, 5, 4)
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    assert top[0].shape == (1, 2, 1, 1)
    np.testing.assert_array_equal(top[0].data.ravel(), [19, 39])


def test_kernel_larger_than_input():
    # ceil((2 - 3) / 1) + 1 = 0 windows: an empty top, as Caffe; ceil((1 - 4) / 1) + 1 < 0 is an error
    layer, bottom, top = run('type: "Pooling" pooling_param { pool: MAX kernel_size: 3 }',
                             np.ones((1, 1, 2, 2), np.float32))
    assert top[0].shape == (1, 1, 0, 0)
    # stride 2: ceil(-0.5) + 1 = 1 window, clipped to the image
    _, _, top = run('type: "Pooling" pooling_param { pool: AVE kernel_size: 3 stride: 2 }',
                    np.full((1, 1, 2, 2), 9, np.float32))
    assert top[0].shape == (1, 1, 1, 1) and top[0].data.item() == pytest.approx(36 / 4)
    layer = layer_from_text('type: "Pooling" pooling_param { pool: MAX kernel_size: 4 }')
    with pytest.raises(CaffeUnstableError, match="Check failed: pooled size"):
        layer.setup([Blob((1, 1, 1, 1))], [Blob()])


# -- the numba kernels against the numpy reference (pooling.max_pool_forward & co.) -----------------------
KERNEL_GEOMETRIES = [
    # (x shape, kernel, stride, pad, ceil): large enough planes for the phase-plane MAX kernel
    ((2, 3, 17, 19), (3, 3), (2, 2), (0, 0), True),
    ((2, 2, 16, 16), (2, 2), (2, 2), (0, 0), True),
    ((1, 2, 15, 14), (3, 2), (2, 3), (1, 1), True),
    ((1, 2, 12, 13), (3, 3), (1, 1), (2, 2), True),
    ((1, 3, 20, 21), (4, 3), (3, 2), (1, 0), False),
    ((1, 2, 9, 11), (9, 11), (1, 1), (0, 0), True),     # global
    ((1, 1, 3, 4), (3, 3), (2, 2), (1, 1), True),
]


def _kernel_input(shape, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(-3, 4, shape).astype(np.float32)   # ties everywhere
    flat = x.reshape(-1)
    idx = rng.choice(flat.size, size=flat.size // 5, replace=False)
    flat[idx[0::3]] = np.nan
    flat[idx[1::3]] = -np.inf
    flat[idx[2::3]] = -FLT_MAX
    return x


@pytest.mark.parametrize("shape,k,s,p,ceil_mode", KERNEL_GEOMETRIES)
@pytest.mark.parametrize("kernel", ["max_forward", "max_forward_phases"])
def test_max_kernels_equal_reference_bitwise(shape, k, s, p, ceil_mode, kernel):
    from caffe_unstable.ops import pool_kernels, pooling
    x = _kernel_input(shape, 1)
    out_hw = pooling.pool_out_dims(shape[2:], k, s, p, ceil_mode)
    want, argmax = pooling.max_pool_forward(x, k, s, p, out_hw)
    n = shape[0] * shape[1]
    top, mask = np.empty((n,) + out_hw, np.float32), np.empty((n,) + out_hw, np.int32)
    getattr(pool_kernels, kernel)(x.reshape((n,) + shape[2:]), *k, *s, *p, top, mask, 0, n)
    assert np.array_equal(top.view(np.int32), want.reshape(top.shape).view(np.int32))   # to the bit
    np.testing.assert_array_equal(mask, argmax.flat().reshape(mask.shape))
    dy = np.random.default_rng(2).normal(size=top.shape).astype(np.float32)
    dx = np.full((n,) + shape[2:], np.nan, np.float32)
    pool_kernels.max_backward(dy, mask, dx, 0, n)
    np.testing.assert_array_equal(dx.reshape(shape), pooling.max_pool_backward(dy, mask, shape))
    pool_kernels.max_backward(dy, mask.astype(np.float32), dx, 0, n)   # the float mask top: same routing
    np.testing.assert_array_equal(dx.reshape(shape), pooling.max_pool_backward(dy, mask, shape))


@pytest.mark.parametrize("shape,k,s,p,ceil_mode", KERNEL_GEOMETRIES)
def test_ave_kernels_equal_reference(shape, k, s, p, ceil_mode):
    from caffe_unstable.ops import pool_kernels, pooling
    x = np.random.default_rng(4).normal(size=shape).astype(np.float32)
    out_hw = pooling.pool_out_dims(shape[2:], k, s, p, ceil_mode)
    n = shape[0] * shape[1]
    top = np.empty((n,) + out_hw, np.float32)
    pool_kernels.ave_forward(x.reshape((n,) + shape[2:]), *k, *s, *p, top, 0, n)
    np.testing.assert_allclose(top.reshape((shape[:2]) + out_hw), pooling.ave_pool_forward(x, k, s, p, out_hw),
                               rtol=1e-6, atol=1e-6)
    if shape[2] * shape[3] < 200:   # Caffe's own summation order: equal to the loop reference to the bit
        np.testing.assert_array_equal(top.reshape(shape[:2] + out_hw), naive_pool(x, "AVE", k, s, p, ceil_mode)[0])
    dy = np.random.default_rng(5).normal(size=top.shape).astype(np.float32)
    dx = np.full((n,) + shape[2:], np.nan, np.float32)
    pool_kernels.ave_backward(dy, *k, *s, *p, dx, 0, n)
    np.testing.assert_allclose(dx.reshape(shape), pooling.ave_pool_backward(dy.reshape(shape[:2] + out_hw), shape,
                                                                           k, s, p), rtol=1e-5, atol=1e-6)


def test_layer_splits_planes_over_threads(monkeypatch):
    from caffe_unstable.ops import parallel
    x = _kernel_input((3, 5, 16, 16), 7)
    text = 'type: "Pooling" pooling_param { pool: MAX kernel_size: 3 stride: 2 }'
    _, _, want = run(text, x, 2)
    monkeypatch.setattr(parallel, "PARALLEL_MIN_FLOATS", 0)
    monkeypatch.setattr(parallel, "THREADS", 3)
    layer, bottom, top = run(text, x, 2)
    assert np.array_equal(top[0].data, want[0].data, equal_nan=True)
    np.testing.assert_array_equal(top[1].data, want[1].data)
    top[0].diff[...] = 1
    layer.backward(top, [True], bottom)
    assert bottom[0].diff.sum() == np.count_nonzero(top[1].data >= 0)
