"""Exact corrections of the clean GEMM sums for MAC flips and rate errors (faults.md §4.4, §5.6), in numba.

A flip changes a register by d = ±2^b (the sign-bit rule for narrow registers), and every later operation on it is
a modular int32 add, so d reaches S unchanged; a rate error adds -2^bit right after the accumulate add. So the
faulty S of an output is the clean S plus the deltas, each read from the register's current (faulty) value: for
`product` the step's dot product m_t plus earlier flips of it, for `accumulator` the clean chain prefix A_t
(m_t' summed over t' ≡ t mod P, t' <= t) plus every delta so far on chain t mod P. Only what an output's records
need is recomputed: VEC products for m_t, one chain prefix for A_t (extended incrementally when an output has
several records), never a whole layer.

`Corrector` is conv.conv_fast's sums_reader: it sees each GEMM block's clean sums (no conversion pass over the
block) and columns, which hold the faulted outputs' operands exactly as the GEMM used them, in cache and with
the zero padding in place; it computes those outputs' faulty sums, and `finish` writes their int8 values over
the clean ones. Per faulted output it records whether the value changed and saturated.
"""
import numpy as np
from numba import njit

from .threads import split


@njit(cache=True, nogil=True, error_model="numpy")
def _wrap32(v):
    return ((v + 2147483648) & 4294967295) - 2147483648


@njit(cache=True, nogil=True, error_model="numpy")
def _flip_delta(v, b, w):
    """The signed change flip(v, b, w) makes to int32 v (faults.md §1.2)."""
    bit = (v >> b) & 1
    if b < w - 1:
        return -(np.int64(1) << b) if bit else (np.int64(1) << b)
    return (np.int64(1) << (w - 1)) if bit else -(np.int64(1) << (w - 1))


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


