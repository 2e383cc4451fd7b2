"""float <-> fixed conversions of the numba backend, fused with the device layouts where they are hot
(quant.float_to_fixed / fixed_to_float and layouts.py are the references), and the weight-change check.

The layout kernels move one channel-vector block at a time: VEC input planes <-> one (H W, VEC) run. With VEC = 4
(the default build) the VEC lanes are spelled out, so LLVM sees a fixed interleave and vectorises the loop over
positions; other VEC go through the general loop."""
import numpy as np
from numba import njit, uint64


@njit(cache=True, nogil=True, error_model="numpy")
def _to_fixed(v, scale, lo, hi):
    """clamp(round_half_away_from_zero(v scale)) in float64 (quant.float_to_fixed); NaN -> 0. Branch-free
    (selects), so the loops that call it vectorise."""
    u = np.float64(v) * scale
    u = min(max(u, lo - 1.0), hi + 1.0)
    r = np.trunc(u + np.copysign(0.5, u))
    r = min(max(r, np.float64(lo)), np.float64(hi))
    r = r if r == r else 0.0
    return np.int32(r)


@njit(cache=True, nogil=True, error_model="numpy")
def _to_fixed32(v, scale, lo, hi):
    """_to_fixed in float32, for a scale 2^F that is a normal float32 (then v scale is exact, or underflows far
    below 0.5): twice as many lanes per vector. trunc(u) is exact, and so is the fraction u - trunc(u), which
    decides the rounding half away from zero without the inexact u + 0.5. NaN -> 0."""
    u = v * scale
    u = min(max(u, np.float32(lo - 1)), np.float32(hi + 1))
    r = np.float32(np.int32(u))
    d = u - r
    r = r + (np.float32(1) if d >= np.float32(0.5) else np.float32(0))
    r = r - (np.float32(1) if d <= np.float32(-0.5) else np.float32(0))
    r = min(max(r, np.float32(lo)), np.float32(hi))
    return np.int32(r) if u == u else np.int32(0)


@njit(cache=True, nogil=True, error_model="numpy")
def _normal32(scale):
    """Whether the float64 power of two `scale` is a normal float32 (the float32 kernels apply)."""
    return 1.1754943508222875e-38 <= scale <= 1.7014118346046923e38


@njit(cache=True, nogil=True, error_model="numpy")
def float_to_fixed_flat(x, scale, lo, hi, out, a0, a1):
    if _normal32(scale):
        s32 = np.float32(scale)
        for i in range(uint64(a0), uint64(a1)):
            out[i] = _to_fixed32(x[i], s32, lo, hi)
        return
    for i in range(uint64(a0), uint64(a1)):
        out[i] = _to_fixed(x[i], scale, lo, hi)


@njit(cache=True, nogil=True, error_model="numpy")
def fixed_to_float_flat(q, scale, out, a0, a1):
    for i in range(uint64(a0), uint64(a1)):
        out[i] = np.float32(np.float64(q[i]) * scale)


@njit(cache=True, nogil=True, error_model="numpy")
def _quantize_block(xf, src, nch, plane, scale, of, dst, vec):
    """of[dst + i vec + v] = float_to_fixed(xf[src + v plane + i]) for v < nch, 0 for nch <= v < vec; i < plane.
    One channel-vector block: nch source planes (contiguous, `plane` floats apart) into one VEC-interleaved run.
    Index arithmetic in uint64 throughout: numba turns uint64 mixed with int64 into float64."""
    p, d, sv = uint64(plane), uint64(dst), uint64(src)
    if vec == 4 and _normal32(scale):
        # lanes past nch read plane 0 again (valid memory) and store 0: no branch inside the loop
        s32 = np.float32(scale)
        s1 = sv + p if nch > 1 else sv
        s2 = sv + uint64(2) * p if nch > 2 else sv
        s3 = sv + uint64(3) * p if nch > 3 else sv
        k1, k2, k3 = np.int32(nch > 1), np.int32(nch > 2), np.int32(nch > 3)
        for i in range(p):
            o = d + uint64(4) * i
            of[o] = _to_fixed32(xf[sv + i], s32, -128, 127)
            of[o + uint64(1)] = _to_fixed32(xf[s1 + i], s32, -128, 127) * k1
            of[o + uint64(2)] = _to_fixed32(xf[s2 + i], s32, -128, 127) * k2
            of[o + uint64(3)] = _to_fixed32(xf[s3 + i], s32, -128, 127) * k3
        return
    uv = uint64(vec)
    for v in range(vec):
        dv = d + uint64(v)
        if v >= nch:
            for i in range(p):
                of[dv + uv * i] = 0
            continue
        s = sv + uint64(v) * p
        for i in range(p):
            of[dv + uv * i] = _to_fixed(xf[s + i], scale, -128, 127)


