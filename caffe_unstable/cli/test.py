"""cu-test: Caffe's `caffe test` (tools/caffe.cpp:257-325) — score a model's TEST net over N batches; caffe.md §5.5.

Log (stderr): `Use CPU.`, the net lines, `Running for <n> iterations.`, `Batch <i>, <blob> = <v>` per batch and
output element, `Loss: <mean>` and `<blob> = <mean>[ (* <w> = <w*mean> loss)]`; all sums in float32 as Caffe's.
"""
import json
import os
import sys

import click
import numpy as np

from ..errors import CaffeUnstableError
from . import accel_options, check_operating_point, console_logger, open_accel, report_accel, run
from .sweep import is_sweep

F32 = np.float32


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", required=True, type=click.Path(dir_okay=False), help="The net prototxt (its TEST phase).")
@click.option("--weights", required=True, type=click.Path(dir_okay=False),
              help="Trained weights: binary .caffemodel or HDF5 .caffemodel.h5.")
@click.option("--iterations", type=click.IntRange(min=1), default=50, show_default=True,
              help="Number of test batches.")
@click.option("--level", type=int, default=0, show_default=True, help="The net state's level.")
@click.option("--stage", default="", help="The net state's stages, separated by ','.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None,
              help="Also write the averaged outputs as JSON here (a sweep's CSV and PNG go next to it).")
@click.option("--fault-log", "fault_log", type=click.Path(dir_okay=False), default=None,
              help="Write one JSON line per forward pass per accelerated layer (faults.md §10.4).")
@click.option("--canaries", "canaries", default=None, metavar="PATH",
              help="Check this canary set (*.canaries.npz, the word `profile` for the profile's canaries.set, or "
                   "a folder of images, made into a set at start with the clean numba accelerator's references) "
                   "on the accelerator before the first batch and after every --canary-every batches "
                   "(faults.md §9).")
@click.option("--canary-every", "--canary_every", "canary_every", type=click.IntRange(min=0), default=0,
              show_default=True, help="Batches between canary checks; 0: only before and after the run.")
@click.option("--canary-strict", "--canary_strict", "canary_strict", is_flag=True,
              help="Exit with code 3 when a canary check drifts.")
@accel_options
def main(model, weights, iterations, level, stage, json_out, fault_log, canaries, canary_every, canary_strict, accel,
         quant, freq, ser, profile, seed, fault_layers):
    """Score MODEL with WEIGHTS over --iterations batches of its TEST-phase data, as `caffe test` does; on the
    simulated accelerator with --accel numba, under faults with --freq/--ser/--profile, or as a sweep
    (--freq LO:HI:STEP, --ser LO:HI:STEP in log10 steps)."""
    options = dict(accel=accel, quant=quant, freq=freq, ser=ser, profile=profile, seed=seed,
                   fault_layers=fault_layers)
    checks = dict(canaries=canaries, canary_every=canary_every, canary_strict=canary_strict)
    if is_sweep(freq) or is_sweep(ser):
        run(sweep, model, weights, iterations, level, stage.split(","), json_out, console_logger(), **options,
            **checks)
    else:
        run(score, model, weights, iterations, level, stage.split(","), json_out, console_logger(),
            fault_log=fault_log, **options, **checks)


def reject_sweep(freq, ser):
    """Commands other than cu-test run at one operating point."""
    for option, value in (("--freq", freq), ("--ser", ser)):
        if is_sweep(value):
            raise CaffeUnstableError(option, f"sweeps ({value}) are for cu-test; give a single value")


