"""Caffe's loss layers: loss_layer.cpp, softmax_loss_layer.cpp, euclidean_loss_layer.cpp,
sigmoid_cross_entropy_loss_layer.cpp, infogain_loss_layer.cpp, multinomial_logistic_loss_layer.cpp,
hinge_loss_layer.cpp, contrastive_loss_layer.cpp (caffe.md §3.8).

Loss tops are 0-axis blobs holding the unweighted loss; in backward the loss weight is top[0].diff, where Caffe
stores it. Labels are float blobs holding integers, cast by truncation (static_cast<int>).
"""
import numpy as np

from ..proto import caffe_pb2
from .base import Layer, blob_from_proto, register
from .softmax import softmax_forward

F32 = np.float32
FLT_MIN = F32(np.finfo(np.float32).tiny)  # SoftmaxWithLoss clamps p at FLT_MIN: a hopeless sample adds 87.3365
LOG_THRESHOLD = F32(1e-20)  # kLOG_THRESHOLD of loss_layer.hpp (InfogainLoss, MultinomialLogisticLoss)
LossParameter = caffe_pb2.LossParameter


def normalizer(mode, outer_num, inner_num, valid_count):
    """The divisor of the summed loss, never below 1 (softmax_loss_layer.cpp get_normalizer)."""
    value = {LossParameter.FULL: outer_num * inner_num, LossParameter.VALID: valid_count,
             LossParameter.BATCH_SIZE: outer_num, LossParameter.NONE: 1}[mode]
    return max(F32(1), F32(value))


def labels_at(layer, label_blob, shape, num_classes, ignore_label):
    """Integer labels (truncated) of `shape` and the mask of non-ignored positions; ignored ones read as 0."""
    labels = label_blob.data.reshape(shape).astype(np.int64)
    valid = np.ones(shape, bool) if ignore_label is None else labels != ignore_label
    bad = valid & ((labels < 0) | (labels >= num_classes))
    if bad.any():
        raise layer.error(f"label value {labels[bad][0]} out of range [0, {num_classes}) "
                          "(labels must be integers in {0, ..., C-1}, or loss_param.ignore_label)")
    return np.where(valid, labels, 0), valid


def softmax_loss_forward(prob, labels, valid):
    """prob (outer, C, inner), labels/valid (outer, inner) -> -sum over valid of log(max(p[label], FLT_MIN))."""
    picked = np.take_along_axis(prob, labels[:, None, :], axis=1)[:, 0, :]
    return -np.sum(np.log(np.maximum(picked, FLT_MIN))[valid], dtype=np.float64)


def softmax_loss_backward(prob, labels, valid, scale):
    """dx = scale * (p - onehot(label)), 0 at ignored positions; shapes as softmax_loss_forward."""
    dx = prob.copy()
    outer, inner = np.nonzero(valid)
    dx[outer, labels[outer, inner], inner] -= F32(1)
    dx *= valid[:, None, :]
    dx *= scale
    return dx


class LossLayer(Layer):
    """Caffe's LossLayer: bottoms (prediction, label) with equal first dimension; one scalar top, created
    automatically when the prototxt names none; loss_weight 1 by default (the Net applies it)."""

    exact_num_bottom_blobs = 2
    exact_num_top_blobs = 1
    auto_top_blobs = True
    is_loss = True

    def reshape(self, bottom, top):
        if bottom[0].num_axes == 0 or bottom[1].num_axes == 0 or bottom[0].shape[0] != bottom[1].shape[0]:
            raise self.error("The data and label should have the same first dimension.")
        top[0].reshape(())

    def no_label_backprop(self, propagate_down, index=1):
        if len(propagate_down) > index and propagate_down[index]:
            raise self.error(f"{self.type} Layer cannot backpropagate to label inputs.")

    @staticmethod
    def loss_weight(top):
        return F32(top[0].diff.reshape(-1)[0])

    def ignore_label(self):
        lp = self.param.loss_param
        return lp.ignore_label if lp.HasField("ignore_label") else None

    def normalization(self, default=LossParameter.VALID):
        """loss_param.normalization; the legacy `normalize` applies only when it is unset (true VALID, false
        BATCH_SIZE); else `default`."""
        lp = self.param.loss_param
        if lp.HasField("normalization"):
            return lp.normalization
        if lp.HasField("normalize"):
            return LossParameter.VALID if lp.normalize else LossParameter.BATCH_SIZE
        return default


