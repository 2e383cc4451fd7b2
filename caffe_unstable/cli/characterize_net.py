"""cu-characterize's subcommands that run a network: `calibrate` (fit the carry-horizon timing to accuracy losses,
faults.md §8.4) and `canaries` (make a canary set, §9). Registered on characterize.py's group `main`.

    cu-characterize calibrate --model M --weights W --quant Q --base pipecnn_kcu1500 \\
                              --target 250:-0.5 --target 260:-4.3 --holdout 270:10 --out board.devprofile.yaml
    cu-characterize canaries --model M --weights W --quant Q --freq 250 --out board.canaries.npz
"""
import sys
from pathlib import Path

import click
import numpy as np

from ..errors import CaffeUnstableError
from . import check_operating_point, run
from .characterize import CONTEXT, _tool, _warn, main


def _stderr(line):
    click.echo(line, err=True)


def parse_pair(option, spec, what):
    """`F:VALUE` of --target / --holdout -> (MHz, value)."""
    try:
        f, v = (float(x) for x in spec.split(":"))
    except ValueError:
        raise CaffeUnstableError(option, f"expected {what}, got {spec!r}") from None
    if f <= 0:
        raise CaffeUnstableError(option, f"the clock must be > 0 MHz, got {spec!r}")
    return f, v


def fault_seed(seed):
    """--seed, or one drawn from OS entropy and logged (faults.md §3.1)."""
    from ..accel.faults.rng import check_seed

    if seed is not None:
        return check_seed(seed)
    seed = int(np.random.SeedSequence().entropy % (1 << 63))
    _stderr(f"Fault seed: {seed} (drawn; pass --seed {seed} to reproduce)")
    return seed


def model_sha(model, weights):
    from ..accel.faults.canaries import model_sha256

    return model_sha256(Path(model).read_bytes(), Path(weights).read_bytes())


def net_options(command):
    """--model, --weights, --quant, --iterations: a trained net and the TEST batches it is run on."""
    command = click.option("--iterations", type=click.IntRange(min=1), default=50, show_default=True,
                           help="TEST batches run (the images every setting sees).")(command)
    command = click.option("--quant", required=True, help="Fixed-point formats per layer (*.quant.yaml, "
                                                          "pipecnn.md §10.5).")(command)
    command = click.option("--weights", required=True, type=click.Path(dir_okay=False),
                           help="Trained weights: binary .caffemodel or HDF5 .caffemodel.h5.")(command)
    command = click.option("--model", required=True, type=click.Path(dir_okay=False),
                           help="The net prototxt; its TEST phase is run.")(command)
    return command


# -- calibrate -------------------------------------------------------------------------------------------------------
@main.command(context_settings=CONTEXT)
@net_options
@click.option("--seed", type=int, default=None, help="Seed of the jitter draws [default: drawn and printed].")
@click.option("--top-k", "--top_k", "top_k", type=click.IntRange(min=1), default=5, show_default=True,
              help="The accuracy the targets and held-out points are given in: top-k of the Accuracy layer's "
                   "scores.")
@click.option("--base", required=True, help="The profile to start from (its build, jitter, safe clock and other "
                                            "keys are kept).")
@click.option("--target", "targets", multiple=True, required=True, metavar="F:DELTA",
              help="A clock in MHz and the accuracy change there in points (negative), e.g. 250:-0.5; repeat.")
@click.option("--holdout", "holdouts", multiple=True, metavar="F:TOP5",
              help="A clock and the accuracy (%) measured there, predicted with the fitted profile; repeat.")
@click.option("--holdout-tol", "--holdout_tol", "holdout_tol", type=float, default=15.0, show_default=True,
              help="Largest |predicted − given| of a held-out point, in points.")
@click.option("--fit-jitter", "--fit_jitter", "fit_jitter", is_flag=True,
              help="Fit t0 and the per-add jitter to the targets through the tail P(K <= 30) instead of the "
                   "fixed-K curve (for nets whose first late horizon is already a collapse).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The calibrated *.devprofile.yaml.")
def calibrate(model, weights, quant, iterations, seed, top_k, base, targets, holdouts, holdout_tol, fit_jitter,
              out):
    """Fit the carry-horizon timing to accuracy losses.

    The paper's procedure (faults.md §8.4): the clean fixed-point net and the net at fixed carry horizons
    K = 30, 29, ... run on the same TEST images; where the loss curve crosses each --target gives a fractional
    horizon, and two targets give t0 and tau. Each --holdout is then simulated with the fitted profile. Writes
    the base profile with the fitted values, status calibrated and a `fit` block; exit code 3 when a held-out
    point misses by more than --holdout-tol. With --fit-jitter, each target's loss is matched by the fraction
    P(K <= 30) of late-capable adds instead, and t0 and the per-add jitter are solved from those fractions
    (tau kept from --base)."""
    run(_calibrate, model, weights, quant, iterations, seed, top_k, base, targets, holdouts, holdout_tol, out,
        fit_jitter)


