"""Caffe's layers/eltwise_layer.cpp: element-wise SUM (with coefficients), PROD and MAX (caffe.md §3.7)."""
import numpy as np

from .base import Layer, register

PROD, SUM, MAX = 0, 1, 2  # EltwiseParameter.EltwiseOp


def eltwise_sum_forward(xs, coeffs):
    """xs: list of same-shape arrays -> y = sum_i c_i x_i, accumulated in bottom order as Caffe's axpy."""
    y = np.zeros_like(xs[0])
    for x, c in zip(xs, coeffs):
        y += np.float32(c) * x if c != 1 else x
    return y


def eltwise_prod_forward(xs):
    """xs -> y = prod_i x_i, multiplied left to right."""
    y = xs[0] * xs[1]
    for x in xs[2:]:
        y *= x
    return y


def eltwise_prod_backward(xs, y, dy, i, stable):
    """dx_i = dy * prod_{j != i} x_j (stable_prod_grad), else dy * y / x_i."""
    if stable:
        others = [x for j, x in enumerate(xs) if j != i]
        g = others[0] * (others[1] if len(others) > 1 else dy)
        for x in others[2:]:
            g *= x
        if len(others) > 1:
            g *= dy
        return g
    with np.errstate(divide="ignore", invalid="ignore"):  # x_i == 0 gives inf/nan, as in Caffe
        g = y / xs[i]
    g *= dy
    return g


def eltwise_max_forward(xs):
    """xs -> (y, mask). Caffe's rule: bottom 0 wins only if x0 > x1 (a tie goes to bottom 1); a later
    bottom k wins only if strictly greater than the running max. mask holds the winner index (int32)."""
    # Branch-free (a masked select is ~10x slower on random masks): the max value is the same whichever
    # tied bottom wins (up to the sign of zero), and the winner index is updated arithmetically.
    mask = np.greater(xs[0], xs[1]).astype(np.int32)
    mask ^= 1  # not (x0 > x1), which is also Caffe's answer when a NaN is involved
    y = np.maximum(xs[0], xs[1])
    for k, x in enumerate(xs[2:], start=2):
        step = np.subtract(k, mask)
        step *= np.greater(x, y)
        mask += step
        np.maximum(y, x, out=y)
    return y, mask


def eltwise_max_backward(mask, dy, i):
    """The whole gradient goes to the winner: dx_i = dy where mask == i, else 0."""
    return np.where(mask == i, dy, np.float32(0)).astype(np.float32, copy=False)


def _shape_string(shape):
    return " ".join(str(d) for d in shape) + f" ({int(np.prod(shape, dtype=np.int64))})"


@register
class Eltwise(Layer):
    """y = SUM (sum_i coeff_i x_i; default op), PROD (prod_i x_i) or MAX over >= 2 same-shape bottoms.

    `coeff`: none (all 1) or one per bottom, SUM only. `stable_prod_grad` (= true) computes the PROD
    gradient as the product of the other bottoms rather than y / x_i.
    """

    type = "Eltwise"
    min_bottom_blobs = 2
    exact_num_top_blobs = 1

    def layer_setup(self, bottom, top):
        p = self.param.eltwise_param
        if len(p.coeff) not in (0, len(bottom)):
            raise self.error("Eltwise Layer takes one coefficient per bottom blob.")
        if p.operation == PROD and len(p.coeff):
            raise self.error("Eltwise layer only takes coefficients for summation.")
        self.op = p.operation
        self.coeffs = list(p.coeff) if len(p.coeff) else [1.0] * len(bottom)
        self.stable_prod_grad = p.stable_prod_grad
        self.max_idx = None

    def reshape(self, bottom, top):
        for i, b in enumerate(bottom[1:], start=1):
            if b.shape != bottom[0].shape:
                raise self.error(f"bottom[0]: {_shape_string(bottom[0].shape)}, "
                                 f"bottom[{i}]: {_shape_string(b.shape)}")
        top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        xs = [b.data for b in bottom]
        if self.op == SUM:
            y = eltwise_sum_forward(xs, self.coeffs)
        elif self.op == PROD:
            y = eltwise_prod_forward(xs)
        else:
            y, self.max_idx = eltwise_max_forward(xs)
        top[0].data[...] = y

    def backward(self, top, propagate_down, bottom):
        dy = top[0].diff
        xs = [b.data for b in bottom]
        diffs = {}
        for i in range(len(bottom)):
            if not propagate_down[i]:
                continue
            if self.op == SUM:
                diffs[i] = dy * np.float32(self.coeffs[i]) if self.coeffs[i] != 1 else dy.copy()
            elif self.op == PROD:
                diffs[i] = eltwise_prod_backward(xs, top[0].data, dy, i, self.stable_prod_grad)
            else:
                diffs[i] = eltwise_max_backward(self.max_idx, dy, i)
        # write after computing all: an in-place top would otherwise lose its diff
        for i, d in diffs.items():
            bottom[i].diff[...] = d
