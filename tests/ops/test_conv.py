"""Convolution and Deconvolution: golden Caffe cases, a naive-loop reference, gradients, parameter errors."""
import itertools

import numpy as np
import pytest

import caffe_unstable.ops.conv as conv
import caffe_unstable.ops.direct_conv as direct_conv
import caffe_unstable.ops.im2col as im2col
import caffe_unstable.ops.parallel as parallel
from caffe_unstable.errors import CaffeUnstableError
from caffe_unstable.net.blob import Blob
from tests.ops.gradcheck import assert_golden_layer, check_gradient, layer_from_text


def naive_conv(x, w, b, stride, pad, dilation, group):
    """Plain-loop N-D cross-correlation in float64 (Caffe's test_convolution_layer.cpp caffe_conv)."""
    n, c = x.shape[:2]
    o, cg = w.shape[:2]
    k = w.shape[2:]
    sp = x.shape[2:]
    out_sp = [(s + 2 * p - (d * (kk - 1) + 1)) // st + 1 for s, p, d, kk, st in zip(sp, pad, dilation, k, stride)]
    y = np.zeros((n, o) + tuple(out_sp))
    og = o // group
    for ni, oi in itertools.product(range(n), range(o)):
        g = oi // og
        for pos in itertools.product(*[range(d) for d in out_sp]):
            acc = 0.0 if b is None else float(b[oi])
            for ci in range(cg):
                for offs in itertools.product(*[range(kk) for kk in k]):
                    idx = [p_ * st - pd + u * d for p_, st, pd, u, d in zip(pos, stride, pad, offs, dilation)]
                    if all(0 <= i < s for i, s in zip(idx, sp)):
                        acc += w[(oi, ci) + offs] * x[(ni, g * cg + ci) + tuple(idx)]
            y[(ni, oi) + pos] = acc
    return y


def naive_deconv(x, w, b, stride, pad, dilation, group):
    """Scatter form of the transposed convolution: x[n,c,i] * W[c,o'] lands on y[n, o, i*s - p + u*d]."""
    n, c = x.shape[:2]
    og = w.shape[1]
    k = w.shape[2:]
    sp = x.shape[2:]
    out_sp = [st * (s - 1) + d * (kk - 1) + 1 - 2 * p for s, p, d, kk, st in zip(sp, pad, dilation, k, stride)]
    y = np.zeros((n, og * group) + tuple(out_sp))
    cg = c // group
    for ni, ci in itertools.product(range(n), range(c)):
        g = ci // cg
        for pos in itertools.product(*[range(d) for d in sp]):
            for oo in range(og):
                for offs in itertools.product(*[range(kk) for kk in k]):
                    idx = [p_ * st - pd + u * d for p_, st, pd, u, d in zip(pos, stride, pad, offs, dilation)]
                    if all(0 <= i < s for i, s in zip(idx, out_sp)):
                        y[(ni, g * og + oo) + tuple(idx)] += w[(ci, oo) + offs] * x[(ni, ci) + pos]
    if b is not None:
        y += b.reshape((1, -1) + (1,) * len(sp))
    return y


@pytest.fixture(params=["gemm", "direct"])
def conv_path(request, monkeypatch):
    """Run a test on both Convolution paths: im2col + GEMM, and the direct path of ops/direct_conv.py wherever
    its geometry allows it (2-D, stride 1), whatever the tap count."""
    monkeypatch.setattr(direct_conv, "DIRECT_MAX_TAPS", 0 if request.param == "gemm" else 1 << 30)
    return request.param


def make(text, shapes, seed=0):
    layer = layer_from_text(text)
    rng = np.random.default_rng(seed)
    bottom = [Blob(s) for s in shapes]
    for b in bottom:
        b.data[...] = rng.normal(size=b.shape)
    top = [Blob() for _ in shapes]
    layer.setup(bottom, top)
    for p in layer.blobs:
        p.data[...] = rng.normal(size=p.shape)
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    return layer, bottom, top


# -- golden Caffe cases ----------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["conv_general", "conv_rect_nobias", "conv_1x1", "deconv"])
def test_golden(case, shared):
    report = assert_golden_layer(case, shared / "golden")
    assert report and max(report.values()) < 1e-4


# -- forward against the naive reference ------------------------------------------------------------------
CONV_CASES = [
    ("num_output: 4 kernel_size: 3", (2, 3, 6, 7), (1, 1), (0, 0), (1, 1), 1),
    ("num_output: 6 kernel_size: 3 pad: 2 stride: 2 dilation: 2 group: 3", (2, 6, 9, 8), (2, 2), (2, 2), (2, 2), 3),
    ("num_output: 2 kernel_h: 2 kernel_w: 3 stride_h: 3 stride_w: 1 pad_h: 1 pad_w: 2", (1, 2, 7, 5),
     (3, 1), (1, 2), (1, 1), 1),
    ("num_output: 3 kernel_size: 1", (2, 4, 3, 3), (1, 1), (0, 0), (1, 1), 1),
    ("num_output: 4 kernel_size: 1 group: 2", (2, 4, 3, 3), (1, 1), (0, 0), (1, 1), 2),
    ("num_output: 2 kernel_size: 3 pad: 1", (2, 3, 5, 5), (1, 1), (1, 1), (1, 1), 1),   # stride-1 data path
    ("num_output: 4 kernel_size: 3 kernel_size: 2 pad: 2 pad: 1 dilation: 2 dilation: 3 group: 2", (2, 4, 7, 8),
     (1, 1), (2, 1), (2, 3), 2),                                                          # direct: every option
    ("num_output: 3 kernel_size: 5 bias_term: false", (3, 1, 9, 7), (1, 1), (0, 0), (1, 1), 1),
    ("num_output: 3 kernel_size: 2 kernel_size: 3 stride: 1 stride: 2 pad: 1 pad: 0", (1, 2, 5, 6),
     (1, 2), (1, 0), (1, 1), 1),
]


@pytest.mark.parametrize("cp,shape,stride,pad,dilation,group", CONV_CASES)
def test_forward_matches_naive(cp, shape, stride, pad, dilation, group, conv_path):
    layer, bottom, top = make(f'type: "Convolution" convolution_param {{ {cp} }}', [shape])
    w = layer.blobs[0].data.astype(np.float64)
    bias = layer.blobs[1].data if layer.bias_term else None
    want = naive_conv(bottom[0].data.astype(np.float64), w, bias, stride, pad, dilation, group)
    assert top[0].shape == want.shape
    np.testing.assert_allclose(top[0].data, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(top[0].data, want, rtol=1e-4, atol=1e-5)


def test_sobel_known_answer():
    layer = layer_from_text('type: "Convolution" convolution_param { num_output: 1 kernel_size: 3 bias_term: false }')
    x = Blob((1, 1, 3, 4))
    x.data[0, 0] = [[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1]]
    y = Blob()
    layer.setup([x], [y])
    layer.blobs[0].data[0, 0] = [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]
    layer.forward([x], [y])
    np.testing.assert_array_equal(y.data, [[[[4, 4]]]])


def test_3d_convolution_matches_naive():
    layer, bottom, top = make('type: "Convolution" convolution_param { num_output: 2 kernel_size: 2 kernel_size: 3 '
                              'kernel_size: 2 pad: 1 stride: 2 stride: 1 stride: 1 }', [(2, 2, 4, 5, 3)])
    want = naive_conv(bottom[0].data.astype(np.float64), layer.blobs[0].data.astype(np.float64),
                      layer.blobs[1].data, (2, 1, 1), (1, 1, 1), (1, 1, 1), 1)
    assert layer.blobs[0].shape == (2, 2, 2, 3, 2)
    np.testing.assert_allclose(top[0].data, want, rtol=1e-4, atol=1e-5)


def test_axis_treats_leading_axes_as_batch():
    layer, bottom, top = make('type: "Convolution" convolution_param { num_output: 3 kernel_size: 3 axis: 2 }',
                              [(2, 3, 2, 5, 5)])
    assert top[0].shape == (2, 3, 3, 3, 3)
    x = bottom[0].data.reshape(6, 2, 5, 5).astype(np.float64)
    want = naive_conv(x, layer.blobs[0].data.astype(np.float64), layer.blobs[1].data, (1, 1), (0, 0), (1, 1), 1)
    np.testing.assert_allclose(top[0].data.reshape(6, 3, 3, 3), want, rtol=1e-4, atol=1e-5)


def test_multiple_bottoms_share_weights():
    layer, bottom, top = make('type: "Convolution" convolution_param { num_output: 2 kernel_size: 3 }',
                              [(1, 2, 4, 4), (1, 2, 4, 4)])
    for b, t in zip(bottom, top):
        want = naive_conv(b.data.astype(np.float64), layer.blobs[0].data.astype(np.float64),
                          layer.blobs[1].data, (1, 1), (0, 0), (1, 1), 1)
        np.testing.assert_allclose(t.data, want, rtol=1e-4, atol=1e-5)


def test_truncating_output_size():
    # (2 + 2*1 - 5) / 2 = -1/2 truncates to 0 in C, so one output, its window overhanging the padded image
    layer, bottom, top = make('type: "Convolution" convolution_param { num_output: 1 kernel_size: 5 pad: 1 '
                              'stride: 2 }', [(1, 1, 2, 2)])
    assert top[0].shape == (1, 1, 1, 1)
    w, x = layer.blobs[0].data[0, 0], bottom[0].data[0, 0]
    want = (w[1:3, 1:3] * x).sum() + layer.blobs[1].data[0]
    np.testing.assert_allclose(top[0].data[0, 0, 0, 0], want, rtol=1e-5)


@pytest.mark.parametrize("cp,shape,stride,pad,dilation,group", [
    ("num_output: 6 kernel_size: 4 stride: 2 pad: 1 group: 2", (2, 4, 3, 3), (2, 2), (1, 1), (1, 1), 2),
    ("num_output: 3 kernel_size: 3 pad: 1", (1, 2, 4, 5), (1, 1), (1, 1), (1, 1), 1),
    ("num_output: 2 kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 3 dilation: 2", (2, 3, 3, 2),
     (2, 3), (0, 0), (2, 2), 1),
    ("num_output: 2 kernel_size: 1", (2, 3, 3, 3), (1, 1), (0, 0), (1, 1), 1),
])
def test_deconvolution_matches_naive(cp, shape, stride, pad, dilation, group):
    layer, bottom, top = make(f'type: "Deconvolution" convolution_param {{ {cp} }}', [shape])
    c = shape[1]
    assert layer.blobs[0].shape[:2] == (c, layer.num_output // group)
    want = naive_deconv(bottom[0].data.astype(np.float64), layer.blobs[0].data.astype(np.float64),
                        layer.blobs[1].data, stride, pad, dilation, group)
    assert top[0].shape == want.shape
    np.testing.assert_allclose(top[0].data, want, rtol=1e-4, atol=1e-5)


# -- gradients -------------------------------------------------------------------------------------------
GRAD_CASES = [
    ('type: "Convolution" convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 2 dilation: 2 group: 2 }',
     [(2, 4, 6, 5)]),
    ('type: "Convolution" convolution_param { num_output: 3 kernel_size: 3 pad: 1 }', [(2, 3, 4, 4)]),
    ('type: "Convolution" convolution_param { num_output: 3 kernel_size: 1 }', [(2, 2, 3, 3)]),
    ('type: "Convolution" convolution_param { num_output: 4 kernel_size: 3 pad: 2 dilation: 2 group: 2 }',
     [(2, 2, 5, 6)]),
    ('type: "Convolution" convolution_param { num_output: 2 kernel_h: 2 kernel_w: 3 bias_term: false }',
     [(1, 2, 4, 5), (1, 2, 4, 5)]),
    ('type: "Convolution" convolution_param { num_output: 2 kernel_size: 2 stride: 2 pad: 1 }', [(1, 2, 3, 3, 3)]),
    ('type: "Deconvolution" convolution_param { num_output: 4 kernel_size: 3 stride: 2 pad: 1 group: 2 }',
     [(2, 2, 3, 3)]),
    ('type: "Deconvolution" convolution_param { num_output: 2 kernel_size: 3 pad: 1 }', [(1, 3, 3, 4)]),
]


@pytest.mark.parametrize("text,shapes", GRAD_CASES)
def test_gradient(text, shapes, conv_path):
    check_gradient(lambda: layer_from_text(text), shapes, num_tops=len(shapes), max_checks=60)


def test_param_diffs_accumulate_and_bottom_diff_is_overwritten(conv_path):
    layer, bottom, top = make('type: "Convolution" convolution_param { num_output: 2 kernel_size: 3 }', [(2, 2, 5, 5)])
    top[0].diff[...] = np.random.default_rng(1).normal(size=top[0].shape)
    layer.backward(top, [True], bottom)
    dw, db, dx = layer.blobs[0].diff.copy(), layer.blobs[1].diff.copy(), bottom[0].diff.copy()
    assert np.abs(dw).sum() > 0 and np.abs(dx).sum() > 0
    layer.backward(top, [True], bottom)
    np.testing.assert_allclose(layer.blobs[0].diff, 2 * dw, rtol=1e-6)
    np.testing.assert_allclose(layer.blobs[1].diff, 2 * db, rtol=1e-6)
    np.testing.assert_allclose(bottom[0].diff, dx, rtol=1e-6)
    np.testing.assert_allclose(db, top[0].diff.sum(axis=(0, 2, 3)), rtol=1e-5)


def test_bias_gradient_alone(conv_path):
    """param_propagate_down [false, true]: the bias diff is the top diff summed, the weight diff stays."""
    layer, bottom, top = make('type: "Convolution" convolution_param { num_output: 3 kernel_size: 3 }', [(2, 2, 5, 6)])
    top[0].diff[...] = np.random.default_rng(3).normal(size=top[0].shape)
    layer.param_propagate_down = [False, True]
    layer.backward(top, [False], bottom)
    assert not layer.blobs[0].diff.any()
    np.testing.assert_allclose(layer.blobs[1].diff, top[0].diff.sum(axis=(0, 2, 3)), rtol=1e-5, atol=1e-6)


def test_which_convolutions_run_direct():
    """The direct path takes 2-D stride-1 convolutions with few taps: LeNet's conv1 (1x5x5), not cifar10_quick's
    (3x5x5), not a strided or 3-D one, not Deconvolution."""
    cases = [("num_output: 20 kernel_size: 5", (2, 1, 12, 12), True),
             ("num_output: 32 kernel_size: 5 pad: 2", (2, 3, 12, 12), False),
             ("num_output: 4 kernel_size: 3 pad: 1 group: 2", (2, 8, 6, 6), True),
             ("num_output: 4 kernel_size: 3 stride: 2", (2, 1, 7, 7), False),
             ("num_output: 2 kernel_size: 2", (1, 1, 3, 3, 3), False)]
    for cp, shape, direct in cases:
        layer, _, _ = make(f'type: "Convolution" convolution_param {{ {cp} }}', [shape])
        assert layer._direct() is direct, cp
    layer, _, _ = make('type: "Deconvolution" convolution_param { num_output: 2 kernel_size: 3 }', [(1, 1, 4, 4)])
    assert not layer._direct()


def test_param_propagate_down_false_leaves_diffs(conv_path):
    layer, bottom, top = make('type: "Convolution" convolution_param { num_output: 2 kernel_size: 3 }', [(1, 2, 4, 4)])
    top[0].diff[...] = 1
    layer.param_propagate_down = [False, False]
    layer.backward(top, [False], bottom)
    assert not layer.blobs[0].diff.any() and not layer.blobs[1].diff.any() and not bottom[0].diff.any()


def test_backward_rereads_a_changed_bottom(conv_path):
    """Caffe's weight gradient uses the bottom as it is at backward time, not the columns of forward."""
    text = 'type: "Convolution" convolution_param { num_output: 2 kernel_size: 3 }'
    layer, bottom, top = make(text, [(1, 2, 5, 5)])
    top[0].diff[...] = 1
    bottom[0].data[...] *= 2
    layer.backward(top, [False], bottom)
    fresh, fb, ft = make(text, [(1, 2, 5, 5)])
    fresh.blobs[0].data[...] = layer.blobs[0].data
    fb[0].data[...] = bottom[0].data
    fresh.forward(fb, ft)
    ft[0].diff[...] = 1
    fresh.backward(ft, [False], fb)
    np.testing.assert_allclose(layer.blobs[0].diff, fresh.blobs[0].diff, rtol=1e-6)


@pytest.mark.parametrize("chunk,ratio,parallel_min", [(1 << 24, 1, 1 << 30), (100, 1, 1 << 30), (1 << 24, 0, 0),
                                                   (100, 100, 0), (1 << 24, 100, 0)])
@pytest.mark.parametrize("kind", ["Convolution", "Deconvolution"])
def test_chunked_threaded_and_alternative_data_paths_agree(monkeypatch, chunk, ratio, parallel_min, kind):
    text = f'type: "{kind}" convolution_param {{ num_output: 3 kernel_size: 3 pad: 1 group: 1 }}'
    ref, rb, rt = make(text, [(3, 3, 5, 4)])
    rt[0].diff[...] = np.arange(rt[0].count).reshape(rt[0].shape) % 7 - 3
    ref.backward(rt, [True], rb)
    monkeypatch.setattr(conv, "COL_CHUNK_FLOATS", chunk)
    monkeypatch.setattr(conv, "TRANSPOSED_RATIO", ratio)
    monkeypatch.setattr(parallel, "PARALLEL_MIN_FLOATS", parallel_min)
    monkeypatch.setattr(parallel, "THREADS", 3)
    layer, bottom, top = make(text, [(3, 3, 5, 4)])
    top[0].diff[...] = rt[0].diff
    layer.backward(top, [True], bottom)
    np.testing.assert_allclose(top[0].data, rt[0].data, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bottom[0].diff, rb[0].diff, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer.blobs[0].diff, ref.blobs[0].diff, rtol=1e-5, atol=1e-5)


# -- setup: shapes, fillers, errors ----------------------------------------------------------------------
def test_default_fillers_are_zero_and_shapes():
    layer = layer_from_text('type: "Convolution" convolution_param { num_output: 6 kernel_h: 3 kernel_w: 2 group: 2 }')
    x, y = Blob((2, 4, 7, 7)), Blob()
    layer.setup([x], [y])
    assert layer.blobs[0].shape == (6, 2, 3, 2) and layer.blobs[1].shape == (6,)
    assert not layer.blobs[0].data.any() and not layer.blobs[1].data.any()
    assert y.shape == (2, 6, 5, 6)
    assert layer.accel_op == "conv"
    d = layer_from_text('type: "Deconvolution" convolution_param { num_output: 6 kernel_size: 4 stride: 2 pad: 1 '
                        'group: 2 bias_term: false }')
    d.setup([Blob((2, 4, 5, 5))], [y])
    assert len(d.blobs) == 1 and d.blobs[0].shape == (4, 3, 4, 4) and y.shape == (2, 6, 10, 10)


ERRORS = [
    ("num_output: 2 kernel_size: 3 kernel_h: 3 kernel_w: 3", (1, 2, 5, 5),
     "Either kernel_size or kernel_h/w should be specified; not both."),
    ("num_output: 2", (1, 2, 5, 5),
     "kernel_size must be specified once, or once per spatial dimension (kernel_size specified 0 times; "
     "2 spatial dims)."),
    ("num_output: 2 kernel_h: 3", (1, 2, 5, 5), "Filter dimensions must be nonzero."),
    ("num_output: 2 kernel_size: 3 stride: 0", (1, 2, 5, 5), "Stride dimensions must be nonzero."),
    ("num_output: 2 kernel_size: 3 stride: 1 stride_h: 2", (1, 2, 5, 5),
     "Either stride or stride_h/w should be specified; not both."),
    ("num_output: 2 kernel_size: 3 pad: 1 pad: 1 pad: 1", (1, 2, 5, 5),
     "pad must be specified once, or once per spatial dimension (pad specified 3 times; 2 spatial dims)."),
    ("num_output: 2 kernel_size: 3 dilation: 1 dilation: 1 dilation: 1", (1, 2, 5, 5),
     "dilation must be specified once, or once per spatial dimension (dilation specified 3 times; 2 spatial dims)."),
    ("num_output: 2 kernel_h: 3 kernel_w: 3", (1, 2, 5, 5, 5), "kernel_h & kernel_w can only be used for 2D convolution."),
    ("num_output: 3 kernel_size: 3 group: 2", (1, 4, 5, 5),
     "Check failed: num_output_ % group_ == 0 (1 vs. 0) Number of output should be multiples of group."),
    ("num_output: 2 kernel_size: 3 group: 2", (1, 3, 5, 5), "Check failed: channels_ % group_ == 0 (1 vs. 0)"),
    ("kernel_size: 3", (1, 3, 5, 5), "Check failed: num_output_ > 0 (0 vs. 0)"),
]


@pytest.mark.parametrize("cp,shape,message", ERRORS)
def test_parameter_errors(cp, shape, message):
    layer = layer_from_text(f'name: "c" type: "Convolution" convolution_param {{ {cp} }}')
    with pytest.raises(CaffeUnstableError) as err:
        layer.setup([Blob(shape)], [Blob()])
    assert err.value.what == message
    assert err.value.where == "layer 'c'"


def test_reshape_errors():
    layer = layer_from_text('type: "Convolution" convolution_param { num_output: 2 kernel_size: 3 }')
    top = [Blob(), Blob()]
    layer.setup([Blob((1, 2, 5, 5)), Blob((1, 2, 5, 5))], top)
    with pytest.raises(CaffeUnstableError, match="All inputs must have the same shape."):
        layer.reshape([Blob((1, 2, 5, 5)), Blob((1, 2, 6, 5))], top)
    with pytest.raises(CaffeUnstableError, match="Input size incompatible with convolution kernel."):
        layer.reshape([Blob((1, 3, 5, 5)), Blob((1, 3, 5, 5))], top)
    with pytest.raises(CaffeUnstableError, match="bottom num_axes may not change."):
        layer.reshape([Blob((1, 2, 5)), Blob((1, 2, 5))], top)


def test_given_blobs_are_checked():
    layer = layer_from_text('type: "Convolution" convolution_param { num_output: 2 kernel_size: 3 }')
    layer.blobs = [Blob((2, 3, 3, 3)), Blob((2,))]
    with pytest.raises(CaffeUnstableError) as err:
        layer.setup([Blob((1, 2, 5, 5))], [Blob()])
    assert err.value.what == "Incorrect weight shape: expected shape 2 2 3 3 (36); instead, shape was 2 3 3 3 (54)"
    layer = layer_from_text('type: "Convolution" convolution_param { num_output: 2 kernel_size: 3 }')
    layer.blobs = [Blob((2, 2, 3, 3))]
    with pytest.raises(CaffeUnstableError, match="Incorrect number of weight blobs."):
        layer.setup([Blob((1, 2, 5, 5))], [Blob()])


# -- the numba im2col kernels against the numpy N-D versions ---------------------------------------------
IM2COL_GEOMETRIES = [
    # (image shape, kernel, stride, pad, dilation)
    ((2, 3, 7, 6), (3, 3), (1, 1), (1, 1), (1, 1)),      # "same": whole-plane copies
    ((2, 2, 6, 7), (5, 3), (1, 1), (2, 1), (1, 1)),
    ((1, 2, 9, 8), (3, 2), (2, 3), (1, 0), (1, 1)),
    ((2, 1, 9, 9), (3, 3), (1, 1), (2, 2), (2, 2)),      # dilated
    ((1, 2, 11, 10), (4, 4), (4, 3), (0, 2), (1, 2)),
    ((1, 2, 4, 4), (3, 3), (1, 1), (3, 3), (1, 1)),      # more padding than image rows
    ((3, 2, 13), (4,), (2,), (1,), (1,)),                # 1-D
]


@pytest.mark.parametrize("shape,k,s,p,d", IM2COL_GEOMETRIES)
def test_im2col_kernels_equal_numpy(shape, k, s, p, d):
    geo = conv.ConvGeometry(k, s, p, d, 1)
    cols_sp = tuple(conv.conv_out_dim(*a) for a in zip(shape[2:], k, s, p, d))
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape).astype(np.float32)
    rows, n_cols = shape[1] * int(np.prod(k)), shape[0] * int(np.prod(cols_sp))
    want, got = np.empty((rows, n_cols), np.float32), np.full((rows, n_cols), np.nan, np.float32)
    im2col.im2col_nd(x, geo, cols_sp, want)
    im2col.im2col(x, geo, cols_sp, got)
    np.testing.assert_array_equal(got, want)
    col = rng.normal(size=(rows, n_cols)).astype(np.float32)
    want, got = np.empty(shape, np.float32), np.full(shape, np.nan, np.float32)
    im2col.col2im_nd(col, geo, cols_sp, want)
    im2col.col2im(col, geo, cols_sp, got)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_row_transposes():
    rng = np.random.default_rng(1)
    y = rng.normal(size=(3, 6, 37)).astype(np.float32)              # (n, O, P), two groups of 3
    rows = im2col.image_to_rows(y, 2)
    np.testing.assert_array_equal(rows, y.reshape(3, 2, 3, 37).transpose(1, 0, 3, 2).reshape(2, 3 * 37, 3))
    bias = rng.normal(size=6).astype(np.float32)
    back = im2col.rows_to_image(rows.copy(), np.empty_like(y), bias)
    np.testing.assert_array_equal(back, y + bias[:, None])


@pytest.mark.parametrize("threads", [1, 3])
def test_cleared_param_diffs_are_written_like_zeros_added(monkeypatch, threads, conv_path):
    """Lazily cleared weight and bias diffs (Blob.clear_diff) are overwritten by the backward, with the values of
    adding into zeros, and accumulate on the next backward; several chunks and weight slots, any thread count."""
    text = 'type: "Convolution" convolution_param { num_output: 4 kernel_size: 3 pad: 1 }'
    monkeypatch.setattr(conv, "COL_CHUNK_FLOATS", 200)
    monkeypatch.setattr(parallel, "PARALLEL_MIN_FLOATS", 0)
    monkeypatch.setattr(parallel, "THREADS", threads)
    results = []
    for lazy in (False, True):
        layer, bottom, top = make(text, [(7, 3, 6, 5)])
        top[0].diff[...] = np.arange(top[0].count).reshape(top[0].shape) % 5 - 2
        for p in layer.blobs:
            p.diff[...] = 3
            if lazy:
                p.clear_diff()
            else:
                p.diff[...] = 0
        layer.backward(top, [True], bottom)
        once = [p.diff.copy() for p in layer.blobs]
        layer.backward(top, [True], bottom)
        results.append(once + [p.diff.copy() for p in layer.blobs] + [bottom[0].diff.copy()])
    for a, g in zip(*results):
        np.testing.assert_array_equal(g, a)
    np.testing.assert_allclose(results[0][2], 2 * results[0][0], rtol=1e-6)


def test_weight_gradient_does_not_depend_on_the_thread_count(monkeypatch, conv_path):
    """Chunks run on any thread, but the weight gradient's partial sums are fixed by the shape: bit-equal."""
    text = 'type: "Convolution" convolution_param { num_output: 5 kernel_size: 3 group: 1 }'
    monkeypatch.setattr(conv, "COL_CHUNK_FLOATS", 300)
    monkeypatch.setattr(parallel, "PARALLEL_MIN_FLOATS", 0)
    diffs = []
    for threads in (1, 2, 5):
        monkeypatch.setattr(parallel, "THREADS", threads)
        layer, bottom, top = make(text, [(11, 4, 7, 7)])
        top[0].diff[...] = np.sin(np.arange(top[0].count)).reshape(top[0].shape)
        layer.backward(top, [True], bottom)
        diffs.append([layer.blobs[0].diff.copy(), layer.blobs[1].diff.copy(), bottom[0].diff.copy()])
    for got in diffs[1:]:
        for a, g in zip(diffs[0], got):
            np.testing.assert_array_equal(g, a)


@pytest.mark.parametrize("kind", ["Convolution", "Deconvolution"])
@pytest.mark.parametrize("shape", [(2, 1, 4, 6), (0, 1, 5, 5)])
def test_empty_outputs_and_empty_batches(conv_path, kind, shape):
    """An image one row short of the kernel's extent (a 0-row output, C's truncating division) and a batch of 0
    give empty tops and zero gradients, not an error."""
    layer, bottom, top = make(f'type: "{kind}" convolution_param {{ num_output: 2 kernel_size: 5 }}', [shape])
    top[0].diff[...] = 1
    layer.backward(top, [True], bottom)
    if kind == "Convolution" or shape[0] == 0:
        assert top[0].count == 0
        assert not layer.blobs[0].diff.any() and not layer.blobs[1].diff.any() and not bottom[0].diff.any()
    else:
        np.testing.assert_allclose(layer.blobs[1].diff, [top[0].count / 2] * 2)
