"""Maximum-likelihood fits of a device's timing and soft-error parameters from measurement counts (faults.md §8.2-8.3).

Each measurement row is Binomial(trials, p(θ)). `carry` rows (one long carry chain of length ℓ per trial) have
p = Q((T − t0 − δ_lane − ℓ·τ)/σ), T = 1000/mhz (the mean over lanes for rows without a lane); `seu` rows (zero-input
layers) have p = 1 − (1 − rate·V)^M. Pure functions on arrays; reading files and writing profiles are thin wrappers.
"""
import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...errors import CaffeUnstableError
from .stats import chi2_sf

CLASSES = ("carry", "seu", "layer", "canary")
P_LO, P_HI = 1e-300, 1 - 1e-16
SIGMA_MIN = 1e-4


# -- measurement rows (§8.2) --------------------------------------------------------------------------------------
def _num(row, key, where, kind=float, required=True):
    v = row.get(key)
    if v is None or v == "":
        if required:
            raise CaffeUnstableError(where, f"{key}: required for vector_class {row.get('vector_class')!r}")
        return None
    try:
        x = kind(v) if kind is float else int(str(v))
    except ValueError:
        raise CaffeUnstableError(where, f"{key}: must be {'a number' if kind is float else 'an integer'}, "
                                        f"got {v!r}") from None
    return x


def check_rows(rows, source):
    """Validated measurement rows (dicts with typed columns); `rows` is a list of (line, mapping)."""
    out = []
    for line, row in rows:
        where = f"{source}:{line}"
        cls = row.get("vector_class")
        if cls not in CLASSES:
            raise CaffeUnstableError(where, f"vector_class: must be one of {', '.join(CLASSES)}, got {cls!r}")
        r = {"vector_class": cls, "mhz": _num(row, "mhz", where), "trials": _num(row, "trials", where, int),
             "errors": _num(row, "errors", where, int),
             "lane": _num(row, "lane", where, int, required=False)}
        if r["trials"] < 1:
            raise CaffeUnstableError(where, f"trials: must be >= 1, got {r['trials']}")
        if not 0 <= r["errors"] <= r["trials"]:
            raise CaffeUnstableError(where, f"errors: must be in [0, trials = {r['trials']}], got {r['errors']}")
        if r["mhz"] <= 0:
            raise CaffeUnstableError(where, f"mhz: must be > 0, got {r['mhz']}")
        if cls == "carry":
            r["chain_len"] = _num(row, "chain_len", where, int)
            if not 1 <= r["chain_len"] <= 31:
                raise CaffeUnstableError(where, f"chain_len: must be in [1, 31], got {r['chain_len']}")
        if cls == "seu":
            r["macs_per_trial"] = _num(row, "macs_per_trial", where, int)
            r["visible_fraction"] = _num(row, "visible_fraction", where)
            if not 0 < r["visible_fraction"] <= 1:
                raise CaffeUnstableError(where, f"visible_fraction: must be in (0, 1], got {r['visible_fraction']}")
        if cls == "layer":
            r["layer"] = row.get("layer")
        out.append(r)
    return out


def read_measurements(path):
    """Rows of a measurement CSV, or of a YAML file whose top-level key `rows` is a list of mappings."""
    path = Path(path)
    if path.suffix in (".yaml", ".yml"):
        import yaml
        data = yaml.safe_load(path.read_text()) or {}
        rows = data.get("rows") if isinstance(data, dict) else None
        if not isinstance(rows, list):
            raise CaffeUnstableError(str(path), "rows: a YAML measurement file needs a top-level list `rows`")
        return check_rows([(f"rows[{i}]", r) for i, r in enumerate(rows)], str(path))
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return check_rows([(i, r) for i, r in enumerate(reader, start=2)], str(path))


COLUMNS = ("mhz", "vector_class", "chain_len", "lane", "trials", "errors", "macs_per_trial", "visible_fraction",
           "repeat")


