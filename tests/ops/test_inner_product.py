"""InnerProduct and Embed: golden Caffe cases, known answers, gradients, parameter errors."""
import numpy as np
import pytest

from caffe_unstable.errors import CaffeUnstableError
from caffe_unstable.ops.inner_product import accumulate_matmul
from caffe_unstable.net.blob import Blob
from tests.ops.gradcheck import assert_golden_layer, check_gradient, layer_from_text


def run(text, x, params=None):
    layer = layer_from_text(text)
    bottom, top = [Blob(np.shape(x))], [Blob()]
    bottom[0].data[...] = x
    layer.setup(bottom, top)
    for p, v in zip(layer.blobs, params or []):
        p.data[...] = v
    layer.forward(bottom, top)
    return layer, bottom, top


@pytest.mark.parametrize("case", ["innerproduct", "innerproduct_transpose_axis2"])
def test_golden(case, shared):
    report = assert_golden_layer(case, shared / "golden")
    assert report and max(report.values()) < 1e-4


def test_known_answer_and_shapes():
    x = np.arange(12, dtype=np.float32).reshape(2, 3, 2)
    w = np.array([[1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]], np.float32)
    layer, bottom, top = run('type: "InnerProduct" inner_product_param { num_output: 2 }', x, [w, [10, 20]])
    assert layer.blobs[0].shape == (2, 6) and layer.blobs[1].shape == (2,)
    np.testing.assert_array_equal(top[0].data, [[10, 35], [16, 71]])
    top[0].diff[...] = [[1, 2], [3, 4]]
    layer.backward(top, [True], bottom)
    np.testing.assert_array_equal(layer.blobs[1].diff, [4, 6])
    np.testing.assert_array_equal(layer.blobs[0].diff, [[18, 22, 26, 30, 34, 38], [24, 30, 36, 42, 48, 54]])
    np.testing.assert_array_equal(bottom[0].diff.reshape(2, 6), [[3, 2, 2, 2, 2, 2], [7, 4, 4, 4, 4, 4]])
    layer.backward(top, [True], bottom)   # params accumulate, the bottom diff is overwritten
    np.testing.assert_array_equal(layer.blobs[1].diff, [8, 12])
    np.testing.assert_array_equal(bottom[0].diff.reshape(2, 6), [[3, 2, 2, 2, 2, 2], [7, 4, 4, 4, 4, 4]])


def test_transpose_and_axis():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    w = rng.normal(size=(20, 6)).astype(np.float32)
    layer, _, top = run('type: "InnerProduct" inner_product_param { num_output: 6 axis: -2 transpose: true '
                        'bias_term: false }', x, [w])
    assert len(layer.blobs) == 1 and layer.blobs[0].shape == (20, 6)
    assert top[0].shape == (2, 3, 6)
    np.testing.assert_allclose(top[0].data.reshape(6, 6), x.reshape(6, 20) @ w, rtol=1e-5)
    assert layer.accel_op == "conv"


def test_default_fillers_are_zero():
    layer, _, top = run('type: "InnerProduct" inner_product_param { num_output: 3 }', np.ones((2, 4), np.float32))
    assert not layer.blobs[0].data.any() and not layer.blobs[1].data.any() and not top[0].data.any()


@pytest.mark.parametrize("ip", ["num_output: 3", "num_output: 4 transpose: true", "num_output: 2 axis: 2",
                                "num_output: 3 bias_term: false axis: -1 transpose: true"])
def test_gradient(ip):
    check_gradient(lambda: layer_from_text(f'type: "InnerProduct" inner_product_param {{ {ip} }}'), [(2, 3, 4)])


def test_changed_input_size_is_fatal():
    layer, bottom, top = run('name: "ip" type: "InnerProduct" inner_product_param { num_output: 3 }',
                             np.ones((2, 4), np.float32))
    bottom[0].reshape((5, 4))
    layer.reshape(bottom, top)
    assert top[0].shape == (5, 3)
    bottom[0].reshape((2, 5))
    with pytest.raises(CaffeUnstableError) as err:
        layer.reshape(bottom, top)
    assert err.value.what == "Check failed: K_ == new_K (4 vs. 5) Input size incompatible with inner product parameters."
    assert err.value.where == "layer 'ip'"


# -- Embed -----------------------------------------------------------------------------------------------
def test_embed_known_answer():
    w = np.arange(8, dtype=np.float32).reshape(4, 2)
    x = np.array([[3, 0], [1, 3]], np.float32)
    layer, bottom, top = run('type: "Embed" embed_param { num_output: 2 input_dim: 4 }', x, [w, [100, 200]])
    assert layer.blobs[0].shape == (4, 2) and top[0].shape == (2, 2, 2)
    np.testing.assert_array_equal(top[0].data, [[[106, 207], [100, 201]], [[102, 203], [106, 207]]])
    top[0].diff[...] = np.arange(8).reshape(2, 2, 2)
    layer.backward(top, [False], bottom)
    np.testing.assert_array_equal(layer.blobs[0].diff, [[2, 3], [4, 5], [0, 0], [6, 8]])
    np.testing.assert_array_equal(layer.blobs[1].diff, [12, 16])


def test_embed_gradient_of_params():
    x = np.array([[0, 2, 2], [1, 4, 0]], np.float32)
    check_gradient(lambda: layer_from_text('type: "Embed" embed_param { num_output: 3 input_dim: 5 }'),
                   [x.shape], bottom_data=[x], check_bottoms=[])


