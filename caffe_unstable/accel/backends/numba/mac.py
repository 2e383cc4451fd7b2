"""The MAC-order conv path of the numba backend: faults.md §1.2's register loop, compiled (pipecnn.md §2.2-§2.4).

Per output (n, o, y, x) and lane: for t in [0, L) in PipeCNN's step order (channel-vector group, ky, kx; kx
fastest) m_t = the VEC-wide dot product formed as VEC/4 four-product DSP results added in order; A_(t mod P) +=
m_t (int32, wrapping); S = A_(L-1) + A_(L-2) + ... + A_(L-P); then the §1.5 conversion and fused ReLU.

This is where MAC-register faults act: `ev_*` are a layer's records (geometry.MAC_EVENT_DTYPE, sorted by output),
applied as flips of m_t (site 0 'product', before the accumulate add), A_t (site 1 'accumulator', after it) and S
(site 2 'final', before the conversion), each read from the register's current (faulty) value. Registers hold int32
values; `width_*` only choose the sign bit of a flip (faults.md §1.1). Empty event arrays give the clean result,
which equals conv.py's GEMM path exactly.
"""
import numpy as np
from numba import njit

from .threads import split


@njit(cache=True, nogil=True, error_model="numpy")
def _wrap32(v):
    return ((v + 2147483648) & 4294967295) - 2147483648


@njit(cache=True, nogil=True, error_model="numpy")
def _flip(v, b, w):
    """faults.md §1.2 flip(v, b, w) on an int32 value held in an int64."""
    bit = (v >> b) & 1
    if b < w - 1:
        d = -(np.int64(1) << b) if bit else (np.int64(1) << b)
    else:
        d = (np.int64(1) << (w - 1)) if bit else -(np.int64(1) << (w - 1))
    return _wrap32(v + d)


@njit(cache=True, nogil=True, error_model="numpy")
def _convert(acc, rb, n, relu):
    # the §1.5 closed form; a copy of conv.py's (numba's cache does not see edits to other modules)
    r1 = (acc + (np.int64(1) << (n - 1))) >> n
    if r1 >= 128:
        y = 127
    elif r1 <= -129:
        y = -128
    else:
        y = ((r1 + rb + 128) & 255) - 128
    if relu and y < 0:
        y = 0
    return y


@njit(cache=True, nogil=True, error_model="numpy")
def conv_mac(x, wdev, rb, o_total, og, po, pipe, sh, sw, ph, pw, ho, wo, nsh, relu,
             ev_key, ev_t, ev_site, ev_bit, width_p, width_a, width_f, out, o0, o1):
    """x (N, group, Cb, H, W, VEC) int8, wdev (Z, Cb, Kh, Kw, LANE, VEC) int8, rb (O,) the rounded bias terms ->
    out (N, Ob, Ho, Wo, VEC) int8. ev_key = ((n O + o) Ho + y) Wo + x per record, ascending."""
    nimg, cb, h, w, vec = x.shape[0], x.shape[2], x.shape[3], x.shape[4], x.shape[5]
    kh, kw, lane = wdev.shape[2], wdev.shape[3], wdev.shape[4]
    steps = cb * kh * kw
    vecb = out.shape[4]
    for o in range(o0, o1):
        j = o // og
        op = o + po
        z, ln = op // lane, op % lane
        acc = np.zeros(pipe, np.int64)
        for n in range(nimg):
            for y in range(ho):
                for xo in range(wo):
                    key = ((n * o_total + o) * ho + y) * wo + xo
                    e0 = np.searchsorted(ev_key, key)
                    e1 = e0
                    while e1 < len(ev_key) and ev_key[e1] == key:
                        e1 += 1
                    acc[:] = 0
                    for t in range(steps):
                        gb = t // (kh * kw)
                        ky = (t % (kh * kw)) // kw
                        kx = t % kw
                        iy = y * sh - ph + ky
                        ix = xo * sw - pw + kx
                        m = np.int64(0)
                        if 0 <= iy < h and 0 <= ix < w:
                            for i in range(vec // 4):
                                d = np.int64(0)
                                for r in range(4):
                                    v = 4 * i + r
                                    d += np.int64(x[n, j, gb, iy, ix, v]) * np.int64(wdev[z, gb, ky, kx, ln, v])
                                m = _wrap32(m + d)
                        for e in range(e0, e1):
                            if ev_t[e] == t and ev_site[e] == 0:
                                m = _flip(m, np.int64(ev_bit[e]), width_p)
                        r = t % pipe
                        s = _wrap32(acc[r] + m)
                        for e in range(e0, e1):
                            if ev_t[e] == t and ev_site[e] == 1:
                                s = _flip(s, np.int64(ev_bit[e]), width_a)
                        acc[r] = s
                    total = acc[(steps - 1) % pipe]
                    for i in range(1, pipe):
                        if steps - 1 - i >= 0:
                            total = _wrap32(total + acc[(steps - 1 - i) % pipe])
                    for e in range(e0, e1):
                        if ev_site[e] == 2:
                            total = _flip(total, np.int64(ev_bit[e]), width_f)
                    out[n, o // vecb, y, xo, o % vecb] = _convert(total, rb[o], nsh, relu)


def event_arrays(events, geom):
    """The kernel's (key, t, site, bit) arrays from a MAC_EVENT_DTYPE array (None = no faults)."""
    if events is None or len(events) == 0:
        z = np.zeros(0, np.int64)
        return z, z, z, z
    g = geom
    key = ((events["n"].astype(np.int64) * g.O + events["o"]) * g.Ho + events["y"]) * g.Wo + events["x"]
    order = np.argsort(key, kind="stable")
    return (key[order], events["t"][order].astype(np.int64), events["site"][order].astype(np.int64),
            events["bit"][order].astype(np.int64))


def conv_mac_order(xdev, wdev, rb, stage, hw, events, out):
    g = stage.geom
    key, t, site, bit = event_arrays(events, g)
    """The register-level conv of `stage` (MAC fault records `events` or None) into device activations out."""
    split(conv_mac, g.O, g.N * g.O * g.Ho * g.Wo * g.L * g.vec, xdev, wdev, rb, g.O, g.Og, g.po, g.pipe, g.stride_h,
          g.stride_w, g.pad_h, g.pad_w, g.Ho, g.Wo, stage.fmt.n, stage.relu, key, t, site, bit, hw.width_product,
          hw.width_accumulator, hw.width_final, out)
