"""Tests of caffe_unstable/ops/shape.py (Caffe's split, concat, slice, flatten, reshape, crop, tile, silence,
parameter and batch_reindex layers)."""
import numpy as np
import pytest

from caffe_unstable.errors import CaffeUnstableError
from caffe_unstable.net.blob import Blob
from tests.golden import run_layer_case
from tests.ops.gradcheck import check_gradient, layer_from_text


def _blob(values):
    values = np.asarray(values, np.float32)
    b = Blob(values.shape)
    b.data[...] = values
    return b


def _setup(text, bottoms, num_tops=1):
    layer = layer_from_text(text)
    bottom, top = [_blob(b) for b in bottoms], [Blob() for _ in range(num_tops)]
    layer.setup(bottom, top)
    return layer, bottom, top


def _run(text, bottoms, num_tops=1):
    layer, bottom, top = _setup(text, bottoms, num_tops)
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    return layer, bottom, top


@pytest.mark.parametrize("case", ["concat", "slice", "flatten", "reshape"])
def test_golden(shared, case):
    run_layer_case(case, rtol=1e-4, atol=1e-5)


# -- Split ------------------------------------------------------------------------------------------------
def test_split_shares_data_and_sums_diffs():
    layer, bottom, top = _run('type: "Split"', [np.arange(6.0).reshape(2, 3)], num_tops=3)
    for t in top:
        np.testing.assert_array_equal(t.data, bottom[0].data)
    bottom[0].data[0, 0] = 42  # shared memory, not a copy
    assert all(t.data[0, 0] == 42 for t in top)
    for k, t in enumerate(top):
        t.diff[...] = k + 1
    layer.backward(top, [True], bottom)
    np.testing.assert_array_equal(bottom[0].diff, 6)


def test_split_in_place_rejected():
    layer = layer_from_text('type: "Split"')
    b = _blob([1.0])
    with pytest.raises(CaffeUnstableError, match="Split Layer does not allow in-place computation."):
        layer.setup([b], [b])


# -- Concat -----------------------------------------------------------------------------------------------
def test_concat_axes_and_backward():
    a, b = np.arange(6.0).reshape(2, 3), np.arange(4.0).reshape(2, 2) + 100
    for text, axis in (('concat_param { axis: -1 }', 1), ('concat_param { concat_dim: 1 }', 1), ('', 1)):
        layer, bottom, top = _run(f'type: "Concat" {text}', [a, b])
        np.testing.assert_array_equal(top[0].data, np.concatenate([a, b], axis=axis))
    top[0].diff[...] = np.arange(10.0).reshape(2, 5)
    layer.backward(top, [True, True], bottom)
    np.testing.assert_array_equal(bottom[0].diff, [[0, 1, 2], [5, 6, 7]])
    np.testing.assert_array_equal(bottom[1].diff, [[3, 4], [8, 9]])
    _, _, top = _run('type: "Concat" concat_param { axis: 0 }', [a, a])
    assert top[0].shape == (4, 3)


def test_concat_single_bottom_shares():
    _, bottom, top = _run('type: "Concat"', [np.ones((2, 3))])
    top[0].diff[...] = 7
    np.testing.assert_array_equal(bottom[0].diff, 7)
    bottom[0].data[...] = 3
    np.testing.assert_array_equal(top[0].data, 3)


def test_concat_gradient():
    check_gradient(lambda: layer_from_text('type: "Concat" concat_param { axis: 2 }'), [(2, 2, 3), (2, 2, 1)])


def test_concat_errors():
    with pytest.raises(CaffeUnstableError, match="Either axis or concat_dim should be specified; not both."):
        _setup('type: "Concat" concat_param { axis: 1 concat_dim: 1 }', [np.ones((2, 2))])
    with pytest.raises(CaffeUnstableError, match="All inputs must have the same shape, except at concat_axis."):
        _setup('type: "Concat"', [np.ones((2, 2)), np.ones((3, 2))])
    with pytest.raises(CaffeUnstableError, match="All inputs must have the same #axes."):
        _setup('type: "Concat"', [np.ones((2, 2)), np.ones((2, 2, 1))])
    with pytest.raises(CaffeUnstableError, match="concat_dim out of range."):
        _setup('type: "Concat" concat_param { concat_dim: 2 }', [np.ones((2, 2))])