class _SoftmaxClassLoss(LossLayer):
    """Shared shape logic of SoftmaxWithLoss and InfogainLoss: softmax over `axis`, one label per other position,
    optional second top = the probabilities."""

    exact_num_top_blobs = -1
    min_top_blobs = 1
    max_top_blobs = 2

    def softmax_axis(self):
        return self.param.softmax_param.axis

    def layer_setup(self, bottom, top):
        # Caffe builds an inner Softmax layer here through the layer factory, which logs a second
        # "Creating layer <name>" (golden/solvers/logs/*.log); the math needs no inner layer.
        self.log.info(f"Creating layer {self.name}", "layer_factory.hpp:77")

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        shape = bottom[0].shape
        self.axis = self.canonical_axis(self.softmax_axis(), len(shape))
        self.outer_num = int(np.prod(shape[:self.axis], dtype=np.int64))
        self.inner_num = int(np.prod(shape[self.axis + 1:], dtype=np.int64))
        self.num_classes = shape[self.axis]
        if self.outer_num * self.inner_num != bottom[1].count:
            raise self.error(
                "Number of labels must match number of predictions; e.g., if softmax axis == 1 and prediction "
                "shape is (N, C, H, W), label count (number of labels) must be N*H*W, with integer values in "
                f"{{0, 1, ..., C-1}}. (got {bottom[1].count} labels for prediction shape {shape}, axis {self.axis})")
        if len(top) >= 2:
            top[1].reshape(shape)

    def forward_prob(self, bottom, top):
        """Softmax probabilities as (outer, C, inner), the labels and the valid mask; fills top[1] if present."""
        self.prob = softmax_forward(bottom[0].data, self.axis).reshape(self.outer_num, self.num_classes, -1)
        if len(top) == 2:
            top[1].data[...] = self.prob.reshape(top[1].shape)
        self.labels, self.valid = labels_at(self, bottom[1], (self.outer_num, self.inner_num), self.num_classes,
                                            self.ignore_label())


@register
class SoftmaxWithLoss(_SoftmaxClassLoss):
    """loss = -sum_valid log(max(p[label], FLT_MIN)) / normalizer, softmax over softmax_param.axis (= 1).
    loss_param: ignore_label, normalization (= VALID; legacy normalize). dx = lw (p - onehot) / normalizer."""

    type = "SoftmaxWithLoss"

    def forward(self, bottom, top):
        self.forward_prob(bottom, top)
        loss = F32(softmax_loss_forward(self.prob, self.labels, self.valid))
        norm = normalizer(self.normalization(), self.outer_num, self.inner_num, int(self.valid.sum()))
        top[0].data[...] = loss / norm

    def backward(self, top, propagate_down, bottom):
        self.no_label_backprop(propagate_down)
        if propagate_down[0]:
            norm = normalizer(self.normalization(), self.outer_num, self.inner_num, int(self.valid.sum()))
            dx = softmax_loss_backward(self.prob, self.labels, self.valid, self.loss_weight(top) / norm)
            bottom[0].diff[...] = dx.reshape(bottom[0].shape)