def _calibrate(model, weights, quant, iterations, seed, top_k, base_name, targets, holdouts, holdout_tol, out,
               fit_jitter=False):
    from ..accel.faults.calibrate import calibrate as fit_fixed_k
    from ..accel.faults.calibrate_tail import calibrate_tail
    from ..accel.faults.profile import DeviceProfile, rebase_files, stem
    from .hits import TopKHits

    base = DeviceProfile.load(base_name)
    targets = [parse_pair("--target", s, "F:DELTA (MHz:points)") for s in targets]
    holdouts = [parse_pair("--holdout", s, "F:TOP5 (MHz:%)") for s in holdouts]
    sha = model_sha(model, weights)
    metric = f"top-{top_k}"
    hits = TopKHits(model, weights, quant, iterations, fault_seed(seed), base, top_k=top_k)
    fit_targets = calibrate_tail if fit_jitter else fit_fixed_k
    fitted, report = fit_targets(hits, base, targets, holdouts, holdout_tol, sha, log=_stderr, metric=metric)
    data = rebase_files(fitted.data, base, out)
    data["name"] = stem(out)
    DeviceProfile(data).dump(out)
    t = data["timing"]
    for r in report["targets"]:
        how = f"P(K <= 30) {r['p_k30']:.3g}" if fit_jitter else f"kappa {r['kappa']:.3f}"
        click.echo(f"target {r['mhz']:g} MHz: delta {metric} {r['delta']:+g} points, {how}, "
                   f"fitted K {r['K_fitted']}, simulated {r['simulated']:+.2f} points (SE {r['se']:.2f})")
    for h in report["heldout"]:
        click.echo(f"held-out {h['mhz']:g} MHz: predicted {metric} {h['predicted_top5']:.1f} % vs given "
                   f"{h['given_top5']:g} %: {'ok' if h['passed'] else 'FAILED'}")
    click.echo(f"Wrote {out} (status calibrated; t0_ns {t['t0_ns']:g}, tau_ns_per_bit {t['tau_ns_per_bit']:g}, "
               f"jitter_ns {t['jitter_ns']:g}; {data['fit']['images']} images, clean {metric} "
               f"{report['clean_top5']:.2f} %)")
    failed = [h for h in report["heldout"] if not h["passed"]]
    for h in failed:
        verdict = "the model does not collapse" if h["predicted_top5"] > h["given_top5"] else \
            "the model collapses too early"
        _stderr(f"warning: calibrate: held-out {h['mhz']:g} MHz predicts {metric} = {h['predicted_top5']:.1f} % "
                f"(given {h['given_top5']:g} %): {verdict}")
    if failed:
        sys.exit(3)


# -- canaries --------------------------------------------------------------------------------------------------------
@main.command(context_settings=CONTEXT)
@net_options
@click.option("--count", type=click.IntRange(min=1), default=16, show_default=True, help="Canaries in the set.")
@click.option("--profile", default=None, help="Device profile of the expectation (and of the accelerator build).")
@click.option("--freq", type=float, default=None, help="Clock (MHz) of the expectation.")
@click.option("--ser", type=float, default=None, help="Soft-error rate per MAC of the expectation.")
@click.option("--seed", type=int, default=None, help="Seed of the simulated checks [default: drawn and printed].")
@click.option("--expect-checks", "--expect_checks", "expect_checks", type=click.IntRange(min=1), default=8,
              show_default=True, help="Simulated checks the expectation is made of.")
@click.option("--degraded-min", "--degraded_min", "degraded_min", type=click.FloatRange(0, 1, min_open=True),
              default=0.9, show_default=True, help="Level 2 (degraded) needs top-5 >= this; below is level 3.")
@click.option("--images", "images", type=click.Path(dir_okay=False), default=None,
              help="An image list (Caffe's `path label` lines) to take the candidates from instead of the TEST "
                   "data; read through an ImageData layer with the data layer's transform_param.")
@click.option("--root-folder", "--root_folder", "root_folder", default="",
              help="Folder the --images paths are relative to.")
