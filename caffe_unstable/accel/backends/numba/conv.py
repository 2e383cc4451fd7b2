"""The clean conv/FC fast path of the numba backend: exact integer sums by float32 GEMM (pipecnn.md §10.6).

Why float32 is exact: see gemm.py (K chunks whose partial sums stay integers <= 2^24). The result equals the
MAC-order register loop (mac.py) for every input: exact integer arithmetic does not depend on the order (§2.8).
Device layouts are PipeCNN's (accel/layouts.py).

Here: the columns and the output conversion. The GEMM operand is position-major, cols (positions, K) with K in
the MAC order (channel-vector group, ky, kx, v): for one output position and one (group, ky) the (kx, v) entries
are Kw VEC consecutive bytes of the device input (N, group, Cb, H, W, VEC), so im2col is a copy of contiguous
runs, int8 -> float32. The sums (positions, Og) are converted (§1.5) a block of positions at a time and written
VEC-contiguous into the device activations.
"""
import threading

import numpy as np
from numba import njit, uint64

from . import gemm
from .gemm import ConvWeights, chunk_bounds, row_table, weight_matrix  # noqa: F401 (the backend's names)
from .threads import PARALLEL_MIN_WORK, PIECES_PER_THREAD, for_each, split, thread_count

COL_CHUNK_FLOATS = 1 << 20          # columns built at once: whole images up to about this many floats (4 MB), so
                                    # the GEMM reads them from cache (as ops/conv.py's float path does)


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
def im2col(x, j, n0, kh, kw, cg, sh, sw, ph, pw, ho, wo, cols, pos0, p0, p1):
    """cols (positions, K) float32 from device input x (N, group, Cb, H, W, VEC) int8, group j: rows [p0, p1),
    row p holding output position pos0 + p counted from image n0 (image-major, then oy, ox); its K entries in
    weight_matrix's row order (channel-vector group, ky, kx, v) over the real channels; zero padding outside the
    image. A full channel-vector group reads Kw VEC contiguous bytes per ky (index arithmetic in uint64, so the
    copy vectorises); a partial one (Cg not a multiple of VEC) skips its padded lanes."""
    cb, h, w, vec = x.shape[2], x.shape[3], x.shape[4], x.shape[5]
    k = cols.shape[1]
    xf, cf = x.reshape(-1), cols.reshape(-1)
    hw = ho * wo
    plane = h * w * vec
    if kh == h and kw == w and ph == 0 and pw == 0 and cg == cb * vec:
        # an FC layer (the window is the whole image, no padded lanes): a row is the image's device block as is
        for p in range(p0, p1):
            src = uint64(((n0 + pos0 + p) * x.shape[1] + j) * k)
            d = uint64(p * k)
            for i in range(uint64(k)):
                cf[d + i] = xf[src + i]
        return
    for p in range(p0, p1):
        n, q = n0 + (pos0 + p) // hw, (pos0 + p) % hw
        oy, ox = q // wo, q % wo
        ix0 = ox * sw - pw
        klo = min(kw, max(0, -ix0))                 # kx in [klo, khi) read inside the image
        khi = max(klo, min(kw, w - ix0))
        d = uint64(p * k)
        base = (n * x.shape[1] + j) * cb * plane
        for gb in range(cb):
            vr = min(vec, cg - gb * vec)
            run = uint64(kw * vr)
            for ky in range(kh):
                iy = oy * sh - ph + ky
                if iy < 0 or iy >= h or khi == klo:
                    for i in range(run):
                        cf[d + i] = 0.0
                    d += run
                    continue
                src = base + gb * plane + (iy * w + ix0) * vec      # may point left of the row (klo > 0)
                if vr == vec:
                    lo, hi = uint64(klo * vec), uint64(khi * vec)
                    for i in range(lo):
                        cf[d + i] = 0.0
                    s = uint64(src + klo * vec)
                    for i in range(hi - lo):
                        cf[d + lo + i] = xf[s + i]
                    for i in range(hi, run):
                        cf[d + i] = 0.0
                else:
                    uvr = uint64(vr)
                    for kx in range(kw):
                        dk = d + uint64(kx) * uvr
                        if kx < klo or kx >= khi:
                            for v in range(uvr):
                                cf[dk + v] = 0.0
                        else:
                            s = uint64(src + kx * vec)
                            for v in range(uvr):
                                cf[dk + v] = xf[s + v]
                d += run