@njit(cache=True, nogil=True, error_model="numpy")
def float_to_conv_input(x, scale, group, out, a0, a1):
    """NCHW float32 -> quantised device conv input (N, group, Cb, H, W, VEC); padded channels 0. Work item a =
    (n, j, b): one channel-vector block."""
    nimg, c, h, w = x.shape
    cb, vec = out.shape[2], out.shape[5]
    cg = c // group
    plane = h * w
    xf, of = x.reshape(-1), out.reshape(-1)
    fast = _normal32(scale)
    s32 = np.float32(scale) if fast else np.float32(1)
    if plane == 1 and cg % vec == 0 and fast:
        # an FC layer's input without padded channels: the device layout is the NCHW order, one flat conversion
        for i in range(uint64(a0 * vec), uint64(a1 * vec)):
            of[i] = _to_fixed32(xf[i], s32, -128, 127)
        return
    if plane == 1:
        # an FC layer's input: each block is VEC consecutive values, too short for the per-block loops' set-up
        # (and for three integer divisions per block): (n, j, b) are counted along instead
        n, j, b = a0 // (group * cb), (a0 // cb) % group, a0 % cb
        for a in range(a0, a1):
            src, dst = n * c + j * cg + b * vec, a * vec
            for v in range(vec):
                ch = b * vec + v
                if ch >= cg:
                    of[dst + v] = 0
                elif fast:
                    of[dst + v] = _to_fixed32(xf[src + v], s32, -128, 127)
                else:
                    of[dst + v] = _to_fixed(xf[src + v], scale, -128, 127)
            b += 1
            if b == cb:
                b = 0
                j += 1
                if j == group:
                    j = 0
                    n += 1
        return
    for a in range(a0, a1):
        n, j, b = a // (group * cb), (a // cb) % group, a % cb
        nch = min(vec, cg - b * vec)
        _quantize_block(xf, (n * c + j * cg + b * vec) * plane, nch, plane, scale, of, a * plane * vec, vec)


@njit(cache=True, nogil=True, error_model="numpy")
def float_to_activations(x, scale, out, a0, a1):
    """NCHW float32 -> quantised device activations (N, Cb, H, W, VEC); padded channels 0. Work item (n, b)."""
    nimg, c, h, w = x.shape
    cb, vec = out.shape[1], out.shape[4]
    plane = h * w
    xf, of = x.reshape(-1), out.reshape(-1)
    for a in range(a0, a1):
        n, b = a // cb, a % cb
        nch = min(vec, c - b * vec)
        _quantize_block(xf, (n * c + b * vec) * plane, nch, plane, scale, of, a * plane * vec, vec)