def score(model, weights, iterations, level, stages, json_out, log, accel=None, quant=None, freq=None, ser=None,
          profile=None, seed=None, fault_layers=None, fault_log=None, canaries=None, canary_every=0,
          canary_strict=False):
    """Run `caffe test`; returns {output blob: mean (float, or a list for a multi-element output)}. With
    `canaries` (a set path or "profile"), canary checks run between the batches; `canary_strict` exits with
    code 3 when one drifts (faults.md §9)."""
    from ..log import format_value
    from ..net.net import TEST, Net

    reject_sweep(freq, ser)
    check_canary_options(canaries, canary_every, canary_strict)
    acc = open_accel(accel, quant=quant, freq=freq, ser=ser, profile=profile, seed=seed, fault_layers=fault_layers)
    log.info("Use CPU.", "caffe.cpp:275")
    net = Net(model, TEST, level=level, stages=stages, weights=weights, accel=acc, rng=seed, log=log)
    report_accel(acc, net, log)
    checker = None
    if canaries is not None:
        from .canary import CanaryChecker

        checker = CanaryChecker(canaries, model, weights, net, canary_every, level, stages, log)
    log.info(f"Running for {iterations} iterations.", "caffe.cpp:281")
    means, loss, tally = run_batches(net, iterations, log, fault_log=fault_log, canaries=checker)
    log.info(f"Loss: {format_value(loss)}", "caffe.cpp:309")
    loss_weights = net.blob_loss_weights
    for name, values in means.items():
        weight = F32(loss_weights[name])
        for v in values:
            note = f" (* {format_value(weight)} = {format_value(weight * v)} loss)" if weight else ""
            log.info(f"{name} = {format_value(v)}{note}", "caffe.cpp:321")
    if tally is not None:
        log.info(tally.line("TEST 0"), "faults.cpp:2")
    outputs = _outputs(means)
    if json_out:
        batch = next(iter(net.blobs.values())).shape[0]
        payload = {"outputs": outputs, "accel": accel_name(acc), "freq_mhz": _number(freq), "ser": _number(ser),
                   "images": iterations * batch}
        if tally is not None:
            payload.update(faults=tally.per_image(), profile=acc.profile.name if acc.profile else None,
                           seed=acc.seed)
        if checker is not None:
            payload["canaries"] = checker.results
        write_json(json_out, payload)
    if checker is not None and canary_strict and checker.drifts:
        print(f"warning: --canary-strict: {checker.drifts} of {len(checker.results)} canary checks drifted",
              file=sys.stderr)
        raise SystemExit(3)
    return outputs


def check_canary_options(canaries, every, strict):
    if canaries is None and (every or strict):
        raise CaffeUnstableError("--canary-every" if every else "--canary-strict", "needs --canaries PATH")


def sweep(model, weights, iterations, level, stages, json_out, log, accel=None, quant=None, freq=None, ser=None,
          profile=None, seed=None, fault_layers=None, canaries=None, canary_every=0, canary_strict=False):
    """Every operating point of a --freq or --ser sweep on the same images and seed, after the clean baseline."""
    from ..log import NullLogger
    from ..net.net import TEST, Net
    from . import sweep as sw

    check_canary_options(canaries, canary_every, canary_strict)
    if canaries is not None:
        raise CaffeUnstableError("--canaries", "canary checks run at one operating point; not with a sweep")
    option, spec = ("--freq", freq) if is_sweep(freq) else ("--ser", ser)
    key = "freq_mhz" if option == "--freq" else "ser"
    points = sw.sweep_points(option, spec)
    check_operating_point(freq, ser)
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % (1 << 63))
        log.info(f"Fault seed: {seed} (drawn; pass --seed {seed} to reproduce)", "faults.cpp:3")
    csv_path, png_path = sw.output_paths(json_out, option)
    rows = []
    log.info(f"Sweep {option} over {len(points)} operating points, {iterations} batches each, seed {seed}",
             "faults.cpp:4")
    with _progress(len(points) + 1) as bar:
        for point in [None] + points:
            at = {"freq": None, "ser": None}
            if point is not None:
                at["freq" if key == "freq_mhz" else "ser"] = repr(point)
            acc = open_accel(accel or "numba", quant=quant, profile=profile, seed=seed, fault_layers=fault_layers,
                             **at)
            net = Net(model, TEST, level=level, stages=stages, weights=weights, accel=acc, rng=seed,
                      log=NullLogger())
            if point is None:
                report_accel(acc, net, log)
            means, loss, tally = run_batches(net, iterations, NullLogger())
            batch = next(iter(net.blobs.values())).shape[0]
            row = {key: point, "images": iterations * batch, "outputs": _outputs(means),
                   "faults": tally.per_image() if tally is not None else {}}
            rows.append(row)
            shown = ", ".join(f"{k} = {v:.6g}" for k, v in sw.flat_outputs(row["outputs"]).items())
            log.info(f"{key} = {'clean' if point is None else f'{point:.6g}'}: {shown}"
                     + (f"; {tally.line('')[len('Faults : '):]}" if tally is not None else ""), "faults.cpp:5")
            bar.update(1)
    fault_cols = next((list(r["faults"]) for r in rows if r["faults"]), [])
    for r in rows:
        r["faults"] = {c: r["faults"].get(c) for c in fault_cols}
    accuracies = [net._blob_names[net._top_ids[i][0]] for i, layer in enumerate(net.layers)
                  if layer.type == "Accuracy" and net._blob_names[net._top_ids[i][0]] in rows[0]["outputs"]]
    sw.write_csv(csv_path, key, rows, accuracies)
    title = f"{os.path.basename(model)}: {rows[0]['images']} images per point, seed {seed}"
    sw.plot(png_path, key, rows, accuracies, title)
    log.info(f"Sweep written to {csv_path} and {png_path}", "faults.cpp:6")
    if json_out:
        write_json(json_out, {"accel": accel or "numba", "sweep": key, "profile": profile, "seed": seed,
                              "images": rows[0]["images"], "rows": rows})
    return rows


