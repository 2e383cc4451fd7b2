"""Caffe's Pooling layer (layers/pooling_layer.cpp): MAX and AVE over 2-D windows, global pooling, CEIL/FLOOR.

bottom (N, C, H, W) -> top (N, C, Ho, Wo) [+ top 1 for MAX: the argmax mask, flat index h*W+w as float].
The layer runs the numba kernels of pool_kernels.py (Caffe's loops, split over threads by (n, c) plane).
The numpy functions below (`max_pool_forward` & co.) are the vectorized reference the kernels are tested
against: they loop over the kh*kw kernel offsets only, which visits each window's cells in Caffe's row-major order.
"""
import math

import numpy as np

from . import pool_kernels
from .base import Layer, register
from .parallel import in_parallel

FLT_MAX = float(np.finfo(np.float32).max)
MAX, AVE, STOCHASTIC = 0, 1, 2
CEIL, FLOOR = 0, 1


def pool_out_dims(size, kernel, stride, pad, ceil_mode=True):
    """Pooled (Ho, Wo) as pooling_layer.cpp Reshape: ceil/floor((S + 2p - k) / s) + 1 in float, then, when any
    pad is non-zero, the last window is dropped if it would start inside the padding ((out - 1) s >= S + p)."""
    out = []
    for s_, k, st, p in zip(size, kernel, stride, pad):
        q = float(np.float32(s_ + 2 * p - k) / np.float32(st))
        out.append((math.ceil(q) if ceil_mode else math.floor(q)) + 1)
    if any(pad):
        out = [o - 1 if (o - 1) * st >= s_ + p else o for o, s_, st, p in zip(out, size, stride, pad)]
    return tuple(out)


def _padded(x, kernel, stride, pad, out_hw, fill):
    """x (N, C, H, W) inside a `fill`-valued frame covering every window (start at -pad, ceil overhang)."""
    n, c, h, w = x.shape
    ext = [max(0, (o - 1) * s + k - p - size) for o, s, k, p, size in zip(out_hw, stride, kernel, pad, (h, w))]
    if not any(pad) and not any(ext):
        return x
    xp = np.full((n, c, h + pad[0] + ext[0], w + pad[1] + ext[1]), fill, np.float32)
    xp[:, :, pad[0]:pad[0] + h, pad[1]:pad[1] + w] = x
    return xp


def _tap(u, v, stride, out_hw):
    """Slices of the padded image that kernel offset (u, v) covers for every output position."""
    return (Ellipsis, slice(u, u + (out_hw[0] - 1) * stride[0] + 1, stride[0]),
            slice(v, v + (out_hw[1] - 1) * stride[1] + 1, stride[1]))


def _divisors(size, kernel, stride, pad, out_hw):
    """AVE pool_size per window: extent clipped to [-p, S + p) BEFORE clipping to the image (Caffe quirk)."""
    dims = []
    for s_, k, st, p, o in zip(size, kernel, stride, pad, out_hw):
        start = np.arange(o) * st - p
        dims.append(np.minimum(start + k, s_ + p) - start)
    return (dims[0][:, None] * dims[1][None, :]).astype(np.float32)


