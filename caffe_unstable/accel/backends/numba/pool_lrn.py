"""Max pooling and PipeCNN's LRN on device activations (N, Cb, H, W, VEC) int8 (pipecnn.md §3.3, §3.5, §10.7-§10.8).

Max pool: the exact int8 maximum over each window clipped to the input (Caffe's output size; equal to padding with
-128). LRN: float32, one rounding per operation in the kernel's order and no fused multiply-add (numba compiles
without fastmath, so LLVM does not contract); the sum of squares is exact, so it is formed in integers and the
table address read from it exactly as from the float's exponent and top mantissa bits.
"""
import numpy as np
from numba import njit


@njit(cache=True, nogil=True, error_model="numpy")
def max_pool(x, kh, kw, sh, sw, ph, pw, out, a0, a1):
    """Work item a = (n, channel block, output row); each position's VEC channels are maxed together."""
    nimg, cb, h, w, vec = x.shape
    ho, wo = out.shape[2], out.shape[3]
    m = np.empty(vec, np.int8)
    for a in range(a0, a1):
        oy = a % ho
        c = (a // ho) % cb
        n = a // (ho * cb)
        h0 = oy * sh - ph
        h1 = min(h0 + kh, h)
        h0 = max(h0, 0)
        for ox in range(wo):
            w0 = ox * sw - pw
            w1 = min(w0 + kw, w)
            w0 = max(w0, 0)
            for v in range(vec):
                m[v] = -128
            for iy in range(h0, h1):
                for ix in range(w0, w1):
                    for v in range(vec):
                        m[v] = max(m[v], x[n, c, iy, ix, v])
            for v in range(vec):
                out[n, c, oy, ox, v] = m[v]


@njit(cache=True, nogil=True, error_model="numpy")
def _segment(s):
    """Table address of the integer sum of squares s >= 0 (lrn_table.segment)."""
    if s < 8192:
        return 0
    e = -1
    v = s
    while v > 0:
        v >>= 1
        e += 1
    j = (s >> (e - 2)) & 3
    addr = 4 * (e - 13) + j + 1
    return min(addr, 45)


@njit(cache=True, nogil=True, error_model="numpy")
def lrn(x, channels, shift, clamp, xs, hinv, c1, c0, out, a0, a1):
    """out (N, Cb, H, W, VEC) int8, fraction 0, from x with input fraction -shift (shift = -F in [0, 8]).
    Work item a = (n, row); each pixel's channel column is gathered once and the window slides over it."""
    nimg, cb, h, w, vec = x.shape
    lim = np.float32(127.0)
    col = np.zeros(channels + 4, np.int64)         # a_c, zero-padded by 2 on both sides
    for a in range(a0, a1):
        n, y = a // h, a % h
        for xo in range(w):
            for c in range(channels):
                col[c + 2] = np.int64(x[n, c // vec, y, xo, c % vec]) << shift
            for c in range(channels):
                s = (col[c] * col[c] + col[c + 1] * col[c + 1] + col[c + 2] * col[c + 2]
                     + col[c + 3] * col[c + 3] + col[c + 4] * col[c + 4])
                addr = _segment(s)
                f = (np.float32(s) - xs[addr]) * hinv[addr]
                f = f * c1[addr]
                f = f + c0[addr]
                o = f * np.float32(col[c + 2])
                if clamp and o > lim:
                    o = lim
                r = np.int64(np.rint(o))
                out[n, c // vec, y, xo, c % vec] = ((r + 128) & 255) - 128