def write_measurements(path, rows, append=False):
    """Write count rows as CSV with the §8.2 columns (`COLUMNS`, None -> empty cell), atomically; with `append`
    the rows go after those of an existing file, whose header must be the same."""
    import io
    from ...io.atomic import write_bytes
    path = Path(path)
    head = ""
    if append and path.is_file() and path.stat().st_size:
        head = path.read_text(encoding="utf-8")
        if head.splitlines()[0].split(",") != list(COLUMNS):
            raise CaffeUnstableError(f"{path}:1", f"cannot append: the header is not {','.join(COLUMNS)}")
        if not head.endswith("\n"):
            head += "\n"
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n", extrasaction="ignore")
    if not head:
        writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in COLUMNS})
    write_bytes(path, (head + buf.getvalue()).encode("utf-8"))


def carry_arrays(rows, lane_num):
    """(T, ell, lane, trials, errors) of the carry rows; lane −1 = spread over all lanes."""
    rows = [r for r in rows if r["vector_class"] == "carry"]
    lane = np.array([-1 if r["lane"] is None else r["lane"] for r in rows], np.int64)
    if (lane >= lane_num).any():
        raise CaffeUnstableError("measurements", f"lane: must be < lane_num ({lane_num}), got {int(lane.max())}")
    return (np.array([1000.0 / r["mhz"] for r in rows]), np.array([r["chain_len"] for r in rows], float), lane,
            np.array([r["trials"] for r in rows], float), np.array([r["errors"] for r in rows], float))


# -- likelihood -----------------------------------------------------------------------------------------------------
def _phi(z):
    return np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def q_tail(z):
    """Q(z) = 0.5·erfc(z/√2), vectorised."""
    return 0.5 * np.vectorize(math.erfc, otypes=[float])(np.asarray(z, float) / math.sqrt(2.0))


def carry_p(t0, tau, sigma, deltas, T, ell, lane):
    """p per carry row and dp/d(t0, ln τ, ln σ, δ_0 … δ_{L−1}) (rows without a lane: mean over lanes)."""
    deltas = np.asarray(deltas, float)
    lanes = len(deltas)
    # a row with a lane depends on its own lane only: evaluate Q there, not over every lane (the --fit-lanes
    # Hessian takes hundreds of evaluations)
    lane_of = np.where(lane >= 0, lane, 0)
    spread = np.flatnonzero(lane < 0)
    z = (T - t0 - deltas[lane_of] - ell * tau) / sigma
    q, dq = q_tail(z), -_phi(z)
    grad = np.zeros((len(T), 3 + lanes))
    grad[:, 0], grad[:, 1], grad[:, 2] = dq * (-1 / sigma), dq * (-ell * tau / sigma), dq * (-z)
    grad[np.arange(len(T)), 3 + lane_of] = dq * (-1 / sigma)
    p = q
    if spread.size:
        zs = (T[spread, None] - t0 - deltas[None, :] - ell[spread, None] * tau) / sigma       # [rows, lanes]
        qs, dqs = q_tail(zs), -_phi(zs)
        p[spread] = qs.mean(1)
        grad[spread, 0] = (dqs * (-1 / sigma)).mean(1)
        grad[spread, 1] = (dqs * (-ell[spread, None] * tau / sigma)).mean(1)
        grad[spread, 2] = (dqs * (-zs)).mean(1)
        grad[spread, 3:] = dqs * (-1 / sigma) / lanes
    return p, grad


def loglik(p, trials, errors):
    p = np.clip(p, P_LO, P_HI)
    return float((errors * np.log(p) + (trials - errors) * np.log1p(-p)).sum())


def deviance_parts(p, trials, errors):
    """Per-row deviance d_i (G² = Σ d_i) and the signed deviance residual sign(e − n·p)·√d_i."""
    p = np.clip(p, P_LO, P_HI)
    e, n = errors, trials
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(e > 0, e * np.log(e / (n * p)), 0.0)
        b = np.where(n - e > 0, (n - e) * np.log((n - e) / (n * (1 - p))), 0.0)
    d = np.maximum(2 * (a + b), 0.0)
    return d, np.sign(e - n * p) * np.sqrt(d)