def step_columns(geom):
    """(2, L) int64 per MAC step t: where its products sit in a GEMM column (the K order of gemm.row_table:
    channel-vector group, ky, kx, then the real vec slots) and how many real slots it has."""
    g = geom
    t = np.arange(g.L, dtype=np.int64)
    count = np.minimum(g.vec, g.Cg - (t // (g.Kh * g.Kw)) * g.vec)
    return np.ascontiguousarray(np.stack([np.cumsum(count) - count, count]))


def column_weights(wdev, geom):
    """The real filters' weights (O, K) int8 in GEMM column order, from the device weights
    (Z, Cb, Kh, Kw, LANE, VEC)."""
    g = geom
    steps = wdev.transpose(0, 4, 1, 2, 3, 5).reshape(g.Op, g.L, g.vec)[g.po:g.po + g.O]
    real = np.arange(g.vec)[None, :] < step_columns(g)[1][:, None]
    return np.ascontiguousarray(steps[:, real])


@njit(cache=True, nogil=True, error_model="numpy")
def _chain_sum(cols, row, wk, o, tab, t0, t1, step):
    """Sum of the clean dot products m_t over t = t0, t0 + step, ... <= t1 of output o at GEMM row `row`: its
    column (the operands as the GEMM saw them, zero padding included) against its weights, both in column
    order. Each m_t is formed in float32 (exact: at most 16 products of magnitude <= 2^14) as a tree, then
    summed in int64, so that no long chain of dependent float adds sets the pace."""
    m = np.int64(0)
    for t in range(t0, t1 + 1, step):
        k0 = tab[0, t]
        if tab[1, t] == 4:
            s = ((cols[row, k0] * np.float32(wk[o, k0]) + cols[row, k0 + 1] * np.float32(wk[o, k0 + 1]))
                 + (cols[row, k0 + 2] * np.float32(wk[o, k0 + 2]) + cols[row, k0 + 3] * np.float32(wk[o, k0 + 3])))
        else:
            s = np.float32(0.0)
            for v in range(tab[1, t]):
                s += cols[row, k0 + v] * np.float32(wk[o, k0 + v])
        m += np.int64(s)
    return m


@njit(cache=True, nogil=True, error_model="numpy")
def correct_outputs(acc, chunked, cols, sel, rowbase, fo_key, fo_rng, ev_t, ev_site, ev_bit, rt_t, rt_bit, wk,
                    tab, dims, rb, nsh, relu, widths, fo_s, fo_flags, i0, i1):
    """Faulted outputs sel[i0:i1] (indices into fo_key) of one GEMM block of group j: their faulty int32 sums
    into fo_s, and fo_flags = 2 if the int8 output changed, | 4 if it saturated.

    acc (positions, Og): the block's clean sums as floats (exact integers; float64 sums are taken modulo 2^32);
    cols (positions, K): the block's GEMM columns; row = rowbase + y Wo + x; wk (O, K): column_weights;
    tab: step_columns; dims: (O, Og, j, Ho, Wo, PIPE_DEPTH)."""
    o_total, og, j, ho, wo, pipe = dims[0], dims[1], dims[2], dims[3], dims[4], dims[5]
    wp, wa, wf = widths[0], widths[1], widths[2]
    D = np.zeros(pipe, np.int64)
    pre_t = np.zeros(pipe, np.int64)
    pre_v = np.zeros(pipe, np.int64)
    for i in range(i0, i1):
        f_i = sel[i]
        key = fo_key[f_i]
        xo = key % wo
        y = (key // wo) % ho
        o = (key // (wo * ho)) % o_total
        row = rowbase[i] + y * wo + xo
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
            r = t % pipe
            dm = np.int64(0)
            mt = np.int64(0)
            have_m = False
            while e < e1 and (ev_site[e] == 2 or (ev_t[e] == t and ev_site[e] == 0)):
                if ev_site[e] == 0:
                    if not have_m:
                        mt = _chain_sum(cols, row, wk, o, tab, t, t, 1)
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
                        pre_v[r] += _chain_sum(cols, row, wk, o, tab, pre_t[r] + pipe, t, pipe)
                        pre_t[r] = t
                    D[r] += _flip_delta(_wrap32(pre_v[r] + D[r]), np.int64(ev_bit[e]), wa)
                e += 1
        clean = np.int64(acc[row, o - j * og])
        if chunked:
            clean = _wrap32(clean)
        s = clean
        for r in range(pipe):
            s += D[r]
        s = _wrap32(s)
        for e in range(fo_rng[f_i, 0], fo_rng[f_i, 1]):
            if ev_site[e] == 2:
                s = _wrap32(s + _flip_delta(s, np.int64(ev_bit[e]), wf))
        fo_s[f_i] = s
        flag = 0
        if _convert(s, rb[o], nsh, relu) != _convert(clean, rb[o], nsh, relu):
            flag = 2
        r1 = (s + (np.int64(1) << (nsh - 1))) >> nsh
        if r1 >= 128 or r1 <= -129:
            flag |= 4
        fo_flags[f_i] = flag


@njit(cache=True, nogil=True, error_model="numpy")
def scatter_outputs(out, fo_key, fo_s, rel_of, rb, nsh, relu, o_total, ho, wo):
    """The faulted outputs' int8 values into device activations out (N', Ob, Ho, Wo, VEC); rel_of maps a launch
    image to its row of out (-1: not in this run)."""
    vec = out.shape[4]
    for i in range(len(fo_key)):
        key = fo_key[i]
        n = rel_of[key // (wo * ho * o_total)]
        if n < 0:
            continue
        o = (key // (wo * ho)) % o_total
        out[n, o // vec, (key // wo) % ho, key % wo, o % vec] = _convert(fo_s[i], rb[o], nsh, relu)


class Corrector:
    """The fast path's sums_reader for one launch: the faulted outputs' records (sorted keys ((n O + o) Ho + y) Wo
    + x of MAC-flip and rate records) and the weights their operands are multiplied with (column_weights; the
    inputs come with each block's GEMM columns). Called on each
    GEMM block, it computes the faulty sums of that block's faulted outputs; `finish` writes their int8 values
    over the clean ones. imgs maps the GEMM's image rows to launch images (a weight variant runs a subset); sat,
    when given ((N, O, Ho, Wo) bool), receives every output's saturation (memory faults change outputs that have
    no record)."""

    def __init__(self, mac, rate, wk, rb, geom, fmt, relu, widths, imgs, sat=None):
        g = geom
        self.mac, self.rate = mac, rate
        self.fo_key, self.fo_rng = faulted_outputs(mac["key"], rate["key"])
        self.fo_s = np.zeros(len(self.fo_key), np.int64)
        self.flags = np.zeros(len(self.fo_key), np.uint8)
        self.wk = wk
        self.rb, self.g, self.fmt, self.relu = rb, g, fmt, relu
        self.widths = np.asarray(widths, np.int64)
        self.imgs = np.asarray(imgs, np.int64)
        self.sat = sat
        self.tab = step_columns(g)
        self.dims = [np.array([g.O, g.Og, j, g.Ho, g.Wo, g.pipe], np.int64) for j in range(g.group)]
        # the faulted outputs by (group, position in the GEMM's rows): a block [p0, p1) of group j is one range
        hw = g.Ho * g.Wo
        rel_of = np.full(g.N, -1, np.int64)
        rel_of[self.imgs] = np.arange(len(self.imgs))
        key = self.fo_key
        self.pos = rel_of[key // (g.O * hw)] * hw + key % hw
        group_of = (key // hw) % g.O // g.Og
        self.order = np.argsort(group_of * (len(self.imgs) * hw) + self.pos)
        self.sorted_key = (group_of * (len(self.imgs) * hw) + self.pos)[self.order]

    def __call__(self, j, p0, p1, acc, cols):
        g = self.g
        hw = g.Ho * g.Wo
        if len(self.fo_key):
            base = j * len(self.imgs) * hw
            lo, hi = np.searchsorted(self.sorted_key, [base + p0, base + p1])
            if hi > lo:
                sel = self.order[lo:hi]
                rowbase = self.pos[sel] - self.pos[sel] % hw - p0
                split(correct_outputs, len(sel), (hi - lo) * g.L * g.vec // 8, acc, acc.dtype == np.float64, cols,
                      sel, rowbase, self.fo_key, self.fo_rng, self.mac["t"], self.mac["site"], self.mac["bit"],
                      self.rate["t"], self.rate["bit"], self.wk, self.tab, self.dims[j], self.rb, self.fmt.n,
                      self.relu, self.widths, self.fo_s, self.flags)
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
        """Write the faulted outputs over out (the rows rel_of names), and their saturation into sat."""
        g = self.g
        scatter_outputs(out, self.fo_key, self.fo_s, rel_of, self.rb, self.fmt.n, self.relu, g.O, g.Ho, g.Wo)
        if self.sat is not None and len(self.fo_key):
            self.sat.reshape(-1)[self.fo_key] = (self.flags & 4) != 0

    def counts(self):
        """(outputs changed, of which saturated) among the faulted outputs."""
        return int(((self.flags & 2) != 0).sum()), int(((self.flags & 6) == 6).sum())
