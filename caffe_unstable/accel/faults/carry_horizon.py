"""Overclocking: the carry-horizon timing model of the 32-bit adders (faults.md §5).

At a clock too fast for the longest carry path, a ripple-carry adder's register samples before long carries
arrive. With a horizon of K stages, a carry that travelled more than K bit positions is late; the late bits are
sampled without it (`carry_dropped`), keep the register's previous content (`stale`), or the whole update is
dropped (`drop`). The horizon follows the clock: K = floor((1000/f − t0 − δ_lane − ε)/τ), clamped to [0, 31].
"""
import math

import numpy as np

from ...errors import CaffeUnstableError
from .plan import SAMPLED_VALUES, TIMING_SITES, LayerPlan, TimingPlan
from . import streams
from .rng import PassKey, k_from_u32, u32

W_MAX = 31          # K >= 31 = W − 1 never has a late bit on a 32-bit adder
TWO32 = 1 << 32


def ch_add(a, b, K, W=32, sampled_value="carry_dropped", prev=0):
    """r = a + b (mod 2^W) under a carry horizon of K stages (faults.md §5.1, §5.3) -> (s_f, late_mask).

    a, b, prev: integers (signed or W-bit patterns; arrays broadcast); K: int or array. Returns s_f as a signed
    W-bit value and late_mask as the unsigned W-bit mask of late carries (0 when K >= W − 1).
    """
    if sampled_value not in SAMPLED_VALUES:
        raise CaffeUnstableError("sampled_value", f"must be one of {', '.join(SAMPLED_VALUES)}, got "
                                                  f"{sampled_value!r}")
    scalar = all(np.isscalar(v) for v in (a, b, K, prev))
    M = np.uint64((1 << W) - 1)
    au = np.asarray(a).astype(np.int64).astype(np.uint64) & M
    bu = np.asarray(b).astype(np.int64).astype(np.uint64) & M
    K = np.asarray(K, dtype=np.int64)
    p = au ^ bu
    s = (au + bu) & M
    c = s ^ p                                                  # carry into each bit, exact
    run = np.broadcast_to(M, np.broadcast_shapes(p.shape, K.shape)).copy()
    for i in range(1, min(int(K.max(initial=0)), W) + 1):      # run_K: p_(j-1) ... p_(j-K) all 1
        run = np.where(i <= K, run & ((p << np.uint64(i)) & M), run)
    late = c & run
    if sampled_value == "carry_dropped":
        out = s ^ late
    elif sampled_value == "stale":
        pu = np.asarray(prev).astype(np.int64).astype(np.uint64) & M
        out = (s & ~late & M) | (pu & late)
    else:
        out = np.where(late != 0, au, s)
    half = np.int64(1 << (W - 1))
    signed = ((out.astype(np.int64) + half) & np.int64(M)) - half
    if scalar:
        return int(signed), int(late)
    return signed, late


# -- frequency -> horizon (faults.md §5.5) -----------------------------------------------------------------------
def horizon_k(f_mhz, t0_ns, tau_ns_per_bit, lane_offset_ns=0.0, eps_ns=0.0):
    """K = clamp(floor((1000/f − t0 − δ − ε)/τ), 0, 31), in float64 with math.floor."""
    x = (1000.0 / f_mhz - t0_ns - lane_offset_ns - eps_ns) / tau_ns_per_bit
    return int(min(max(math.floor(x), 0), W_MAX))


def q_tail(z):
    """Q(z) = P(N(0,1) > z) = 0.5·erfc(z/√2)."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def k_thresholds(f_mhz, t0_ns, tau_ns_per_bit, jitter_ns, lane_offset_ns=0.0):
    """The per-add lookup table of one lane: thresholds[j] = min(2^32, floor(2^32·P(K ≤ j) + 0.5)), j = 0 … 30."""
    T = 1000.0 / f_mhz
    return [min(TWO32, math.floor(TWO32 * q_tail((T - t0_ns - lane_offset_ns - (j + 1) * tau_ns_per_bit)
                                                  / jitter_ns) + 0.5)) for j in range(31)]


def k_distribution(f_mhz, t0_ns, tau_ns_per_bit, jitter_ns, lane_offset_ns=0.0):
    """P(K = k) for k = 0 … 31 under per-add Gaussian jitter (σ = jitter_ns > 0)."""
    T = 1000.0 / f_mhz
    cdf = [q_tail((T - t0_ns - lane_offset_ns - (j + 1) * tau_ns_per_bit) / jitter_ns) for j in range(31)] + [1.0]
    return np.diff(np.array([0.0] + cdf))


def first_failure_mhz(t0_ns, tau_ns_per_bit):
    """f_PoFF = 1000 / (t0 + 31·τ): the lowest clock with K ≤ 30 (σ = 0, δ = 0)."""
    return 1000.0 / (t0_ns + W_MAX * tau_ns_per_bit)


def add_horizon(timing, n, lane, counter=None, site="accumulate"):
    """K of adds of images n, lanes `lane` (arrays) under a TimingPlan: K_lane, or the per-add draw
    u32(keys[n], counter) looked up in thresholds[lane]; then the site's slack, clamped to [0, 31] (§5.4)."""
    if timing.K_lane is not None:
        K = np.asarray(timing.K_lane, dtype=np.int64)[n, lane]
    else:
        K = k_from_u32(u32(np.asarray(timing.keys)[n], counter), np.asarray(timing.thresholds)[lane])
    slack = {"accumulate": 0, "final_reduce": timing.final_slack_bits, "adder_tree": timing.tree_slack_bits}[site]
    return np.clip(K + slack, 0, W_MAX) if site != "accumulate" else K