@register
class InfogainLoss(_SoftmaxClassLoss):
    """Softmax (over infogain_loss_param.axis = 1) of raw scores, then
    loss = -sum_valid sum_l H[label, l] log(max(p_l, 1e-20)) / normalizer, with the K x K matrix H read from
    infogain_loss_param.source (a BlobProto file) or given as a third bottom."""

    type = "InfogainLoss"
    exact_num_bottom_blobs = -1
    min_bottom_blobs = 2
    max_bottom_blobs = 3

    def softmax_axis(self):
        return self.param.infogain_loss_param.axis

    def layer_setup(self, bottom, top):
        super().layer_setup(bottom, top)
        if self.param.loss_param.HasField("normalize"):
            raise self.error('normalize is deprecated. use "normalization"')
        self.infogain = None
        if len(bottom) < 3:
            source = self.param.infogain_loss_param.source
            if not self.param.infogain_loss_param.HasField("source"):
                raise self.error("Infogain matrix source must be specified.")
            proto = caffe_pb2.BlobProto()
            try:
                with open(source, "rb") as f:
                    proto.ParseFromString(f.read())
            except OSError:
                raise self.error(f"File not found: {source}") from None
            self.infogain = blob_from_proto(proto).data

    def matrix(self, bottom):
        h = self.infogain if len(bottom) < 3 else bottom[2].data
        k = self.num_classes
        if h.size != k * k:
            raise self.error(f"H must be {k}x{k} (got {h.size} values)")
        return h.reshape(k, k)

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        self.matrix(bottom)

    def forward(self, bottom, top):
        self.forward_prob(bottom, top)
        h_rows = self.matrix(bottom)[self.labels]                          # (outer, inner, K)
        log_p = np.log(np.maximum(self.prob, LOG_THRESHOLD))              # (outer, K, inner)
        per_position = np.einsum("oik,oki->oi", h_rows, log_p)
        loss = F32(-np.sum(per_position[self.valid], dtype=np.float64))
        norm = normalizer(self.normalization(), self.outer_num, self.inner_num, int(self.valid.sum()))
        top[0].data[...] = loss / norm

    def backward(self, top, propagate_down, bottom):
        self.no_label_backprop(propagate_down)
        if len(propagate_down) > 2 and propagate_down[2]:
            raise self.error(f"{self.type} Layer cannot backpropagate to infogain inputs.")
        if propagate_down[0]:
            h = self.matrix(bottom)
            row_sums = h.sum(axis=1)[self.labels]                          # (outer, inner)
            dx = self.prob * row_sums[:, None, :] - h[self.labels].transpose(0, 2, 1)
            dx *= self.valid[:, None, :]
            norm = normalizer(self.normalization(), self.outer_num, self.inner_num, int(self.valid.sum()))
            dx *= self.loss_weight(top) / norm
            bottom[0].diff[...] = dx.reshape(bottom[0].shape)


@register
class EuclideanLoss(LossLayer):
    """loss = sum((a - b)^2) / (2 N), N = shape[0]; da = lw (a - b) / N, db = -da. Both bottoms may get a diff."""

    type = "EuclideanLoss"

    def allow_force_backward(self, bottom_index):
        return True

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        if bottom[0].count_range(1) != bottom[1].count_range(1):
            raise self.error("Inputs must have the same dimension.")

    def forward(self, bottom, top):
        self.diff = bottom[0].data - bottom[1].data.reshape(bottom[0].shape)
        d = self.diff.reshape(-1)
        top[0].data[...] = F32(np.dot(d, d)) / F32(bottom[0].shape[0]) / F32(2)

    def backward(self, top, propagate_down, bottom):
        for i, sign in ((0, 1), (1, -1)):
            if propagate_down[i]:
                alpha = F32(sign) * self.loss_weight(top) / F32(bottom[i].shape[0])
                bottom[i].diff[...] = (alpha * self.diff).reshape(bottom[i].shape)


