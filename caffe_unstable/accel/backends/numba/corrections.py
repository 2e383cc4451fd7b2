"""Exact corrections of the clean GEMM sums for MAC flips and rate errors (faults.md §4.4, §5.6), in numba.

A flip changes a register by d = ±2^b (the sign-bit rule for narrow registers), and every later operation on it is
a modular int32 add, so d reaches S unchanged; a rate error adds -2^bit right after the accumulate add. So the
faulty S of an output is the clean S plus the deltas, each read from the register's current (faulty) value: for
`product` the step's dot product m_t plus earlier flips of it, for `accumulator` the clean chain prefix A_t
(m_t' summed over t' ≡ t mod P, t' <= t) plus every delta so far on chain t mod P. Only what an output's records
need is recomputed: VEC products for m_t, one chain prefix for A_t (extended incrementally when an output has
several records), never a whole layer.

`Corrector` is conv.conv_fast's sums_reader: from each GEMM block it only takes the clean sums of the faulted
outputs in it (each (image, channel)'s sorted run of outputs searched for the block's positions, no sort);
`finish` then computes their faulty sums in one pass over the outputs in plan order, on the ops' threads, and
writes their int8 values over the clean ones. The operands come from int8 copies, not from the GEMM's float
columns (4x larger, mostly evicted by then): the input zero-padded with its padded vec slots zeroed (made after
the GEMM, so it is in cache), and the weights in chain-major order (filter, chain, step), so a chain prefix is a
contiguous run of VEC-byte words (measured on CaffeNet at 10^-4.5, one thread: 75 -> 51 ms for 240k records).
Where the accumulator records' chain prefixes far outweigh the input (FC layers: a few positions, long chains), the
input side is made contiguous too (chain_columns: each position's window in chain-major order), so a prefix is
one byte dot product that LLVM makes pairwise 16-bit multiply-adds (CaffeNet's fc6: 4.0 -> 2.3 ms, one thread).
A single accumulator flip's prefix (most of them) is summed in the pre-pass over the unsettled outputs, a tight
loop that runs it about twice as fast as the output loop did (CaffeNet's conv2: 7.7 -> 5.7 ms, one thread).
Per faulted output it records whether the value changed and saturated.
"""
import numpy as np
from numba import njit, uint64

from .mac_run import flag_counts
from .threads import split


@njit(cache=True, nogil=True, error_model="numpy")
def _wrap32(v):
    return ((v + 2147483648) & 4294967295) - 2147483648


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _divmod(q, d, inv):
    """(q // d, q % d) for 0 <= q < 2^51 and d >= 1 through the float reciprocal inv = 1 / d, corrected by one
    either way: a 64-bit integer division by a run-time value costs tens of cycles here, and the keys of every
    faulted output are split several times."""
    est = np.int64(np.float64(q) * inv)
    r = q - est * d
    if r < 0:
        est -= 1
        r += d
    elif r >= d:
        est += 1
        r -= d
    return est, r


@njit(cache=True, nogil=True, error_model="numpy")
def _flip_delta(v, b, w):
    """The signed change flip(v, b, w) makes to int32 v (faults.md §1.2)."""
    bit = (v >> b) & 1
    if b < w - 1:
        return -(np.int64(1) << b) if bit else (np.int64(1) << b)
    return (np.int64(1) << (w - 1)) if bit else -(np.int64(1) << (w - 1))


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _convert_sat(acc, rb, n, relu):
    """(the int8 output of int32 sum acc, whether its rounded value saturates): the §1.5 closed form, a copy of
    conv.py's (numba's cache does not see edits to other modules), without branches."""
    r1 = (acc + (np.int64(1) << (n - 1))) >> n
    hi, lo = r1 >= 128, r1 <= -129
    y = np.int64(127) if hi else (np.int64(-128) if lo else ((r1 + rb + 128) & 255) - 128)
    if relu:
        y = max(y, np.int64(0))
    return y, np.int64(hi | lo)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _convert(acc, rb, n, relu):
    return _convert_sat(acc, rb, n, relu)[0]


