"""Caffe's LRN layer (layers/lrn_layer.cpp): local response normalization across or within channels.

bottom and top (N, C, H, W); n = local_size (odd), pre = (n - 1) / 2.
ACROSS_CHANNELS: scale = k + alpha/n * sum_{|c'-c| <= pre} x[c']^2 (zero outside [0, C)), y = x * scale^-beta.
WITHIN_CHANNEL:  Caffe composes Split + Power(2) + AVE Pooling(n, pad pre, stride 1) + Power(-beta, alpha, 1) +
                 Eltwise PROD, i.e. y = x * (1 + alpha * mean_{n x n}(x^2))^-beta with the mean always over n*n
                 cells (zero padding counts) and k ignored. It is computed directly here, with the analytic
                 backward of that chain.
The layer runs ACROSS_CHANNELS through the numba kernels of lrn_kernels.py; `across_forward` / `across_backward`
below are their numpy reference.
"""
import numpy as np

from . import lrn_kernels
from .base import Layer, register
from .parallel import in_parallel
from .pooling import ave_pool, ave_unpool, pool_out_dims

PIXEL_BLOCK = 1024  # pixels per kernel unit: the backward's ratio buffer (C x block) stays in L2

ACROSS_CHANNELS, WITHIN_CHANNEL = 0, 1


def channel_window_sum(a, size):
    """sum over the `size` channels centred on each channel (zero padded), a (N, C, H, W)."""
    n, c = a.shape[:2]
    pre = (size - 1) // 2
    padded = np.zeros((n, c + size - 1) + a.shape[2:], np.float32)
    padded[:, pre:pre + c] = a
    acc = padded[:, :c].copy()
    for j in range(1, size):
        acc += padded[:, j:j + c]
    return acc


def neg_power(a, beta):
    """a^-beta; the usual betas go through sqrt, several times faster than a general pow."""
    if beta == 0.75:
        r = np.sqrt(a)
        r *= np.sqrt(r)
    elif beta == 0.5:
        r = np.sqrt(a)
    elif beta == 1.0:
        r = a.copy()
    else:
        return np.power(a, np.float32(-beta))
    return np.reciprocal(r, out=r)


def across_forward(x, size, alpha, beta, k):
    """(y, scale, scale^-beta) of CrossChannelForward_cpu."""
    scale = channel_window_sum(x * x, size)
    scale *= np.float32(alpha) / np.float32(size)  # alpha_ / size_ in float, as Caffe
    scale += np.float32(k)
    scale_pow = neg_power(scale, beta)
    return x * scale_pow, scale, scale_pow


def across_backward(dy, x, y, scale, scale_pow, size, alpha, beta):
    """CrossChannelBackward_cpu: dx = dy scale^-beta - (2 alpha beta / n) x sum_window(dy y / scale)."""
    ratio = dy * y
    ratio /= scale
    accum = channel_window_sum(ratio, size)
    accum *= x
    accum *= np.float32(2.0 * alpha * beta / size)
    return np.subtract(dy * scale_pow, accum, out=accum)


def across_forward_fast(x, size, alpha, beta, k, y, scale):
    """y and scale (N, C, H, W) of CrossChannelForward_cpu by the numba kernel."""
    n, c = x.shape[:2]
    p = x.size // max(1, n * c)
    aos = np.float32(alpha) / np.float32(size)  # alpha_ / size_ in float, as Caffe
    flat = [a.reshape(-1) for a in (x, y, scale)]
    in_parallel(lambda a, b: lrn_kernels.across_forward(flat[0], c, p, size, aos, beta, k, PIXEL_BLOCK, flat[1],
                                                        flat[2], a, b), n * -(-p // PIXEL_BLOCK), x.size)


def across_backward_fast(dy, x, y, scale, size, alpha, beta, dx):
    """dx (overwritten) of CrossChannelBackward_cpu by the numba kernel."""
    n, c = x.shape[:2]
    p = x.size // max(1, n * c)
    ratio = np.float32(2.0 * alpha * beta / size)
    flat = [a.reshape(-1) for a in (dy, x, y, scale, dx)]
    in_parallel(lambda a, b: lrn_kernels.across_backward(*flat[:4], c, p, size, ratio, beta, PIXEL_BLOCK, flat[4],
                                                         a, b), n * -(-p // PIXEL_BLOCK), x.size)


def within_forward(x, size, alpha, beta):
    """(y, base, power) with base = 1 + alpha * avepool(x^2) and power = base^-beta."""
    pre = (size - 1) // 2
    kernel, stride, pad = (size, size), (1, 1), (pre, pre)
    out_hw = pool_out_dims(x.shape[2:], kernel, stride, pad)  # = (H, W): every window fits, divisor n*n
    base = np.empty(x.shape[:2] + out_hw, np.float32)
    ave_pool(x * x, kernel, stride, pad, base)
    base *= np.float32(alpha)
    base += np.float32(1.0)
    power = neg_power(base, beta)
    return x * power, base, power


def within_backward(dy, x, base, power, size, alpha, beta):
    """Backward of the Split/Power/Pooling/Power/Eltwise chain, summed over the two Split branches."""
    pre = (size - 1) // 2
    dpool = (dy * x) * np.float32(-beta * alpha) * power / base   # Power(-beta, alpha, 1): diff_scale * y / base
    dsq = np.empty(x.shape, np.float32)
    ave_unpool(dpool, (size, size), (1, 1), (pre, pre), dsq)
    return dy * power + np.float32(2.0) * x * dsq                    # Eltwise PROD branch + Power(2) branch


@register
class LRN(Layer):
    type = "LRN"
    accel_op = "lrn"
    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def layer_setup(self, bottom, top):
        lp = self.param.lrn_param
        self.size = lp.local_size
        if self.size % 2 != 1:
            raise self.error("LRN only supports odd values for local_size")
        self.alpha, self.beta, self.k = lp.alpha, lp.beta, lp.k
        self.region = lp.norm_region
        if self.region not in (ACROSS_CHANNELS, WITHIN_CHANNEL):
            raise self.error("Unknown normalization region.")

    def reshape(self, bottom, top):
        if bottom[0].num_axes != 4:
            raise self.error("Input must have 4 axes, corresponding to (num, channels, height, width)")
        top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        x = bottom[0].data
        if self.region == ACROSS_CHANNELS:
            if getattr(self, "_scale", None) is None or self._scale.shape != x.shape:
                self._scale = np.empty(x.shape, np.float32)
            across_forward_fast(x, self.size, self.alpha, self.beta, self.k, top[0].data, self._scale)
        else:
            y, self._base, self._power = within_forward(x, self.size, self.alpha, self.beta)
            top[0].data[...] = y

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dy, x = top[0].diff, bottom[0].data
        if self.region == ACROSS_CHANNELS:
            across_backward_fast(dy, x, top[0].data, self._scale, self.size, self.alpha, self.beta, bottom[0].diff)
        else:
            bottom[0].diff[...] = within_backward(dy, x, self._base, self._power, self.size, self.alpha, self.beta)