@register
class SigmoidCrossEntropyLoss(LossLayer):
    """loss = -sum_valid [x (t - [x >= 0]) - log(1 + exp(x - 2 x [x >= 0]))] / normalizer; the default
    normalization is BATCH_SIZE (N = shape[0]) unless loss_param gives normalization or normalize;
    dx = lw (sigmoid(x) - t) / normalizer, 0 where the truncated target is ignore_label."""

    type = "SigmoidCrossEntropyLoss"

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        if bottom[0].count != bottom[1].count:
            raise self.error("SIGMOID_CROSS_ENTROPY_LOSS layer inputs must have the same count.")

    def forward(self, bottom, top):
        x = bottom[0].data
        t = bottom[1].data.reshape(x.shape)
        ignore = self.ignore_label()
        self.valid = None if ignore is None else t.astype(np.int64) != ignore
        pos = (x >= 0).astype(F32)
        terms = x * (t - pos) - np.log1p(np.exp(x - F32(2) * x * pos))
        valid_count = terms.size if self.valid is None else int(self.valid.sum())
        loss = -np.sum(terms if self.valid is None else terms[self.valid], dtype=np.float64)
        n = x.shape[0]
        self.norm = normalizer(self.normalization(LossParameter.BATCH_SIZE), n, x.size // max(n, 1), valid_count)
        self.sigmoid = F32(0.5) * np.tanh(F32(0.5) * x) + F32(0.5)  # Caffe's inner Sigmoid layer
        top[0].data[...] = F32(loss) / self.norm

    def backward(self, top, propagate_down, bottom):
        self.no_label_backprop(propagate_down)
        if propagate_down[0]:
            dx = self.sigmoid - bottom[1].data.reshape(self.sigmoid.shape)
            if self.valid is not None:
                dx *= self.valid
            dx *= self.loss_weight(top) / self.norm
            bottom[0].diff[...] = dx


def _legacy_dims(blob):
    """(num, channels, height, width) as Caffe's LegacyShape reads them: missing trailing axes count as 1."""
    return tuple(blob.shape) + (1,) * (4 - blob.num_axes)


@register
class MultinomialLogisticLoss(LossLayer):
    """Input probabilities (N, K...), labels (N); loss = -(1/N) sum_n log(max(p[n, label_n], 1e-20));
    dx[n, label_n] = -lw / (N max(p, 1e-20)), 0 elsewhere."""

    type = "MultinomialLogisticLoss"

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        if _legacy_dims(bottom[1])[1:] != (1, 1, 1):
            raise self.error(f"the label blob must be (N, 1, 1, 1) or (N,), got shape {bottom[1].shape}")

    def _picked(self, bottom):
        num = bottom[0].shape[0]
        p = bottom[0].data.reshape(num, -1)
        labels, _ = labels_at(self, bottom[1], (num,), p.shape[1], None)
        return p, labels, np.maximum(p[np.arange(num), labels], LOG_THRESHOLD)

    def forward(self, bottom, top):
        p, _, picked = self._picked(bottom)
        top[0].data[...] = F32(-np.sum(np.log(picked), dtype=np.float64)) / F32(p.shape[0])

    def backward(self, top, propagate_down, bottom):
        self.no_label_backprop(propagate_down)
        if propagate_down[0]:
            p, labels, picked = self._picked(bottom)
            dx = np.zeros_like(p)
            dx[np.arange(p.shape[0]), labels] = (-self.loss_weight(top) / F32(p.shape[0])) / picked
            bottom[0].diff[...] = dx.reshape(bottom[0].shape)


@register
class HingeLoss(LossLayer):
    """t[n, j] = max(0, 1 + d_j x[n, j]), d = -1 at the label, +1 elsewhere; hinge_loss_param.norm L1 (= 1):
    loss = sum t / N, dx = lw d sign(t) / N; L2: loss = sum t^2 / N, dx = 2 lw d t / N."""

    type = "HingeLoss"

    def forward(self, bottom, top):
        num = bottom[0].shape[0]
        x = bottom[0].data.reshape(num, -1)
        labels, _ = labels_at(self, bottom[1], (num,), x.shape[1], None)
        self.delta = np.ones_like(x)
        self.delta[np.arange(num), labels] = -1
        self.t = np.maximum(F32(0), F32(1) + self.delta * x)
        flat = self.t.reshape(-1)
        norm = self.param.hinge_loss_param.norm
        if norm == caffe_pb2.HingeLossParameter.L1:
            loss = np.sum(np.abs(flat), dtype=np.float64)
        elif norm == caffe_pb2.HingeLossParameter.L2:
            loss = np.dot(flat, flat)
        else:
            raise self.error("Unknown Norm")
        top[0].data[...] = F32(loss) / F32(num)

    def backward(self, top, propagate_down, bottom):
        self.no_label_backprop(propagate_down)
        if propagate_down[0]:
            num = bottom[0].shape[0]
            lw = self.loss_weight(top)
            if self.param.hinge_loss_param.norm == caffe_pb2.HingeLossParameter.L1:
                dx = np.sign(self.delta * self.t) * (lw / F32(num))
            else:
                dx = (self.delta * self.t) * (lw * F32(2) / F32(num))
            bottom[0].diff[...] = dx.reshape(bottom[0].shape)


@register
class ContrastiveLoss(LossLayer):
    """Bottoms a, b (N, C, 1, 1) and similarity s (N, 1, 1, 1); d^2 = ||a - b||^2; similar pairs (int(s) != 0)
    add d^2, dissimilar add max(margin - d, 0)^2 (legacy_version: max(margin - d^2, 0)); loss = sum / (2N)
    (contrastive_loss_param: margin = 1). The similarity bottom never gets a gradient."""

    type = "ContrastiveLoss"
    exact_num_bottom_blobs = 3

    def allow_force_backward(self, bottom_index):
        return bottom_index != 2

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        a, b, s = (_legacy_dims(blob) for blob in bottom)
        if a[1] != b[1] or a[2:] != (1, 1) or b[2:] != (1, 1) or s[1:] != (1, 1, 1):
            raise self.error(f"bottoms must be (N, C, 1, 1), (N, C, 1, 1) and (N, 1, 1, 1); got "
                             f"{bottom[0].shape}, {bottom[1].shape} and {bottom[2].shape}")

    def forward(self, bottom, top):
        p = self.param.contrastive_loss_param
        num = bottom[0].shape[0]
        self.diff = (bottom[0].data - bottom[1].data.reshape(bottom[0].shape)).reshape(num, -1)
        self.dist_sq = np.einsum("nc,nc->n", self.diff, self.diff)
        self.similar = bottom[2].data.reshape(num).astype(np.int64) != 0
        margin = F32(p.margin)
        if p.legacy_version:
            dissimilar = np.maximum(margin - self.dist_sq, F32(0))
        else:
            dissimilar = np.maximum(margin - np.sqrt(self.dist_sq), F32(0)) ** 2
        loss = np.sum(np.where(self.similar, self.dist_sq, dissimilar), dtype=np.float64)
        top[0].data[...] = F32(loss) / F32(num) / F32(2)

    def backward(self, top, propagate_down, bottom):
        p = self.param.contrastive_loss_param
        margin = F32(p.margin)
        num = bottom[0].shape[0]
        if p.legacy_version:
            mdist = margin - self.dist_sq
            factor = np.where(mdist > 0, F32(-1), F32(0))
        else:
            dist = np.sqrt(self.dist_sq)
            mdist = margin - dist
            factor = np.where(mdist > 0, -mdist / (dist + F32(1e-4)), F32(0))
        factor = np.where(self.similar, F32(1), factor).astype(F32)
        for i, sign in ((0, 1), (1, -1)):
            if propagate_down[i]:
                alpha = F32(sign) * self.loss_weight(top) / F32(num)
                bottom[i].diff[...] = ((alpha * factor)[:, None] * self.diff).reshape(bottom[i].shape)