# -- fits -------------------------------------------------------------------------------------------------------------
@dataclass
class FitResult:
    params: dict                      # name -> (value, standard error)
    loglik: float
    g2: float
    dof: int
    p_value: float
    rows: int
    predicted: np.ndarray             # trials·p per row
    residuals: np.ndarray             # deviance residual per row
    valid_mhz: list = field(default_factory=list)

    def fit_block(self):
        """The `params … valid_mhz` part of a profile's `fit` block (faults.md §8.5)."""
        return {"params": {k: [float(v), float(s)] for k, (v, s) in self.params.items()},
                "loglik": round(self.loglik, 4), "g2": round(self.g2, 4), "dof": self.dof,
                "p_value": round(self.p_value, 4), "rows": self.rows, "valid_mhz": self.valid_mhz}


def _fisher_scoring(z, lanes, T, ell, lane, n, e, fit_lanes, iters=100):
    """Maximise ln L over z = (t0, ln τ, ln σ, δ_0 … δ_{L−2}) by Fisher scoring with step halving."""
    def unpack(z):
        d = np.zeros(lanes)
        if fit_lanes:
            d[:-1] = z[3:]
            d[-1] = -z[3:].sum()
        return z[0], math.exp(z[1]), max(math.exp(z[2]), SIGMA_MIN), d

    def evaluate(z):
        t0, tau, sigma, d = unpack(z)
        p, dp = carry_p(t0, tau, sigma, d, T, ell, lane)
        if fit_lanes:
            dp = np.concatenate([dp[:, :3], dp[:, 3:-1] - dp[:, -1:]], axis=1)
        else:
            dp = dp[:, :3]
        return p, dp

    ll = loglik(evaluate(z)[0], n, e)
    for _ in range(iters):
        p, dp = evaluate(z)
        pc = np.clip(p, 1e-12, 1 - 1e-12)
        w = n / (pc * (1 - pc))
        score = dp.T @ ((e - n * pc) / (pc * (1 - pc)))
        info = (dp * w[:, None]).T @ dp + 1e-9 * np.eye(len(z))
        step = np.linalg.solve(info, score)
        limit = np.concatenate([[0.2, 0.5, 1.0], np.full(len(z) - 3, 0.1)])      # a trust region per parameter
        step = step / max(1.0, float((np.abs(step) / limit).max()))
        for _ in range(40):
            cand = z + step
            cand[2] = max(cand[2], math.log(SIGMA_MIN))
            ll_c = loglik(evaluate(cand)[0], n, e)
            if ll_c >= ll - 1e-12:
                break
            step = step / 2
        else:
            break
        converged = abs(ll_c - ll) < 1e-10 and np.abs(step).max() < 1e-9
        z, ll = cand, ll_c
        if converged:
            break
    return z, ll, lambda zz: loglik(evaluate(zz)[0], n, e)


def _hessian(f, z, h=1e-4):
    """Finite-difference Hessian of f at z (central differences, step scaled to |z|)."""
    k = len(z)
    H = np.empty((k, k))
    hs = h * np.maximum(1.0, np.abs(z))
    for i in range(k):
        for j in range(i, k):
            def at(si, sj):
                zz = z.copy()
                zz[i] += si * hs[i]
                zz[j] += sj * hs[j]
                return f(zz)
            H[i, j] = H[j, i] = (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1)) / (4 * hs[i] * hs[j])
    return H