def _progress(total):
    """A progress bar on a terminal only (never mixed into a redirected log)."""
    import contextlib
    import sys

    if not sys.stderr.isatty():
        class Quiet:
            def update(self, n):
                pass
        return contextlib.nullcontext(Quiet())
    from tqdm import tqdm

    return tqdm(total=total, unit="point", leave=False)


def accel_name(acc):
    return "float" if acc is None else acc.name


def _outputs(means):
    return {name: float(v[0]) if v.size == 1 else [float(x) for x in v] for name, v in means.items()}


def run_batches(net, iterations, log, fault_log=None, canaries=None):
    """Forward `iterations` batches; ({output: float32 mean per element}, float32 mean weighted loss, the fault
    tally or None). `canaries` (a canary.CanaryChecker) checks before the first batch and where it is due.

    Caffe keeps float sums (`test_score[idx] += score`, `loss += iter_loss`) and divides them by the int count.
    """
    from ..log import format_value

    acc = getattr(net, "accel", None)
    tally = writer = None
    if acc is not None and getattr(acc, "faulty", False):
        from ..accel.faults.report import FaultLog, FaultTally

        tally = FaultTally()
        writer = FaultLog(fault_log) if fault_log else None
        indices = {name: i for i, name in enumerate(net._layer_names)}
    sums = {name: np.zeros(net.blobs[name].count, F32) for name in net.outputs}
    loss = F32(0)
    if canaries is not None:
        canaries.check(None)
    for i in range(iterations):
        loss = F32(loss + F32(net.forward_prefilled()))
        if tally is not None:
            tally.add(acc.last_stats)
            if writer is not None:
                writer.write(acc, indices)
        for name in net.outputs:
            values = net.blobs[name].data.reshape(-1)
            if values.size != sums[name].size:
                raise CaffeUnstableError(f"blob '{name}'", f"changed size from {sums[name].size} to {values.size} "
                                                           f"elements at batch {i}")
            sums[name] += values
            if log.enabled:
                for v in values:
                    log.info(f"Batch {i}, {name} = {format_value(v)}", "caffe.cpp:304")
        if canaries is not None and canaries.due(i + 1, iterations):
            canaries.check(i + 1)      # after this batch's counters are taken: a check starts a pass of its own
    if writer is not None:
        writer.close()
    n = F32(iterations)
    return {name: (s / n).astype(F32) for name, s in sums.items()}, F32(loss / n), tally


def _number(value):
    return float(value) if value is not None else None


def write_json(path, payload):
    from ..io.atomic import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(payload, f, indent=2)
            f.write("\n")