# -- Slice ------------------------------------------------------------------------------------------------
def test_slice_points_and_backward():
    x = np.arange(12.0).reshape(2, 6)
    layer, bottom, top = _run('type: "Slice" slice_param { axis: -1 slice_point: 1 slice_point: 4 }', [x], 3)
    assert [t.shape for t in top] == [(2, 1), (2, 3), (2, 2)]
    np.testing.assert_array_equal(top[1].data, x[:, 1:4])
    for k, t in enumerate(top):
        t.diff[...] = k
    layer.backward(top, [True], bottom)
    np.testing.assert_array_equal(bottom[0].diff, np.broadcast_to([0, 1, 1, 1, 2, 2], (2, 6)))


def test_slice_equal_parts_and_slice_dim():
    x = np.arange(12.0).reshape(4, 3)
    _, _, top = _run('type: "Slice" slice_param { slice_dim: 0 }', [x], 2)
    np.testing.assert_array_equal(top[1].data, x[2:])


def test_slice_gradient():
    check_gradient(lambda: layer_from_text('type: "Slice" slice_param { axis: 1 slice_point: 2 }'), [(2, 5, 2)],
                   num_tops=2)


def test_slice_errors():
    with pytest.raises(CaffeUnstableError,
                       match=r"Number of top blobs \(4\) should evenly divide input slice axis \(6\)"):
        _setup('type: "Slice"', [np.ones((1, 6))], 4)
    with pytest.raises(CaffeUnstableError, match="Either axis or slice_dim should be specified; not both."):
        _setup('type: "Slice" slice_param { axis: 1 slice_dim: 1 }', [np.ones((1, 6))], 2)
    with pytest.raises(CaffeUnstableError, match=r"slice_point_.size\(\) == top.size\(\) - 1 \(1 vs. 2\)"):
        _setup('type: "Slice" slice_param { slice_point: 2 }', [np.ones((1, 6))], 3)
    with pytest.raises(CaffeUnstableError, match=r"slice axis: 1, bottom\[0\] shape: 1 2 \(2\)"):
        _setup('type: "Slice" slice_param { slice_point: 1 slice_point: 2 }', [np.ones((1, 2))], 3)
    with pytest.raises(CaffeUnstableError, match=r"slice_point_\[i\] > prev \(2 vs. 3\)"):
        _setup('type: "Slice" slice_param { slice_point: 3 slice_point: 2 }', [np.ones((1, 6))], 3)


# -- Flatten and Reshape ----------------------------------------------------------------------------------
def test_flatten_axes_and_sharing():
    x = np.arange(120.0).reshape(2, 3, 4, 5)
    assert _run('type: "Flatten"', [x])[2][0].shape == (2, 60)
    assert _run('type: "Flatten" flatten_param { axis: 1 end_axis: 2 }', [x])[2][0].shape == (2, 12, 5)
    assert _run('type: "Flatten" flatten_param { axis: 0 end_axis: -3 }', [x])[2][0].shape == (6, 4, 5)
    layer, bottom, top = _run('type: "Flatten" flatten_param { axis: 2 }', [x])
    np.testing.assert_array_equal(top[0].data, x.reshape(2, 3, 20))
    top[0].diff[...] = np.arange(120.0).reshape(2, 3, 20)
    layer.backward(top, [True], bottom)
    np.testing.assert_array_equal(bottom[0].diff, x)


def test_flatten_in_place_rejected():
    b = _blob(np.ones((2, 3)))
    with pytest.raises(CaffeUnstableError, match="Flatten Layer does not allow in-place computation."):
        layer_from_text('type: "Flatten"').setup([b], [b])


