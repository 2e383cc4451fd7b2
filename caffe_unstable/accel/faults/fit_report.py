"""What `cu-characterize fit` makes of measurement rows (faults.md §8.3, §8.5): the fitted device profile (the base
profile with the fitted parameters replaced, `status: measured`, the measurements file and its sha256, the `fit`
block), one line per measurement class (measured, predicted, residual), and the P(error) against f plot.
"""
import copy
import datetime
import hashlib
import math
import os
import socket
from pathlib import Path

import numpy as np

from ...errors import CaffeUnstableError
from . import schema, yaml_nodes
from .characterize import carry_arrays, carry_p, fit_carry, fit_seu
from .profile import rebase_files, stem
from .stats import chi2_sf

START = (1.94, 0.070, 0.010)     # faults.md §5.7 starting point, for a base profile without carry-horizon delays


def _tool():
    from ... import __version__
    return f"cu-characterize {__version__}"


def base_start(profile):
    """(t0, τ, σ) to start the carry fit from: the base's carry-horizon delays, else the §5.7 starting point."""
    t = profile.timing
    if t["model"] == "carry_horizon" and t["t0_ns"] is not None and t["tau_ns_per_bit"] is not None:
        return t["t0_ns"], t["tau_ns_per_bit"], t["jitter_ns"] or START[2]
    return START


