"""The exact GEMMs of the numba backend's fast conv path (conv.py): each group's weight matrix, its K chunks, and
the sums of columns against it (pipecnn.md §10.6).

Why float32 is exact here: every product is an integer of magnitude <= 2^14 and the K range is cut into chunks in
which every output's partial sums stay <= 128 * sum |w| <= 2^24 (checked per chunk on the actual weights), so
every partial sum BLAS forms, in any order and with or without FMA, is an integer float32 holds exactly. Chunks are
summed in float64 (exact below 2^53); the conversion then wraps the int32 result modulo 2^32 as the hardware's
registers do. GEMM rows are in the MAC order over the real channels (weight_matrix), the order conv.py's columns
use.
"""
import numpy as np
from numba import njit

from .threads import split

CHUNK_LIMIT = (1 << 24) // 128      # per-chunk bound on sum |w| of any output: |x| <= 128


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


CHUNK_BLOCK = 64                    # chunk boundaries fall on multiples of this many GEMM rows


@njit(cache=True, nogil=True, error_model="numpy")
def block_sums(wm, block, out, o0, o1):
    """out[o, i] = sum |wm[o, k]| over k in block i (wm (Og, K) holding int8 values; rows o0..o1)."""
    k = wm.shape[1]
    for o in range(o0, o1):
        for i in range(out.shape[1]):
            acc = 0                             # an integer sum: it vectorises, a float one would not
            for kk in range(i * block, min(k, (i + 1) * block)):
                acc += abs(np.int32(wm[o, kk]))
            out[o, i] = acc


