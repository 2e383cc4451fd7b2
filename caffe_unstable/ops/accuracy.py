"""Caffe's layers/accuracy_layer.cpp and layers/argmax_layer.cpp (caffe.md §3.7, §3.8); both forward only."""
import numpy as np

from .base import Layer, register

F32 = np.float32


def accuracy_forward(scores, labels, valid, top_k):
    """scores (outer, C, inner), labels/valid (outer, inner) -> per-position correctness (outer, inner) bool.

    A position is correct iff at most top_k classes score >= the true class's score (the true class included):
    ties count AGAINST the prediction, so all-equal scores are wrong even for top-1.
    """
    true_score = np.take_along_axis(scores, labels[:, None, :], axis=1)        # (outer, 1, inner)
    at_least = np.count_nonzero(scores >= true_score, axis=1)                   # (outer, inner)
    return (at_least <= top_k) & valid


def top_k_indices(values, top_k):
    """values (num, dim) -> (num, top_k) indices, descending by (value, index) as std::partial_sort with
    std::greater<pair<value, index>>: equal values come out larger index first."""
    dim = values.shape[1]
    if top_k == 1:
        return dim - 1 - np.argmax(values[:, ::-1], axis=1)[:, None]
    order = np.argsort(-values[:, ::-1], axis=1, kind="stable")[:, :top_k]      # reversed: ties -> larger index
    return dim - 1 - order


@register
class Accuracy(Layer):
    """Top-k classification accuracy over accuracy_param.axis (= 1), top_k (= 1), skipping ignore_label.
    Optional second top: per-class accuracy (C,), 0 for classes absent from the batch."""

    type = "Accuracy"
    exact_num_bottom_blobs = 2
    min_top_blobs = 1
    max_top_blobs = 2

    def layer_setup(self, bottom, top):
        ap = self.param.accuracy_param
        self.top_k = ap.top_k
        self.ignore_label = ap.ignore_label if ap.HasField("ignore_label") else None

    def reshape(self, bottom, top):
        if bottom[1].count == 0 or self.top_k > bottom[0].count // bottom[1].count:
            raise self.error("top_k must be less than or equal to the number of classes.")
        shape = bottom[0].shape
        self.axis = self.canonical_axis(self.param.accuracy_param.axis, len(shape))
        self.outer_num = int(np.prod(shape[:self.axis], dtype=np.int64))
        self.inner_num = int(np.prod(shape[self.axis + 1:], dtype=np.int64))
        if self.outer_num * self.inner_num != bottom[1].count:
            raise self.error(
                "Number of labels must match number of predictions; e.g., if label axis == 1 and prediction "
                "shape is (N, C, H, W), label count (number of labels) must be N*H*W, with integer values in "
                f"{{0, 1, ..., C-1}}. (got {bottom[1].count} labels for prediction shape {shape}, axis {self.axis})")
        top[0].reshape(())
        if len(top) > 1:
            top[1].reshape((shape[self.axis],))

    def forward(self, bottom, top):
        num_classes = bottom[0].shape[self.axis]
        scores = bottom[0].data.reshape(self.outer_num, num_classes, self.inner_num)
        labels = bottom[1].data.reshape(self.outer_num, self.inner_num).astype(np.int64)
        valid = np.ones(labels.shape, bool) if self.ignore_label is None else labels != self.ignore_label
        bad = valid & ((labels < 0) | (labels >= num_classes))
        if bad.any():
            raise self.error(f"label value {labels[bad][0]} out of range [0, {num_classes})")
        labels = np.where(valid, labels, 0)
        correct = accuracy_forward(scores, labels, valid, self.top_k)
        count = int(valid.sum())
        # float32 division of exact integer counts, as Caffe's Dtype arithmetic
        top[0].data[...] = F32(0) if count == 0 else F32(correct.sum()) / F32(count)
        if len(top) > 1:
            seen = np.bincount(labels[valid], minlength=num_classes).astype(F32)
            hits = np.bincount(labels[correct], minlength=num_classes).astype(F32)
            top[1].data[...] = np.divide(hits, seen, out=np.zeros_like(hits), where=seen != 0)

    def backward(self, top, propagate_down, bottom):
        if any(propagate_down):
            raise self.error("Accuracy Layer cannot backpropagate (Not Implemented Yet)")


@register
class ArgMax(Layer):
    """Indices (or values, out_max_val) of the top_k (= 1) largest values. With argmax_param.axis: along that axis,
    top = bottom shape with that axis = top_k. Without: over each item's flattened count(1) values, top
    (N, 1, top_k), or (N, 2, top_k) holding indices then values with out_max_val, padded with 1s to the bottom's
    number of axes (at least 3)."""

    type = "ArgMax"
    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def layer_setup(self, bottom, top):
        ap = self.param.argmax_param
        self.top_k, self.out_max_val = ap.top_k, ap.out_max_val
        self.axis = None
        if self.top_k < 1:
            raise self.error("top k must not be less than 1.")
        if ap.HasField("axis"):
            self.axis = self.canonical_axis(ap.axis, bottom[0].num_axes)
            if self.top_k > bottom[0].shape[self.axis]:
                raise self.error("top_k must be less than or equal to the dimension of the axis.")
        elif self.top_k > bottom[0].count_range(1):
            raise self.error("top_k must be less than or equal to the dimension of the flattened bottom blob "
                             "per instance.")

    def reshape(self, bottom, top):
        if self.axis is not None:
            shape = list(bottom[0].shape)
            shape[self.axis] = self.top_k
        else:
            shape = [1] * max(bottom[0].num_axes, 3)
            shape[0] = bottom[0].shape[0]
            shape[1] = 2 if self.out_max_val else 1
            shape[2] = self.top_k
        top[0].reshape(shape)

    def forward(self, bottom, top):
        x = bottom[0].data
        if self.axis is not None:
            moved = np.moveaxis(x, self.axis, -1)                                     # (..., dim)
            values = moved.reshape(-1, moved.shape[-1])
            idx = top_k_indices(values, self.top_k)
            out = np.take_along_axis(values, idx, axis=1) if self.out_max_val else idx
            out = out.reshape(moved.shape[:-1] + (self.top_k,))
            top[0].data[...] = np.moveaxis(out, -1, self.axis)
        else:
            values = x.reshape(x.shape[0], -1)
            idx = top_k_indices(values, self.top_k)
            if self.out_max_val:
                out = np.stack([idx.astype(F32), np.take_along_axis(values, idx, axis=1)], axis=1)
            else:
                out = idx
            top[0].data[...] = out.reshape(top[0].shape)

    def backward(self, top, propagate_down, bottom):
        if any(propagate_down):
            raise self.error("ArgMax Layer cannot backpropagate (Not Implemented Yet)")
