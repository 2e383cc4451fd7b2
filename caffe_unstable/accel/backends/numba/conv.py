"""The clean conv/FC fast path of the numba backend: exact integer sums by float32 GEMM (pipecnn.md §10.6).

Why float32 is exact here: every product is an integer of magnitude <= 2^14 and the K range is cut into chunks in
which every output's partial sums stay <= 128 * sum |w| <= 2^24 (checked per chunk on the actual weights), so
every partial sum BLAS forms, in any order and with or without FMA, is an integer float32 holds exactly. Chunks are
summed in float64 (exact below 2^53) and the int32 result wraps modulo 2^32 as the hardware's registers do.
The result equals the MAC-order register loop (mac.py) for every input: exact integer arithmetic does not depend on
the order (§2.8). Device layouts are PipeCNN's (accel/layouts.py).
"""
import numpy as np
from numba import njit

from .threads import split

CHUNK_LIMIT = (1 << 24) // 128      # per-chunk bound on sum |w| of any output: |x| <= 128
COL_CHUNK_FLOATS = 1 << 24          # columns built at once (the batch is split beyond this)


@njit(cache=True, nogil=True, error_model="numpy")
def _wrap32(v):
    return ((v + 2147483648) & 4294967295) - 2147483648


@njit(cache=True, nogil=True, error_model="numpy")
def _convert(acc, rb, n, relu):
    """pipecnn.md §1.5 closed form (the same lines as quant.output_conversion), branch-free."""
    r1 = (acc + (np.int64(1) << (n - 1))) >> n
    y = ((r1 + rb + 128) & 255) - 128
    y = np.int64(127) if r1 >= 128 else y
    y = np.int64(-128) if r1 <= -129 else y
    return max(y, np.int64(0)) if relu else y


@njit(cache=True, nogil=True, error_model="numpy")
def weight_matrix(wdev, group, og, cg, po, out, o0, o1):
    """Device weights (Z, Cb, Kh, Kw, LANE, VEC) -> GEMM rows out (group, Og, K) over the real channels, row order
    r = (channel-vector group, ky, kx, v): the MAC order without the padded vec slots."""
    cb, kh, kw, lane, vec = wdev.shape[1], wdev.shape[2], wdev.shape[3], wdev.shape[4], wdev.shape[5]
    for o in range(o0, o1):
        j, oo = o // og, o % og
        op = o + po
        z, ln = op // lane, op % lane
        r = 0
        for gb in range(cb):
            vr = min(vec, cg - gb * vec)
            for ky in range(kh):
                for kx in range(kw):
                    for v in range(vr):
                        out[j, oo, r] = wdev[z, gb, ky, kx, ln, v]
                        r += 1


def chunk_bounds(wm, limit=CHUNK_LIMIT):
    """Boundaries [0, k1, ..., K] of K ranges in which every row's sum |w| stays <= limit (one range when the
    whole row sums do; else greedy on the column maxima, a valid upper bound)."""
    k = wm.shape[1]
    a = np.abs(wm)
    if k == 0 or a.sum(axis=1).max() <= limit:
        return np.array([0, k], np.int64)
    col = a.max(axis=0).astype(np.int64)
    bounds, run = [0], 0
    for i in range(k):
        if run + col[i] > limit:
            bounds.append(i)
            run = 0
        run += col[i]
    bounds.append(k)
    return np.array(bounds, np.int64)


def row_table(geom):
    """(K, 4) int64: GEMM row r -> (channel-vector group, ky, kx, v), in weight_matrix's order."""
    g = geom
    rows = [(gb, ky, kx, v) for gb in range(g.Cb) for ky in range(g.Kh) for kx in range(g.Kw)
            for v in range(min(g.vec, g.Cg - gb * g.vec))]
    return np.array(rows, np.int64).reshape(-1, 4)


@njit(cache=True, nogil=True, error_model="numpy")
def im2col(x, j, n0, n1, table, sh, sw, ph, pw, ho, wo, cols, r0, r1):
    """cols (K, (n1 - n0) Ho Wo) float32 from device input x (N, group, Cb, H, W, VEC) int8, group j; row r reads
    table[r] = (gb, ky, kx, v); zero padding outside the image. Each row is written in contiguous runs."""
    h, w = x.shape[3], x.shape[4]
    for r in range(r0, r1):
        gb, ky, kx, v = table[r, 0], table[r, 1], table[r, 2], table[r, 3]
        lo = 0
        while lo < wo and lo * sw - pw + kx < 0:
            lo += 1
        hi = wo
        while hi > lo and (hi - 1) * sw - pw + kx >= w:
            hi -= 1
        for n in range(n0, n1):
            for oy in range(ho):
                iy = oy * sh - ph + ky
                base = ((n - n0) * ho + oy) * wo
                if iy < 0 or iy >= h:
                    for ox in range(wo):
                        cols[r, base + ox] = 0.0
                    continue
                for ox in range(lo):
                    cols[r, base + ox] = 0.0
                for ox in range(lo, hi):
                    cols[r, base + ox] = x[n, j, gb, iy, ox * sw - pw + kx, v]
                for ox in range(hi, wo):
                    cols[r, base + ox] = 0.0