@pytest.mark.parametrize("param,expected", [
    ("shape { dim: 0 dim: -1 dim: 10 }", (2, 6, 10)),
    ("shape { dim: 0 dim: 1 dim: 0 dim: -1 }", (2, 1, 4, 15)),  # a 0 copies the bottom dim at its own index
    ("axis: 1 num_axes: 2 shape { dim: 12 }", (2, 12, 5)),
    ("axis: -1 shape { dim: 1 }", (2, 3, 4, 5, 1)),  # axis -1: append after the last axis
    ("axis: 0 num_axes: 0 shape { dim: 1 }", (1, 2, 3, 4, 5)),
    ("shape { dim: -1 }", (120,)),
    ("axis: 2 shape { dim: -1 dim: 2 }", (2, 3, 10, 2)),
])
def test_reshape_shapes(param, expected):
    x = np.arange(120.0).reshape(2, 3, 4, 5)
    layer, bottom, top = _run(f'type: "Reshape" reshape_param {{ {param} }}', [x])
    assert top[0].shape == expected
    np.testing.assert_array_equal(top[0].data.ravel(), x.ravel())
    top[0].diff[...] = 1
    np.testing.assert_array_equal(bottom[0].diff, 1)  # diff is shared


def test_reshape_follows_bottom_reshape():
    layer, bottom, top = _run('type: "Reshape" reshape_param { shape { dim: 0 dim: -1 } }', [np.ones((2, 3, 2))])
    bottom[0].reshape((4, 3, 2))
    bottom[0].data[...] = 5
    layer.reshape(bottom, top)
    assert top[0].shape == (4, 6)
    np.testing.assert_array_equal(top[0].data, 5)


@pytest.mark.parametrize("param,message", [
    ("shape { dim: -1 dim: -1 }",
     "new shape contains multiple -1 dims; at most a single \\(1\\) value of -1 may be specified"),
    ("shape { dim: 7 }", "output count must match input count"),
    ("shape { dim: 7 dim: -1 }",
     "bottom count \\(6\\) must be divisible by the product of the specified dimensions \\(7\\)"),
    ("axis: 3 shape { dim: 1 }", "axis 3 out of range for 2-D input blob"),
    ("axis: -4 shape { dim: 1 }", "axis -4 out of range"),
    ("axis: 1 num_axes: 2 shape { dim: 1 }", "end_axis = axis \\+ num_axes is out of range"),
    ("axis: 1 shape { dim: 0 dim: 0 }", "new shape contains a 0, but there was no corresponding bottom axis to copy"),
])
def test_reshape_errors(param, message):
    with pytest.raises(CaffeUnstableError, match=message):
        _setup(f'type: "Reshape" reshape_param {{ {param} }}', [np.ones((2, 3))])


# -- Crop, Tile -------------------------------------------------------------------------------------------
def test_crop_offsets_and_backward():
    x = np.arange(2 * 3 * 5 * 6, dtype=np.float32).reshape(2, 3, 5, 6)
    ref = np.zeros((1, 1, 3, 2))
    layer, bottom, top = _run('type: "Crop" crop_param { offset: 1 offset: 3 }', [x, ref])
    np.testing.assert_array_equal(top[0].data, x[:, :, 1:4, 3:5])
    _, _, top2 = _run('type: "Crop" crop_param { axis: 1 offset: 1 }', [x, ref])
    np.testing.assert_array_equal(top2[0].data, x[:, 1:2, 1:4, 1:3])
    top[0].diff[...] = 1
    bottom[1].diff[...] = 9
    layer.backward(top, [True, False], bottom)
    expected = np.zeros_like(x)
    expected[:, :, 1:4, 3:5] = 1
    np.testing.assert_array_equal(bottom[0].diff, expected)
    np.testing.assert_array_equal(bottom[1].diff, 9)


def test_crop_gradient():
    check_gradient(lambda: layer_from_text('type: "Crop" crop_param { offset: 1 }'), [(2, 2, 4, 4), (1, 1, 2, 3)],
                   check_bottoms=[0])


