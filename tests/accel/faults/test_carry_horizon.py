"""faults.md §5: the carry-horizon add, the frequency -> horizon mapping, jitter tables and the timing plan."""
import numpy as np
import pytest

from caffe_unstable.accel.faults.carry_horizon import (CarryHorizon, add_horizon, ch_add, first_failure_mhz,
                                                       horizon_k, k_distribution, k_thresholds)
from caffe_unstable.accel.faults.plan import LayerOp
from caffe_unstable.accel.faults.rng import PassKey, counter_accumulate, u32

from .brute import Faults, horizon_fn, register_loop, ripple_add

# (a, b, K, clean, faulty, error) — the worked cases of faults.md §5.2 (W = 32, carry_dropped)
WORKED = [(-3, 5, 8, 2, -2046, -2 ** 11), (0xFFFF, 1, 8, 65536, 65024, -2 ** 9), (-3, 5, 28, 2, -2147483646, -2 ** 31),
          (-1, 1, 28, 0, -536870912, -2 ** 29), (-1, 2, 28, 1, -1073741823, -2 ** 30), (3, -5, 4, -2, -2, 0),
          (100, 28, 3, 128, 64, -2 ** 6), (1, 0x7FFFFFFF, 30, -2 ** 31, 0, -2 ** 31),
          (1, 0x7FFFFFFF, 31, -2 ** 31, -2 ** 31, 0), (-3, -5, 0, -8, 6, 14)]


def _wrap(v, W=32):
    return (v + (1 << (W - 1))) % (1 << W) - (1 << (W - 1))


def test_ch_add_vectors(vectors):
    assert len(vectors["ch_add"]) == 59
    for e in vectors["ch_add"]:
        r, late = ch_add(e["a"], e["b"], e["K"], e["W"], e["mode"], e["prev"])
        assert (r, late) == (e["r"], int(e["late_mask"], 16)), e
        assert _wrap(r - e["a"] - e["b"], e["W"]) == e["error"], e


@pytest.mark.parametrize("a, b, K, clean, faulty, error", WORKED)
def test_worked_cases(a, b, K, clean, faulty, error):
    r, _ = ch_add(a, b, K)
    assert _wrap(a + b) == clean and r == faulty and _wrap(r - clean) == error


def test_vectorised_equals_scalar_and_bit_serial_adder():
    rng = np.random.default_rng(3)
    for W in (6, 8, 20, 32):
        a = rng.integers(-(1 << (W - 1)), 1 << (W - 1), 3000)
        b = rng.integers(-(1 << (W - 1)), 1 << (W - 1), 3000)
        K = rng.integers(0, W + 1, 3000)
        r, late = ch_add(a, b, K, W)
        for i in range(0, 3000, 7):
            out, lm = ripple_add(a[i], b[i], K[i], W)
            assert (int(r[i]) & ((1 << W) - 1), int(late[i])) == (out, lm), (W, a[i], b[i], K[i])


def _chain_error(a, b, K, W):
    """Σ over carry chains (generated at g, reaching bit e ≤ W−1) with e − g > K of −2^(g+K+1)."""
    err, j = 0, 0
    while j < W:
        if a >> j & 1 and b >> j & 1:                       # generate at g = j
            g, e = j, j + 1
            while e < W and (a >> e & 1) ^ (b >> e & 1):    # the carry propagates through p bits
                e += 1
            e = min(e, W - 1)                               # the bit the carry reaches (or the MSB)
            if e - g > K:
                err -= 1 << (g + K + 1)
            j = max(e, j + 1)
        else:
            j += 1
    return err


def test_error_per_chain_exhaustive_w6():
    """faults.md §5.2: each late chain changes the carry_dropped sum by exactly −2^(g+K+1) (mod 2^W)."""
    W = 6
    a, b = (m.ravel() for m in np.meshgrid(np.arange(64), np.arange(64)))
    for K in range(W + 1):
        r, _ = ch_add(a, b, K, W)
        for i in range(a.size):
            assert _wrap(int(r[i]) - int(a[i] + b[i]), W) == _wrap(_chain_error(int(a[i]), int(b[i]), K, W), W)


def test_k_31_and_32_are_exact_on_a_million_pairs():
    rng = np.random.default_rng(11)
    a = rng.integers(-2 ** 31, 2 ** 31, 1_000_000)
    b = rng.integers(-2 ** 31, 2 ** 31, 1_000_000)
    for K in (31, 32):
        for mode in ("carry_dropped", "stale", "drop"):
            r, late = ch_add(a, b, K, 32, mode, prev=a)
            assert not late.any() and np.array_equal(r, _wrap(a + b))
    # K = 30 = W − 2 fails on the longest chain (faults.md §5.2)
    assert ch_add(1, 0x7FFFFFFF, 30) == (0, 0x80000000)


def test_late_bits_nested_in_k():
    rng = np.random.default_rng(2)
    a = rng.integers(-2 ** 20, 2 ** 20, 20000)
    b = rng.integers(-2 ** 20, 2 ** 20, 20000)
    prev = None
    for K in range(31, -1, -1):
        _, late = ch_add(a, b, K)
        if prev is not None:
            assert ((prev & ~late) == 0).all()      # late at K+1 ⊆ late at K
        prev = late


def test_horizon_of_frequency_vectors(vectors):
    assert len(vectors["k_of_f"]) == 14
    for e in vectors["k_of_f"]:
        assert e["W"] == 32
        assert horizon_k(e["f_mhz"], e["t0_ns"], e["tau_ns_per_bit"], e["lane_offset_ns"]) == e["K"], e


