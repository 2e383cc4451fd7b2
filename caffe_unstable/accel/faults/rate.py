"""The statistical timing model (`timing.model: rate`, faults.md §5.6): an error probability p(f) per
accumulate add and a one-sided error −2^bit right after the add, ignoring which data fail."""
import math
import warnings

import numpy as np

from ...errors import CaffeUnstableError
from .carry_horizon import q_tail
from .indexing import decode_add
from .plan import RATE_EVENT_DTYPE, LayerPlan, records
from .registers import wrap32
from .rng import sample_distinct

CURVES = ("exponential", "gaussian_tail", "table")


def geometric_pmf(bit_lo=26):
    """P(j) ∝ 2^(j − 31) for j in [bit_lo, 31] (the top generate bit of a crossing is roughly geometric)."""
    pmf = np.zeros(32)
    j = np.arange(bit_lo, 32)
    pmf[j] = 2.0 ** (j - 31)
    return pmf / pmf.sum()


def bit_pmf_array(bit_pmf="geometric", bit_lo=26):
    """float64[32] weights from `geometric` or a mapping {bit: weight} (normalised)."""
    if bit_pmf == "geometric":
        return geometric_pmf(bit_lo)
    pmf = np.zeros(32)
    for bit, weight in bit_pmf.items():
        pmf[int(bit)] = float(weight)
    if pmf.sum() <= 0:
        raise CaffeUnstableError("timing.rate.bit_pmf", "weights must sum to > 0")
    return pmf / pmf.sum()


def table_p(f_mhz, table):
    """Rows [mhz, p]: 0 below the first row, linear in log10 p between rows (linear in p where a p is 0), the
    last p above the last row (with a warning)."""
    mhz = [float(r[0]) for r in table]
    ps = [float(r[1]) for r in table]
    if f_mhz < mhz[0]:
        return 0.0
    if f_mhz > mhz[-1]:
        warnings.warn(f"timing.rate.table: {f_mhz} MHz is above the last row ({mhz[-1]} MHz); using its p",
                      stacklevel=2)
        return ps[-1]
    i = max(k for k in range(len(mhz)) if mhz[k] <= f_mhz)
    if i == len(mhz) - 1:
        return ps[-1]
    w = (f_mhz - mhz[i]) / (mhz[i + 1] - mhz[i])
    if ps[i] > 0 and ps[i + 1] > 0:
        return 10.0 ** ((1 - w) * math.log10(ps[i]) + w * math.log10(ps[i + 1]))
    return (1 - w) * ps[i] + w * ps[i + 1]


class RateTiming:
    """Timing errors at a probability p(f) per accumulate add (stream 4); one rate_events record per error."""

    name = "rate"

    def __init__(self, freq_mhz, safe_mhz, curve="exponential", poff_mhz=None, f_ref_mhz=None, p_ref=None,
                 beta_per_mhz=None, amplitude=None, mu_ns=None, sigma_ns=None, table=None, p_max=0.5,
                 bit_pmf="geometric", bit_lo=26):
        if curve not in CURVES:
            raise CaffeUnstableError("timing.rate.curve", f"must be one of {', '.join(CURVES)}, got {curve!r}")
        self.freq_mhz, self.safe_mhz, self.curve = freq_mhz, safe_mhz, curve
        self.poff_mhz, self.f_ref_mhz, self.p_ref, self.beta_per_mhz = poff_mhz, f_ref_mhz, p_ref, beta_per_mhz
        self.amplitude, self.mu_ns, self.sigma_ns, self.table = amplitude, mu_ns, sigma_ns, table
        self.p_max = p_max
        self.pmf = bit_pmf_array(bit_pmf, bit_lo)

    @classmethod
    def from_profile(cls, timing, freq_mhz):
        """From a validated profile's `timing` mapping (its `rate` block holds the curve)."""
        return cls(freq_mhz, timing["safe_mhz"], **{k: v for k, v in timing["rate"].items() if v is not None})

    def p(self, f_mhz=None):
        """Error probability per accumulate add at f_mhz (default: the model's clock); 0 at or below safe_mhz."""
        f = self.freq_mhz if f_mhz is None else f_mhz
        if f is None or f <= self.safe_mhz:
            return 0.0
        if self.curve == "exponential":
            if f <= self.poff_mhz:
                return 0.0
            return min(self.p_max, self.p_ref * math.exp(self.beta_per_mhz * (f - self.f_ref_mhz)))
        if self.curve == "gaussian_tail":
            return min(self.p_max, self.amplitude * q_tail((1000.0 / f - self.mu_ns) / self.sigma_ns))
        return min(self.p_max, table_p(f, self.table))

    def plan(self, op, geometry, rng):
        p = self.p()
        cols, masked = [], 0
        for n in range(op.batch):
            a, bits = sample_rate_events(rng.generator("timing_rate", op.layer_index, n), geometry["N_ADD"], p,
                                         self.pmf)
            o, y, x, t, valid = decode_add(a, geometry)
            masked += int((~valid).sum())
            cols.append((np.full(int(valid.sum()), n), o[valid], y[valid], x[valid], t[valid], bits[valid]))
        n, o, y, x, t, bits = (np.concatenate(c) for c in zip(*cols))
        ev = records(RATE_EVENT_DTYPE, ["n", "o", "y", "x", "t"], n=n, o=o, y=y, x=x, t=t, bit=bits)
        return LayerPlan(op.layer_index, op.layer_name, geometry, rate_events=ev, rate_masked=masked)


def sample_rate_events(rng, N_ADD, p, pmf):
    """Draws of stream 4 for one layer and image: F, F distinct add positions, then F bits from the pmf."""
    F = int(rng.binomial(N_ADD, p))
    if not F:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    a = sample_distinct(rng, N_ADD, F)
    pmf = np.asarray(pmf, dtype=np.float64)
    j_max = int(np.flatnonzero(pmf > 0).max())
    bits = np.minimum(np.searchsorted(np.cumsum(pmf / pmf.sum()), rng.random(F), side="right"), j_max)
    return a, bits.astype(np.int64)


def rate_corrected_sums(events, S_clean):
    """The rate model is linear (faults.md §4.4): S = sext((S_clean − Σ 2^bit) mod 2^32) per output.

    `events` sorted rate records of the outputs; S_clean per output in `mac_flip.output_groups(events)` order.
    """
    from .mac_flip import output_groups
    first, group = output_groups(events)
    total = np.zeros(len(first), np.int64)
    np.add.at(total, group, np.left_shift(np.int64(1), events["bit"].astype(np.int64)))
    return first, wrap32(np.asarray(S_clean, dtype=np.int64) - total)