@njit(cache=True, nogil=True, error_model="numpy")
def im2col_planar(x, j, kw, sh, ph, pw, ho, wo, cols_t, pos0, r0, r1):
    """cols_t (K, positions) float32, the transpose of im2col's columns (the same row order (ky, kx, c)), from a
    planar int8 copy x (N, group, Cg, H, W) of an input with one partial channel-vector group (C = 1 or 3),
    stride_w 1: each row is copied in runs of up to Wo contiguous bytes (the float path's im2col) instead of
    one Kw Cg-byte run per position and ky, which is mostly loop set-up (measured 3x slower on LeNet's conv1).
    Rows [r0, r1); column q holds position pos0 + q counted from image 0."""
    group, cg, h, w = x.shape[1], x.shape[2], x.shape[3], x.shape[4]
    npos = cols_t.shape[1]
    hw = ho * wo
    xf, cf = x.reshape(-1), cols_t.reshape(-1)
    for r in range(r0, r1):
        c, kk = r % cg, r // cg
        ky, kx = kk // kw, kk % kw
        off = kx - pw
        lo = min(wo, max(0, -off))                  # ox reading inside the row: [lo, hi)
        hi = max(lo, min(wo, w - off))
        q, p = 0, pos0
        while q < npos:
            n, rem = p // hw, p % hw
            oy, ox0 = rem // wo, rem % wo
            cnt = min(wo - ox0, npos - q)
            d = uint64(r * npos + q)
            iy = oy * sh - ph + ky
            a, b = max(ox0, lo), min(ox0 + cnt, hi)
            if iy < 0 or iy >= h or a >= b:
                for i in range(uint64(cnt)):
                    cf[d + i] = 0.0
            else:
                for i in range(uint64(a - ox0)):
                    cf[d + i] = 0.0
                src = uint64((((n * group + j) * cg + c) * h + iy) * w + off + a)
                da = d + uint64(a - ox0)
                for i in range(uint64(b - a)):
                    cf[da + i] = xf[src + i]
                for i in range(uint64(b - ox0), uint64(cnt)):
                    cf[d + i] = 0.0
            q += cnt
            p += cnt


@njit(cache=True, nogil=True, error_model="numpy")
def _convert_small(a, rb, half, nsh, zero, relu):
    """_convert of a sum |a| <= 2^24 in int32 arithmetic (vectorises 8 or 16 wide; AVX2 has no 64-bit shift).
    nsh <= 25 here, so a + 2^(nsh-1) < 2^31; for n >= 26 the caller passes zero: r1 = floor((a + 2^(n-1)) / 2^n)
    is 0 for every |a| <= 2^24."""
    r1 = (a + half) >> nsh
    r1 = 0 if zero else r1
    y = ((r1 + rb + 128) & 255) - 128
    y = 127 if r1 >= 128 else y
    y = -128 if r1 <= -129 else y
    return max(y, 0) if relu else y


CONVERT_BLOCK = 64                  # positions converted in one flat, vectorised pass before their scatter