def test_threshold_vectors(vectors):
    for e in vectors["k_thresholds"]:
        th = k_thresholds(e["f_mhz"], e["t0_ns"], e["tau_ns_per_bit"], e["jitter_ns"], e["lane_offset_ns"])
        assert th == [int(v) for v in e["thresholds"]], e["f_mhz"]


def test_starting_point_numbers():
    """faults.md §5.5/§5.7: first failure 243.3 MHz, K(250, 260, 270) = 29, 27, 25 and the P(K) quoted."""
    assert round(first_failure_mhz(1.94, 0.070), 1) == 243.3
    assert [horizon_k(f, 1.94, 0.070) for f in (210, 250, 260, 270)] == [31, 29, 27, 25]
    p250 = k_distribution(250, 1.94, 0.070, 0.010)
    assert np.round(p250[28:31], 5).tolist() == [0.00135, 0.99862, 0.00003]
    assert np.round(k_distribution(260, 1.94, 0.070, 0.010)[26:28], 4).tolist() == [0.0531, 0.9469]
    assert np.round(k_distribution(270, 1.94, 0.070, 0.010)[24:26], 4).tolist() == [0.0853, 0.9147]


def _model(f, **kw):
    args = dict(safe_mhz=210, t0_ns=1.94, tau_ns_per_bit=0.07, jitter_ns=0.02, lane_offsets_ns=[0.0, 0.05, -0.05, 0.1])
    args.update(kw)
    return CarryHorizon(f, **args)


def test_timing_plan_reproduces_per_add_jitter_vector(vectors):
    for layer in vectors["layers"]:
        s = next(s for s in layer["scenarios"] if s["name"] == "ch_per_add_jitter")
        df, tv = s["derived_from"], s["plan"]["timing"]
        m = _model(df["f_mhz"], sites=tuple(tv["sites"]), jitter_ns=df["jitter_ns"])
        lp = m.plan(LayerOp(df["key"][4], "x", 1), layer["geometry"], PassKey(df["seed"]))
        assert lp.timing.thresholds.tolist() == [[int(v) for v in r] for r in tv["thresholds"]]
        assert lp.timing.keys.tolist() == [int(k) for k in tv["keys"]]
        assert lp.timing.K_lane is None and lp.timing.sampled_value == "carry_dropped"


def test_timing_plan_modes():
    key, op = PassKey(3), LayerOp(2, "conv1", 3)
    assert _model(210).plan(op, {"LANE_NUM": 4}, key).timing is None          # safe clock: nothing, no draws
    fixed = _model(None, fixed_k=31).timing_plan(3, 4, 2, key)
    assert fixed.K_lane.dtype == np.int8 and fixed.K_lane.tolist() == [[31] * 4] * 3
    nojit = _model(260, jitter_ns=0.0).timing_plan(3, 4, 2, key)
    assert nojit.K_lane.tolist() == [[27, 26, 27, 25]] * 3
    per_image = _model(260, jitter_scope="per_image", jitter_ns=0.05).timing_plan(3, 4, 2, key)
    eps = [key.generator("timing_image", 0, n).normal(0.0, 0.05) for n in range(3)]
    expect = [[horizon_k(260, 1.94, 0.07, d, e) for d in (0.0, 0.05, -0.05, 0.1)] for e in eps]
    assert per_image.K_lane.tolist() == expect
    assert _model(260, jitter_scope="per_image", jitter_ns=0.05).timing_plan(3, 4, 7, key).K_lane.tolist() == expect


def test_add_horizon_matches_lookup():
    key = PassKey(9)
    tp = _model(270).timing_plan(2, 4, 1, key)
    n, lane = np.array([0, 1, 1]), np.array([3, 0, 2])
    ctr = counter_accumulate(np.array([5, 6, 7]), 3, 18)
    K = add_horizon(tp, n, lane, ctr)
    for i in range(3):
        u = int(u32(tp.keys[n[i]], ctr[i]))
        assert K[i] == 31 - sum(u < int(t) for t in tp.thresholds[lane[i]])
    tp.final_slack_bits = 40
    assert (add_horizon(tp, n, lane, ctr, "final_reduce") == 31).all()


def test_outputs_hit_nested_in_frequency():
    """faults.md §5.2/§13.5: with common random numbers the outputs hit at f are a subset of those at f + 5."""
    rng = np.random.default_rng(4)
    R, L, VEC, P = 600, 40, 4, 6
    x = rng.integers(0, 40, (R, L, VEC)) * (rng.random((R, L, VEC)) < 0.5)
    w = rng.integers(-40, 41, (R, L, VEC))
    lane = np.arange(R) % 4
    prev, counts = None, []
    for f in range(240, 305, 5):
        tp = _model(f, jitter_ns=0.01, sites=("accumulate", "final_reduce")).timing_plan(1, 4, 0, PassKey(5))
        timing = {"K_lane": None, "thresholds": tp.thresholds, "keys": tp.keys, "sites": tp.sites}
        hz = horizon_fn(timing, np.zeros(R, np.int64), lane, np.arange(R), L, P, VEC)
        _, hit = register_loop(x, w, P, lane=lane, faults=Faults(timing=timing), horizon=hz)
        if prev is not None:
            assert not (prev & ~hit).any(), f
        prev = hit
        counts.append(int(hit.sum()))
    assert counts[0] < 5 < counts[-1] and counts == sorted(counts)
