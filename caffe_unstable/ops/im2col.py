"""Caffe's im2col/col2im (util/im2col.cpp) and the buffers and threads around them, for ops/conv.py.

Layouts: an image chunk x (n, C, *S); its columns (C * prod(k), n * P), one row per (channel, kernel offset) in
Caffe's (c, *k) order and one column per (image, output position); "rows" (G, n * P, O/G), the position-major
layout the GEMMs write (OpenBLAS runs the few-output-channel conv GEMMs fastest that way round).
2-D (and 1-D) geometries run numba kernels, serial over a [start, stop) range of independent units and split over
the ops' thread pool (parallel.py) when called outside a pool piece. Other dimensionalities use the numpy
versions (`im2col_nd`, `col2im_nd`), also the tests' reference.
"""
import math
import threading

import numpy as np
from numba import njit, uint64

from .parallel import in_parallel


class Scratch:
    """Grow-only float32 buffers by key: fresh large arrays would cost page faults on every call."""

    def __init__(self):
        self._bufs = {}

    def get(self, key, shape):
        n = math.prod(shape)
        buf = self._bufs.get(key)
        if buf is None or buf.size < n:
            buf = self._bufs[key] = np.empty(max(n, 1), np.float32)
        return buf[:n].reshape(shape)


class _ThreadScratch(threading.local):
    """Transient buffers shared by every layer of one Python thread (nothing is kept in them across calls)."""

    def __init__(self):
        self.scratch = Scratch()

    def get(self, key, shape):
        return self.scratch.get(key, shape)


SCRATCH = _ThreadScratch()