class Fit:
    """Fits of one measurement set: `carry` and `seu` (characterize.FitResult or None) and the rows not fitted."""

    def __init__(self, rows, base, fit_lanes=False):
        self.rows, self.base, self.fit_lanes = rows, base, fit_lanes
        by_class = {c: [r for r in rows if r["vector_class"] == c] for c in ("carry", "seu", "layer", "canary")}
        self.by_class = by_class
        if not by_class["carry"] and not by_class["seu"]:
            raise CaffeUnstableError("measurements", "no carry or seu rows to fit")
        self.lane_num = base.accelerator["lane_num"]
        self.carry = None
        if by_class["carry"]:
            self.carry = fit_carry(by_class["carry"], base_start(base), self.lane_num, fit_lanes)
        seu = by_class["seu"]
        self.seu = fit_seu(seu) if any(r["errors"] for r in seu) else None

    def results(self):
        return [r for r in (self.carry, self.seu) if r is not None]

    def deltas(self):
        """Fitted lane offsets (zeros without --fit-lanes)."""
        if not self.fit_lanes or self.carry is None:
            return np.zeros(self.lane_num)
        return np.array([self.carry.params[f"lane_offsets_ns[{i}]"][0] for i in range(self.lane_num)])

    def fit_block(self):
        """The profile's `fit` block (faults.md §8.5); carry and seu fits add their log-likelihoods, G², dof."""
        res = self.results()
        params, mhz = {}, []
        for r in res:
            params.update(r.fit_block()["params"])
            mhz += r.valid_mhz
        g2, dof = sum(r.g2 for r in res), sum(r.dof for r in res)
        return {"method": "mle", "tool": _tool(), "date": datetime.date.today().isoformat(), "params": params,
                "loglik": round(sum(r.loglik for r in res), 4), "g2": round(g2, 4), "dof": dof,
                "p_value": round(chi2_sf(g2, dof), 4) if dof > 0 else None, "rows": sum(r.rows for r in res),
                "valid_mhz": [min(mhz), max(mhz)], "model_sha256": None, "images": None, "targets": [],
                "heldout": []}

    def lines(self):
        """One line per parameter, then one per measurement class: measured, predicted, residual (faults.md §8.5)."""
        out = []
        for r in self.results():
            for name, (value, se) in r.params.items():
                out.append(f"{name} = {value:.6g} ± {se:.2g}")
        for cls, res in (("carry", self.carry), ("seu", self.seu)):
            rows = self.by_class[cls]
            if not rows:
                continue
            errors, trials = sum(r["errors"] for r in rows), sum(r["trials"] for r in rows)
            if res is None:
                bound = 1 - 0.05 ** (1 / trials)       # 95 % upper bound of P(error per trial) after 0 errors
                out.append(f"{cls}: {len(rows)} rows, measured 0 errors in {trials} trials: soft_errors."
                           f"mac_flip_rate not fitted (P(error) per trial < {bound:.2g} at 95 %)")
                continue
            predicted = float(res.predicted.sum())
            p = f"{res.p_value:.3g}" if res.dof > 0 else "n/a"
            out.append(f"{cls}: {len(rows)} rows, measured {errors} errors in {trials} trials, predicted "
                       f"{predicted:.1f}, residual {errors - predicted:+.1f} (G² {res.g2:.1f}, dof {res.dof}, "
                       f"p {p})")
        for cls in ("layer", "canary"):
            rows = self.by_class[cls]
            if rows:
                out.append(f"{cls}: {len(rows)} rows, measured {sum(r['errors'] for r in rows)} errors in "
                           f"{sum(r['trials'] for r in rows)} trials: not fitted (compare with a run of the net "
                           f"under the fitted profile)")
        return out

    # -- the profile ------------------------------------------------------------------------------------------------
    def profile_data(self, meas_path, out_path):
        """The fitted profile as plain data (validated: a fit the schema rejects is refused in one line)."""
        data = copy.deepcopy(self.base.data)
        out_path = Path(out_path)
        data["name"] = stem(out_path)
        data["status"] = "measured"
        if self.carry is not None:
            t = data["timing"]
            p = self.carry.params
            t.update(model="carry_horizon", fixed_k=None, t0_ns=_round(p["t0_ns"][0]),
                     tau_ns_per_bit=_round(p["tau_ns_per_bit"][0]), jitter_ns=_round(p["jitter_ns"][0]),
                     jitter_scope="per_add")
            if self.fit_lanes:
                t["lane_offsets_ns"] = [_round(d) for d in self.deltas()]
        if self.seu is not None:
            data["soft_errors"]["mac_flip_rate"] = _round(self.seu.params["mac_flip_rate"][0])
        folder = out_path.resolve().parent
        rebase_files(data, self.base, out_path)
        data["measurements"] = {"file": _relative(meas_path, folder),
                                "sha256": hashlib.sha256(Path(meas_path).read_bytes()).hexdigest()}
        block = self.fit_block()
        data["fit"] = block
        data["provenance"] = dict(data.get("provenance") or {})
        data["provenance"]["measured"] = {"date": block["date"], "tool": block["tool"], "host": socket.gethostname()}
        try:
            return schema.validate(yaml_nodes.Doc(data, {}), out_path.name)
        except CaffeUnstableError as exc:
            raise CaffeUnstableError("fit", f"the fitted profile is refused: {exc.what}") from None

    # -- the plot ---------------------------------------------------------------------------------------------------
    def plot(self, path):
        """PNG of the measured P(error) against f per chain length (all lanes pooled), with the fitted curves
        (needs the carry fit)."""
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from ...io.atomic import atomic_path

        T, ell, _, n, e = carry_arrays(self.by_class["carry"], self.lane_num)
        mhz = 1000.0 / T
        p = self.carry.params
        t0, tau, sigma = p["t0_ns"][0], p["tau_ns_per_bit"][0], p["jitter_ns"][0]
        fig, ax = plt.subplots(figsize=(8, 5))
        grid = np.linspace(mhz.min(), mhz.max(), 400)
        lengths = sorted(set(ell.tolist()))
        colors = plt.get_cmap("viridis")(np.linspace(0, 1, max(len(lengths), 2)))
        for c, length in zip(colors, lengths):
            sel = ell == length
            freqs = sorted(set(mhz[sel].tolist()))
            rate = [e[sel & (mhz == f)].sum() / n[sel & (mhz == f)].sum() for f in freqs]
            ax.plot(freqs, rate, "o", color=c, ms=4)
            curve, _ = carry_p(t0, tau, sigma, self.deltas(), 1000.0 / grid, np.full(grid.size, float(length)),
                               np.full(grid.size, -1))
            ax.plot(grid, curve, "-", color=c, lw=1, label=f"ℓ = {int(length)}")
        ax.set_xlabel("clock f (MHz)")
        ax.set_ylabel("P(error) per trial")
        ax.set_title(f"carry vectors: t0 = {t0:.4g} ns, τ = {tau:.4g} ns/bit, σ = {sigma:.3g} ns")
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2 if len(lengths) > 8 else 1, loc="lower right")
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
        plt.close(fig)


def _relative(path, folder):
    return Path(os.path.relpath(Path(path).resolve(), folder)).as_posix()


def _round(x):
    """Six significant digits: the standard errors are far larger, and the YAML stays readable."""
    return float(f"{float(x):.6g}") if x and math.isfinite(x) else float(x)
