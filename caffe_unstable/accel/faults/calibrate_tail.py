"""`cu-characterize calibrate --fit-jitter`: carry-horizon timing fitted to accuracy losses through the per-add
jitter tail (faults.md §5.5, §8.4 step 5), for nets that the fixed-K curve cannot resolve.

Why: on real ImageNet nets the first late horizon is already a collapse (SqueezeNet loses 87.5 top-5 points at a
fixed K = 30), so a gradual loss such as the paper's −0.5 / −4.3 points at 250 / 260 MHz can only come from a
small fraction p(f) of adds whose jittered horizon drops to 30. With per-add Gaussian jitter
p(f) = P(K ≤ 30) = Q((T − t0 − 31·τ)/σ), T = 1000/f, so each target gives one linear equation in (t0, σ):

    T_i − 31·τ = t0 + σ·z_i,   z_i = Q⁻¹(p_i)

Procedure: for each target find p_i by bisection in log10 p, simulating the net with a profile whose horizon is
31 except for a fraction p of adds at 30 (σ = τ/10: K ≤ 29 has probability Q(z + 10), negligible); then solve
for t0 and σ (τ from the base profile; one target keeps the base σ; more than two by least squares); then
simulate the targets and the held-out clocks with the fitted profile, deeper horizons included.
"""
import copy
import datetime
import math
from statistics import NormalDist

import numpy as np

from ...errors import CaffeUnstableError
from .calibrate import _validated, paired
from .carry_horizon import W_MAX

TAIL_SIGMA_PER_TAU = 0.1


def q_inverse(p):
    """z with Q(z) = P(N(0,1) > z) = p."""
    return NormalDist().inv_cdf(1.0 - p)


def tail_profile(base, p, f_mhz):
    """`base` with per-add jitter σ = τ/10 and t0 such that P(K ≤ 30) = p at f_mhz."""
    from .profile import DeviceProfile

    data = copy.deepcopy(base.data)
    t = data["timing"]
    tau = t["tau_ns_per_bit"]
    sigma = TAIL_SIGMA_PER_TAU * tau
    t.update(model="carry_horizon", t0_ns=1000.0 / f_mhz - W_MAX * tau - sigma * q_inverse(p), jitter_ns=sigma,
             jitter_scope="per_add", fixed_k=None, lane_offsets_ns=None)
    return DeviceProfile(data)


def solve_p(hits, h0, base, f_mhz, target, log=None, lo=-8.0, hi=-0.5, steps=8, metric="top-5", seen=None):
    """log10 p with Δ(p) = target by bisection (Δ falls as p grows; common random numbers keep the late adds
    nested in p). Returns (p, Δ, SE) of the evaluation closest to the target.

    Why `seen` ({log10 p: (Δ, SE)}, shared by the targets): with σ = τ/10 the horizon table of tail_profile(p, f)
    is the same at every f, so Δ depends on p alone; the bracket starts from the evaluations already made and the
    bisection stops at the resolution `steps` halvings of [lo, hi] give."""
    seen = {} if seen is None else seen
    width = (hi - lo) / 2 ** steps
    for lp, (d, _) in seen.items():
        if lo < lp < hi:
            if d > target:
                lo = lp
            else:
                hi = lp
    while True:
        mid = 0.5 * (lo + hi)
        if hi - lo <= width * 1.000001 and seen:
            break
        if mid not in seen:
            seen[mid] = paired(hits(profile=tail_profile(base, 10 ** mid, f_mhz), freq_mhz=f_mhz), h0)
            if log:
                d, se = seen[mid]
                log(f"{f_mhz:g} MHz: P(K <= 30) = {10 ** mid:.3g}: delta {metric} = {d:+.2f} points (SE {se:.2f})")
        if seen[mid][0] > target:
            lo = mid
        else:
            hi = mid
    lp = min(seen, key=lambda v: (abs(seen[v][0] - target), v))
    return 10 ** lp, seen[lp][0], seen[lp][1]


def fit_t0_sigma(points, tau, base_sigma):
    """(t0, σ) from [(T_ns, z)]: T − 31τ = t0 + σ z."""
    T = np.array([p[0] for p in points]) - W_MAX * tau
    z = np.array([p[1] for p in points])
    if len(points) == 1:
        return float(T[0] - base_sigma * z[0]), float(base_sigma)
    sigma, t0 = np.polyfit(z, T, 1)
    if sigma <= 0:
        raise CaffeUnstableError("calibrate", "targets are not monotone in frequency (the fitted jitter is not "
                                              "positive)")
    return float(t0), float(sigma)


def calibrate_tail(hits, base, targets, holdouts=(), holdout_tol=15.0, model_sha256=None, log=None,
                   metric="top-5"):
    """The fitted profile and a report, as calibrate.calibrate returns them."""
    from .profile import DeviceProfile

    h0 = np.asarray(hits(), np.float64)
    clean = float(100.0 * h0.mean())
    if log:
        log(f"clean fixed point: {metric} = {clean:.2f} % on {len(h0)} images")
    tau = base.timing["tau_ns_per_bit"]
    rows = []
    seen = {}
    for f, d in targets:
        if not -clean <= d < 0:
            raise CaffeUnstableError("calibrate", f"target {f:g}:{d:g} must be a loss in [-{clean:.1f}, 0) points")
        p, got, se = solve_p(hits, h0, base, f, d, log, metric=metric, seen=seen)
        rows.append({"mhz": float(f), "delta": float(d), "p_k30": float(p), "z": round(q_inverse(p), 4),
                     "tail_delta": round(got, 3), "se": round(se, 4)})
    t0, sigma = fit_t0_sigma([(1000.0 / r["mhz"], r["z"]) for r in rows], tau, base.timing["jitter_ns"])
    data = copy.deepcopy(base.data)
    data["status"] = "calibrated"
    data["timing"].update(model="carry_horizon", t0_ns=round(t0, 6), jitter_ns=round(sigma, 6),
                          jitter_scope="per_add", fixed_k=None)
    fitted = DeviceProfile(_validated(data))
    for r in rows:
        r["simulated"] = round(paired(hits(profile=fitted, freq_mhz=r["mhz"]), h0)[0], 3)
    heldout = []
    for f, given in holdouts:
        predicted = float(100.0 * np.mean(hits(profile=fitted, freq_mhz=f)))
        heldout.append({"mhz": float(f), "given_top5": float(given), "predicted_top5": round(predicted, 3),
                        "passed": bool(abs(predicted - given) <= holdout_tol)})
    data["fit"] = {"method": "accuracy_targets_jitter_tail", "tool": "cu-characterize 0.1.0",
                   "date": datetime.date.today().isoformat(),
                   "params": {"t0_ns": [round(t0, 6), None], "tau_ns_per_bit": [tau, None],
                              "jitter_ns": [round(sigma, 6), None]},
                   "loglik": None, "g2": None, "dof": None, "p_value": None, "rows": len(rows),
                   "valid_mhz": [min(r["mhz"] for r in rows), max(r["mhz"] for r in rows)],
                   "model_sha256": model_sha256, "images": len(h0), "targets": rows, "heldout": heldout,
                   "clean_top5": round(clean, 3), "first_failure_mhz": round(1000.0 / (t0 + W_MAX * tau), 2)}
    for r in rows:
        r["K_fitted"] = int(math.floor((1000.0 / r["mhz"] - t0) / tau)) if (1000.0 / r["mhz"] - t0) / tau < 31 else 31
    return DeviceProfile(_validated(data)), {"targets": rows, "heldout": heldout, "clean_top5": clean}