@njit(cache=True, nogil=True, error_model="numpy")
def convert_rows(acc, j, og, n0, ho, wo, rb, nsh, relu, wrap, out, pos0, p0, p1):
    """Sums acc (positions, Og) C-contiguous, of group j -> int8 device activations out (N, Ob, Ho, Wo, VEC);
    rows p0..p1 of acc, row p holding position pos0 + p counted from image n0.
    wrap: take the sums modulo 2^32 first, in int64 (sums that may pass 2^31: K-chunked or hooked sums).
    Otherwise |sum| <= 2^24 (one float32 chunk): blocks of CONVERT_BLOCK positions are converted as one flat
    run in int32 (a bias row repeated along it), then scattered to their VEC blocks; with VEC = 4 and the
    group's channels on whole blocks, a position's four channels of a block are one int32 store."""
    ob_total, vec = out.shape[1], out.shape[4]
    hw = ho * wo
    flat = out.reshape(-1)
    af = acc.reshape(-1)
    choff = np.empty(og, np.int64)                  # a channel's offset inside one position's run
    for oo in range(og):
        o = j * og + oo
        choff[oo] = (o // vec) * hw * vec + o % vec
    bias = rb[j * og:(j + 1) * og]
    zero = nsh >= 26
    sh = np.int32(min(nsh, 25))
    half = np.int32(1) << (sh - np.int32(1))
    bt = np.empty(CONVERT_BLOCK * og, np.int32)     # the bias row, repeated
    for i in range(bt.size):
        bt[i] = bias[i % og]
    yb = np.empty(CONVERT_BLOCK * og, np.int8)
    quads = vec == 4 and (j * og) % 4 == 0 and og % 4 == 0
    out32 = flat.view(np.int32) if quads else np.empty(0, np.int32)
    y32 = yb.view(np.int32) if quads else np.empty(0, np.int32)
    ob0, q4 = (j * og) // 4, og // 4
    n, q = n0 + (pos0 + p0) // hw, (pos0 + p0) % hw
    for pb in range(p0, p1, CONVERT_BLOCK):
        pe = min(pb + CONVERT_BLOCK, p1)
        src = uint64(pb * og)
        if wrap:
            for i in range(uint64((pe - pb) * og)):
                yb[i] = _convert(_wrap32(np.int64(af[src + i])), np.int64(bt[i]), nsh, relu)
        else:
            for i in range(uint64((pe - pb) * og)):
                yb[i] = _convert_small(np.int32(af[src + i]), bt[i], half, sh, zero, relu)
        for pp in range(pe - pb):
            if quads:
                d = (n * ob_total + ob0) * hw + q
                for b in range(q4):
                    out32[d + b * hw] = y32[pp * q4 + b]
            else:
                base = n * ob_total * hw * vec + q * vec
                for oo in range(og):
                    flat[base + choff[oo]] = yb[pp * og + oo]
            q += 1
            if q == hw:
                q = 0
                n += 1


@njit(cache=True, nogil=True, error_model="numpy")
def saturation_rows(acc, wrap, j, og, nsh, rel, mask, pos0):
    """mask (N, O, Ho Wo) uint8 = 1 where a sum's r1 = floor((s + 2^(n-1)) / 2^n) saturates (>= 128 or <= -129:
    outside int8 before the bias, pipecnn.md §1.5), for the rows of acc (positions, Og) of group j, row p holding
    the image-major position pos0 + p of the launch's images; rel maps those images to rows of mask.
    wrap: the sums are taken modulo 2^32 first (K-chunked float64 sums)."""
    hw = mask.shape[2]
    half = np.int64(1) << (nsh - 1)
    for p in range(acc.shape[0]):
        pos = pos0 + p
        n, q = rel[pos // hw], pos % hw
        for oo in range(og):
            s = _wrap32(np.int64(acc[p, oo])) if wrap else np.int64(acc[p, oo])
            r1 = (s + half) >> nsh
            mask[n, j * og + oo, q] = 1 if (r1 >= 128 or r1 <= -129) else 0


class SaturationReader:
    """A conv_fast sums_reader that records where the clean sums saturate (Launch.clean_saturation), for the
    launch's images `imgs` (rows of the input conv_fast sees) into mask (N, O, Ho Wo); `also` is another reader
    called first (the fault corrections')."""

    def __init__(self, mask, nsh, imgs=None, also=None):
        self.mask, self.nsh, self.also = mask, int(nsh), also
        self.rel = np.arange(mask.shape[0], dtype=np.int64) if imgs is None else np.asarray(imgs, np.int64)

    def __call__(self, j, p0, p1, acc, cols):
        if self.also is not None:
            self.also(j, p0, p1, acc, cols)
        og = acc.shape[1]
        saturation_rows(acc[:p1 - p0], acc.dtype == np.float64, j, og, self.nsh, self.rel, self.mask, p0)


def conv_fast(xdev, weights, rb, stage, out, sums_hook=None, scratch=None, sums_reader=None):
    """The clean conv of `stage` (geometry.ConvStage) on device input xdev into device activations out.
    Position-major columns (positions, K); the GEMM (gemm.group_sums) gives position-major sums (positions, Og)
    (float32, or float64 from skinny_sums or K chunks), which the conversion writes VEC-contiguous.
    Without hooks the positions are cut into pieces of about COL_CHUNK_FLOATS column floats, run on the ops'
    threads (im2col, single-threaded GEMM and conversion per piece, in cache); with a hook, chunks of whole
    images run one after the other, as the hooks expect.
    sums_hook(j, n0, n1, S): see interface.Launch (S: (n P, Og) int32 sums as int64, editable in place).
    sums_reader(j, p0, p1, acc, cols): sees group j's sums of output positions [p0, p1) (image-major) as the GEMM
    left them (float32, or float64: integers, taken modulo 2^32 as int32) and their columns (positions, K),
    read-only, without a conversion pass and from any thread (plan_conv's fault corrections).
    scratch(key, shape, dtype): reusable buffers (fresh large arrays cost page faults on every call)."""
    g = stage.geom
    if scratch is None:
        def scratch(key, shape, dtype):
            return np.empty(shape, dtype)
    compact = g.Cb == 1 and g.Cg < g.vec
    if compact:
        # one partial channel-vector group (a first layer's C = 1 or 3): drop the zero lanes, so that im2col
        # copies Kw Cg contiguous bytes per row of the window (the GEMM row order is unchanged: weight_matrix
        # skips the padded lanes too)
        xdev = np.ascontiguousarray(xdev[..., :g.Cg])
    else:
        xdev = np.ascontiguousarray(xdev)
    if sums_hook is None:
        _conv_pieces(xdev, weights, rb, stage, out, scratch, compact, sums_reader)
        return
    fmt = stage.fmt
    n, p = xdev.shape[0], g.Ho * g.Wo
    step = max(1, min(n, COL_CHUNK_FLOATS // max(1, g.K * p)))
    for n0 in range(0, n, step):
        n1 = min(n, n0 + step)
        npos = (n1 - n0) * p
        cols = scratch("cols", (npos, g.K), np.float32)
        for j in range(g.group):
            split(im2col, npos, cols.size, xdev, j, n0, g.Kh, g.Kw, g.Cg, g.stride_h, g.stride_w, g.pad_h, g.pad_w,
                  g.Ho, g.Wo, cols, 0)
            acc, wrap = gemm.group_sums(weights, j, cols, scratch, "")
            if sums_hook is not None:
                acc = np.ascontiguousarray((acc.astype(np.int64) + (1 << 31)) % (1 << 32) - (1 << 31))
                sums_hook(j, n0, n1, acc)
                wrap = True
            if sums_reader is not None:
                sums_reader(j, n0 * p, n1 * p, acc, cols)
            split(convert_rows, npos, acc.size, acc, j, g.Og, n0, g.Ho, g.Wo, rb, fmt.n, stage.relu, wrap, out, 0)


MIN_PIECE_ROWS = 32                 # positions per piece at least (smaller GEMMs lose more than a thread gains)


def _conv_pieces(xdev, weights, rb, stage, out, scratch, compact, sums_reader=None):
    """conv_fast without hooks: pieces of positions on the ops' threads, each with its own buffers, its
    GEMMs single-threaded (for_each holds OpenBLAS to one thread: its spinning threads would fight the pool's).
    Pieces hold at most COL_CHUNK_FLOATS column floats (in cache for the GEMM), and there are a few per thread
    when the work is large enough. A few positions against many weights (skinny_sums) stay one piece, whose
    kernel splits over the output channels instead: each piece would read all the weights again.
    A first layer (one partial channel-vector group) with stride_w 1 builds its columns channel-major from a
    planar copy of the input (im2col_planar); the GEMM takes them transposed."""
    g, fmt = stage.geom, stage.fmt
    total = xdev.shape[0] * g.Ho * g.Wo
    if weights.w8 is not None and total <= gemm.SKINNY_MAX_ROWS:
        rows = total
    else:
        rows = max(1, COL_CHUNK_FLOATS // max(1, g.K))
        if total * g.K * g.group >= PARALLEL_MIN_WORK:
            rows = min(rows, max(MIN_PIECE_ROWS, -(-total // (PIECES_PER_THREAD * thread_count()))))
    pieces = [(a, min(total, a + rows)) for a in range(0, total, rows)]
    planar = None
    if compact and g.stride_w == 1:                 # xdev (N, group, 1, H, W, Cg) -> (N, group, Cg, H, W)
        planar = np.ascontiguousarray(xdev[:, :, 0].transpose(0, 1, 4, 2, 3))

    def piece(i):
        a, b = pieces[i]
        tag = threading.get_ident()
        if planar is None:
            cols = scratch(("cols", tag), (b - a, g.K), np.float32)
        else:
            cols_t = scratch(("cols_t", tag), (g.K, b - a), np.float32)
            cols = cols_t.T
        for j in range(g.group):
            if planar is None:
                split(im2col, b - a, cols.size, xdev, j, 0, g.Kh, g.Kw, g.Cg, g.stride_h, g.stride_w, g.pad_h,
                      g.pad_w, g.Ho, g.Wo, cols, a)
            else:
                split(im2col_planar, g.K, cols.size, planar, j, g.Kw, g.stride_h, g.pad_h, g.pad_w, g.Ho, g.Wo,
                      cols_t, a)
            acc, wrap = gemm.group_sums(weights, j, cols, scratch, tag)
            if sums_reader is not None:
                sums_reader(j, a, b, acc, cols)
            split(convert_rows, b - a, acc.size, acc, j, g.Og, 0, g.Ho, g.Wo, rb, fmt.n, stage.relu, wrap, out, a)

    for_each(piece, len(pieces), total * g.K * g.group)
