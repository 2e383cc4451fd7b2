"""numba kernels of Caffe's ACROSS_CHANNELS LRN (layers/lrn_layer.cpp CrossChannelForward_cpu / Backward_cpu).

x, y, scale, dy, dx are flat views of (N, C, P) arrays, P = H * W. The kernels run over units q in [q0, q1),
unit q = image q // nb, pixel block q % nb of `block` pixels (ops/lrn.py splits the units over threads), and keep
Caffe's sliding window over the channels: scale(c) = scale(c - 1) + a/n x(c + pre)^2 - a/n x(c - pre - 1)^2,
and in backward the running sum of dy y / scale over the window. Every inner loop is one branch-free pass over
contiguous pixels with flat unsigned indices (LLVM vectorizes those).
"""
import numpy as np
from numba import njit, uint64


@njit(cache=True, nogil=True, error_model="numpy")
def _add_squares(dst, d, src, s, m, a):
    """dst[d:d+m] += a * src[s:s+m]^2"""
    for i in range(uint64(m)):
        v = src[s + i]
        dst[d + i] += a * (v * v)


@njit(cache=True, nogil=True, error_model="numpy")
def _mul_neg_power(out, o, f, fo, pw, po, m, beta):
    """out[o:o+m] = f[fo:fo+m] * pw[po:po+m]^-beta, the usual betas through sqrt (vectorizable)."""
    one = np.float32(1.0)
    if beta == 0.75:
        for i in range(uint64(m)):
            r = np.sqrt(pw[po + i])
            out[o + i] = f[fo + i] * (one / (r * np.sqrt(r)))
    elif beta == 0.5:
        for i in range(uint64(m)):
            out[o + i] = f[fo + i] * (one / np.sqrt(pw[po + i]))
    elif beta == 1.0:
        for i in range(uint64(m)):
            out[o + i] = f[fo + i] * (one / pw[po + i])
    else:
        nb = np.float32(-beta)
        for i in range(uint64(m)):
            out[o + i] = f[fo + i] * pw[po + i] ** nb


@njit(cache=True, nogil=True, error_model="numpy")
def across_forward(x, nc, p, size, alpha_over_size, beta, k, block, y, scale, q0, q1):
    """y = x scale^-beta with scale = k + alpha/n * (window sum of x^2), Caffe's sliding sum."""
    pre = (size - 1) // 2
    nb = (p + block - 1) // block
    aos = np.float32(alpha_over_size)
    for q in range(q0, q1):
        n, b = q // nb, q % nb
        p0 = b * block
        m = min(p, p0 + block) - p0
        base = n * nc * p + p0
        s0 = uint64(base)
        for i in range(uint64(m)):
            scale[s0 + i] = np.float32(k)
        # channel 0: k + the squares of channels [0, pre] (Caffe adds the zero padding too: no change)
        for c in range(min(pre + 1, nc)):
            _add_squares(scale, s0, x, uint64(base + c * p), m, aos)
        for c in range(1, nc):
            cur, prev = uint64(base + c * p), uint64(base + (c - 1) * p)
            for i in range(uint64(m)):
                scale[cur + i] = scale[prev + i]
            if c + pre < nc:
                _add_squares(scale, cur, x, uint64(base + (c + pre) * p), m, aos)
            if c - pre - 1 >= 0:
                _add_squares(scale, cur, x, uint64(base + (c - pre - 1) * p), m, -aos)
        for c in range(nc):
            o = uint64(base + c * p)
            _mul_neg_power(y, o, x, o, scale, o, m, beta)


@njit(cache=True, nogil=True, error_model="numpy")
def across_backward(dy, x, y, scale, nc, p, size, cache_ratio, beta, block, dx, q0, q1):
    """dx = dy scale^-beta - (2 alpha beta / n) x (window sum of dy y / scale), overwritten."""
    pre = (size - 1) // 2
    nb = (p + block - 1) // block
    crv = np.float32(cache_ratio)
    ratio = np.empty(nc * block, np.float32)
    accum = np.empty(block, np.float32)
    for q in range(q0, q1):
        n, b = q // nb, q % nb
        p0 = b * block
        m = min(p, p0 + block) - p0
        base = n * nc * p + p0
        for c in range(nc):
            o, r = uint64(base + c * p), uint64(c * block)
            for i in range(uint64(m)):
                ratio[r + i] = dy[o + i] * y[o + i] / scale[o + i]
        # Caffe: bottom_diff = top_diff * scale^-beta, then -= cache_ratio * x * accum
        for c in range(nc):
            o = uint64(base + c * p)
            _mul_neg_power(dx, o, dy, o, scale, o, m, beta)
        for i in range(uint64(m)):
            accum[i] = 0.0
        for c in range(min(pre, nc)):
            r = uint64(c * block)
            for i in range(uint64(m)):
                accum[i] += ratio[r + i]
        for c in range(nc):
            o = uint64(base + c * p)
            if c + pre < nc:
                r = uint64((c + pre) * block)
                for i in range(uint64(m)):
                    accum[i] += ratio[r + i]
            for i in range(uint64(m)):
                dx[o + i] -= crv * (x[o + i] * accum[i])
            if c - pre >= 0:
                r = uint64((c - pre) * block)
                for i in range(uint64(m)):
                    accum[i] -= ratio[r + i]
