"""A plain NumPy, deliberately naive simulator of PipeCNN's register loop (faults.md §1.2), for tests only.

It re-accumulates int8 operands in PipeCNN's MAC order (pipecnn.md §2.3-2.4) with every fault applied inline,
step by step, vectorised over outputs only. It shares no code with the fast paths under test except `ch_add`
(checked on its own against the spec's vectors and an independent bit-serial adder, `ripple_add`).
"""
import numpy as np

from caffe_unstable.accel.faults.carry_horizon import ch_add
from caffe_unstable.accel.faults.rng import counter_accumulate, counter_final, counter_tree, k_from_u32, u32

M32 = (1 << 32) - 1


def s32(v):
    v = np.asarray(v, dtype=np.int64) & M32
    return np.where(v >= 1 << 31, v - (1 << 32), v)


def flip_ref(v, b, w):
    """faults.md §1.2 flip(v, b, w), written out again."""
    v = np.asarray(v, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    was = (v & M32) >> b & 1
    d = np.where(b < w - 1, np.where(was == 0, 1, -1), np.where(was == 0, -1, 1)) * (np.int64(1) << b)
    return s32(v + d)


def force_ref(v, b, val, w):
    v = np.asarray(v, dtype=np.int64)
    return np.where(((v & M32) >> b & 1) == val, v, flip_ref(v, b, w))


def ripple_add(a, b, K, W):
    """Bit-serial carry_dropped add: a carry generated at bit g and arriving at bit j is late when j − g > K."""
    a, b = int(a) & ((1 << W) - 1), int(b) & ((1 << W) - 1)
    carry, origin, out, late = 0, -1, 0, 0
    for j in range(W):
        aj, bj = a >> j & 1, b >> j & 1
        if carry and j - origin > K:
            late |= 1 << j
            out |= (aj ^ bj) << j
        else:
            out |= (aj ^ bj ^ carry) << j
        if aj & bj:
            carry, origin = 1, j
        elif not (aj ^ bj):
            carry = 0
        # propagate (aj ^ bj) keeps the carry and its origin
    return out, late


def _apply_in_order(reg, rows, bits, w):
    """Flip reg[rows[i]] at bits[i] for every i, in order (repeated rows are applied one after another)."""
    for i in range(len(rows)):
        reg[rows[i]] = flip_ref(reg[rows[i]], bits[i], w)


class Faults:
    """The faults of one call, per output row: flips {site: (row, t, bit)}, rate (row, t, bit), stuck maps, timing."""

    def __init__(self, flips=None, rate=None, stuck_mult=(), stuck_product=(), stuck_acc=(), timing=None):
        self.flips = flips or {}
        self.rate = rate
        self.stuck_mult = stuck_mult            # (lane, vec, bit, value)
        self.stuck_product = stuck_product      # (lane, bit, value)
        self.stuck_acc = stuck_acc              # (lane, bit, value)
        self.timing = timing                    # dict: sampled_value, sites, slack, K(row, counter_kind, ...)


def _by_step(triple):
    if triple is None:
        return {}
    rows, ts, bits = (np.asarray(a, dtype=np.int64) for a in triple)
    out = {}
    for i in range(len(rows)):
        out.setdefault(int(ts[i]), ([], []))
        out[int(ts[i])][0].append(rows[i])
        out[int(ts[i])][1].append(bits[i])
    return out


def register_loop(x, w, P, widths=(32, 32, 32), lane=None, faults=None, horizon=None):
    """The §1.2 loop for R outputs at once. x, w: int [R, L, VEC] operands in MAC order; lane: [R].

    horizon(kind, t, i) -> K per row (kind "accumulate", "final_reduce", "adder_tree"), or None (no timing).
    Returns (S [R] int64 holding int32 values, hit [R] bool).
    """
    faults = faults or Faults()
    R, L, VEC = x.shape
    wp, wa, wf = widths
    lane = np.zeros(R, np.int64) if lane is None else np.asarray(lane)
    flips = {s: _by_step(faults.flips.get(s)) for s in ("product", "accumulator")}
    rate = _by_step(faults.rate)
    tm = faults.timing or {}
    sites = tm.get("sites", ())
    A = np.zeros((P, R), np.int64)
    prev = np.zeros(R, np.int64)
    hit = np.zeros(R, bool)
    for t in range(L):
        r = t % P
        p = x[:, t, :].astype(np.int64) * w[:, t, :].astype(np.int64)
        for ln, v, b, val in faults.stuck_mult:
            rows = lane == ln
            p[rows, v] = force_ref(p[rows, v], b, val, 16)
        D = p.reshape(R, VEC // 4, 4).sum(axis=2)
        m = D[:, 0].copy()
        for i in range(1, VEC // 4):
            if "adder_tree" in sites:
                K = np.clip(horizon("adder_tree", t, i) + tm.get("tree_slack_bits", 0), 0, 31)
                m, late = _ch(m, D[:, i], K, "carry_dropped", 0)
                hit |= late != 0
            else:
                m = s32(m + D[:, i])
        if t in flips["product"]:
            _apply_in_order(m, *flips["product"][t], wp)
        for ln, b, val in faults.stuck_product:
            rows = lane == ln
            m[rows] = force_ref(m[rows], b, val, wp)
        if "accumulate" in sites:
            s, late = _ch(A[r], m, horizon("accumulate", t, 0), tm.get("sampled_value", "carry_dropped"), prev)
            hit |= late != 0
        else:
            s = s32(A[r] + m)
        if t in rate:
            rows, bits = rate[t]
            for i in range(len(rows)):
                s[rows[i]] = s32(s[rows[i]] - (np.int64(1) << bits[i]))
        if t in flips["accumulator"]:
            _apply_in_order(s, *flips["accumulator"][t], wa)
        for ln, b, val in faults.stuck_acc:
            rows = lane == ln
            s[rows] = force_ref(s[rows], b, val, wa)
        A[r] = s
        prev = s.copy()
    S = A[(L - 1) % P].copy()
    for i in range(1, P):
        u = A[(L - 1 - i) % P] if L - 1 - i >= 0 else np.zeros(R, np.int64)
        if "final_reduce" in sites:
            K = np.clip(horizon("final_reduce", None, i) + tm.get("final_slack_bits", 0), 0, 31)
            S, late = _ch(S, u, K, "carry_dropped", 0)
            hit |= late != 0
        else:
            S = s32(S + u)
    final = faults.flips.get("final")
    if final is not None:
        rows, _, bits = final
        _apply_in_order(S, np.asarray(rows), np.asarray(bits), wf)
    return S, hit


def _ch(a, b, K, mode, prev):
    s, late = ch_add(a, b, K, 32, mode, prev)
    return s32(s), np.asarray(late)


def horizon_fn(timing, n, lane, oidx, L, P, vec):
    """horizon(kind, t, i) for rows with image n, lane and real output index oidx, from a TimingPlan-like dict."""
    if timing.get("K_lane") is not None:
        K = np.asarray(timing["K_lane"], dtype=np.int64)[n, lane]
        return lambda kind, t, i: K
    th = np.asarray(timing["thresholds"], dtype=np.uint64)[lane]
    keys = np.asarray(timing["keys"], dtype=np.uint64)[n]

    def horizon(kind, t, i):
        if kind == "accumulate":
            ctr = counter_accumulate(oidx, t, L)
        elif kind == "final_reduce":
            ctr = counter_final(oidx, i, P)
        else:
            ctr = counter_tree(oidx, t, i, L, vec)
        return k_from_u32(u32(keys, ctr), th)
    return horizon


def output_conversion(acc, bias, frac_w, frac_din, frac_dout, relu):
    """pipecnn.md §1.5 closed form: round half up, saturate before the bias, wrap after it, then ReLU."""
    n, m = frac_w + frac_din - frac_dout, frac_w - frac_dout
    acc = np.asarray(acc, dtype=np.int64)
    r1 = (acc + (1 << (n - 1))) >> n
    rb = (np.asarray(bias, dtype=np.int64) + (1 << (m - 1))) >> m
    y = np.where(r1 >= 128, 127, np.where(r1 <= -129, -128, (r1 + rb + 128) % 256 - 128))
    return np.maximum(y, 0) if relu else y
