"""The figures of docs/faults.md from the CSVs of scripts/fault_sweeps.sh: per net, accuracy against the soft-error
rate for both readings of "MAC result" (accumulator, 32 bits; product, 18 bits), and against the clock, each
beside the paper's reported shape (arXiv 1812.01689: LeNet unchanged up to 1e-3 per MAC, larger nets degrading
from about 1e-5; AlexNet top-5 -0.5 / -4.3 points at 250 / 260 MHz and about 10 % at 270 MHz).

Run: python scripts/plot_sweeps.py SWEEP_DIR OUT_DIR
"""
import csv
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

NETS = {"lenet": ("LeNet, MNIST t10k", "accuracy"), "cifar10_quick": ("cifar10_quick, CIFAR-10 test", "accuracy"),
        "squeezenet": ("SqueezeNet, ImageNet sample", "accuracy_top5")}


def read(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def series(rows, key, metric):
    clean = next(float(r[metric]) for r in rows if r[key] == "clean")
    pts = [(float(r[key]), float(r[metric]), float(r[metric + "_se"])) for r in rows if r[key] != "clean"]
    return clean, pts


def errorbars(ax, pts, **style):
    """Accuracy (%) against the operating point with 95 % binomial intervals."""
    ax.errorbar([p[0] for p in pts], [100 * p[1] for p in pts], yerr=[196 * p[2] for p in pts], marker="o", ms=4,
                capsize=3, **style)


def finish(fig, ax, metric, title, path):
    ax.set_ylabel(f"{metric} (%), 95 % interval")
    ax.set_ylim(0, 100)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_ser(sweeps, net, out):
    title, metric = NETS[net]
    if not list(sweeps.glob(f"{net}_ser_*.csv")):
        return
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for i, (site, label) in enumerate((("accumulator32", "accumulator A_t, 32 bits"),
                                       ("product18", "product m_t, 18 bits (DSP width)"))):
        path = sweeps / f"{net}_ser_{site}.csv"
        if not path.is_file():
            continue
        clean, pts = series(read(path), "ser", metric)
        errorbars(ax, pts, color=f"C{i}", label=label)
        ax.axhline(100 * clean, color="gray", ls="--", lw=0.8)
    onset = 1e-3 if net == "lenet" else 1e-5
    ax.axvspan(1e-7, onset, color="C2", alpha=0.08, label=f"paper: no loss up to ~{onset:g}")
    ax.set_xscale("log")
    ax.set_xlabel("soft-error rate per MAC")
    finish(fig, ax, metric, f"{title}: soft errors (dashed: clean fixed point)", out / f"{net}_ser.png")


def plot_freq(sweeps, net, out):
    title, metric = NETS[net]
    path = sweeps / f"{net}_freq.csv"
    if not path.is_file():
        return
    clean, pts = series(read(path), "freq_mhz", metric)
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    errorbars(ax, pts, label=f"{net}, shipped starting-point profile")
    ax.axhline(100 * clean, color="gray", ls="--", lw=0.8, label="clean fixed point")
    paper = [(210, 78.95), (250, 78.45), (260, 74.65), (270, 10.0)]        # AlexNet top-5 on PipeCNN/KCU1500
    ax.plot([p[0] for p in paper], [p[1] for p in paper], "k^:", ms=5, label="paper: AlexNet top-5")
    ax.set_xlabel("accelerator clock (MHz)")
    finish(fig, ax, metric, f"{title}: overclocking, carry-horizon model", out / f"{net}_freq.png")


def main():
    sweeps, out = Path(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    for net in NETS:
        plot_ser(sweeps, net, out)
        plot_freq(sweeps, net, out)


if __name__ == "__main__":
    main()
