"""Max pooling and PipeCNN's LRN on device activations (N, Cb, H, W, VEC) int8 (pipecnn.md §3.3, §3.5, §10.7-§10.8).

Max pool: the exact int8 maximum over each window clipped to the input (Caffe's output size; equal to padding with
-128), separably: the window's rows are maxed over a whole contiguous (W, VEC) row at once (vectorised), then
each output takes the maximum of its kw columns of that row. LRN: float32, one rounding per operation in the
kernel's order and no fused multiply-add (numba compiles without fastmath, so LLVM does not contract); the sum of
squares is exact, so it is formed exactly (float64) and the table address read from its exponent and top mantissa
bits. Each image row's channel columns are gathered once into a (C + 4, W) tile, so every step after the gather
runs along W.
"""
import numpy as np
from numba import njit, uint64


@njit(cache=True, nogil=True, error_model="numpy")
def max_pool(x, kh, kw, sh, sw, ph, pw, out, a0, a1):
    """Work item a = (n, channel block, output row)."""
    nimg, cb, h, w, vec = x.shape
    ho, wo = out.shape[2], out.shape[3]
    run = uint64(w * vec)
    xf, of = x.reshape(-1), out.reshape(-1)
    rm = np.empty(w * vec, np.int8)                 # the window rows' maximum, one (W, VEC) row
    for a in range(a0, a1):
        oy = a % ho
        nc = a // ho                                # n * cb + c: x's and out's (n, c) plane index
        h0 = oy * sh - ph
        h1 = min(h0 + kh, h)
        h0 = max(h0, 0)
        for i in range(run):
            rm[i] = -128
        for iy in range(h0, h1):
            src = uint64((nc * h + iy) * w * vec)
            for i in range(run):
                rm[i] = max(rm[i], xf[src + i])
        dst = (nc * ho + oy) * wo * vec
        for ox in range(wo):
            w0 = ox * sw - pw
            w1 = min(w0 + kw, w)
            w0 = max(w0, 0)
            d = dst + ox * vec
            if vec == 4:                            # the default build: four lanes spelled out
                m0 = m1 = m2 = m3 = np.int8(-128)
                for ix in range(w0, w1):
                    s = ix * 4
                    m0, m1 = max(m0, rm[s]), max(m1, rm[s + 1])
                    m2, m3 = max(m2, rm[s + 2]), max(m3, rm[s + 3])
                of[d], of[d + 1], of[d + 2], of[d + 3] = m0, m1, m2, m3
                continue
            for v in range(vec):
                m = np.int8(-128)
                for ix in range(w0, w1):
                    m = max(m, rm[ix * vec + v])
                of[d + v] = m


@njit(cache=True, nogil=True, error_model="numpy")
def lrn(x, channels, shift, clamp, xs, hinv, c1, c0, out, a0, a1):
    """out (N, Cb, H, W, VEC) int8, fraction 0, from x with input fraction -shift (shift = -F in [0, 8]).
    Work item a = (n, row). a = q << shift is held in float64 (exact) in a flat (C + 4, W) tile with two zero
    channels on each side, so every step after the gather is one flat loop over the row's C W values
    (vectorised; per-channel loops over W = 13 or 27 were mostly set-up). s, the sum of the five squares, is
    exact too (at most 5 2^30), so float32(s) is the float32 sum the kernel forms and s's float64 bit pattern
    gives the table address (lrn_table.segment: 0 below 2^13, else 4 (e - 13) + the two bits after the leading
    one + 1, at most 45)."""
    nimg, cb, h, w, vec = x.shape
    lim = np.float32(127.0)
    mult = np.float64(1 << shift)
    m = channels * w
    tile = np.zeros((channels + 4) * w, np.float64)
    s = np.empty(m, np.float64)
    sbits = s.view(np.int64)
    addr = np.empty(m, np.int64)
    y8 = np.empty(m, np.int8)
    uw, um = uint64(w), uint64(m)             # unsigned indices: no negative-index wraparound, so LLVM vectorises
    w2, w3, w4 = uint64(2) * uw, uint64(3) * uw, uint64(4) * uw
    for a in range(a0, a1):
        n, y = a // h, a % h
        for c in range(channels):
            t = (c + 2) * w
            for xo in range(w):
                tile[t + xo] = np.float64(x[n, c // vec, y, xo, c % vec]) * mult
        for i in range(um):
            s[i] = (tile[i] * tile[i] + tile[i + uw] * tile[i + uw] + tile[i + w2] * tile[i + w2]
                    + tile[i + w3] * tile[i + w3] + tile[i + w4] * tile[i + w4])
        for i in range(um):
            b = sbits[i]
            k = min(4 * ((b >> 52) - 1036) + ((b >> 50) & 3) + 1, 45)      # e - 13 = (b >> 52) - 1023 - 13
            addr[i] = 0 if s[i] < 8192.0 else k
        for i in range(um):
            k = addr[i]
            f = (np.float32(s[i]) - xs[k]) * hinv[k]
            f = f * c1[k]
            f = f + c0[k]
            o = f * np.float32(tile[i + w2])
            if clamp and o > lim:
                o = lim
            r = np.int64(np.rint(o))
            y8[i] = ((r + 128) & 255) - 128
        for c in range(channels):
            t = c * w
            for xo in range(w):
                out[n, c // vec, y, xo, c % vec] = y8[t + xo]