@njit(cache=True, nogil=True, error_model="numpy")
def activations_to_float(dev, scale, out, a0, a1):
    """Device activations (N, Cb, H, W, VEC) int8 -> NCHW float32 q 2^-F (out's C channels). Work item a =
    (n, channel); a whole VEC = 4 block of items in [a0, a1) goes in one pass (the inverse interleave of
    _quantize_block), other items one plane each. q 2^-F is exact in float64 and rounded once to float32 as the
    reference does; with 2^-F a normal float32 the float32 product is that same correctly rounded value."""
    nimg, c, h, w = out.shape
    cb, vec = dev.shape[1], dev.shape[4]
    plane = h * w
    p, uv = uint64(plane), uint64(vec)
    df, of = dev.reshape(-1), out.reshape(-1)
    fast = _normal32(scale)
    s32 = np.float32(scale) if fast else np.float32(1)
    a = a0
    while a < a1:
        n, ch = a // c, a % c
        src = uint64((n * cb + ch // vec) * plane * vec + ch % vec)
        dst = uint64(a * plane)
        if fast and vec == 4 and ch % 4 == 0 and ch + 4 <= c and a + 4 <= a1:
            d1, d2, d3 = dst + p, dst + uint64(2) * p, dst + uint64(3) * p
            for i in range(p):
                o = src + uint64(4) * i
                of[dst + i] = np.float32(df[o]) * s32
                of[d1 + i] = np.float32(df[o + uint64(1)]) * s32
                of[d2 + i] = np.float32(df[o + uint64(2)]) * s32
                of[d3 + i] = np.float32(df[o + uint64(3)]) * s32
            a += 4
            continue
        for i in range(p):
            of[dst + i] = np.float32(np.float64(df[src + uv * i]) * scale)
        a += 1


def rounding_bounds(lo, hi):
    """float32 tables L, U indexed q + 128: x rounds (half away from zero) and saturates to q exactly when
    L[q] <= x <= U[q]; all bounds are float32 values, so the check needs no float64 (it vectorises)."""
    low = np.full(256, np.inf, np.float32)
    up = np.full(256, -np.inf, np.float32)
    f32 = np.float32
    for q in range(lo, hi + 1):
        if q == hi:
            u = f32(np.inf)
        else:
            u = np.nextafter(f32(q + 0.5), f32(-np.inf)) if q >= 0 else f32(q + 0.5)
        if q == lo:
            m = f32(-np.inf)
        else:
            m = f32(q - 0.5) if q > 0 else np.nextafter(f32(q - 0.5), f32(np.inf))
        low[q + 128], up[q + 128] = m, u
    return low, up


@njit(cache=True, nogil=True, error_model="numpy")
def _outside(w, q, scale, s, e):
    """How many i in [s, e) have w[i] scale outside the open interval (q[i] - 0.5, q[i] + 0.5): the values that
    surely round to q[i] are inside it (q +- 0.5 is exact in float32). A NaN is outside. Unsigned indices and an
    int64 count keep the loop vectorised."""
    bad = 0
    h = np.float32(0.5)
    for i in range(uint64(s), uint64(e)):
        x = w[i] * scale
        qf = np.float32(q[i])
        bad += 0 if (x > qf - h) & (x < qf + h) else 1
    return bad


@njit(cache=True, nogil=True, error_model="numpy")
def _mismatches(w, q, scale, low, up, s, e):
    """How many i in [s, e) do not round to q[i]: the exact check against the rounding_bounds tables (ties and
    saturation included)."""
    bad = 0
    for i in range(uint64(s), uint64(e)):
        x = w[i] * scale
        k = np.int64(q[i]) + 128
        bad += 1 if (x < low[k]) | (x > up[k]) | (x != x) else 0
    return bad


@njit(cache=True, nogil=True, error_model="numpy")
def same_fixed(w, q, scale, low, up, flag, a0, a1):
    """flag[0] = 0 when float_to_fixed(w[i]) != q[i] for some i in [a0, a1) (flat arrays; scale = 2^frac as a
    float32, so w scale is exact). Blocks of 4096, stopping at the first block with a difference. Each block is
    first screened with the open intervals (q - 0.5, q + 0.5), which need no table; only a block with values on
    or beyond an interval's ends (ties, saturated values, changes) is checked exactly against the tables (a
    gather per element, twice as slow). A NaN weight always counts as a difference (a harmless re-upload)."""
    for s in range(a0, a1, 4096):
        if flag[0] == 0:
            return
        e = min(s + 4096, a1)
        if _outside(w, q, scale, s, e) and _mismatches(w, q, scale, low, up, s, e):
            flag[0] = 0
            return
