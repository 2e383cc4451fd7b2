"""numba kernels of Caffe's MAX and AVE pooling (layers/pooling_layer.cpp Forward_cpu / Backward_cpu).

Each kernel runs over the planes q in [q0, q1) of x viewed as (N C, H, W) (ops/pooling.py splits the planes over
threads) and visits a window's cells in Caffe's row-major order, so forward results are Caffe's to the bit:
MAX starts at -FLT_MAX with mask -1 and replaces on strictly greater (the first maximum wins; NaN and padding
never do); AVE sums the clipped window in order and divides by the pool size counted before clipping.
The mask holds flat indices h * W + w within the plane. Flat unsigned indices let LLVM drop numpy's negative-index
wraparound. MAX forward has two versions: `max_forward` runs four windows side by side where they lie inside the
image (four independent compare chains instead of one latency-bound chain); `max_forward_phases`, faster on large
planes, first splits the plane by stride phase so every kernel tap becomes one contiguous vectorizable pass.
"""
import numpy as np
from numba import njit, uint64

FLT_MAX = np.float32(np.finfo(np.float32).max)
NEG_INF = np.float32(-np.inf)


@njit(cache=True, nogil=True, error_model="numpy")
def _window_max(xf, base, hs, he, ws, we, w):
    """(max, flat index) over rows [hs, he) x columns [ws, we) of the plane starting at xf[base]."""
    best, arg = -FLT_MAX, -1
    for y in range(hs, he):
        r = y * w
        for c in range(ws, we):
            v = xf[base + uint64(r + c)]
            if v > best:
                best, arg = v, r + c
    return best, arg


