"""Tests of caffe_unstable/ops/scale.py (Caffe's layers/scale_layer.cpp and layers/bias_layer.cpp)."""
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


def _run(text, *bottoms, top_diff=None, in_place=False):
    """setup + forward (+ backward with `top_diff`) of one layer; returns (layer, bottom, top)."""
    layer = layer_from_text(text)
    bottom = [_blob(b) for b in bottoms]
    top = [bottom[0]] if in_place else [Blob()]
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    if top_diff is not None:
        top[0].diff[...] = top_diff
        layer.param_propagate_down = [True] * len(layer.blobs)
        layer.backward(top, [True] * len(bottom), bottom)
    return layer, bottom, top


@pytest.mark.parametrize("case", ["scale_bias", "scale_two_bottoms", "bias_layer"])
def test_golden(shared, case):
    run_layer_case(case, rtol=1e-4, atol=1e-5)


def test_scale_default_filler_is_one_and_bias_filler_is_used():
    layer, _, top = _run('type: "Scale" scale_param { bias_term: true bias_filler { type: "constant" value: 0.5 } }',
                         np.ones((2, 3, 2)))
    assert [b.shape for b in layer.blobs] == [(3,), (3,)]
    np.testing.assert_array_equal(layer.blobs[0].data, 1)
    np.testing.assert_array_equal(layer.blobs[1].data, 0.5)
    np.testing.assert_array_equal(top[0].data, 1.5)


def test_scale_learned_known_answer():
    x = np.arange(12, dtype=np.float32).reshape(2, 3, 2)
    layer = layer_from_text('type: "Scale" scale_param { filler { type: "constant" value: 2 } }')
    bottom, top = [_blob(x)], [Blob()]
    layer.setup(bottom, top)
    layer.blobs[0].data[...] = [1, -1, 3]
    layer.forward(bottom, top)
    np.testing.assert_array_equal(top[0].data, x * np.array([1, -1, 3], np.float32)[None, :, None])
    top[0].diff[...] = 1
    layer.backward(top, [True], bottom)
    np.testing.assert_array_equal(bottom[0].diff, np.broadcast_to(np.array([1, -1, 3])[None, :, None], x.shape))
    np.testing.assert_array_equal(layer.blobs[0].diff, x.sum(axis=(0, 2)))


def test_scale_axis_num_axes_shapes():
    x = np.ones((2, 3, 4, 5))
    assert _run('type: "Scale" scale_param { axis: 1 num_axes: 2 }', x)[0].blobs[0].shape == (3, 4)
    assert _run('type: "Scale" scale_param { axis: -2 num_axes: -1 }', x)[0].blobs[0].shape == (4, 5)
    assert _run('type: "Scale" scale_param { num_axes: 0 }', x)[0].blobs[0].shape == ()
    assert _run('type: "Bias" bias_param { axis: 0 num_axes: 1 }', x)[0].blobs[0].shape == (2,)


def test_scalar_scale_from_second_bottom():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    _, bottom, top = _run('type: "Scale" scale_param { axis: 1 }', x, np.float32(2.5), top_diff=np.ones((2, 3)))
    np.testing.assert_array_equal(top[0].data, 2.5 * x)
    np.testing.assert_array_equal(bottom[1].diff, x.sum())
    np.testing.assert_array_equal(bottom[0].diff, 2.5)


def test_scale_diff_accumulates_or_overwrites_as_caffe():
    # Caffe quirk: a learned scale diff is overwritten when outer == 1 and it has > 1 element,
    # or when it covers all of x; otherwise accumulated.
    def twice(x_shape, text):
        layer = layer_from_text(f'type: "Scale" {text}')
        bottom, top = [_blob(np.ones(x_shape))], [Blob()]
        layer.setup(bottom, top)
        layer.forward(bottom, top)
        top[0].diff[...] = 1
        for _ in range(2):
            layer.backward(top, [True], bottom)
        return layer.blobs[0].diff

    np.testing.assert_array_equal(twice((1, 3, 2), ""), [2, 2, 2])                     # outer 1: overwritten
    np.testing.assert_array_equal(twice((2, 3, 2), ""), [8, 8, 8])                     # accumulated
    np.testing.assert_array_equal(twice((2, 3), "scale_param { axis: 0 num_axes: -1 }"), np.ones((2, 3)))
    np.testing.assert_array_equal(twice((1, 3, 2), "scale_param { num_axes: 0 }"), 12)  # scalar: accumulated
    np.testing.assert_array_equal(twice((2, 1, 2), ""), [8])                            # one element: accumulated


def test_bias_diff_accumulates_when_learned_and_overwrites_second_bottom():
    layer = layer_from_text('type: "Bias"')
    bottom, top = [_blob(np.zeros((2, 3, 2))), _blob(np.zeros(3))], [Blob()]
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    top[0].diff[...] = 1
    bottom[1].diff[...] = 100
    layer.backward(top, [True, True], bottom)
    np.testing.assert_array_equal(bottom[1].diff, [4, 4, 4])
    learned = layer_from_text('type: "Bias"')
    bottom, top = [_blob(np.zeros((2, 3, 2)))], [Blob()]
    learned.setup(bottom, top)
    learned.forward(bottom, top)
    top[0].diff[...] = 1
    learned.blobs[0].diff[...] = 1
    learned.backward(top, [True], bottom)
    np.testing.assert_array_equal(learned.blobs[0].diff, [5, 5, 5])


