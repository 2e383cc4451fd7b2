"""Caffe's layers/reduction_layer.cpp: SUM, ASUM, SUMSQ or MEAN over all axes from `axis` on (caffe.md §3.7)."""
import numpy as np

from .base import Layer, register

SUM, ASUM, SUMSQ, MEAN = 1, 2, 3, 4  # ReductionParameter.ReductionOp


def reduction_forward(x2, op, coeff):
    """x2: (num, dim) -> y (num,) = coeff * reduce(x); for MEAN `coeff` already holds coeff / dim."""
    if op in (SUM, MEAN):
        y = x2.sum(axis=1, dtype=np.float64)
    elif op == ASUM:
        y = np.abs(x2).sum(axis=1, dtype=np.float64)
    else:
        y = np.square(x2, dtype=np.float64).sum(axis=1)
    y = y.astype(np.float32)
    # reduction_layer.cpp:63-67: the sum is scaled (in float) only when coeff != 1
    return y * np.float32(coeff) if coeff != 1 else y


def reduction_backward(x2, dy, op, coeff):
    """x2: (num, dim); dy: (num,) -> dx: SUM/MEAN coeff*dy, ASUM coeff*dy*sign(x), SUMSQ 2*coeff*dy*x."""
    g = (dy * np.float32(coeff)).astype(np.float32)[:, None]
    if op in (SUM, MEAN):
        return np.broadcast_to(g, x2.shape)
    if op == ASUM:
        return np.sign(x2) * g
    return x2 * (np.float32(2) * g)


@register
class Reduction(Layer):
    """y[n] = coeff * reduce(x[n, ...]) over axes [axis, end) (axis = 0: a scalar top).

    operation SUM (default) sum x, ASUM sum |x|, SUMSQ sum x^2, MEAN sum x / dim; coeff = 1.
    """

    type = "Reduction"
    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def layer_setup(self, bottom, top):
        self.op = self.param.reduction_param.operation

    def reshape(self, bottom, top):
        p = self.param.reduction_param
        x_shape = bottom[0].shape
        self.axis = self.canonical_axis(p.axis, len(x_shape))
        top[0].reshape(x_shape[:self.axis])
        self.num = bottom[0].count_range(0, self.axis)
        self.dim = bottom[0].count_range(self.axis)
        coeff = np.float32(p.coeff)
        self.coeff = coeff / np.float32(self.dim) if self.op == MEAN else coeff

    def forward(self, bottom, top):
        x2 = bottom[0].data.reshape(self.num, self.dim)
        top[0].data[...] = reduction_forward(x2, self.op, self.coeff).reshape(top[0].shape)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        x2 = bottom[0].data.reshape(self.num, self.dim)
        dx = reduction_backward(x2, top[0].diff.reshape(self.num), self.op, self.coeff)
        bottom[0].diff[...] = dx.reshape(bottom[0].shape)
