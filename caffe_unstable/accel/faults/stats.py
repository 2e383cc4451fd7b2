"""Small exact statistics the fault tools need without SciPy: χ² tail, binomial pmf, Wilson interval."""
import math

import numpy as np


def gammaincc(a, x):
    """Regularised upper incomplete gamma Q(a, x) (series below a + 1, Lentz continued fraction above)."""
    if x <= 0:
        return 1.0
    lg = a * math.log(x) - x - math.lgamma(a)
    if x < a + 1.0:
        term = total = 1.0 / a
        ap = a
        for _ in range(10000):
            ap += 1.0
            term *= x / ap
            total += term
            if abs(term) < abs(total) * 1e-16:
                break
        return max(0.0, 1.0 - total * math.exp(lg))
    tiny = 1e-300
    b = x + 1.0 - a
    c, d = 1.0 / tiny, 1.0 / b
    h = d
    for i in range(1, 10000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        h *= d * c
        if abs(d * c - 1.0) < 1e-16:
            break
    return math.exp(lg) * h


def chi2_sf(stat, dof):
    """P(χ²_dof > stat)."""
    return gammaincc(dof / 2.0, stat / 2.0) if dof > 0 else float("nan")


def binom_logpmf(k, n, p):
    k = np.asarray(k, dtype=np.float64)
    lg = np.vectorize(math.lgamma)
    return lg(n + 1.0) - lg(k + 1.0) - lg(n - k + 1.0) + k * math.log(p) + (n - k) * math.log1p(-p)


def chi2_gof(observed, expected, n_params=0):
    """Pearson χ² of observed counts against expected counts -> (stat, dof, p)."""
    observed, expected = np.asarray(observed, float), np.asarray(expected, float)
    stat = float(((observed - expected) ** 2 / expected).sum())
    dof = len(observed) - 1 - n_params
    return stat, dof, chi2_sf(stat, dof)


def binomial_counts_gof(counts, n, p, min_expected=5.0):
    """χ² of a sample of Binomial(n, p) counts against that law -> (stat, dof, p_value).

    Values are histogrammed over mean ± 8 sd (the ends absorb the tails), then the sparse end bins are pooled
    inwards until each has an expected count ≥ min_expected.
    """
    counts = np.asarray(counts, dtype=np.int64)
    mean, sd = n * p, math.sqrt(n * p * (1 - p))
    lo, hi = max(0, int(mean - 8 * sd)), min(n, int(mean + 8 * sd) + 1)
    ks = np.arange(lo, hi + 1)
    expected = counts.size * np.exp(binom_logpmf(ks, n, p))
    expected[0] += counts.size * float(np.exp(binom_logpmf(np.arange(0, lo), n, p)).sum()) if lo else 0.0
    expected[-1] = counts.size - expected[:-1].sum()
    observed = np.bincount(np.clip(counts, lo, hi) - lo, minlength=ks.size).astype(float)
    obs, exp = list(observed), list(expected)
    while len(exp) > 2 and exp[0] < min_expected:
        e, o = exp.pop(0), obs.pop(0)
        exp[0], obs[0] = exp[0] + e, obs[0] + o
    while len(exp) > 2 and exp[-1] < min_expected:
        e, o = exp.pop(), obs.pop()
        exp[-1], obs[-1] = exp[-1] + e, obs[-1] + o
    return chi2_gof(obs, exp)


def wilson_interval(successes, n, z=1.959963984540054):
    """Wilson score interval of a binomial proportion (95 % by default)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, centre - half), min(1.0, centre + half)