def max_pool_forward(x, kernel, stride, pad, out_hw):
    """(top, argmax) as Caffe's scan: start at -FLT_MAX, replace on strictly greater, so the first maximum in
    row-major order wins, padding and NaN never do, and a window with no value > -FLT_MAX gives -FLT_MAX, -1.
    argmax.flat() gives the mask: flat indices h*W+w within each (n, c) plane.

    Done as fmax over the kernel taps (the same value), then the first tap equal to it; the tap search avoids
    masked copies: it keeps max(K - tap) over the equal taps, K = number of taps.
    """
    n, c, h, w = x.shape
    xp = _padded(x, kernel, stride, pad, out_hw, -np.inf)
    hs = np.arange(out_hw[0]) * stride[0] - pad[0]
    ws = np.arange(out_hw[1]) * stride[1] - pad[1]
    if out_hw == (1, 1):
        # a single window (global pooling): one vectorized argmax over it
        win = xp[:, :, :kernel[0], :kernel[1]].reshape(n, c, -1)
        valid = win > -FLT_MAX
        a = np.argmax(np.where(valid, win, -np.inf), axis=-1)
        flat = ((hs[0] + np.arange(kernel[0]))[:, None] * w + ws[0] + np.arange(kernel[1])).ravel()
        hit = valid.any(axis=-1)
        top = np.where(hit, np.take_along_axis(win, a[..., None], -1)[..., 0], -FLT_MAX).astype(np.float32)
        return top[..., None, None], _FlatIndex(np.where(hit, flat[a], -1)[..., None, None])
    taps = [xp[_tap(u, v, stride, out_hw)] for u in range(kernel[0]) for v in range(kernel[1])]
    top = np.full((n, c) + out_hw, -FLT_MAX, np.float32)
    for cell in taps:
        np.fmax(top, cell, out=top)
    k = len(taps)
    dt = np.uint8 if k < 255 else np.int32
    best = np.zeros(top.shape, dt)
    eq, cand = np.empty(top.shape, bool), np.empty(top.shape, dt)
    for o, cell in enumerate(taps):
        np.equal(cell, top, out=eq)
        np.multiply(eq, dt(k - o), out=cand)
        np.maximum(best, cand, out=best)
    return top, _ArgmaxTaps(best, top, kernel, hs, ws, w)


class _FlatIndex:
    def __init__(self, idx):
        self.idx = idx

    def flat(self):
        return self.idx


class _ArgmaxTaps:
    """The argmax as tap codes (K - tap); `flat()` turns it into Caffe's h*W+w mask lazily, so a forward-only
    MAX pooling without a mask top never pays for the index arithmetic."""

    def __init__(self, best, top, kernel, hs, ws, w):
        self.best, self.top, self.kernel, self.hs, self.ws, self.w = best, top, kernel, hs, ws, w

    def flat(self):
        kh, kw = self.kernel
        w = self.w
        lut = np.array([0] + [u * w + v for u in range(kh - 1, -1, -1) for v in range(kw - 1, -1, -1)], np.int64)
        idx = np.take(lut, self.best)          # lut[K - tap] = offset of that tap in its window
        idx += self.hs[:, None] * w + self.ws[None, :]
        if self.top.size and self.top.min() <= -FLT_MAX:
            idx[self.top <= -FLT_MAX] = -1     # nothing above -FLT_MAX in the window (code 0 lands here too)
        return idx


def max_pool_backward(dy, idx, in_shape):
    """dx with every dy routed to its argmax cell (summed where windows share it); idx < 0 is skipped."""
    n, c, h, w = in_shape
    flat = idx.reshape(n * c, -1).astype(np.int64) + (np.arange(n * c, dtype=np.int64) * (h * w))[:, None]
    dy = dy.reshape(n * c, -1)
    if idx.size and idx.min() < 0:
        keep = idx.reshape(n * c, -1) >= 0
        flat, dy = flat[keep], dy[keep]
    dx = np.zeros(n * c * h * w, np.float32)
    np.add.at(dx, flat.ravel(), dy.ravel())
    return dx.reshape(in_shape)


def ave_pool_forward(x, kernel, stride, pad, out_hw):
    """Window sums (zero padding, Caffe's row-major order) divided by the pre-clipping window size."""
    xp = _padded(x, kernel, stride, pad, out_hw, 0.0)
    div = _divisors(x.shape[2:], kernel, stride, pad, out_hw)
    if out_hw == (1, 1):
        acc = xp[:, :, :kernel[0], :kernel[1]].sum(axis=(2, 3), dtype=np.float32)[..., None, None]
    else:
        acc = np.zeros(x.shape[:2] + out_hw, np.float32)
        for u in range(kernel[0]):
            for v in range(kernel[1]):
                acc += xp[_tap(u, v, stride, out_hw)]
    acc /= div
    return acc