@njit(cache=True, nogil=True, error_model="numpy")
def faulted_outputs(ev_key, rt_key):
    """The distinct output keys of two sorted key arrays, with each one's record range in both:
    (key, mac start, mac end, rate start, rate end)."""
    na, nb = len(ev_key), len(rt_key)
    keys = np.empty(na + nb, np.int64)
    rng = np.empty((na + nb, 4), np.int64)
    i = j = m = 0
    while i < na or j < nb:
        if j >= nb or (i < na and ev_key[i] <= rt_key[j]):
            key = ev_key[i]
        else:
            key = rt_key[j]
        i0, j0 = i, j
        while i < na and ev_key[i] == key:
            i += 1
        while j < nb and rt_key[j] == key:
            j += 1
        keys[m] = key
        rng[m, 0], rng[m, 1], rng[m, 2], rng[m, 3] = i0, i, j0, j
        m += 1
    return keys[:m], rng[:m]


def chain_weights(wdev, geom):
    """The real filters' weights in chain-major order, (O, P, I, VEC/4) int32 words, I = ceil(L / P): word k of
    entry (o, r, i) holds the weights of vec slots 4k..4k+3 of step t = r + i P (little-endian bytes; zeros past
    L), from the device weights (Z, Cb, Kh, Kw, LANE, VEC). A chain prefix is then one contiguous run."""
    g = geom
    P, I = g.pipe, -(-g.L // g.pipe)
    steps = wdev.transpose(0, 4, 1, 2, 3, 5).reshape(g.Op, g.L, g.vec)[g.po:g.po + g.O]
    wc = np.zeros((g.O, I * P, g.vec), np.int8)
    wc[:, :g.L] = steps
    wc = wc.reshape(g.O, I, P, g.vec).transpose(0, 2, 1, 3)
    return np.ascontiguousarray(wc).view(np.int32)


def chain_offsets(geom):
    """(P, I) int32: the offset, in int32 words of padded_input, of step t = r + i P's input relative to its
    output's window corner, ((gb Hp + ky) Wp + kx) VEC/4 (0 past L, where the weights are 0)."""
    g = geom
    P, I = g.pipe, -(-g.L // g.pipe)
    t = np.arange(I * P, dtype=np.int64)
    gb, ky, kx = t // (g.Kh * g.Kw), (t // g.Kw) % g.Kh, t % g.Kw
    off = ((gb * (g.H + 2 * g.pad_h) + ky) * (g.W + 2 * g.pad_w) + kx) * (g.vec // 4)
    off[g.L:] = 0
    # int32: half the bytes of int64 to load per chain step (measured about 10 % faster chain sums)
    return np.ascontiguousarray(off.reshape(I, P).T.astype(np.int32))


@njit(cache=True, nogil=True)
def _slots_clear(x, first):
    """Whether vec slots first.. of the last channel-vector group of device input x are all 0: an OR over its
    int32 words (per word of a slot vector), masked to those bytes at the end, so that the loop vectorises."""
    n, group, cb, h, w, vec = x.shape
    nw = vec // 4
    xw = x.reshape(-1).view(np.int32)
    words = np.zeros(nw, np.int32)
    for a in range(n * group):
        base = (a * cb + cb - 1) * h * w * nw
        if nw == 1:
            part = np.int32(0)
            for i in range(h * w):
                part |= xw[base + i]
            words[0] |= part
        else:
            for i in range(h * w):
                for k in range(nw):
                    words[k] |= xw[base + i * nw + k]
    for b in range(first, vec):
        if (words[b // 4] >> (8 * (b % 4))) & 255:
            return False
    return True


def padded_input(x, geom):
    """The device input (N', group, Cb, H, W, VEC) int8 zero-padded by pad on every side, with the padded vec
    slots (channels >= Cg) zeroed: every operand the §1.2 loop treats as 0 is 0 here (memory faults may have
    flipped padding bytes of x), so the corrections read whole VEC-byte words without bounds or slot checks."""
    g = geom
    n, group, cb, h, w, vec = x.shape
    if g.pad_h == g.pad_w == 0 and (g.Cg == cb * vec or _slots_clear(x, g.Cg - (cb - 1) * vec)):
        return np.ascontiguousarray(x)          # nothing to pad or zero (CaffeNet's conv1 and FC layers): x itself
    xp = np.zeros((n, group, cb, h + 2 * g.pad_h, w + 2 * g.pad_w, vec), np.int8)
    xp[:, :, :, g.pad_h:g.pad_h + h, g.pad_w:g.pad_w + w] = x
    if g.Cg < cb * vec:
        xp[:, :, cb - 1, :, :, g.Cg - (cb - 1) * vec:] = 0
    return xp


@njit(cache=True, nogil=True, error_model="numpy")
def _dot4(a, b):
    """The dot product of the four signed bytes of int32 words a and b (slot v in byte v). Each byte is shifted
    to the top and back arithmetically; np.int32 keeps the shifts 32-bit (numba widens them to int64)."""
    a0, b0 = np.int32(a << 24) >> 24, np.int32(b << 24) >> 24
    a1, b1 = np.int32(a << 16) >> 24, np.int32(b << 16) >> 24
    a2, b2 = np.int32(a << 8) >> 24, np.int32(b << 8) >> 24
    return np.int32(a0 * b0 + a1 * b1 + a2 * b2 + (a >> 24) * (b >> 24))


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _chain_sum(xw, xbase, off, r, wcw, wbase, nw, i0, i1):
    """Sum over entries i in [i0, i1) of chain r of the clean dot products m_t, modulo 2^32 (callers use it only
    modulo 2^32): the input words xw[xbase + off[r, i] + k] against the weight words wcw[wbase + i nw + k],
    k < nw = VEC/4. With VEC = 4 a step is one word of each, and the loop vectorises (a gather of the inputs).
    Inlined, and off indexed in two dimensions: a call and a row view of off cost more than a short chain."""
    acc = np.int32(0)
    if nw == 1:
        for i in range(i0, i1):
            acc = np.int32(acc + _dot4(np.int32(xw[xbase + off[r, i]]), np.int32(wcw[wbase + i])))
    else:
        for i in range(i0, i1):
            for k in range(nw):
                acc = np.int32(acc + _dot4(np.int32(xw[xbase + off[r, i] + k]), np.int32(wcw[wbase + i * nw + k])))
    return np.int64(acc)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _step_sum(xw, xbase, off, r, wcw, wbase, nw, i):
    """m_t of entry i of chain r, as _chain_sum over [i, i + 1) but without a loop when VEC = 4: a vectorised
    loop's set-up costs more than one step (a product flip's whole correction: 70 -> 46 ns per output)."""
    if nw == 1:
        return np.int64(_dot4(np.int32(xw[xbase + off[r, i]]), np.int32(wcw[wbase + i])))
    return _chain_sum(xw, xbase, off, r, wcw, wbase, nw, i, i + 1)


@njit(cache=True, nogil=True)
def count_equal(a, v):
    """The number of entries of a equal to v (a record field, a strided view: no temporary array)."""
    c = 0
    for i in range(len(a)):
        c += a[i] == v
    return c


CHAIN_COLUMNS_GAIN = 5.0           # chain_columns pays when the chain steps it saves exceed this many times its
                                    # build (CaffeNet's FC layers: 10-100; conv3: 2.3, a loss since the pre-pass)
CHAIN_COLUMNS_BYTES = 1 << 26       # and its array stays below this size


@njit(cache=True, nogil=True, error_model="numpy")
def chain_columns(xp, off, hw, wo, sh, sw, xc, p0, p1):
    """xc (rows group, P, I VEC/4) int32 words: row p group + j, for position p % hw of image p // hw of xp
    (padded_input) and group j, holds in entry (r, i) the input word(s) of step t = r + i P of that window (zeros
    past L: off is 0 there, and so are the weights), so that every chain prefix of every output at that position
    is one contiguous run (rows [p0, p1))."""
    group, cb, hp, wpd, nw = xp.shape[1], xp.shape[2], xp.shape[3], xp.shape[4], xp.shape[5] // 4
    xw = xp.reshape(-1).view(np.int32)
    pipe, ni = off.shape[0], off.shape[1]
    xcf = xc.reshape(-1)
    for p in range(p0, p1):
        n, q = p // hw, p % hw
        y, x = q // wo, q % wo
        d = p * group * pipe * ni * nw
        for j in range(group):
            base = ((n * group + j) * cb * hp * wpd + y * sh * wpd + x * sw) * nw
            if nw == 1:
                for r in range(pipe):
                    for i in range(ni):
                        xcf[d + i] = xw[base + off[r, i]]
                    d += ni
            else:
                for r in range(pipe):
                    for i in range(ni):
                        src = base + off[r, i]
                        for k in range(nw):
                            xcf[d + k] = xw[src + k]
                        d += nw


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _run_dot(x8, xb, w8, wb, n):
    """The dot product of n signed bytes at x8[xb:] and w8[wb:], modulo 2^32 (int32 arithmetic throughout, so
    LLVM makes it pairwise multiply-adds of 16-bit lanes, a few times faster than _dot4 per word)."""
    acc = np.int32(0)
    for i in range(uint64(n)):
        acc = np.int32(acc + np.int32(np.int32(x8[uint64(xb) + i]) * np.int32(w8[uint64(wb) + i])))
    return np.int64(acc)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _prefix_sum(xw, xbase, off, r, wcw, wc8, o, pipe, ni, nw, i0, i1, xc8, crow):
    """The clean chain sum of entries [i0, i1) of chain r of output channel o at a position: from the chain-major
    columns xc8 (row crow) when they were made (crow >= 0), else through off from the padded input."""
    if crow >= 0:
        vec = nw * 4
        return _run_dot(xc8, ((crow * pipe + r) * ni + i0) * vec, wc8, ((o * pipe + r) * ni + i0) * vec,
                        (i1 - i0) * vec)
    return _chain_sum(xw, xbase, off, r, wcw, (o * pipe + r) * ni * nw, nw, i0, i1)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _single(fo_rng, f):
    """Whether faulted output f has exactly one MAC-flip record and no rate record."""
    return (fo_rng[f, 1] - fo_rng[f, 0] == 1) & (fo_rng[f, 2] == fo_rng[f, 3])


@njit(cache=True, nogil=True, error_model="numpy")
def correct_outputs(xp, wc, off, geo, fo_key, fo_rng, fo_clean, rel_of, ev_t, ev_site, ev_bit, rt_t, rt_bit, rb,
                    nsh, relu, widths, out, fo_flags, xc, i0, i1):
    """Faulted outputs [i0, i1) of fo_key (sorted keys ((n O + o) Ho + y) Wo + x): the faulty int32 sum from the
    clean one (fo_clean) and the records (faults.md §4.4, §5.6), written as int8 into device activations out
    (N', Ob, Ho, Wo, VEC); fo_flags = 2 if the int8 output changed, | 4 if it saturated. rel_of maps a launch
    image to its row of x and out (-1: not in this run); geo: (Kh, Kw, sh, sw, ph, pw, O, Og, Ho, Wo, P)."""
    sh, sw = geo[2], geo[3]
    o_total, og, ho, wo, pipe = geo[6], geo[7], geo[8], geo[9], geo[10]
    group, cb, hp, wpd, nw = xp.shape[1], xp.shape[2], xp.shape[3], xp.shape[4], xp.shape[5] // 4
    xw = xp.reshape(-1).view(np.int32)
    wcw = wc.reshape(-1)
    ni = wc.shape[2]
    wp, wa, wf = widths[0], widths[1], widths[2]
    vec_out = out.shape[4]
    xc8 = xc.reshape(-1).view(np.int8)
    wc8 = wcw.view(np.int8)
    use_xc = xc.shape[0] > 0
    D = np.zeros(pipe, np.int64)
    pre_t = np.zeros(pipe, np.int64)
    pre_v = np.zeros(pipe, np.int64)
    i_wo, i_ho, i_o, i_og, i_pipe, i_vo = 1.0 / wo, 1.0 / ho, 1.0 / o_total, 1.0 / og, 1.0 / pipe, 1.0 / vec_out
    # First each output's coordinates, and whether it is settled: one accumulator flip of bit b changes S by +2^b
    # or -2^b, and when both give the same int8 value (and saturation) its chain prefix is not needed (a third of
    # CaffeNet's at 10^-4.5; a product flip's m_t costs less than the test). Then, in a loop of their own, the m_t
    # of the first record of each unsettled output at the product site and the chain prefix of each single
    # accumulator flip: their operands are scattered over the layer, and here the loads of many outputs overlap.
    # Then the outputs: one flip (most of them) straight onto S, several through the general loop over chains and
    # steps.
    cnt = i1 - i0
    c_n, c_o, c_y, c_x = (np.empty(cnt, np.int64), np.empty(cnt, np.int64), np.empty(cnt, np.int64),
                          np.empty(cnt, np.int64))
    c_base, c_m0, c_set = np.empty(cnt, np.int64), np.empty(cnt, np.int64), np.empty(cnt, np.int64)
    last = len(ev_t) - 1
    unsettled = 0
    for c in range(cnt):
        q, xo = _divmod(fo_key[i0 + c], wo, i_wo)
        q, y = _divmod(q, ho, i_ho)
        img, o = _divmod(q, o_total, i_o)
        n = rel_of[img]
        j, _ = _divmod(o, og, i_og)
        c_base[c] = ((max(n, 0) * group + j) * cb * hp * wpd + y * sh * wpd + xo * sw) * nw
        c_n[c], c_o[c], c_y[c], c_x[c] = n, o, y, xo
        e0 = min(fo_rng[i0 + c, 0], last)               # its first MAC record (any record: a read is harmless)
        site0 = ev_site[e0] if e0 >= 0 else 2
        c_set[c] = -1
        if site0 == 1:        # (the sites of a plan's records are mostly one: a predictable branch)
            span = np.int64(1) << np.int64(ev_bit[e0])
            clean = fo_clean[i0 + c]
            y_lo, s_lo = _convert_sat(clean - span, rb[o], nsh, relu)
            y_hi, s_hi = _convert_sat(clean + span, rb[o], nsh, relu)
            one = ((fo_rng[i0 + c, 1] - fo_rng[i0 + c, 0] == 1) & (fo_rng[i0 + c, 2] == fo_rng[i0 + c, 3])
                   & (clean - span >= -2147483648) & (clean + span <= 2147483647))
            y_clean = _convert_sat(clean, rb[o], nsh, relu)[0]
            # settled: (int8 value + 256) | flags << 16; else -1
            if one & (y_lo == y_hi) & (s_lo == s_hi):
                c_set[c] = (y_lo + 256) | (((y_lo != y_clean) * 2 + s_lo * 4) << 16)
        settled = c_set[c] >= 0
        c_m0[unsettled] = c
        unsettled += not settled
    # A single accumulator flip's chain prefix is summed here too (about twice as fast as inside the output loop
    # below, measured on CaffeNet's conv2); from the chain columns in a loop of its own (inside this one, that
    # test made it 10 % slower).
    c_uns = c_m0[:unsettled].copy()
    for u in range(unsettled):
        c = c_uns[u]
        e0 = min(fo_rng[i0 + c, 0], last)
        site0 = ev_site[e0] if e0 >= 0 else 2
        t0, r0 = _divmod(np.int64(ev_t[e0]) if e0 >= 0 else np.int64(0), pipe, i_pipe)
        if site0 == 0:
            c_m0[u] = _step_sum(xw, c_base[c], off, r0, wcw, (c_o[c] * pipe + r0) * ni * nw, nw, t0)
        elif (site0 == 1) & _single(fo_rng, i0 + c) & (c_n[c] >= 0) & (not use_xc):
            c_m0[u] = _chain_sum(xw, c_base[c], off, r0, wcw, (c_o[c] * pipe + r0) * ni * nw, nw, 0, t0 + 1)
        else:
            c_m0[u] = 0
    for u in range(unsettled if use_xc else 0):
        c = c_uns[u]
        e0 = min(fo_rng[i0 + c, 0], last)
        if e0 >= 0 and ev_site[e0] == 1 and _single(fo_rng, i0 + c) and c_n[c] >= 0:
            t0, r0 = _divmod(np.int64(ev_t[e0]), pipe, i_pipe)
            crow = ((c_n[c] * ho + c_y[c]) * wo + c_x[c]) * group + _divmod(c_o[c], og, i_og)[0]
            c_m0[u] = _prefix_sum(xw, c_base[c], off, r0, wcw, wc8, c_o[c], pipe, ni, nw, 0, t0 + 1, xc8, crow)
    u = 0
    for f_i in range(i0, i1):
        n, o, y, xo, xbase = c_n[f_i - i0], c_o[f_i - i0], c_y[f_i - i0], c_x[f_i - i0], c_base[f_i - i0]
        if c_set[f_i - i0] >= 0:
            if n >= 0:
                ob, oi = _divmod(o, vec_out, i_vo)
                out[n, ob, y, xo, oi] = (c_set[f_i - i0] & 65535) - 256
                fo_flags[f_i] = c_set[f_i - i0] >> 16
            continue
        m0 = c_m0[u]
        u += 1
        if n < 0:
            continue
        e, e1, f, f1 = fo_rng[f_i, 0], fo_rng[f_i, 1], fo_rng[f_i, 2], fo_rng[f_i, 3]
        if e1 - e == 1 and f == f1 and ev_site[e] != 2:
            # one product or accumulator flip (most faulted outputs): its delta straight onto S
            clean = fo_clean[f_i]
            if ev_site[e] == 0:
                d = _flip_delta(_wrap32(m0), np.int64(ev_bit[e]), wp)
            else:
                d = _flip_delta(_wrap32(m0), np.int64(ev_bit[e]), wa)       # its chain prefix, read above
            s = _wrap32(clean + d)
            yv, sat = _convert_sat(s, rb[o], nsh, relu)
            ob, oi = _divmod(o, vec_out, i_vo)
            out[n, ob, y, xo, oi] = yv
            fo_flags[f_i] = (yv != _convert(clean, rb[o], nsh, relu)) * 2 + sat * 4
            continue
        crow = ((n * ho + y) * wo + xo) * group + _divmod(o, og, i_og)[0] if use_xc else -1   # (chain columns row)
        for r in range(pipe):
            D[r] = 0
            pre_t[r] = r - pipe
            pre_v[r] = 0
        e, e1, f, f1 = fo_rng[f_i, 0], fo_rng[f_i, 1], fo_rng[f_i, 2], fo_rng[f_i, 3]
        while True:
            while e < e1 and ev_site[e] == 2:           # final records: applied to S at the end
                e += 1
            t = ev_t[e] if e < e1 else -1
            if f < f1 and (t < 0 or rt_t[f] < t):
                t = rt_t[f]
            if t < 0:
                break
            ti, r = _divmod(t, pipe, i_pipe)
            dm = np.int64(0)
            mt = np.int64(0)
            have_m = False
            while e < e1 and (ev_site[e] == 2 or (ev_t[e] == t and ev_site[e] == 0)):
                if ev_site[e] == 0:
                    if not have_m:
                        if e == fo_rng[f_i, 0]:
                            mt = m0                   # the output's first record: read above
                        else:
                            mt = _step_sum(xw, xbase, off, r, wcw, (o * pipe + r) * ni * nw, nw, ti)
                        have_m = True
                    d = _flip_delta(_wrap32(mt + dm), np.int64(ev_bit[e]), wp)
                    dm += d
                    D[r] += d
                e += 1
            while f < f1 and rt_t[f] == t:
                D[r] -= np.int64(1) << rt_bit[f]
                f += 1
            while e < e1 and (ev_site[e] == 2 or (ev_t[e] == t and ev_site[e] == 1)):
                if ev_site[e] == 1:
                    if pre_t[r] < t:
                        pre_v[r] += _prefix_sum(xw, xbase, off, r, wcw, wc8, o, pipe, ni, nw, pre_t[r] // pipe + 1,
                                                ti + 1, xc8, crow)
                        pre_t[r] = t
                    D[r] += _flip_delta(_wrap32(pre_v[r] + D[r]), np.int64(ev_bit[e]), wa)
                e += 1
        clean = fo_clean[f_i]
        s = clean
        for r in range(pipe):
            s += D[r]
        s = _wrap32(s)
        for e in range(fo_rng[f_i, 0], fo_rng[f_i, 1]):
            if ev_site[e] == 2:
                s = _wrap32(s + _flip_delta(s, np.int64(ev_bit[e]), wf))
        yv, sat = _convert_sat(s, rb[o], nsh, relu)
        ob, oi = _divmod(o, vec_out, i_vo)
        out[n, ob, y, xo, oi] = yv
        fo_flags[f_i] = (yv != _convert(clean, rb[o], nsh, relu)) * 2 + sat * 4


@njit(cache=True, nogil=True, error_model="numpy")
def channel_starts(fo_key, hw, channels):
    """For sorted output keys ((n O + o) Ho + y) Wo + x: start (channels + 1,), the faulted outputs of image n,
    channel o being start[n O + o] .. start[n O + o + 1] (channels = N O). One counting pass."""
    start = np.zeros(channels + 1, np.int64)
    i_hw = 1.0 / hw
    for i in range(len(fo_key)):
        start[_divmod(fo_key[i], hw, i_hw)[0] + 1] += 1
    for c in range(channels):
        start[c + 1] += start[c]
    return start


@njit(cache=True, nogil=True, error_model="numpy")
def take_clean(acc, wrap, fo_key, fo_clean, starts, imgs, o_total, og, j, hw, p0, p1):
    """fo_clean of the faulted outputs in GEMM rows [p0, p1) of group j: their clean int32 sums from the block's
    acc (positions, Og) (float, exact integers; K-chunked float64 sums wrap modulo 2^32). Row p is position
    p % hw of launch image imgs[p // hw]; each (image, channel)'s outputs are a sorted run of fo_key (starts),
    searched for the block's first position."""
    for nr in range(p0 // hw, (p1 - 1) // hw + 1):
        img = imgs[nr]
        pa, pb = max(p0 - nr * hw, 0), min(p1 - nr * hw, hw)
        row0 = nr * hw - p0
        for oo in range(og):
            c = img * o_total + j * og + oo
            lo, hi = starts[c], starts[c + 1]
            if lo == hi:
                continue
            base = c * hw
            first = base + pa
            while lo < hi:                              # the first output at a position >= pa
                mid = (lo + hi) >> 1
                if fo_key[mid] < first:
                    lo = mid + 1
                else:
                    hi = mid
            end = base + pb
            f = lo
            while f < starts[c + 1] and fo_key[f] < end:
                v = np.int64(acc[row0 + fo_key[f] - base, oo])
                fo_clean[f] = _wrap32(v) if wrap else v
                f += 1


class Corrector:
    """The fast path's sums_reader for one launch: the faulted outputs' records (sorted keys ((n O + o) Ho + y) Wo
    + x of MAC-flip and rate records). Called on each GEMM block, it keeps the clean sums of that block's faulted
    outputs; `finish` computes their faulty sums from the records, reading the operands from the int8 device
    input and weights (wk: chain_weights, off: chain_offsets), in parallel over outputs, and writes their int8
    values over the clean ones. imgs maps the GEMM's image rows to launch images (a weight variant runs a
    subset); x is the GEMM's input (one row per image of imgs); sat, when given ((N, O, Ho, Wo) bool), receives
    every output's saturation (memory faults change outputs that have no record)."""

    def __init__(self, mac, rate, wk, off, rb, geom, fmt, relu, widths, imgs, x, sat=None, scratch=None):
        g = geom
        self.mac, self.rate = mac, rate
        if "outputs" in mac and not len(rate["key"]):      # found by plan_conv.record_arrays' pass already
            self.fo_key, self.fo_rng = mac["outputs"]
        else:
            self.fo_key, self.fo_rng = faulted_outputs(mac["key"], rate["key"])
        self.fo_clean = np.zeros(len(self.fo_key), np.int64)
        self.flags = np.zeros(len(self.fo_key), np.uint8)
        self.wk, self.x = wk, x
        self.rb, self.g, self.fmt, self.relu = rb, g, fmt, relu
        self.widths = np.asarray(widths, np.int64)
        self.imgs = np.asarray(imgs, np.int64)
        self.sat = sat
        self.scratch = scratch
        self.off = off
        self.geo = np.array([g.Kh, g.Kw, g.stride_h, g.stride_w, g.pad_h, g.pad_w, g.O, g.Og, g.Ho, g.Wo, g.pipe],
                            np.int64)
        self.rel_of = np.full(g.N, -1, np.int64)
        self.rel_of[self.imgs] = np.arange(len(self.imgs))
        self.starts = mac["starts"] if "starts" in mac and not len(rate["key"]) else \
            channel_starts(self.fo_key, g.Ho * g.Wo, g.N * g.O)

    def __call__(self, j, p0, p1, acc, cols):
        g = self.g
        hw = g.Ho * g.Wo
        if len(self.fo_key):
            take_clean(acc, acc.dtype == np.float64, self.fo_key, self.fo_clean, self.starts, self.imgs, g.O, g.Og, j,
                       hw, p0, p1)
        if self.sat is not None:
            S = acc.astype(np.int64)
            S = (S + (1 << 31)) % (1 << 32) - (1 << 31)
            r1 = (S + (1 << (self.fmt.n - 1))) >> self.fmt.n
            sat = (r1 >= 128) | (r1 <= -129)
            pos = np.arange(p0, p1)
            n = self.imgs[pos // hw]
            flat = ((n[:, None] * g.O + j * g.Og + np.arange(g.Og)[None, :]) * hw + (pos % hw)[:, None])
            self.sat.reshape(-1)[flat] = sat

    def finish(self, out, rel_of):
        """Correct the faulted outputs and write them over out (the rows rel_of names), and their saturation into
        sat."""
        g = self.g
        if len(self.fo_key):
            mac, rate = self.mac, self.rate
            xp = padded_input(self.x, g)     # here, after the GEMM: in cache for the corrections
            xc = self._chain_columns(xp)
            split(correct_outputs, len(self.fo_key), len(self.fo_key) * g.L * g.vec // 8, xp, self.wk, self.off,
                  self.geo, self.fo_key, self.fo_rng, self.fo_clean, rel_of, mac["t"], mac["site"], mac["bit"],
                  rate["t"], rate["bit"], self.rb, self.fmt.n, self.relu, self.widths, out, self.flags, xc)
        if self.sat is not None and len(self.fo_key):
            self.sat.reshape(-1)[self.fo_key] = (self.flags & 4) != 0

    def _chain_columns(self, xp):
        """chain_columns of the run's positions when the accumulator records' chain prefixes, about I/2 steps
        each, outnumber the L steps per position that building them reads, by CHAIN_COLUMNS_GAIN (CaffeNet: the FC
        layers); else an empty array."""
        g = self.g
        rows, ni = len(self.imgs) * g.Ho * g.Wo, -(-g.L // g.pipe)
        build = CHAIN_COLUMNS_GAIN * rows * g.group * g.L
        site = self.mac["site"]
        if (len(site) * ni / 2 < build or rows * g.group * g.pipe * ni * g.vec > CHAIN_COLUMNS_BYTES
                or count_equal(site, 1) * ni / 2 < build):
            return np.empty((0, 1, 1), np.int32)
        shape = (rows * g.group, g.pipe, ni * g.vec // 4)
        xc = self.scratch("chain_columns", shape, np.int32) if self.scratch else np.empty(shape, np.int32)
        split(chain_columns, rows, rows * g.group * g.L, xp, self.off, g.Ho * g.Wo, g.Wo, g.stride_h, g.stride_w, xc)
        return xc

    def counts(self):
        """(outputs changed, of which saturated) among the faulted outputs."""
        return flag_counts(self.flags)[1:]