# -- numba kernels (2-D; flat unsigned indices let LLVM vectorize the copies) -------------------------------
@njit(cache=True, nogil=True, error_model="numpy")
def _valid(n_out, stride, offset, size):
    """[lo, hi): the output positions o with 0 <= o * stride + offset < size."""
    lo = 0 if offset >= 0 else min(n_out, (stride - 1 - offset) // stride)
    hi = 0 if offset >= size else min(n_out, (size - offset + stride - 1) // stride)
    return lo, max(lo, hi)


@njit(cache=True, nogil=True, error_model="numpy")
def im2col_kernel(x, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, col, u0, u1):
    """col (C kh kw, n oh ow) from x (n, C, H, W): the kh rows of units u = c * kh + ki in [u0, u1).
    Stride 1 with an output as wide as the image ("same" convs) copies whole planes at once, then re-zeroes the
    cells that wrapped around a row edge."""
    nb, nc, h, w = x.shape
    p = oh * ow
    ncol = nb * p
    xf = x.reshape(-1)
    cf = col.reshape(-1)
    whole = sh == 1 and sw == 1 and ow == w
    for u in range(u0, u1):
        c, ki = u // kh, u % kh
        h0 = ki * dh - ph
        rlo, rhi = _valid(oh, sh, h0, h)
        for kj in range(kw):
            off = kj * dw - pw
            clo, chi = _valid(ow, sw, off, w)
            for b in range(nb):
                d = uint64((u * kw + kj) * ncol + b * p)
                for i in range(uint64(rlo * ow)):
                    cf[d + i] = 0.0
                for i in range(uint64(rhi * ow), uint64(p)):
                    cf[d + i] = 0.0
                s = ((b * nc + c) * h + h0) * w + off   # x index of output cell 0 (maybe outside the plane)
                if whole:
                    if chi > clo:
                        first, last = rlo * ow + clo, (rhi - 1) * ow + chi
                        dd, ss = d + uint64(first), uint64(s + first)
                        for i in range(uint64(last - first)):
                            cf[dd + i] = xf[ss + i]
                    # re-zero the columns that wrapped around a row edge, one strided column at a time
                    for j in range(clo):
                        for r in range(rlo, rhi):
                            cf[d + uint64(r * ow + j)] = 0.0
                    for j in range(chi, ow):
                        for r in range(rlo, rhi):
                            cf[d + uint64(r * ow + j)] = 0.0
                    continue
                for r in range(rlo, rhi):
                    dr = d + uint64(r * ow)
                    for j in range(uint64(clo)):
                        cf[dr + j] = 0.0
                    for j in range(uint64(chi), uint64(ow)):
                        cf[dr + j] = 0.0
                    dd, ss = dr + uint64(clo), uint64(s + r * sh * w + clo * sw)
                    if sw == 1:
                        for j in range(uint64(chi - clo)):
                            cf[dd + j] = xf[ss + j]
                    else:
                        for j in range(uint64(chi - clo)):
                            cf[dd + j] = xf[ss + j * uint64(sw)]


@njit(cache=True, nogil=True, error_model="numpy")
def col2im_kernel(col, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, dx, q0, q1):
    """dx (n, C, H, W) = the adjoint of im2col_kernel, planes q = b * C + c in [q0, q1), overwritten; each plane
    sums its taps in Caffe's col2im order (kernel row, kernel column, output row, output column)."""
    nb, nc, h, w = dx.shape
    p = oh * ow
    ncol = nb * p
    cf = col.reshape(-1)
    xf = dx.reshape(-1)
    for q in range(q0, q1):
        b, c = q // nc, q % nc
        base = uint64(q * h * w)
        for i in range(uint64(h * w)):
            xf[base + i] = 0.0
        for ki in range(kh):
            h0 = ki * dh - ph
            rlo, rhi = _valid(oh, sh, h0, h)
            for kj in range(kw):
                off = kj * dw - pw
                clo, chi = _valid(ow, sw, off, w)
                d = ((c * kh + ki) * kw + kj) * ncol + b * p
                s = (q * h + h0) * w + off
                for r in range(rlo, rhi):
                    dd, ss = uint64(d + r * ow + clo), uint64(s + r * sh * w + clo * sw)
                    if sw == 1:
                        for j in range(uint64(chi - clo)):
                            xf[ss + j] += cf[dd + j]
                    else:
                        for j in range(uint64(chi - clo)):
                            xf[ss + j * uint64(sw)] += cf[dd + j]


@njit(cache=True, nogil=True, error_model="numpy")
def rows_to_image_kernel(rows, bias, out, q0, q1):
    """out (n, G Og, P)[b, g Og + o, :] = rows (G, n P, Og)[g, b P + :, o] + bias[g Og + o] (bias may be
    empty), blocks q = b * G + g in [q0, q1), in tiles of 16 positions (read and written while in L1)."""
    ng, npos, og = rows.shape
    nout, p = out.shape[1], out.shape[2]
    rf, of = rows.reshape(-1), out.reshape(-1)
    uog = uint64(og)
    for q in range(q0, q1):
        b, g = q // ng, q % ng
        for i0 in range(0, p, 16):
            m = uint64(min(16, p - i0))
            src = uint64((g * npos + b * p + i0) * og)
            for o in range(og):
                ch = g * og + o
                add = bias[ch] if bias.size else np.float32(0.0)
                dst, so = uint64((b * nout + ch) * p + i0), src + uint64(o)
                for i in range(m):
                    of[dst + i] = rf[so + i * uog] + add


@njit(cache=True, nogil=True, error_model="numpy")
def image_to_rows_kernel(y, rows, q0, q1):
    """rows (G, n P, Og)[g, b P + i, :] = y (n, G Og, P)[b, g Og + :, i], blocks q = b * G + g in [q0, q1)."""
    ng, npos, og = rows.shape
    nout, p = y.shape[1], y.shape[2]
    rf, yf = rows.reshape(-1), y.reshape(-1)
    uog = uint64(og)
    for q in range(q0, q1):
        b, g = q // ng, q % ng
        for i0 in range(0, p, 16):
            m = uint64(min(16, p - i0))
            dst = uint64((g * npos + b * p + i0) * og)
            for o in range(og):
                src, do = uint64((b * nout + g * og + o) * p + i0), dst + uint64(o)
                for i in range(m):
                    rf[do + i * uog] = yf[src + i]


# -- numpy N-D versions ------------------------------------------------------------------------------------
def padded_extent(sp, geo, cols_sp):
    """Padded spatial size holding every window of the cols_sp grid (> S + 2p only when C truncation let
    a window overhang, e.g. S + 2p < extent)."""
    out = []
    for size, k, s, p, d, o in zip(sp, geo.kernel, geo.stride, geo.pad, geo.dilation, cols_sp):
        needed = (o - 1) * s + d * (k - 1) + 1 if o > 0 else 0
        out.append(size + p + max(p, needed - size - p))
    return tuple(out)


def _taps(geo, cols_sp, offs):
    """The strided slices of the padded image that kernel offset `offs` reads for every column position."""
    return tuple(slice(u * d, u * d + (o - 1) * s + 1, s)
                 for u, d, o, s in zip(offs, geo.dilation, cols_sp, geo.stride))


def im2col_nd(x, geo, cols_sp, out):
    """Columns as im2col_kernel, any number of spatial axes: the image is copied channel-major into a
    zero-padded (C, n, *S_pad) buffer, then each kernel offset is one strided copy."""
    n, c, sp = x.shape[0], x.shape[1], x.shape[2:]
    full = padded_extent(sp, geo, cols_sp)
    xp = SCRATCH.get("im2col", (c, n) + full)
    xp.fill(0)
    xp[(slice(None), slice(None)) + tuple(slice(p, p + s) for p, s in zip(geo.pad, sp))] = x.swapaxes(0, 1)
    colv = out.reshape((c,) + tuple(geo.kernel) + (n,) + tuple(cols_sp))
    for offs in np.ndindex(*geo.kernel):
        colv[(slice(None),) + offs] = xp[(slice(None), slice(None)) + _taps(geo, cols_sp, offs)]
    return out


def col2im_nd(col, geo, cols_sp, dx):
    """dx (n, C, *S) = the adjoint of im2col_nd (overlapping taps summed), overwritten."""
    n, c, sp = dx.shape[0], dx.shape[1], dx.shape[2:]
    full = padded_extent(sp, geo, cols_sp)
    xp = SCRATCH.get("col2im", (c, n) + full)
    xp.fill(0)
    colv = col.reshape((c,) + tuple(geo.kernel) + (n,) + tuple(cols_sp))
    for offs in np.ndindex(*geo.kernel):
        xp[(slice(None), slice(None)) + _taps(geo, cols_sp, offs)] += colv[(slice(None),) + offs]
    dx[...] = xp[(slice(None), slice(None)) + tuple(slice(p, p + s) for p, s in zip(geo.pad, sp))].swapaxes(0, 1)
    return dx


# -- dispatch --------------------------------------------------------------------------------------------
def _args2d(geo, cols_sp):
    """(kh, kw, sh, sw, ph, pw, dh, dw, oh, ow) of a 2-D geometry; 1-D runs as height 1."""
    k, s, p, d, o = geo.kernel, geo.stride, geo.pad, geo.dilation, tuple(cols_sp)
    if len(k) == 1:
        k, s, p, d, o = (1,) + k, (1,) + s, (0,) + p, (1,) + d, (1,) + o
    return k[0], k[1], s[0], s[1], p[0], p[1], d[0], d[1], o[0], o[1]


def _as4d(a):
    return a.reshape(a.shape[:2] + (1,) + a.shape[2:]) if a.ndim == 3 else a


def im2col(x, geo, cols_sp, out):
    """x (n, C, *S) contiguous -> out (C * prod(k), n * prod(cols_sp)), returned as (G, rows / G, n * P)."""
    if x.ndim > 4:
        im2col_nd(x, geo, cols_sp, out)
    else:
        x4, args = _as4d(x), _args2d(geo, cols_sp)
        in_parallel(lambda a, b: im2col_kernel(x4, *args, out, a, b), x.shape[1] * args[0], out.size)
    return out.reshape(geo.group, out.shape[0] // geo.group, out.shape[1])


def col2im(col, geo, cols_sp, dx):
    """dx (n, C, *S) contiguous = col2im of col (C * prod(k), n * prod(cols_sp)), overwritten."""
    if dx.ndim > 4:
        return col2im_nd(col, geo, cols_sp, dx)
    dx4, args = _as4d(dx), _args2d(geo, cols_sp)
    in_parallel(lambda a, b: col2im_kernel(col, *args, dx4, a, b), dx.shape[0] * dx.shape[1], col.size)
    return dx


_NO_BIAS = np.zeros(0, np.float32)


def rows_to_image(rows, out, bias=None):
    """out (n, O, P) = rows (G, n P, O/G) transposed, plus bias (O) when given."""
    b = _NO_BIAS if bias is None else bias
    in_parallel(lambda q0, q1: rows_to_image_kernel(rows, b, out, q0, q1), out.shape[0] * rows.shape[0], out.size)
    return out


def image_to_rows(y, g, key="rows"):
    """(n, O, P) -> rows (G, n P, O/G) in a scratch buffer."""
    n, o, p = y.shape
    rows = SCRATCH.get(key, (g, n * p, o // g))
    in_parallel(lambda q0, q1: image_to_rows_kernel(y, rows, q0, q1), n * g, y.size)
    return rows