@pytest.mark.parametrize("ep,message", [
    ("input_dim: 3", "EmbedLayer num_output must be positive."),
    ("num_output: 3", "EmbedLayer input_dim must be positive."),
])
def test_embed_parameter_errors(ep, message):
    layer = layer_from_text(f'type: "Embed" embed_param {{ {ep} }}')
    with pytest.raises(CaffeUnstableError) as err:
        layer.setup([Blob((2,))], [Blob()])
    assert err.value.what == message


def test_embed_rejects_bad_indices_and_bottom_gradient():
    layer = layer_from_text('type: "Embed" embed_param { num_output: 2 input_dim: 3 }')
    bottom, top = [Blob((2,))], [Blob()]
    layer.setup(bottom, top)
    for bad in ([0, 3], [1.5, 0], [-1, 0]):
        bottom[0].data[...] = bad
        with pytest.raises(CaffeUnstableError, match="not an integer in"):
            layer.forward(bottom, top)
    bottom[0].data[...] = [0, 1]
    layer.forward(bottom, top)
    with pytest.raises(CaffeUnstableError, match="Can't backpropagate to EmbedLayer input."):
        layer.backward(top, [True], bottom)


def test_blocked_accumulation_equals_plain():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(37, 5)).astype(np.float32), rng.normal(size=(5, 11)).astype(np.float32)
    out = np.ones((37, 11), np.float32)
    accumulate_matmul(out, a, b, block_floats=30)
    np.testing.assert_allclose(out, 1 + a @ b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("m", [1, 3, 4, 10])
def test_skinny_kernels_equal_blas(monkeypatch, m):
    """Few rows against a large weight run fc_kernels (split over threads): same values as the BLAS path."""
    from caffe_unstable.ops import inner_product, parallel
    rng = np.random.default_rng(m)
    x = rng.normal(size=(m, 37)).astype(np.float32)
    w, b = rng.normal(size=(13, 37)).astype(np.float32), rng.normal(size=13).astype(np.float32)
    dy = rng.normal(size=(m, 13)).astype(np.float32)
    text = 'type: "InnerProduct" inner_product_param { num_output: 13 }'
    results = []
    for min_weight in (1 << 30, 0):   # BLAS, then the kernels
        monkeypatch.setattr(inner_product, "SKINNY_MIN_WEIGHT", min_weight)
        monkeypatch.setattr(parallel, "PARALLEL_MIN_FLOATS", 0)
        monkeypatch.setattr(parallel, "THREADS", 2)
        layer, bottom, top = run(text, x, [w, b])
        top[0].diff[...] = dy
        layer.blobs[0].diff[...] = 1
        layer.backward(top, [True], bottom)
        results.append((top[0].data.copy(), layer.blobs[0].diff.copy(), bottom[0].diff.copy()))
    for want, got in zip(*results):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(results[1][0], x @ w.T + b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(results[1][1], 1 + dy.T @ x, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("m,n,k,skinny", [(3, 13, 37, True), (10, 70, 300, True), (64, 500, 800, False),
                                          (130, 700, 100, False)])
def test_cleared_diff_is_written_like_zeros_added(monkeypatch, m, n, k, skinny):
    """A weight diff cleared lazily (Blob.clear_diff) is overwritten by the backward: the same values as adding
    into real zeros, on one thread and on three, and the diff then accumulates as before."""
    from caffe_unstable.ops import inner_product, parallel
    monkeypatch.setattr(inner_product, "SKINNY_MIN_WEIGHT", 0 if skinny else 1 << 30)
    rng = np.random.default_rng(n)
    x, dy = rng.normal(size=(m, k)).astype(np.float32), rng.normal(size=(m, n)).astype(np.float32)
    w, b = rng.normal(size=(n, k)).astype(np.float32), rng.normal(size=n).astype(np.float32)
    text = f'type: "InnerProduct" inner_product_param {{ num_output: {n} }}'
    results = []
    for threads, lazy in ((1, False), (1, True), (3, True)):
        monkeypatch.setattr(parallel, "PARALLEL_MIN_FLOATS", 0)
        monkeypatch.setattr(parallel, "THREADS", threads)
        layer, bottom, top = run(text, x, [w, b])
        top[0].diff[...] = dy
        for p in layer.blobs:
            p.diff[...] = 7
            if lazy:
                p.clear_diff()
            else:
                p.diff[...] = 0
        layer.backward(top, [True], bottom)
        once = layer.blobs[0].diff.copy()
        layer.backward(top, [True], bottom)
        results.append((top[0].data.copy(), once, layer.blobs[0].diff.copy(), layer.blobs[1].diff.copy(),
                        bottom[0].diff.copy()))
    for got in results[1:]:
        for a, g in zip(results[0], got):
            np.testing.assert_array_equal(g, a)
    np.testing.assert_allclose(results[0][1], dy.T @ x, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(results[0][2], 2 * (dy.T @ x), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(results[0][4], dy @ w, rtol=1e-4, atol=1e-4)


def test_split_gemm_blocks_equal_one_gemm():
    """The row blocks a large InnerProduct is cut into give OpenBLAS's one-GEMM values to the bit."""
    from caffe_unstable.ops.inner_product import _row_blocks
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=(64, 800)).astype(np.float32), rng.normal(size=(500, 800)).astype(np.float32)
    blocks = _row_blocks(500, 64 * 800)
    assert len(blocks) > 2 and blocks[0] == 0 and blocks[-1] == 500
    layer, bottom, top = run('type: "InnerProduct" inner_product_param { num_output: 500 }', x,
                             [w, np.zeros(500, np.float32)])
    np.testing.assert_array_equal(top[0].data, np.matmul(w, x.T).T)