def ave_pool_backward(dy, in_shape, kernel, stride, pad):
    """Each cell of a window (inside the image) gets dy / pool_size."""
    n, c, h, w = in_shape
    out_hw = dy.shape[2:]
    g = dy / _divisors((h, w), kernel, stride, pad, out_hw)
    dxp = _padded(np.zeros(in_shape, np.float32), kernel, stride, pad, out_hw, 0.0)
    if out_hw == (1, 1):
        dxp[:, :, :kernel[0], :kernel[1]] += g
    else:
        for u in range(kernel[0]):
            for v in range(kernel[1]):
                dxp[_tap(u, v, stride, out_hw)] += g
    return dxp[:, :, pad[0]:pad[0] + h, pad[1]:pad[1] + w]


def _planes(a):
    return a.reshape((a.shape[0] * a.shape[1],) + a.shape[2:])


def max_pool(x, kernel, stride, pad, out_hw, top, mask):
    """top (N, C, Ho, Wo) and int32 mask (Caffe's max_idx_) of x by the numba kernels: the phase-plane one on
    large outputs whose rows it pads by at most a quarter."""
    x3, t3, m3 = _planes(x), _planes(top), _planes(mask)
    pad_lanes = (kernel[1] - 1) // stride[1]
    phases = out_hw[0] * out_hw[1] >= 64 and 4 * pad_lanes <= out_hw[1]
    kernel_fn = pool_kernels.max_forward_phases if phases else pool_kernels.max_forward
    in_parallel(lambda a, b: kernel_fn(x3, *kernel, *stride, *pad, t3, m3, a, b), len(x3), x.size)


def max_unpool(dy, mask, dx):
    """dx = dy routed through the mask (int32 or the float mask top), overwritten."""
    dy3, m3, dx3 = _planes(dy), _planes(mask), _planes(dx)
    in_parallel(lambda a, b: pool_kernels.max_backward(dy3, m3, dx3, a, b), len(dx3), dx.size)


def ave_pool(x, kernel, stride, pad, top):
    x3, t3 = _planes(x), _planes(top)
    in_parallel(lambda a, b: pool_kernels.ave_forward(x3, *kernel, *stride, *pad, t3, a, b), len(x3), x.size)


def ave_unpool(dy, kernel, stride, pad, dx):
    dy3, dx3 = _planes(dy), _planes(dx)
    in_parallel(lambda a, b: pool_kernels.ave_backward(dy3, *kernel, *stride, *pad, dx3, a, b), len(dx3), dx.size)