def fit_carry(rows, base, lane_num=16, fit_lanes=False):
    """ML fit of (t0, τ, σ[, δ_lane]) to the `carry` rows; `base` = (t0_ns, tau_ns_per_bit, jitter_ns) to start.

    Starts from the base and from 5 values of t0 over ±20 % and keeps the best; standard errors from the inverse
    finite-difference Hessian of −ln L (delta method for τ and σ, fitted on the log scale).
    """
    T, ell, lane, n, e = carry_arrays(rows, lane_num)
    if not (e > 0).any():
        raise CaffeUnstableError("measurements", "no errors observed; raise the clock")
    if len(set(ell[e > 0].tolist())) < 2:
        raise CaffeUnstableError("measurements", "cannot identify tau: errors at one chain length only")
    if len(set(T.tolist())) < 2:       # one clock fixes (T − t0)/σ and τ/σ only: t0, τ and σ are confounded
        raise CaffeUnstableError("measurements", "cannot identify t0: carry rows at one clock only; measure at two "
                                                 "or more clocks")
    lanes = lane_num if fit_lanes else 1
    lane_used = lane if fit_lanes else np.where(lane >= 0, 0, -1)
    t0, tau, sigma = base
    best = None
    for start in [t0] + list(t0 * np.array([0.8, 0.9, 1.0 + 1e-3, 1.1, 1.2])):
        z0 = np.concatenate([[start, math.log(tau), math.log(max(sigma, 1e-3))],
                             np.zeros(lanes - 1 if fit_lanes else 0)])
        z, ll, f = _fisher_scoring(z0, lanes, T, ell, lane_used, n, e, fit_lanes)
        if best is None or ll > best[1]:
            best = (z, ll, f)
    z, ll, f = best
    cov = np.linalg.pinv(-_hessian(f, z))
    se = np.sqrt(np.maximum(np.diag(cov), 0.0))
    tau_v, sigma_v = math.exp(z[1]), max(math.exp(z[2]), SIGMA_MIN)
    params = {"t0_ns": (z[0], se[0]), "tau_ns_per_bit": (tau_v, tau_v * se[1]), "jitter_ns": (sigma_v, sigma_v * se[2])}
    deltas = np.zeros(lanes)
    if fit_lanes:
        deltas[:-1] = z[3:]
        deltas[-1] = -z[3:].sum()
        for i in range(lane_num - 1):
            params[f"lane_offsets_ns[{i}]"] = (deltas[i], se[3 + i])
        params[f"lane_offsets_ns[{lane_num - 1}]"] = (deltas[-1], float(np.sqrt(cov[3:, 3:].sum())))
    p, _ = carry_p(z[0], tau_v, sigma_v, deltas, T, ell, lane_used)
    return _result(params, p, n, e, len(z), [r["mhz"] for r in rows if r["vector_class"] == "carry"])


def seu_p(rate, macs_per_trial, visible_fraction):
    """P(a trial's output differs) = 1 − (1 − rate·V)^M."""
    return -np.expm1(macs_per_trial * np.log1p(-rate * visible_fraction))


def fit_seu(rows, lo=1e-15, hi=0.01):
    """ML fit of the per-MAC flip rate to the `seu` rows: golden-section search on ln(rate) over [lo, hi]."""
    rows = [r for r in rows if r["vector_class"] == "seu"]
    if not rows:
        raise CaffeUnstableError("measurements", "no seu rows to fit soft_errors.mac_flip_rate")
    M = np.array([r["macs_per_trial"] for r in rows], float)
    V = np.array([r["visible_fraction"] for r in rows])
    n = np.array([r["trials"] for r in rows], float)
    e = np.array([r["errors"] for r in rows], float)
    f = lambda x: loglik(seu_p(math.exp(x), M, V), n, e)  # noqa: E731
    a, b = math.log(lo), math.log(hi)
    g = (math.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    for _ in range(200):
        if f(c) > f(d):
            b, d = d, c
            c = b - g * (b - a)
        else:
            a, c = c, d
            d = a + g * (b - a)
    x = (a + b) / 2
    h = 1e-4
    curv = -(f(x + h) - 2 * f(x) + f(x - h)) / h ** 2
    rate = math.exp(x)
    se = rate / math.sqrt(curv) if curv > 0 else float("inf")
    return _result({"mac_flip_rate": (rate, se)}, seu_p(rate, M, V), n, e, 1, [r["mhz"] for r in rows])


def _result(params, p, n, e, k, mhz):
    d, resid = deviance_parts(p, n, e)
    dof = len(n) - k
    g2 = float(d.sum())
    return FitResult(params, loglik(p, n, e), g2, dof, chi2_sf(g2, dof) if dof > 0 else float("nan"), len(n),
                     n * np.clip(p, 0, 1), resid, [min(mhz), max(mhz)] if mhz else [])
