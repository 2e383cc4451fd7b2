"""faults.md §8.4 calibrate on a synthetic accuracy-loss curve: interpolation, the t0/τ solve, refusals."""
import math

import numpy as np
import pytest

from caffe_unstable.accel.faults import DeviceProfile
from caffe_unstable.accel.faults.calibrate import calibrate, fit_t0_tau, kappa
from caffe_unstable.accel.faults.carry_horizon import horizon_k
from caffe_unstable.errors import CaffeUnstableError

N = 20000


def synthetic_hits(t0=1.94, tau=0.07):
    """Top-5 hits of N images whose loss depends on the horizon only: image i fails when K < k_fail[i]."""
    rng = np.random.default_rng(1)
    k_fail = np.minimum(31, np.floor(30.2 - rng.exponential(1.5, N)))         # more failures at smaller K

    def hits(horizon_k_=None, profile=None, freq_mhz=None, **kw):
        horizon = kw.get("horizon_k", horizon_k_)
        if profile is not None:
            t = profile.timing
            horizon = horizon_k(freq_mhz, t["t0_ns"], t["tau_ns_per_bit"])
        if horizon is None:
            return np.ones(N)
        return (horizon >= k_fail).astype(np.float64)
    return hits


def wrapped(hits):
    return lambda horizon_k=None, profile=None, freq_mhz=None: hits(horizon_k, profile, freq_mhz)


def test_kappa_interpolates_where_the_curve_crosses():
    curve = {31: (0.0, 0), 30: (-0.2, 0.1), 29: (-1.0, 0.1), 28: (-5.0, 0.2)}
    assert kappa(curve, -0.6, 250) == pytest.approx(29.5)
    assert kappa(curve, -5.0, 260) == pytest.approx(28.0)
    with pytest.raises(CaffeUnstableError, match="target 270:-9 not reached for K >= 28"):
        kappa(curve, -9.0, 270)


def test_t0_tau_from_two_targets_and_refusal():
    t0, tau = fit_t0_tau([(4.0, 29.0), (1000 / 260, 26.5)], 0.07)
    assert tau == pytest.approx((4.0 - 1000 / 260) / 2.5) and t0 == pytest.approx(4.0 - 29.5 * tau)
    with pytest.raises(CaffeUnstableError, match="targets are not monotone in frequency"):
        fit_t0_tau([(4.0, 26.0), (1000 / 260, 27.0)], 0.07)


def test_recovers_the_horizon_of_the_profile_that_made_the_targets():
    base = DeviceProfile.load("pipecnn_kcu1500")
    truth = synthetic_hits()
    true_profile = DeviceProfile({**base.data, "timing": {**base.timing, "t0_ns": 1.94, "tau_ns_per_bit": 0.07}})
    h0 = truth()
    targets = [(f, 100 * (truth(profile=true_profile, freq_mhz=f).mean() - h0.mean())) for f in (250, 262)]
    fitted, report = calibrate(wrapped(truth), base, targets, holdouts=[(270, 50.0)])
    t = fitted.timing
    for f in (250, 262):
        assert abs(horizon_k(f, t["t0_ns"], t["tau_ns_per_bit"]) - horizon_k(f, 1.94, 0.07)) <= 1
    assert fitted.status == "calibrated" and fitted.data["fit"]["images"] == N
    assert [r["mhz"] for r in report["targets"]] == [250.0, 262.0]
    assert report["heldout"][0]["mhz"] == 270.0 and isinstance(report["heldout"][0]["passed"], bool)


def test_jitter_tail_fit_recovers_t0_and_sigma():
    """calibrate --fit-jitter on a net whose loss depends only on P(K <= 30) (faults.md §5.5): the targets made
    by a known (t0, σ) give that (t0, σ) back, and the held-out clock is predicted."""
    from statistics import NormalDist

    from caffe_unstable.accel.faults.calibrate_tail import calibrate_tail

    rng = np.random.default_rng(2)
    v = rng.random(N)

    def p_k30(profile, f):
        t = profile.timing
        z = (1000.0 / f - t["t0_ns"] - 31 * t["tau_ns_per_bit"]) / t["jitter_ns"]
        return 1.0 - NormalDist().cdf(z)

    tails = []

    def hits(horizon_k=None, profile=None, freq_mhz=None):
        if profile is None:
            return np.ones(N)
        if profile.timing["jitter_ns"] == pytest.approx(0.007):       # a bisection profile (σ = τ/10)
            tails.append(round(math.log10(p_k30(profile, freq_mhz)), 9))
        return (v >= min(1.0, 2.0 * p_k30(profile, freq_mhz))).astype(np.float64)   # half the late-capable adds break

    base = DeviceProfile.load("pipecnn_kcu1500")
    truth = DeviceProfile({**base.data, "timing": {**base.timing, "t0_ns": 1.60, "jitter_ns": 0.10}})
    targets = [(f, 100 * (hits(profile=truth, freq_mhz=f).mean() - 1)) for f in (250, 258)]
    fitted, report = calibrate_tail(hits, base, targets, holdouts=[(262, 100 * hits(profile=truth,
                                                                                     freq_mhz=262).mean())])
    t = fitted.timing
    assert t["t0_ns"] == pytest.approx(1.60, abs=0.01) and t["jitter_ns"] == pytest.approx(0.10, rel=0.1)
    assert t["tau_ns_per_bit"] == 0.070 and t["jitter_scope"] == "per_add" and fitted.status == "calibrated"
    assert report["heldout"][0]["passed"]
    for r in report["targets"]:
        assert r["simulated"] == pytest.approx(r["delta"], abs=1.0)
    # Δ depends on p alone: the second target starts from the first one's evaluations and repeats none
    assert len(tails) == len(set(tails)) and 8 < len(tails) < 16, len(tails)