@register
class Pooling(Layer):
    """MAX / AVE pooling; STOCHASTIC is not implemented on CPU in Caffe either."""

    type = "Pooling"
    accel_op = "pool"
    exact_num_bottom_blobs = 1
    min_top_blobs = 1

    def __init__(self, param, rng=None):
        super().__init__(param, rng)
        # MaxTopBlobs(): MAX pooling may output its argmax mask as a second top
        self.max_top_blobs = 2 if param.pooling_param.pool == MAX else 1

    def layer_setup(self, bottom, top):
        pp = self.param.pooling_param
        has = pp.HasField
        if pp.global_pooling:
            if has("kernel_size") or has("kernel_h") or has("kernel_w"):
                raise self.error("With Global_pooling: true Filter size cannot specified")
        else:
            # Caffe's first CHECK fires for every bad combination (its "both kernel_h and kernel_w" one never can)
            if has("kernel_size") == (has("kernel_h") and has("kernel_w")):
                raise self.error("Filter size is kernel_size OR kernel_h and kernel_w; not both")
        if not ((not has("pad") and has("pad_h") and has("pad_w")) or (not has("pad_h") and not has("pad_w"))):
            raise self.error("pad is pad OR pad_h and pad_w are required.")
        if not ((not has("stride") and has("stride_h") and has("stride_w"))
                or (not has("stride_h") and not has("stride_w"))):
            raise self.error("Stride is stride OR stride_h and stride_w are required.")
        self.global_pooling = pp.global_pooling
        self.method = pp.pool
        if self.global_pooling:
            self.kernel = tuple(bottom[0].shape[2:4])
        elif has("kernel_size"):
            self.kernel = (pp.kernel_size, pp.kernel_size)
        else:
            self.kernel = (pp.kernel_h, pp.kernel_w)
        if min(self.kernel) <= 0:
            raise self.error("Filter dimensions cannot be zero.")
        self.pad = (pp.pad_h, pp.pad_w) if has("pad_h") else (pp.pad, pp.pad)
        self.stride = (pp.stride_h, pp.stride_w) if has("stride_h") else (pp.stride, pp.stride)
        if min(self.stride) <= 0:
            raise self.error("Stride dimensions must be nonzero.")
        if self.global_pooling and (any(self.pad) or self.stride != (1, 1)):
            raise self.error("With Global_pooling: true; only pad = 0 and stride = 1")
        if any(self.pad):
            if self.method not in (MAX, AVE):
                raise self.error("Padding implemented only for average and max pooling.")
            for axis, p, k in (("h", self.pad[0], self.kernel[0]), ("w", self.pad[1], self.kernel[1])):
                if p >= k:
                    raise self.error(f"Check failed: pad_{axis}_ < kernel_{axis}_ ({p} vs. {k})")
        if pp.round_mode not in (CEIL, FLOOR):
            raise self.error("Unknown rounding mode.")

    def reshape(self, bottom, top):
        if bottom[0].num_axes != 4:
            raise self.error("Input must have 4 axes, corresponding to (num, channels, height, width)")
        n, c, h, w = bottom[0].shape
        if self.global_pooling:
            self.kernel = (h, w)
        self.out_hw = pool_out_dims((h, w), self.kernel, self.stride, self.pad,
                                    self.param.pooling_param.round_mode == CEIL)
        if any(self.pad):
            for axis, o, s, size, p in zip("hw", self.out_hw, self.stride, (h, w), self.pad):
                if (o - 1) * s >= size + p:
                    raise self.error(f"Check failed: (pooled_{'height' if axis == 'h' else 'width'}_ - 1) * "
                                     f"stride_{axis}_ < {'height' if axis == 'h' else 'width'}_ + pad_{axis}_ "
                                     f"({(o - 1) * s} vs. {size + p})")
        if min(self.out_hw) < 0:
            raise self.error(f"Check failed: pooled size {self.out_hw} >= 0: kernel {self.kernel} does not fit "
                             f"the padded {h}x{w} input")
        for t in top:
            t.reshape((n, c) + self.out_hw)
        if self.method == MAX and getattr(self, "_mask", np.empty(0)).shape != top[0].shape:
            self._mask = np.empty(top[0].shape, np.int32)   # Caffe's max_idx_

    def forward(self, bottom, top):
        x = bottom[0].data
        if self.method == MAX:
            max_pool(x, self.kernel, self.stride, self.pad, self.out_hw, top[0].data, self._mask)
            if len(top) > 1:
                top[1].data[...] = self._mask
        elif self.method == AVE:
            ave_pool(x, self.kernel, self.stride, self.pad, top[0].data)
        elif self.method == STOCHASTIC:
            raise self.error("Not Implemented Yet: STOCHASTIC pooling has no CPU implementation in Caffe")
        else:
            raise self.error("Unknown pooling method.")

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        if self.method == MAX:
            # Caffe reads the mask top when there is one, its internal max_idx_ otherwise
            max_unpool(top[0].diff, top[1].data if len(top) > 1 else self._mask, bottom[0].diff)
        elif self.method == AVE:
            ave_unpool(top[0].diff, self.kernel, self.stride, self.pad, bottom[0].diff)
        else:
            raise self.error("Not Implemented Yet: STOCHASTIC pooling has no CPU implementation in Caffe")
