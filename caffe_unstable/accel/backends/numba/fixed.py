"""float <-> fixed conversions of the numba backend, fused with the device layouts where they are hot
(quant.float_to_fixed / fixed_to_float and layouts.py are the references), and the weight-change check."""
import numpy as np
from numba import njit


@njit(cache=True, nogil=True, error_model="numpy")
def _to_fixed(v, scale, lo, hi):
    """clamp(round_half_away_from_zero(v scale)) in float64 (quant.float_to_fixed); NaN -> 0. Branch-free
    (selects), so the loops that call it vectorise."""
    u = np.float64(v) * scale
    u = min(max(u, lo - 1.0), hi + 1.0)
    r = np.trunc(u + np.copysign(0.5, u))
    r = min(max(r, np.float64(lo)), np.float64(hi))
    return np.int64(r) if r == r else np.int64(0)


@njit(cache=True, nogil=True, error_model="numpy")
def float_to_fixed_flat(x, scale, lo, hi, out, a0, a1):
    for i in range(a0, a1):
        out[i] = _to_fixed(x[i], scale, lo, hi)


@njit(cache=True, nogil=True, error_model="numpy")
def fixed_to_float_flat(q, scale, out, a0, a1):
    for i in range(a0, a1):
        out[i] = np.float32(np.float64(q[i]) * scale)


@njit(cache=True, nogil=True, error_model="numpy")
def float_to_conv_input(x, scale, group, out, a0, a1):
    """NCHW float32 -> quantised device conv input (N, group, Cb, H, W, VEC); padded channels 0. Work item a =
    (n, j, b): one channel-vector block, read plane by plane (contiguous)."""
    nimg, c, h, w = x.shape
    cb, vec = out.shape[2], out.shape[5]
    cg = c // group
    for a in range(a0, a1):
        n, j, b = a // (group * cb), (a // cb) % group, a % cb
        for v in range(vec):
            ch = b * vec + v
            if ch >= cg:
                for y in range(h):
                    for xo in range(w):
                        out[n, j, b, y, xo, v] = 0
                continue
            for y in range(h):
                for xo in range(w):
                    out[n, j, b, y, xo, v] = _to_fixed(x[n, j * cg + ch, y, xo], scale, -128, 127)


@njit(cache=True, nogil=True, error_model="numpy")
def float_to_activations(x, scale, out, a0, a1):
    """NCHW float32 -> quantised device activations (N, Cb, H, W, VEC); padded channels 0. Work item (n, b)."""
    nimg, c, h, w = x.shape
    cb, vec = out.shape[1], out.shape[4]
    for a in range(a0, a1):
        n, b = a // cb, a % cb
        for v in range(vec):
            ch = b * vec + v
            for y in range(h):
                for xo in range(w):
                    out[n, b, y, xo, v] = _to_fixed(x[n, ch, y, xo], scale, -128, 127) if ch < c else 0


@njit(cache=True, nogil=True, error_model="numpy")
def activations_to_float(dev, scale, out, a0, a1):
    """Device activations (N, Cb, H, W, VEC) int8 -> NCHW float32 q 2^-F (out's C channels)."""
    nimg, c, h, w = out.shape
    vec = dev.shape[4]
    for nc in range(a0, a1):
        n, ch = nc // c, nc % c
        for y in range(h):
            for xo in range(w):
                out[n, ch, y, xo] = np.float32(np.float64(dev[n, ch // vec, y, xo, ch % vec]) * scale)


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
def same_fixed(w, q, scale, low, up, flag, a0, a1):
    """flag[0] = 0 when float_to_fixed(w[i]) != q[i] for some i in [a0, a1) (flat arrays; scale = 2^frac as a
    float32, so w scale is exact). Blocks of 4096 vectorised comparisons, stopping at the first block with a
    difference. A NaN weight always counts as a difference (a harmless re-upload)."""
    for s in range(a0, a1, 4096):
        if flag[0] == 0:
            return
        bad = 0
        for i in range(s, min(s + 4096, a1)):
            x = w[i] * scale
            k = np.int64(q[i]) + 128
            bad += not (x >= low[k] and x <= up[k])
        if bad:
            flag[0] = 0
            return
