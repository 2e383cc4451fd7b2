"""`cu-characterize calibrate`: carry-horizon parameters fitted to accuracy losses, the paper's procedure
(faults.md §8.4). The net is abstracted as `hits(horizon_k=None, profile=None, freq_mhz=None) -> per-image 0/1
top-5 hits` on a fixed set of images with a fixed seed, so this module knows no Net.

    1. h0 = hits() (clean fixed point);  2. Δ(K) = 100·mean(h_K − h0) for K = 30, 29, ... (fixed_k, no jitter);
    3. κ_i by linear interpolation where Δ crosses each target d_i;  4. τ, t0 from T_i = t0 + (κ_i + ½)·τ;
    6. held-out clocks simulated with the fitted profile (per-add jitter) and compared with the given top-5.
"""
import copy
import datetime
import math

import numpy as np

from ...errors import CaffeUnstableError
from .carry_horizon import W_MAX, horizon_k


def paired(h, h0):
    """(Δ, SE) in points: 100·mean(h − h0) and its paired standard error 100·sd(h − h0)/√n."""
    d = np.asarray(h, np.float64) - np.asarray(h0, np.float64)
    n = len(d)
    return float(100.0 * d.mean()), (float(100.0 * d.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan"))


def delta_curve(hits, targets, h0, margin=10.0, log=None, metric="top-5"):
    """{K: (Δ, SE)} for K = 31 (clean, 0) down to the first K whose Δ is `margin` points below the lowest target,
    or whose run hits no image at all (Δ at its floor −100·mean(h0): no smaller K can reach a lower target), or
    K = 0."""
    curve = {W_MAX: (0.0, 0.0)}
    lowest = min(d for _, d in targets)
    for K in range(W_MAX - 1, -1, -1):
        h = np.asarray(hits(horizon_k=K), np.float64)
        curve[K] = paired(h, h0)
        if log:
            log(f"K = {K}: delta {metric} = {curve[K][0]:+.2f} points (SE {curve[K][1]:.2f})")
        if curve[K][0] < lowest - margin or not h.any():
            break
    return curve


def kappa(curve, target, f_mhz):
    """The fractional horizon where Δ(K) crosses `target` (step 3): the first k scanning down from 30 with
    Δ(k+1) > d ≥ Δ(k), then κ = k + (d − Δ(k)) / (Δ(k+1) − Δ(k))."""
    for k in range(W_MAX - 1, -1, -1):
        if k not in curve:
            break
        hi, lo = curve[k + 1][0], curve[k][0]
        if hi > target >= lo:
            return float(k + (target - lo) / (hi - lo))
    raise CaffeUnstableError("calibrate", f"target {f_mhz:g}:{target:g} not reached for K >= {min(curve)}")


def fit_t0_tau(points, base_tau):
    """t0, τ from [(T_ns, κ)] (step 4): one point keeps the base τ; two solve exactly; more by least squares of
    T = t0 + (κ + ½)·τ. The ½: with jitter the mean of floor(x − ε/τ) is about x − ½."""
    if len(points) == 1:
        (T, k), = points
        return T - (k + 0.5) * base_tau, base_tau
    points = sorted(points, key=lambda p: -p[0])             # by frequency ascending = period descending
    kappas = [k for _, k in points]
    if any(a <= b for a, b in zip(kappas, kappas[1:])):
        raise CaffeUnstableError("calibrate", "targets are not monotone in frequency")
    T = np.array([p[0] for p in points])
    X = np.array([k + 0.5 for k in kappas])
    tau, t0 = np.polyfit(X, T, 1)
    if tau <= 0:
        raise CaffeUnstableError("calibrate", "targets are not monotone in frequency")
    return float(t0), float(tau)


def calibrate(hits, base, targets, holdouts=(), holdout_tol=15.0, model_sha256=None, log=None, metric="top-5"):
    """Fit a calibrated profile (faults.DeviceProfile) from `base` and [(f_mhz, Δtop5)] targets; returns
    (profile, report) where report lists the targets and held-out predictions (faults.md §8.4-§8.5). `metric`
    names what hits() scores in the log lines (top-5 unless the caller counts another top-k)."""
    from .profile import DeviceProfile

    if not targets:
        raise CaffeUnstableError("calibrate", "give at least one --target F:DELTA")
    h0 = np.asarray(hits(), np.float64)
    n = len(h0)
    top5_clean = float(100.0 * h0.mean())
    if log:
        log(f"clean fixed point: {metric} = {top5_clean:.2f} % on {n} images")
    for f, d in targets:         # below the floor: no horizon loses more than every clean hit
        if d < -top5_clean:
            raise CaffeUnstableError("calibrate", f"target {f:g}:{d:g} not reached for K >= 0")
    curve = delta_curve(hits, targets, h0, log=log, metric=metric)
    rows = []
    for f, d in targets:
        k = kappa(curve, d, f)
        se = max(curve[math.floor(k)][1], curve[min(math.floor(k) + 1, W_MAX)][1])
        rows.append({"mhz": float(f), "delta": float(d), "kappa": round(k, 4), "se": round(se, 4)})
        if abs(d) < 2 * se and log:
            log(f"warning: calibrate: target {f:g}:{d:g} lies within 2 SE ({se:.2f} points) of 0; resolving it "
                f"needs more images")
    timing = base.timing
    t0, tau = fit_t0_tau([(1000.0 / r["mhz"], r["kappa"]) for r in rows], timing["tau_ns_per_bit"])
    if t0 <= 0 or tau <= 0:
        # e.g. SqueezeNet: Δ(30) is already a collapse, so every target sits between K = 31 and K = 30 and the
        # fixed-K curve cannot tell the clocks apart; the loss there comes from the jitter tail of K.
        span = ", ".join(f"{r['mhz']:g} MHz κ = {r['kappa']:.3f}" for r in rows)
        raise CaffeUnstableError("calibrate", f"the fitted timing is not physical (t0 = {t0:.4g} ns, tau = "
                                              f"{tau:.4g} ns/bit) from {span}: the targets lie within one step of "
                                              f"the fixed-K curve (delta at K = {min(curve)}: "
                                              f"{curve[min(curve)][0]:+.2f} points), which cannot resolve them")
    data = copy.deepcopy(base.data)
    data["name"] = base.name + "_calibrated"
    data["status"] = "calibrated"
    data["timing"].update(model="carry_horizon", t0_ns=round(t0, 6), tau_ns_per_bit=round(tau, 6), fixed_k=None)
    fitted = DeviceProfile(_validated(data))
    for r in rows:
        r["K_fitted"] = int(horizon_k(r["mhz"], t0, tau))
        r["simulated"] = round(paired(hits(profile=fitted, freq_mhz=r["mhz"]), h0)[0], 3)
    heldout = []
    for f, top5 in holdouts:
        predicted = 100.0 * np.mean(hits(profile=fitted, freq_mhz=f))
        heldout.append({"mhz": float(f), "given_top5": float(top5), "predicted_top5": round(float(predicted), 3),
                        "passed": bool(abs(predicted - top5) <= holdout_tol)})
    data["fit"] = {"method": "accuracy_targets", "tool": "cu-characterize 0.1.0",
                   "date": datetime.date.today().isoformat(),
                   "params": {"t0_ns": [round(t0, 6), None], "tau_ns_per_bit": [round(tau, 6), None],
                              "jitter_ns": [timing["jitter_ns"], None]},
                   "loglik": None, "g2": None, "dof": None, "p_value": None, "rows": len(rows),
                   "valid_mhz": [min(r["mhz"] for r in rows), max(r["mhz"] for r in rows)],
                   "model_sha256": model_sha256, "images": n, "targets": rows, "heldout": heldout,
                   "clean_top5": round(top5_clean, 3),
                   "delta_curve": {int(k): [round(v[0], 4), round(v[1], 4)] for k, v in sorted(curve.items())}}
    return DeviceProfile(_validated(data)), {"targets": rows, "heldout": heldout, "curve": curve, "clean_top5": top5_clean}


def _validated(data):
    """The fitted profile through the schema (defaults, the safe-clock check): refused in one line."""
    from . import schema, yaml_nodes

    try:
        return schema.validate(yaml_nodes.Doc(data, {}), data["name"])
    except CaffeUnstableError as exc:
        raise CaffeUnstableError("calibrate", f"the fitted profile is refused: {exc.what}") from None
