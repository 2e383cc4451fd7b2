"""cu-test sweeps (interface.md; faults.md §11): `--freq 210:280:10` or `--ser 1e-7:1e-3:0.5` (log10 step) run every
operating point on the same images with the same seed (paired comparisons), after a clean fixed-point baseline,
and write one CSV row per point plus a matplotlib PNG of accuracy against the operating point with binomial
error bars.
"""
import csv
import math
import os

import numpy as np

from ..errors import CaffeUnstableError

EPS = 1e-9


def is_sweep(value):
    return value is not None and ":" in str(value)


def sweep_points(option, spec):
    """LO:HI:STEP -> the operating points, HI included: linear for --freq, 10^(log10 LO + k STEP) for --ser."""
    parts = str(spec).split(":")
    try:
        lo, hi, step = (float(p) for p in parts)
    except ValueError:
        raise CaffeUnstableError(option, f"a sweep is LO:HI:STEP with three numbers, got {spec!r}") from None
    if step <= 0 or hi < lo:
        raise CaffeUnstableError(option, f"a sweep needs LO <= HI and STEP > 0, got {spec!r}")
    if option == "--ser":
        if lo <= 0:
            raise CaffeUnstableError(option, f"a rate sweep steps in log10 and needs LO > 0, got {spec!r}")
        a, b = math.log10(lo), math.log10(hi)
        count = int(math.floor((b - a) / step + EPS)) + 1
        return [float(10 ** (a + k * step)) for k in range(count)]
    count = int(math.floor((hi - lo) / step + EPS)) + 1
    return [lo + k * step for k in range(count)]


def output_paths(json_out, option):
    """(csv, png) next to --json's file (same stem), else cu-test-sweep-<freq|ser>.* in the current folder."""
    if json_out:
        stem = os.path.splitext(json_out)[0]
    else:
        stem = f"cu-test-sweep-{option.lstrip('-')}"
    return stem + ".csv", stem + ".png"


def binomial_se(p, n):
    return math.sqrt(max(p * (1.0 - p), 0.0) / n) if n else float("nan")


def flat_outputs(outputs):
    """{blob: float or [floats]} -> {column: float} (multi-element outputs as name[i])."""
    cols = {}
    for name, value in outputs.items():
        if isinstance(value, list):
            cols.update({f"{name}[{i}]": v for i, v in enumerate(value)})
        else:
            cols[name] = value
    return cols


def write_csv(path, key, rows, accuracy_blobs):
    """One row per operating point: the point, images, every output, its binomial SE for accuracies, then the
    per-image fault counters."""
    from ..io.atomic import atomic_path

    out_cols = list(flat_outputs(rows[0]["outputs"]))
    fault_cols = list(rows[0]["faults"])
    header = [key, "images"] + out_cols + [f"{a}_se" for a in accuracy_blobs] + fault_cols
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            for row in rows:
                outs = flat_outputs(row["outputs"])
                point = "clean" if row[key] is None else f"{row[key]:.6g}"
                w.writerow([point, row["images"]] + [f"{outs[c]:.6g}" for c in out_cols]
                           + [f"{binomial_se(outs[a], row['images']):.6g}" for a in accuracy_blobs]
                           + ["" if row["faults"][c] is None else f"{row['faults'][c]:.6g}" for c in fault_cols])


def plot(path, key, rows, accuracy_blobs, title):
    """Accuracy against the operating point, binomial error bars; the clean fixed-point baseline dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io.atomic import atomic_path

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    points = [r for r in rows if r[key] is not None]
    base = next((r for r in rows if r[key] is None), None)
    xs = np.array([r[key] for r in points])
    for i, blob in enumerate(accuracy_blobs):
        color = f"C{i}"
        ys = np.array([flat_outputs(r["outputs"])[blob] for r in points])
        se = np.array([binomial_se(y, r["images"]) for y, r in zip(ys, points)])
        ax.errorbar(xs, 100 * ys, yerr=100 * 1.96 * se, marker="o", ms=4, capsize=3, color=color, label=blob)
        if base is not None:
            ax.axhline(100 * flat_outputs(base["outputs"])[blob], color=color, ls="--", lw=0.8,
                       label=f"{blob}, clean fixed point")
    if key == "ser":
        ax.set_xscale("log")
        ax.set_xlabel("soft-error rate per MAC")
    else:
        ax.set_xlabel("accelerator clock (MHz)")
    ax.set_ylabel("accuracy (%), 95 % binomial interval")
    ax.set_ylim(0, 100)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