@njit(cache=True, nogil=True, error_model="numpy")
def convert_rows(acc, j, og, n0, ho, wo, rb, nsh, relu, wrap, out, p0, p1):
    """Sums acc (positions, Og) of group j -> int8 device activations out (N, Ob, Ho, Wo, VEC); positions p0..p1.
    wrap: take the sums modulo 2^32 first (only sums past 2^31 need it: chunked or hooked sums)."""
    ob_total, vec = out.shape[1], out.shape[4]
    hw = ho * wo
    flat = out.reshape(-1)
    choff = np.empty(og, np.int64)                  # a channel's offset inside one position's run
    for oo in range(og):
        o = j * og + oo
        choff[oo] = (o // vec) * hw * vec + o % vec
    bias = rb[j * og:(j + 1) * og]
    n, q = n0 + p0 // hw, p0 % hw
    for p in range(p0, p1):
        base = n * ob_total * hw * vec + q * vec
        for oo in range(og):
            a = np.int64(acc[p, oo])
            if wrap:
                a = _wrap32(a)
            flat[base + choff[oo]] = _convert(a, bias[oo], nsh, relu)
        q += 1
        if q == hw:
            q = 0
            n += 1


class ConvWeights:
    """Per-slot derived weights: each group's GEMM matrix, transposed (K, Og), and its chunk plan (made once per
    upload)."""

    def __init__(self, wdev, geom):
        g = geom
        self.source = wdev
        self.key = (g.group, g.Og, g.Cg, g.po, g.Kh, g.Kw)
        wm = np.empty((g.group, g.Og, g.K), np.float32)
        split(weight_matrix, g.group * g.Og, wm.size, wdev, g.group, g.Og, g.Cg, g.po, wm)
        self.bounds = [chunk_bounds(wm[j]) for j in range(g.group)]
        self.wt = np.ascontiguousarray(wm.transpose(0, 2, 1))
        self.table = row_table(g)

    def matches(self, wdev, geom):
        g = geom
        return wdev is self.source and self.key == (g.group, g.Og, g.Cg, g.po, g.Kh, g.Kw)


def conv_fast(xdev, weights, rb, stage, out, sums_hook=None, scratch=None):
    """The clean conv of `stage` (geometry.ConvStage) on device input xdev into device activations out.
    Channel-major columns (K, n P) written in contiguous runs; the GEMM cols^T @ W^T (K, Og) gives position-major
    sums (n P, Og), which OpenBLAS runs fastest for few output channels and the conversion writes VEC-contiguous.
    sums_hook(j, n0, n1, S): see interface.Launch (S: (n P, Og) int32 sums as int64, editable in place).
    scratch(key, shape, dtype): reusable buffers (fresh large arrays cost page faults on every call)."""
    g, fmt = stage.geom, stage.fmt
    if scratch is None:
        def scratch(key, shape, dtype):
            return np.empty(shape, dtype)
    n = xdev.shape[0]
    p = g.Ho * g.Wo
    step = max(1, min(n, COL_CHUNK_FLOATS // max(1, g.K * p)))
    for n0 in range(0, n, step):
        n1 = min(n, n0 + step)
        npos = (n1 - n0) * p
        cols = scratch("cols", (g.K, npos), np.float32)
        for j in range(g.group):
            split(im2col, g.K, cols.size, xdev, j, n0, n1, weights.table, g.stride_h, g.stride_w, g.pad_h, g.pad_w,
                  g.Ho, g.Wo, cols)
            wt, bounds = weights.wt[j], weights.bounds[j]
            if len(bounds) == 2:
                acc = np.matmul(cols.T, wt, out=scratch("acc", (npos, g.Og), np.float32))
            else:
                acc = scratch("acc64", (npos, g.Og), np.float64)
                acc[...] = 0
                part = scratch("acc", (npos, g.Og), np.float32)
                for a, b in zip(bounds[:-1], bounds[1:]):
                    acc += np.matmul(cols[a:b].T, wt[a:b], out=part)
            if sums_hook is not None:
                acc = (acc.astype(np.int64) + (1 << 31)) % (1 << 32) - (1 << 31)
                sums_hook(j, n0, n1, acc)
            split(convert_rows, npos, acc.size, acc, j, g.Og, n0, g.Ho, g.Wo, rb, fmt.n, stage.relu,
                  acc.dtype != np.float32, out)