def chunk_bounds(wm, limit=CHUNK_LIMIT):
    """Boundaries [0, k1, ..., K] of K ranges in which every row's sum |w| stays <= limit: one range when the
    whole rows do, else greedy over blocks of CHUNK_BLOCK rows, checking every output's own running sum (one
    block sums to at most 64 * 128, far below the limit, so every range takes at least one block)."""
    og, k = wm.shape
    nb = -(-k // CHUNK_BLOCK)
    sums = np.empty((og, nb), np.int64)
    split(block_sums, og, wm.size, wm, CHUNK_BLOCK, sums)
    if og == 0 or k == 0 or sums.sum(axis=1).max() <= limit:
        return np.array([0, k], np.int64)
    bounds, run = [0], np.zeros(og, np.int64)
    for i in range(nb):
        run += sums[:, i]
        if run.max() > limit:
            bounds.append(i * CHUNK_BLOCK)
            run[...] = sums[:, i]
    bounds.append(k)
    return np.array(bounds, np.int64)


def row_table(geom):
    """(K, 4) int64: GEMM row r -> (channel-vector group, ky, kx, v), in weight_matrix's order."""
    g = geom
    rows = [(gb, ky, kx, v) for gb in range(g.Cb) for ky in range(g.Kh) for kx in range(g.Kw)
            for v in range(min(g.vec, g.Cg - gb * g.vec))]
    return np.array(rows, np.int64).reshape(-1, 4)


SKINNY_MAX_ROWS = 16                # a GEMM with at most this many positions (an FC layer's batch) ...
SKINNY_MIN_WEIGHTS = 1 << 20        # ... against at least this many weights per group runs skinny_sums


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"}, error_model="numpy")
def _dots(w0, w1, x0, x1, x2, x3):
    """The eight dot products of weight rows w0, w1 (int8) with rows x0..x3 (float32), in float32.
    fastmath (reassociation, FMA) lets LLVM vectorise the sums; they stay exact, because every partial sum of
    any subset of the products is an integer <= 2^24 on a chunk of chunk_bounds. The loop runs over the whole
    (sliced) rows: with a run-time start LLVM leaves it scalar (measured: 4x slower)."""
    a0 = a1 = a2 = a3 = b0 = b1 = b2 = b3 = np.float32(0.0)
    for k in range(w0.shape[0]):
        u, v = np.float32(w0[k]), np.float32(w1[k])
        p0, p1, p2, p3 = x0[k], x1[k], x2[k], x3[k]
        a0 += u * p0
        a1 += u * p1
        a2 += u * p2
        a3 += u * p3
        b0 += v * p0
        b1 += v * p1
        b2 += v * p2
        b3 += v * p3
    return a0, a1, a2, a3, b0, b1, b2, b3


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"}, error_model="numpy")
def skinny_sums(cols, w8, bounds, acc, o0, o1):
    """acc (positions, Og) float64 = the exact sums cols (positions, K) float32 . w8 (Og, K) int8, output
    channels [o0, o1): two weight rows by four positions at a time, each weight row streamed once per four
    positions, chunk by chunk of `bounds` (float32 inside a chunk, float64 across chunks: both exact).
    For few positions against many weights (AlexNet's FC layers at batch 10) this beats OpenBLAS's skinny
    sgemm (measured 14 vs 25 ms for fc6, one thread): the int8 weights are a quarter of the float32 bytes."""
    m = cols.shape[0]
    nch = len(bounds) - 1
    o = o0
    while o < o1:
        o2 = o + 1 if o + 1 < o1 else o             # an odd last row is computed twice, written once
        r = 0
        while r < m:
            r1, r2, r3 = min(r + 1, m - 1), min(r + 2, m - 1), min(r + 3, m - 1)
            s0 = s1 = s2 = s3 = t0 = t1 = t2 = t3 = 0.0
            for c in range(nch):
                a, b = bounds[c], bounds[c + 1]
                d = _dots(w8[o, a:b], w8[o2, a:b], cols[r, a:b], cols[r1, a:b], cols[r2, a:b], cols[r3, a:b])
                s0 += d[0]
                s1 += d[1]
                s2 += d[2]
                s3 += d[3]
                t0 += d[4]
                t1 += d[5]
                t2 += d[6]
                t3 += d[7]
            # positions past m repeat position m - 1: written last, with the same value
            acc[r3, o], acc[r2, o], acc[r1, o], acc[r, o] = s3, s2, s1, s0
            acc[r3, o2], acc[r2, o2], acc[r1, o2], acc[r, o2] = t3, t2, t1, t0
            r += 4
        o += 2


ROWS_FIRST_MIN_OG = 2048            # from this many output channels the GEMM runs W cols^T (see ConvWeights)


class ConvWeights:
    """Per-slot derived weights: each group's GEMM matrix and its chunk plan (made once per upload).

    Orientation (measured with OpenBLAS, one thread): the conv GEMMs, many positions and few output channels, run
    fastest as cols (n P, K) @ W^T (K, Og), so `wt` holds W^T. The big FC layers, a few rows against a weight
    matrix of many MB (AlexNet's fc6/fc7: Og = 4096), run 20-30 % faster as W (Og, K) @ cols^T, so from
    ROWS_FIRST_MIN_OG output channels `w` holds W itself instead. Groups of at least SKINNY_MIN_WEIGHTS weights
    also keep W as int8 (`w8`) for skinny_sums; the float32 matrices are then made on first use only (a call
    with more than SKINNY_MAX_ROWS positions)."""

    def __init__(self, wdev, geom):
        g = geom
        self.source = wdev
        self.key = (g.group, g.Og, g.Cg, g.po, g.Kh, g.Kw)
        self.geom = g
        self.w = self.wt = self.w8 = None
        if g.Og * g.K >= SKINNY_MIN_WEIGHTS:
            self.w8 = self._matrix(np.int8)
            self.bounds = [chunk_bounds(self.w8[j]) for j in range(g.group)]
        else:
            self._float_matrices(self._matrix(np.float32))
        self.table = row_table(g)

    def _matrix(self, dtype):
        g = self.geom
        wm = np.empty((g.group, g.Og, g.K), dtype)
        split(weight_matrix, g.group * g.Og, wm.size, self.source, g.group, g.Og, g.Cg, g.po, wm)
        return wm

    def _float_matrices(self, wm):
        if self.w8 is None:
            self.bounds = [chunk_bounds(wm[j]) for j in range(wm.shape[0])]
        if wm.shape[1] >= ROWS_FIRST_MIN_OG:
            self.w = wm
        else:
            self.wt = np.ascontiguousarray(wm.transpose(0, 2, 1))

    def gemm(self, j, cols, a, b, out):
        """The float32 sums of K rows [a, b) of group j: (positions, Og), possibly a transposed view of `out`."""
        if self.w is None and self.wt is None:
            self._float_matrices(self._matrix(np.float32))
        if self.wt is not None:
            return np.matmul(cols[:, a:b], self.wt[j, a:b], out=out)
        return np.matmul(self.w[j, :, a:b], cols[:, a:b].T, out=out.reshape(out.shape[::-1])).T

    def matches(self, wdev, geom):
        g = geom
        return wdev is self.source and self.key == (g.group, g.Og, g.Cg, g.po, g.Kh, g.Kw)


def group_sums(weights, j, cols, scratch, tag):
    """Group j's exact sums of cols (positions, K): (array (positions, Og), whether the conversion must wrap
    them modulo 2^32: K-chunked sums may pass 2^31)."""
    g = weights.geom
    npos = cols.shape[0]
    bounds = weights.bounds[j]
    wrap = len(bounds) > 2
    if weights.w8 is not None and npos <= SKINNY_MAX_ROWS:
        acc = scratch(("acc64", tag), (npos, g.Og), np.float64)
        split(skinny_sums, g.Og, g.Og * g.K * npos // 4, np.ascontiguousarray(cols), weights.w8[j], bounds, acc)
    elif not wrap:
        acc = weights.gemm(j, cols, 0, g.K, scratch(("acc", tag), (npos, g.Og), np.float32))
    else:
        acc = scratch(("acc64", tag), (npos, g.Og), np.float64)
        acc[...] = 0
        part = scratch(("acc", tag), (npos, g.Og), np.float32)
        for a, b in zip(bounds[:-1], bounds[1:]):
            acc += weights.gemm(j, cols, a, b, part)
    if not acc.flags.c_contiguous:                  # W cols^T's transposed view: few positions, a cheap copy
        acc = np.ascontiguousarray(acc)
    return acc, wrap