def test_param_propagate_down_false_leaves_diffs():
    layer = layer_from_text('type: "Scale" scale_param { bias_term: true }')
    bottom, top = [_blob(np.ones((2, 3)))], [Blob()]
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    top[0].diff[...] = 1
    layer.param_propagate_down = [False, False]
    layer.backward(top, [True], bottom)
    assert not layer.blobs[0].diff.any() and not layer.blobs[1].diff.any()
    np.testing.assert_array_equal(bottom[0].diff, 1)


@pytest.mark.parametrize("text", ['type: "Scale" scale_param { bias_term: true }', 'type: "Bias"'])
def test_in_place_matches_out_of_place(text):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 3, 4)).astype(np.float32)
    dy = rng.normal(size=x.shape).astype(np.float32)
    params = rng.normal(size=(2, 3)).astype(np.float32)
    results = []
    for in_place in (False, True):
        layer = layer_from_text(text)
        bottom = [_blob(x)]
        top = bottom if in_place else [Blob()]
        layer.setup(bottom, top)
        for p, values in zip(layer.blobs, params):
            p.data[...] = values
        layer.forward(bottom, top)
        y = top[0].data.copy()
        top[0].diff[...] = dy
        layer.param_propagate_down = [True] * len(layer.blobs)
        layer.backward(top, [True], bottom)
        results.append([y, bottom[0].diff.copy()] + [p.diff.copy() for p in layer.blobs])
    s, b = params[:, None, :, None]
    np.testing.assert_allclose(results[1][0], x * s + b if "Scale" in text else x + s, rtol=1e-6)
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_given_blobs_are_kept():
    lp = caffe_pb2.LayerParameter()
    text_format.Parse('name: "s" type: "Scale" scale_param { bias_term: true }', lp)
    lp.blobs.add(shape=caffe_pb2.BlobShape(dim=[2]), data=[3, 4])
    lp.blobs.add(shape=caffe_pb2.BlobShape(dim=[2]), data=[-1, 1])
    layer = layer_class("Scale")(lp, np.random.default_rng(0))
    bottom, top = [_blob(np.ones((1, 2)))], [Blob()]
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    np.testing.assert_array_equal(top[0].data, [[2, 5]])


def test_bias_blob_replaced_by_net_sharing_is_used():
    # Net param sharing (and test nets sharing the train net's params) swap layer.blobs[j] for another Blob
    layer = layer_from_text('type: "Scale" scale_param { bias_term: true }')
    bottom, top = [_blob(np.ones((1, 2)))], [Blob()]
    layer.setup(bottom, top)
    shared_bias = _blob([10.0, 20.0])
    layer.blobs[1] = shared_bias
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    np.testing.assert_array_equal(top[0].data, [[11, 21]])
    top[0].diff[...] = 1
    layer.backward(top, [True], bottom)
    np.testing.assert_array_equal(shared_bias.diff, [1, 1])


@pytest.mark.parametrize("text", ['type: "Scale"', 'type: "Scale" scale_param { bias_term: true num_axes: 2 }',
                                  'type: "Scale" scale_param { axis: 0 num_axes: -1 bias_term: true }',
                                  'type: "Bias" bias_param { axis: 2 }'])
def test_gradient_learned(text):
    check_gradient(lambda: layer_from_text(text), [(2, 3, 4)])


@pytest.mark.parametrize("text,shapes", [('type: "Scale" scale_param { axis: 1 bias_term: true }', [(2, 3, 4), (3, 4)]),
                                         ('type: "Scale" scale_param { axis: 0 }', [(2, 3, 4), (2,)]),
                                         ('type: "Bias" bias_param { axis: 1 }', [(2, 3, 4), (3,)])])
def test_gradient_second_bottom(text, shapes):
    check_gradient(lambda: layer_from_text(text), shapes)


def test_error_num_axes():
    with pytest.raises(CaffeUnstableError, match="num_axes must be non-negative, or -1 to extend to the end of bottom"):
        _run('type: "Scale" scale_param { num_axes: -2 }', np.ones((2, 3)))


def test_error_extends_past():
    with pytest.raises(CaffeUnstableError, match="scale blob's shape extends past bottom\\[0\\]'s shape when "
                                                 "applied starting with bottom\\[0\\] axis = 1"):
        _run('type: "Scale" scale_param { num_axes: 3 }', np.ones((2, 3)))
    with pytest.raises(CaffeUnstableError, match="bias blob's shape extends past"):
        _run('type: "Bias" bias_param { num_axes: 3 }', np.ones((2, 3)))


def test_error_dimension_mismatch():
    with pytest.raises(CaffeUnstableError, match=r"dimension mismatch between bottom\[0\]->shape\(1\) and "
                                                 r"scale->shape\(0\)"):
        _run('type: "Scale"', np.ones((2, 3)), np.ones(4))
    with pytest.raises(CaffeUnstableError, match=r"bias->shape\(0\)"):
        _run('type: "Bias"', np.ones((2, 3)), np.ones(4))