def test_crop_errors():
    with pytest.raises(CaffeUnstableError, match="the crop for dimension 3 is out-of-bounds with size 3 and offset 2"):
        _setup('type: "Crop" crop_param { offset: 0 offset: 2 }', [np.ones((1, 1, 4, 4)), np.ones((1, 1, 2, 3))])
    with pytest.raises(CaffeUnstableError, match="number of offset values specified must be equal to the number of "
                                                 "dimensions following axis."):
        _setup('type: "Crop" crop_param { offset: 0 offset: 0 offset: 0 }', [np.ones((1, 1, 4, 4))] * 2)


def test_tile_forward_backward():
    x = np.arange(12.0).reshape(2, 3, 2)
    layer, bottom, top = _run('type: "Tile" tile_param { axis: 1 tiles: 3 }', [x])
    np.testing.assert_array_equal(top[0].data, np.tile(x, (1, 3, 1)))
    top[0].diff[...] = np.arange(36.0).reshape(2, 9, 2)
    layer.backward(top, [True], bottom)
    np.testing.assert_array_equal(bottom[0].diff, top[0].diff.reshape(2, 3, 3, 2).sum(axis=1))


def test_tile_gradient():
    check_gradient(lambda: layer_from_text('type: "Tile" tile_param { axis: -1 tiles: 2 }'), [(2, 3, 2)])


def test_tile_errors():
    with pytest.raises(CaffeUnstableError, match="Number of tiles must be specified"):
        _setup('type: "Tile"', [np.ones((2, 2))])
    with pytest.raises(CaffeUnstableError, match="Number of tiles must be positive."):
        _setup('type: "Tile" tile_param { tiles: 0 }', [np.ones((2, 2))])


# -- Silence, Parameter, BatchReindex ---------------------------------------------------------------------
def test_silence_zeroes_diffs():
    layer, bottom, top = _run('type: "Silence"', [np.ones(2), np.ones(3)], num_tops=0)
    for b in bottom:
        b.diff[...] = 5
    layer.backward(top, [True, False], bottom)
    np.testing.assert_array_equal(bottom[0].diff, 0)
    np.testing.assert_array_equal(bottom[1].diff, 5)


def test_parameter_layer_exposes_its_blob():
    layer, _, top = _run('type: "Parameter" parameter_param { shape { dim: 2 dim: 3 } }', [])
    assert layer.blobs[0].shape == (2, 3) and top[0].shape == (2, 3)
    np.testing.assert_array_equal(top[0].data, 0)
    layer.blobs[0].data[...] = 4
    np.testing.assert_array_equal(top[0].data, 4)
    top[0].diff[...] = 2  # a consumer's backward writes the param diff through the shared top
    np.testing.assert_array_equal(layer.blobs[0].diff, 2)


def test_batch_reindex():
    x = np.arange(8.0).reshape(4, 2)
    index = np.array([3, 0, 3])
    layer, bottom, top = _run('type: "BatchReindex"', [x, index])
    np.testing.assert_array_equal(top[0].data, x[[3, 0, 3]])
    top[0].diff[...] = [[1, 2], [3, 4], [5, 6]]
    layer.backward(top, [True, False], bottom)
    np.testing.assert_array_equal(bottom[0].diff, [[3, 4], [0, 0], [0, 0], [6, 8]])
    with pytest.raises(CaffeUnstableError, match="Cannot backprop to index."):
        layer.backward(top, [True, True], bottom)


def test_batch_reindex_gradient():
    check_gradient(lambda: layer_from_text('type: "BatchReindex"'), [(3, 2, 2), (4,)],
                   bottom_data=[None, np.array([2, 0, 2, 1])], check_bottoms=[0])


@pytest.mark.parametrize("index,message", [([0, -1], "Index specified for reindex layer was negative."),
                                           ([0, 4], "Index specified for reindex layer was greater than batch size.")])
def test_batch_reindex_errors(index, message):
    with pytest.raises(CaffeUnstableError, match=message):
        _run('type: "BatchReindex"', [np.ones((4, 2)), np.array(index)])
