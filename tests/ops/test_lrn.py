"""LRN: golden Caffe cases, float64 loop references of both regions, gradients, parameter errors."""
import numpy as np
import pytest

from caffe_unstable.errors import CaffeUnstableError
from caffe_unstable.net.blob import Blob
from tests.ops.gradcheck import assert_golden_layer, check_gradient, layer_from_text


def naive_across(x, n, alpha, beta, k):
    y = np.empty_like(x)
    c = x.shape[1]
    for ci in range(c):
        lo, hi = max(0, ci - (n - 1) // 2), min(c, ci + (n - 1) // 2 + 1)
        scale = k + alpha / n * (x[:, lo:hi] ** 2).sum(axis=1)
        y[:, ci] = x[:, ci] * scale ** -beta
    return y


def naive_within(x, n, alpha, beta):
    pre = (n - 1) // 2
    h, w = x.shape[2:]
    padded = np.zeros(x.shape[:2] + (h + 2 * pre, w + 2 * pre))
    padded[:, :, pre:pre + h, pre:pre + w] = x ** 2
    mean = np.zeros_like(x)
    for i in range(h):
        for j in range(w):
            mean[:, :, i, j] = padded[:, :, i:i + n, j:j + n].sum(axis=(2, 3)) / (n * n)
    return x * (1 + alpha * mean) ** -beta


def run(text, x):
    layer = layer_from_text(text)
    bottom, top = [Blob(x.shape)], [Blob()]
    bottom[0].data[...] = x
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    return layer, bottom, top


@pytest.mark.parametrize("case", ["lrn_across", "lrn_within"])
def test_golden(case, shared):
    report = assert_golden_layer(case, shared / "golden")
    assert report and max(report.values()) < 1e-5


@pytest.mark.parametrize("n,alpha,beta,k", [(5, 1.0, 0.75, 1.0), (3, 0.3, 0.5, 2.0), (1, 2.0, 1.0, 0.5),
                                            (7, 0.01, 0.75, 1.0)])
def test_across_matches_reference(n, alpha, beta, k):
    x = np.random.default_rng(1).normal(size=(2, 6, 3, 4)).astype(np.float32) * 3
    _, _, top = run(f'type: "LRN" lrn_param {{ local_size: {n} alpha: {alpha} beta: {beta} k: {k} }}', x)
    np.testing.assert_allclose(top[0].data, naive_across(x.astype(np.float64), n, alpha, beta, k), rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize("n,alpha,beta", [(3, 0.4, 0.75), (5, 1.0, 0.5), (1, 0.5, 1.0)])
def test_within_matches_reference_and_ignores_k(n, alpha, beta):
    x = np.random.default_rng(2).normal(size=(2, 2, 5, 6)).astype(np.float32) * 2
    _, _, top = run(f'type: "LRN" lrn_param {{ local_size: {n} alpha: {alpha} beta: {beta} k: 7 '
                    'norm_region: WITHIN_CHANNEL }', x)
    np.testing.assert_allclose(top[0].data, naive_within(x.astype(np.float64), n, alpha, beta), rtol=1e-5, atol=1e-6)


def test_known_answer_across():
    x = np.zeros((1, 3, 1, 1), np.float32)
    x[0, :, 0, 0] = [1, 2, 3]
    _, _, top = run('type: "LRN" lrn_param { local_size: 3 alpha: 3 beta: 1 k: 1 }', x)
    # scale = 1 + (3/3) * window sum of squares: [1+1+4, 1+1+4+9, 1+4+9]
    np.testing.assert_allclose(top[0].data.ravel(), [1 / 6, 2 / 15, 3 / 14], rtol=1e-6)


@pytest.mark.parametrize("lp", ["local_size: 5 alpha: 0.5 beta: 0.75 k: 2",
                                "local_size: 3 alpha: 1.0 beta: 0.6 k: 1",
                                "local_size: 3 alpha: 0.4 beta: 0.75 norm_region: WITHIN_CHANNEL",
                                "local_size: 5 alpha: 1.5 beta: 0.5 norm_region: WITHIN_CHANNEL"])
def test_gradient(lp):
    check_gradient(lambda: layer_from_text(f'type: "LRN" lrn_param {{ {lp} }}'), [(2, 6, 4, 5)], max_checks=120)


def test_errors_and_attributes():
    layer = layer_from_text('name: "n" type: "LRN" lrn_param { local_size: 4 }')
    with pytest.raises(CaffeUnstableError) as err:
        layer.setup([Blob((1, 4, 3, 3))], [Blob()])
    assert err.value.what == "LRN only supports odd values for local_size" and err.value.where == "layer 'n'"
    layer = layer_from_text('type: "LRN"')
    with pytest.raises(CaffeUnstableError) as err:
        layer.setup([Blob((4, 3, 3))], [Blob()])
    assert err.value.what == "Input must have 4 axes, corresponding to (num, channels, height, width)"
    assert layer.accel_op == "lrn"


def test_backward_respects_propagate_down():
    layer, bottom, top = run('type: "LRN"', np.ones((1, 3, 2, 2), np.float32))
    bottom[0].diff[...] = 7
    top[0].diff[...] = 1
    layer.backward(top, [False], bottom)
    assert (bottom[0].diff == 7).all()


@pytest.mark.parametrize("n,beta,shape,block", [(5, 0.75, (2, 7, 5, 6), 1024), (3, 0.5, (1, 4, 6, 7), 16),
                                                (7, 1.0, (2, 3, 4, 5), 7), (5, 0.6, (1, 9, 3, 3), 4),
                                                (1, 0.75, (1, 2, 2, 2), 1024)])
def test_kernels_equal_numpy_reference(monkeypatch, n, beta, shape, block):
    """The numba kernels (Caffe's sliding channel window, pixel blocks) against the vectorized numpy version."""
    from caffe_unstable.ops import lrn, parallel
    monkeypatch.setattr(lrn, "PIXEL_BLOCK", block)
    monkeypatch.setattr(parallel, "PARALLEL_MIN_FLOATS", 0)
    rng = np.random.default_rng(3)
    x = (rng.normal(size=shape) * 3).astype(np.float32)
    dy = rng.normal(size=shape).astype(np.float32)
    y_ref, scale_ref, pow_ref = lrn.across_forward(x, n, 0.3, beta, 1.5)
    y, scale = np.full(shape, np.nan, np.float32), np.full(shape, np.nan, np.float32)
    lrn.across_forward_fast(x, n, 0.3, beta, 1.5, y, scale)
    np.testing.assert_allclose(scale, scale_ref, rtol=1e-6)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-7)
    dx = np.full(shape, np.nan, np.float32)
    lrn.across_backward_fast(dy, x, y, scale, n, 0.3, beta, dx)
    np.testing.assert_allclose(dx, lrn.across_backward(dy, x, y_ref, scale_ref, pow_ref, n, 0.3, beta), rtol=1e-4,
                               atol=1e-6)