@click.option("--gray", is_flag=True, help="Decode the --images as one-channel images (MNIST-like nets).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The set, *.canaries.npz.")
def canaries(model, weights, quant, iterations, count, profile, freq, ser, seed, expect_checks, degraded_min,
             images, root_folder, gray, out):
    """Make a canary set.

    The candidates are the images of the model's TEST-phase data layer, or of --images (--iterations batches);
    the set keeps
    --count of them, preferring those whose clean top-1 is correct and whose top-1/top-2 margin is smallest (the
    most sensitive). Stored per canary: the int8 input the first accelerated layer receives, the clean
    fixed-point output of the last accelerated layer, its top-5 and the label (faults.md §9). With --freq or
    --ser (and --profile) the set also holds the check expected at that operating point, simulated."""
    run(_canaries, model, weights, quant, iterations, count, profile, freq, ser, seed, expect_checks,
        degraded_min, out, images, root_folder, gray)


def _candidate_net(model, weights, acc, seed, images, root_folder, gray):
    """The TEST net the candidates come from: the model's own data, or the --images list through it (batches
    no larger than the list)."""
    from ..io.prototxt import read_net_text
    from ..log import NullLogger
    from ..net.deploy import data_layers_to_image_list
    from ..net.net import TEST, Net

    if images is None:
        return Net(model, TEST, weights=weights, accel=acc, rng=seed, log=NullLogger())
    with open(images) as f:
        listed = sum(1 for line in f if line.strip())
    param = data_layers_to_image_list(read_net_text(model), images, root_folder, max_batch=listed, gray=gray)
    return Net(param, TEST, weights=weights, accel=acc, rng=seed, log=NullLogger(), source=model)


def _canaries(model, weights, quant, iterations, count, profile_name, freq, ser, seed, expect_checks,
              degraded_min, out, images=None, root_folder="", gray=False):
    from .. import accel
    from ..accel.faults.canaries import FORMAT, CanarySet, LEVELS, quant_sha256, top5
    from . import canary as cn

    check_operating_point(freq, ser)
    if profile_name is not None and freq is None and ser is None:
        raise CaffeUnstableError("--profile", "give --freq or --ser too: the operating point of the expectation")
    sha = model_sha(model, weights)
    profile = accel.load_profile(profile_name, freq is not None)
    if profile is not None:
        _warn(profile.warnings() + [profile.check_freq(freq)])
    hw = {k: v for k, v in profile.accelerator.items() if k in accel.HwConfig.keys()} if profile else {}
    clean = accel.open("numba", quant=quant, **hw)
    net = _candidate_net(model, weights, clean, seed, images, root_folder, gray)
    inputs, scores, labels = cn.candidates(net, iterations)
    chosen, correct, margin = cn.select(scores, labels, count)
    canary = cn.CanaryNet(model, weights, clean, net, count)
    ref = canary.run(inputs[chosen], None)
    meta = {"format": FORMAT, "model_sha256": sha, "quant_sha256": quant_sha256(clean.quant.layers),
            "count": count, "created_with": _tool(), "degraded_min": degraded_min, "expected": [],
            "source": (f"{images}, " if images else "TEST data, ") + f"{iterations} batches, {len(inputs)} images",
            "input_blob": canary.ends.input_blob,
            "input_frac": canary.ends.input_frac, "output_layer": canary.net._layer_names[canary.ends.output_layer],
            "output_frac": canary.ends.output_frac, "classes": canary.classes}
    if freq is not None or ser is not None:
        seed = fault_seed(seed)
        faulty = accel.open("numba", quant=quant, profile=profile, freq_mhz=freq, ser=ser, seed=seed)
        sim = cn.CanaryNet(model, weights, faulty, net, count)
        point = cn.operating_point(freq, ser)
        entry = cn.expectation(sim, inputs[chosen], ref, degraded_min, expect_checks, point)
        entry.update(profile=profile.name if profile is not None else None, seed=seed)
        meta["expected"].append(entry)
    CanarySet(meta, inputs[chosen], labels[chosen], ref, top5(ref, canary.classes)).save(out)
    e = canary.ends
    shape = list(inputs.shape[1:])
    click.echo(f"Wrote {out}: {count} canaries from {len(inputs)} {'listed' if images else 'TEST'} images "
               f"({int(correct[chosen].sum())} with "
               f"top-1 correct; {cn.describe_margins(margin[chosen])}); input '{e.input_blob}' {shape} at F = "
               f"{e.input_frac}, output of layer '{meta['output_layer']}' [{ref.shape[1]}] at F = {e.output_frac}")
    for x in meta["expected"]:
        at = f"{x['freq_mhz']:g} MHz" if "freq_mhz" in x else f"ser {x['ser']:g}"
        click.echo(f"Expected at {at} ({x['checks']} simulated checks, seed {x['seed']}): level {x['level']} "
                   f"{LEVELS[x['level']]} (exact {x['exact']:.3f}, top-1 {x['top1']:.3f}, top-5 {x['top5']:.3f})")