@njit(cache=True, nogil=True, error_model="numpy")
def max_forward(x, kh, kw, sh, sw, ph, pw, top, mask, q0, q1):
    """top (NC, OH, OW) float32 and mask (NC, OH, OW) int32 from x (NC, H, W)."""
    h, w = x.shape[1], x.shape[2]
    oh, ow = top.shape[1], top.shape[2]
    xf, tf, mf = x.reshape(-1), top.reshape(-1), mask.reshape(-1)
    # output columns whose window lies inside [0, w): [jlo, jhi)
    jlo = min(ow, (pw + sw - 1) // sw)
    jhi = max(jlo, min(ow, (w - kw + pw) // sw + 1))
    s1, s2, s3 = uint64(sw), uint64(2 * sw), uint64(3 * sw)
    for q in range(q0, q1):
        base = uint64(q * h * w)
        for i in range(oh):
            hs = i * sh - ph
            he, hs = min(hs + kh, h), max(hs, 0)
            o = uint64((q * oh + i) * ow)
            j = 0
            while j < ow:
                if j >= jlo and j + 4 <= jhi:
                    b0 = b1 = b2 = b3 = -FLT_MAX
                    a0 = a1 = a2 = a3 = -1
                    for y in range(hs, he):
                        r = y * w + j * sw - pw
                        for dx in range(kw):
                            k = r + dx
                            p = base + uint64(k)
                            v0, v1, v2, v3 = xf[p], xf[p + s1], xf[p + s2], xf[p + s3]
                            t0, t1, t2, t3 = v0 > b0, v1 > b1, v2 > b2, v3 > b3
                            b0 = v0 if t0 else b0
                            b1 = v1 if t1 else b1
                            b2 = v2 if t2 else b2
                            b3 = v3 if t3 else b3
                            a0 = k if t0 else a0
                            a1 = k + sw if t1 else a1
                            a2 = k + 2 * sw if t2 else a2
                            a3 = k + 3 * sw if t3 else a3
                    oj = o + uint64(j)
                    tf[oj], tf[oj + 1], tf[oj + 2], tf[oj + 3] = b0, b1, b2, b3
                    mf[oj], mf[oj + 1], mf[oj + 2], mf[oj + 3] = a0, a1, a2, a3
                    j += 4
                else:
                    ws = j * sw - pw
                    tf[o + uint64(j)], mf[o + uint64(j)] = _window_max(xf, base, hs, he, max(ws, 0),
                                                                       min(ws + kw, w), w)
                    j += 1


@njit(cache=True, nogil=True, error_model="numpy")
def max_forward_phases(x, kh, kw, sh, sw, ph, pw, top, mask, q0, q1):
    """As max_forward. The plane is copied into sh * sw phase planes P[pr, pc][a, b] = x[a sh + pr - ph,
    b sw + pc - pw] (-inf outside the image: never above -FLT_MAX); tap (u, v) of output (i, j) is then
    P[u % sh, v % sw][i + u // sh, j + v // sw], so with output rows padded to the phase-plane width wd each tap
    is one pass over all outputs, visited in Caffe's tap order (strictly greater wins)."""
    h, w = x.shape[1], x.shape[2]
    oh, ow = top.shape[1], top.shape[2]
    hd, wd = oh + (kh - 1) // sh, ow + (kw - 1) // sw
    plane, nf = hd * wd, oh * wd
    buf = np.full(sh * sw * plane + wd, NEG_INF)   # + wd: the padded lanes of the last row read past the end
    best, arg = np.empty(nf, np.float32), np.empty(nf, np.int32)
    start = np.empty(nf, np.int32)                 # flat index of each (padded) output's window origin
    for i in range(oh):
        for j in range(wd):
            start[i * wd + j] = i * sh * w + j * sw
    xf, tf, mf = x.reshape(-1), top.reshape(-1), mask.reshape(-1)
    usw = uint64(sw)
    for q in range(q0, q1):
        for pr in range(sh):
            for pc in range(sw):
                lo, hi = _valid(wd, sw, pc - pw, w)
                for a in range(hd):
                    y = a * sh + pr - ph
                    row = uint64((pr * sw + pc) * plane + a * wd)
                    if 0 <= y < h:
                        src = uint64(q * h * w + y * w + pc - pw)
                        for b in range(uint64(lo), uint64(hi)):
                            buf[row + b] = xf[src + b * usw]
        for f in range(uint64(nf)):
            best[f], arg[f] = -FLT_MAX, -1
        for u in range(kh):
            for v in range(kw):
                src = uint64(((u % sh) * sw + v % sw) * plane + (u // sh) * wd + v // sw)
                c = np.int32((u - ph) * w + v - pw)
                for f in range(uint64(nf)):
                    val, b = buf[src + f], best[f]
                    t = val > b
                    best[f] = val if t else b
                    arg[f] = start[f] + c if t else arg[f]
        for i in range(oh):
            o, s = uint64((q * oh + i) * ow), uint64(i * wd)
            for j in range(uint64(ow)):
                tf[o + j], mf[o + j] = best[s + j], arg[s + j]


@njit(cache=True, nogil=True, error_model="numpy")
def _valid(n_out, stride, offset, size):
    """[lo, hi): the positions b with 0 <= b * stride + offset < size."""
    lo = 0 if offset >= 0 else min(n_out, (stride - 1 - offset) // stride)
    hi = 0 if offset >= size else min(n_out, (size - offset + stride - 1) // stride)
    return lo, max(lo, hi)


@njit(cache=True, nogil=True, error_model="numpy")
def max_backward(dy, mask, dx, q0, q1):
    """dx (NC, H, W) = each dy routed to its mask cell, overwritten; mask entries outside [0, H W) are skipped
    (-1 marks a window with no value above -FLT_MAX). `mask` may be float (the mask top): C truncation."""
    hw = dx.shape[1] * dx.shape[2]
    n_out = dy.shape[1] * dy.shape[2]
    dxf, dyf, mf = dx.reshape(-1), dy.reshape(-1), mask.reshape(-1)
    for q in range(q0, q1):
        base, o = uint64(q * hw), uint64(q * n_out)
        for k in range(uint64(hw)):
            dxf[base + k] = 0.0
        for k in range(uint64(n_out)):
            m = int(mf[o + k])
            if 0 <= m < hw:
                dxf[base + uint64(m)] += dyf[o + k]


@njit(cache=True, nogil=True, error_model="numpy")
def _window_sum(xf, base, hs, he, ws, we, w):
    acc = np.float32(0.0)
    for y in range(hs, he):
        r = base + uint64(y * w)
        for c in range(ws, we):
            acc += xf[r + uint64(c)]
    return acc


@njit(cache=True, nogil=True, error_model="numpy")
def ave_forward(x, kh, kw, sh, sw, ph, pw, top, q0, q1):
    """top (NC, OH, OW) = window sums of x (NC, H, W) / pool size; four interior windows side by side."""
    h, w = x.shape[1], x.shape[2]
    oh, ow = top.shape[1], top.shape[2]
    xf, tf = x.reshape(-1), top.reshape(-1)
    jlo = min(ow, (pw + sw - 1) // sw)
    jhi = max(jlo, min(ow, (w - kw + pw) // sw + 1))
    s1, s2, s3 = uint64(sw), uint64(2 * sw), uint64(3 * sw)
    for q in range(q0, q1):
        base = uint64(q * h * w)
        for i in range(oh):
            hs = i * sh - ph
            he = min(hs + kh, h + ph)
            hsize = he - hs
            hs, he = max(hs, 0), min(he, h)
            o = uint64((q * oh + i) * ow)
            j = 0
            while j < ow:
                if j >= jlo and j + 4 <= jhi:
                    a0 = a1 = a2 = a3 = np.float32(0.0)
                    for y in range(hs, he):
                        p = base + uint64(y * w + j * sw - pw)
                        for dx in range(uint64(kw)):
                            a0 += xf[p + dx]
                            a1 += xf[p + dx + s1]
                            a2 += xf[p + dx + s2]
                            a3 += xf[p + dx + s3]
                    size = np.float32(hsize * kw)
                    oj = o + uint64(j)
                    tf[oj], tf[oj + 1], tf[oj + 2], tf[oj + 3] = a0 / size, a1 / size, a2 / size, a3 / size
                    j += 4
                else:
                    ws = j * sw - pw
                    we = min(ws + kw, w + pw)
                    size = np.float32(hsize * (we - ws))
                    tf[o + uint64(j)] = _window_sum(xf, base, hs, he, max(ws, 0), min(we, w), w) / size
                    j += 1


@njit(cache=True, nogil=True, error_model="numpy")
def ave_backward(dy, kh, kw, sh, sw, ph, pw, dx, q0, q1):
    """dx (NC, H, W): every cell of a window gets dy / pool size, overwritten; four interior windows side by
    side (a cell shared by windows sums them in another order than Caffe: float rounding only)."""
    h, w = dx.shape[1], dx.shape[2]
    oh, ow = dy.shape[1], dy.shape[2]
    dxf, dyf = dx.reshape(-1), dy.reshape(-1)
    jlo = min(ow, (pw + sw - 1) // sw)
    jhi = max(jlo, min(ow, (w - kw + pw) // sw + 1))
    s1, s2, s3 = uint64(sw), uint64(2 * sw), uint64(3 * sw)
    for q in range(q0, q1):
        base = uint64(q * h * w)
        for k in range(uint64(h * w)):
            dxf[base + k] = 0.0
        for i in range(oh):
            hs = i * sh - ph
            he = min(hs + kh, h + ph)
            hsize = he - hs
            hs, he = max(hs, 0), min(he, h)
            o = uint64((q * oh + i) * ow)
            j = 0
            while j < ow:
                if j >= jlo and j + 4 <= jhi:
                    size = np.float32(hsize * kw)
                    oj = o + uint64(j)
                    g0, g1, g2, g3 = dyf[oj] / size, dyf[oj + 1] / size, dyf[oj + 2] / size, dyf[oj + 3] / size
                    for y in range(hs, he):
                        p = base + uint64(y * w + j * sw - pw)
                        for dx in range(uint64(kw)):
                            dxf[p + dx] += g0
                            dxf[p + dx + s1] += g1
                            dxf[p + dx + s2] += g2
                            dxf[p + dx + s3] += g3
                    j += 4
                else:
                    ws = j * sw - pw
                    we = min(ws + kw, w + pw)
                    g = dyf[o + uint64(j)] / np.float32(hsize * (we - ws))
                    for y in range(hs, he):
                        r = base + uint64(y * w)
                        for c in range(max(ws, 0), min(we, w)):
                            dxf[r + uint64(c)] += g
                    j += 1