class CarryHorizon:
    """Timing errors of an overclocked PipeCNN: the carry horizon on every adder of `sites` (faults.md §5)."""

    name = "carry_horizon"

    def __init__(self, freq_mhz, safe_mhz, t0_ns=None, tau_ns_per_bit=None, jitter_ns=0.0, jitter_scope="per_add",
                 sampled_value="carry_dropped", sites=("accumulate",), final_slack_bits=0, tree_slack_bits=0,
                 lane_offsets_ns=None, fixed_k=None):
        if sampled_value not in SAMPLED_VALUES:
            raise CaffeUnstableError("timing.sampled_value", f"must be one of {', '.join(SAMPLED_VALUES)}")
        if not sites or not set(sites) <= set(TIMING_SITES):
            raise CaffeUnstableError("timing.sites", f"must be names from {', '.join(TIMING_SITES)}")
        if fixed_k is None and (t0_ns is None or tau_ns_per_bit is None):
            raise CaffeUnstableError("timing", "t0_ns and tau_ns_per_bit are required unless fixed_k is set")
        self.freq_mhz = freq_mhz
        self.safe_mhz = safe_mhz
        self.t0_ns, self.tau_ns_per_bit = t0_ns, tau_ns_per_bit
        self.jitter_ns = float(jitter_ns or 0.0)
        self.jitter_scope = jitter_scope
        self.sampled_value = sampled_value
        self.sites = tuple(sites)
        self.final_slack_bits, self.tree_slack_bits = int(final_slack_bits), int(tree_slack_bits)
        self.lane_offsets_ns = lane_offsets_ns
        self.fixed_k = fixed_k
        self._thresholds = None           # k_thresholds of every lane: 31 erfc per lane, once per model

    @classmethod
    def from_profile(cls, timing, freq_mhz):
        """From a validated profile's `timing` mapping (profile.DeviceProfile.timing) at clock freq_mhz."""
        keys = ("safe_mhz", "t0_ns", "tau_ns_per_bit", "jitter_ns", "jitter_scope", "sampled_value", "sites",
                "final_slack_bits", "tree_slack_bits", "lane_offsets_ns", "fixed_k")
        return cls(freq_mhz, **{k: timing.get(k) for k in keys if timing.get(k) is not None})

    def active(self):
        """False at or below the safe clock (no timing faults and no timing draws), unless fixed_k is set."""
        return self.fixed_k is not None or (self.freq_mhz is not None and self.freq_mhz > self.safe_mhz)

    def offsets(self, lanes):
        return list(self.lane_offsets_ns) if self.lane_offsets_ns is not None else [0.0] * lanes

    def timing_plan(self, batch, lanes, layer_index, rng):
        """The TimingPlan of one layer (rng: a rng.PassKey), or None when inactive."""
        if not self.active():
            return None
        common = dict(sampled_value=self.sampled_value, sites=self.sites, final_slack_bits=self.final_slack_bits,
                      tree_slack_bits=self.tree_slack_bits)
        if self.fixed_k is not None:
            return TimingPlan(K_lane=np.full((batch, lanes), self.fixed_k, np.int8), **common)
        f, deltas = self.freq_mhz, self.offsets(lanes)
        if self.jitter_ns == 0.0 or self.jitter_scope == "per_image":
            eps = [rng.generator("timing_image", 0, n).normal(0.0, self.jitter_ns) if self.jitter_ns else 0.0
                   for n in range(batch)]
            K = [[horizon_k(f, self.t0_ns, self.tau_ns_per_bit, d, e) for d in deltas] for e in eps]
            return TimingPlan(K_lane=np.array(K, np.int8), **common)
        if self._thresholds is None or len(self._thresholds) != lanes:    # the same table for every layer
            self._thresholds = np.array([k_thresholds(f, self.t0_ns, self.tau_ns_per_bit, self.jitter_ns, d)
                                         for d in deltas], np.uint64)
            self._thresholds.flags.writeable = False
        if isinstance(rng, PassKey):      # the same draws, seeded in numba (streams.first_uint64s)
            keys = streams.first_uint64s(np.array(streams.uint32_words(rng.seed), np.uint32),
                                         np.array(rng.key("timing_key", layer_index, 0), np.int64), batch)
        else:
            keys = np.array([rng.generator("timing_key", layer_index, n).integers(0, 2 ** 64, dtype=np.uint64)
                             for n in range(batch)], np.uint64)
        return TimingPlan(thresholds=self._thresholds, keys=keys, **common)

    def plan(self, op, geometry, rng):
        timing = self.timing_plan(op.batch, geometry["LANE_NUM"], op.layer_index, rng)
        return LayerPlan(op.layer_index, op.layer_name, geometry, timing=timing)
