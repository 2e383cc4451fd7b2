"""Accuracy and ArgMax (caffe_unstable/ops/accuracy.py): golden Caffe data (exactly) and known answers."""
import numpy as np
import pytest

from caffe_unstable.errors import CaffeUnstableError
from caffe_unstable.net.blob import Blob
from tests.ops.gradcheck import layer_from_text
from tests.ops.test_neuron import assert_golden


def forward(text, *arrays, num_tops=1):
    layer = layer_from_text(text)
    bottom = []
    for a in arrays:
        b = Blob(np.shape(a))
        b.data[...] = a
        bottom.append(b)
    top = [Blob() for _ in range(num_tops)]
    layer.setup(bottom, top)
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    return layer, top, bottom


def error_of(text, *arrays, num_tops=1):
    with pytest.raises(CaffeUnstableError) as info:
        forward(text, *arrays, num_tops=num_tops)
    return info.value.what


def test_golden_accuracy_top5_exact(shared):
    assert_golden(shared, "accuracy_top5", exact=True)


# -- Accuracy ----------------------------------------------------------------------------------------------------

SCORES = np.array([[0.1, 0.9, 0.0],    # label 1: top-1 right
                   [0.5, 0.5, 0.0],    # label 0: tied with class 1 -> wrong for top-1, right for top-2
                   [0.2, 0.3, 0.5],    # label 0: rank 3
                   [0.4, 0.4, 0.4]],   # label 2: all equal -> wrong for top-1 and top-2, right for top-3
                  np.float32)
LABELS = np.array([1, 0, 0, 2], np.float32)


@pytest.mark.parametrize("top_k, expected", [(1, 0.25), (2, 0.5), (3, 1.0)])
def test_ties_count_against_the_prediction(top_k, expected):
    _, top, _ = forward(f'type: "Accuracy" accuracy_param {{ top_k: {top_k} }}', SCORES, LABELS)
    assert top[0].shape == () and top[0].data == np.float32(expected)


def test_per_class_accuracy_and_ignore_label():
    _, top, _ = forward('type: "Accuracy" accuracy_param { ignore_label: 2 top_k: 2 }', SCORES, LABELS, num_tops=2)
    assert top[0].data == np.float32(2 / 3)
    np.testing.assert_array_equal(top[1].data, [0.5, 1.0, 0.0])  # class 2 ignored: absent -> 0
    _, top, _ = forward('type: "Accuracy" accuracy_param { ignore_label: 7 }', SCORES[:1], np.array([7], np.float32))
    assert top[0].data == 0  # nothing counted


def test_spatial_accuracy_over_axis_1_and_negative_axis():
    scores = np.random.default_rng(0).normal(size=(2, 4, 3, 5)).astype(np.float32)
    labels = np.random.default_rng(1).integers(0, 4, size=(2, 1, 3, 5)).astype(np.float32)
    _, top, _ = forward('type: "Accuracy"', scores, labels)
    expected = np.mean(scores.argmax(axis=1) == labels[:, 0])
    assert top[0].data == np.float32(expected)
    moved = np.moveaxis(scores, 1, -1).copy()
    _, top, _ = forward('type: "Accuracy" accuracy_param { axis: -1 }', moved, labels.reshape(2, 3, 5))
    assert top[0].data == np.float32(expected)


def test_accuracy_errors():
    assert error_of('type: "Accuracy" accuracy_param { top_k: 4 }', SCORES, LABELS) == \
        "top_k must be less than or equal to the number of classes."
    assert error_of('type: "Accuracy"', SCORES, LABELS[:2]).startswith(
        "Number of labels must match number of predictions;")
    assert error_of('type: "Accuracy"', SCORES, np.array([1, 0, 3, 2], np.float32)) == \
        "label value 3 out of range [0, 3)"
    layer, top, bottom = forward('type: "Accuracy"', SCORES, LABELS)
    with pytest.raises(CaffeUnstableError, match=r"Accuracy Layer cannot backpropagate \(Not Implemented Yet\)"):
        layer.backward(top, [True, False], bottom)


# -- ArgMax ------------------------------------------------------------------------------------------------------

X = np.array([[3.0, 1.0, 3.0, 2.0, 3.0],
              [0.0, 5.0, 4.0, 5.0, -1.0]], np.float32)


def test_argmax_no_axis_ties_go_to_the_larger_index():
    _, top, _ = forward('type: "ArgMax" argmax_param { top_k: 3 }', X)
    assert top[0].shape == (2, 1, 3)
    np.testing.assert_array_equal(top[0].data[:, 0], [[4, 2, 0], [3, 1, 2]])


def test_argmax_out_max_val_without_axis_holds_indices_then_values():
    _, top, _ = forward('type: "ArgMax" argmax_param { top_k: 2 out_max_val: true }', X)
    assert top[0].shape == (2, 2, 2)
    np.testing.assert_array_equal(top[0].data, [[[4, 2], [3, 3]], [[3, 1], [5, 5]]])


def test_argmax_no_axis_flattens_each_item_and_keeps_the_number_of_axes():
    x = np.random.default_rng(2).permutation(2 * 3 * 2 * 2).astype(np.float32).reshape(2, 3, 2, 2)
    _, top, _ = forward('type: "ArgMax"', x)
    assert top[0].shape == (2, 1, 1, 1)
    np.testing.assert_array_equal(top[0].data.ravel(), x.reshape(2, -1).argmax(axis=1))


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_argmax_along_an_axis(axis):
    x = np.random.default_rng(3).permutation(2 * 3 * 4).astype(np.float32).reshape(2, 3, 4)
    _, top, _ = forward(f'type: "ArgMax" argmax_param {{ axis: {axis} top_k: 2 }}', x)
    order = np.flip(np.argsort(x, axis=axis), axis=axis)
    expected = np.take(order, [0, 1], axis=axis)
    np.testing.assert_array_equal(top[0].data, expected)
    _, top, _ = forward(f'type: "ArgMax" argmax_param {{ axis: {axis} top_k: 2 out_max_val: true }}', x)
    np.testing.assert_array_equal(top[0].data, np.take_along_axis(x, expected, axis=axis))


def test_argmax_along_axis_with_ties():
    _, top, _ = forward('type: "ArgMax" argmax_param { axis: 1 }', X)
    np.testing.assert_array_equal(top[0].data, [[4], [3]])


def test_argmax_errors():
    assert error_of('type: "ArgMax" argmax_param { top_k: 6 }', X) == (
        "top_k must be less than or equal to the dimension of the flattened bottom blob per instance.")
    assert error_of('type: "ArgMax" argmax_param { axis: 0 top_k: 3 }', X) == \
        "top_k must be less than or equal to the dimension of the axis."
    assert error_of('type: "ArgMax" argmax_param { top_k: 0 }', X) == "top k must not be less than 1."
