"""cu-test: Caffe's `caffe test` (tools/caffe.cpp:257-325) — score a model's TEST net over N batches; caffe.md §5.5.

Log (stderr): `Use CPU.`, the net lines, `Running for <n> iterations.`, `Batch <i>, <blob> = <v>` per batch and
output element, `Loss: <mean>` and `<blob> = <mean>[ (* <w> = <w*mean> loss)]`; all sums in float32 as Caffe's.
"""
import json

import click
import numpy as np

from ..errors import CaffeUnstableError
from . import accel_options, console_logger, open_accel, run

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
              help="Also write the averaged outputs as JSON here.")
@accel_options
def main(model, weights, iterations, level, stage, json_out, accel, quant, freq, ser, profile, seed):
    """Score MODEL with WEIGHTS over --iterations batches of its TEST-phase data, as `caffe test` does."""
    run(score, model, weights, iterations, level, stage.split(","), json_out, console_logger(),
        accel=accel, quant=quant, freq=freq, ser=ser, profile=profile, seed=seed)


def reject_sweep(freq, ser):
    """One operating point only for now: LO:HI:STEP sweeps are a later issue."""
    for option, value in (("--freq", freq), ("--ser", ser)):
        if value is not None and ":" in value:
            raise CaffeUnstableError(option, f"sweeps ({value}) are not supported yet; give a single value")


def score(model, weights, iterations, level, stages, json_out, log, accel="float", quant=None, freq=None, ser=None,
          profile=None, seed=None):
    """Run `caffe test`; returns {output blob: mean (float, or a list for a multi-element output)}."""
    from ..log import format_value
    from ..net.net import TEST, Net

    reject_sweep(freq, ser)
    acc = open_accel(accel, quant=quant, freq=freq, ser=ser, profile=profile, seed=seed)
    log.info("Use CPU.", "caffe.cpp:275")
    net = Net(model, TEST, level=level, stages=stages, weights=weights, accel=acc, rng=seed, log=log)
    log.info(f"Running for {iterations} iterations.", "caffe.cpp:281")
    means, loss = run_batches(net, iterations, log)
    log.info(f"Loss: {format_value(loss)}", "caffe.cpp:309")
    loss_weights = net.blob_loss_weights
    for name, values in means.items():
        weight = F32(loss_weights[name])
        for v in values:
            note = f" (* {format_value(weight)} = {format_value(weight * v)} loss)" if weight else ""
            log.info(f"{name} = {format_value(v)}{note}", "caffe.cpp:321")
    outputs = {name: float(v[0]) if v.size == 1 else [float(x) for x in v] for name, v in means.items()}
    if json_out:
        batch = next(iter(net.blobs.values())).shape[0]
        write_json(json_out, {"outputs": outputs, "accel": accel, "freq_mhz": _number(freq), "ser": _number(ser),
                              "images": iterations * batch})
    return outputs


def run_batches(net, iterations, log):
    """Forward `iterations` batches; ({output: float32 mean per element}, float32 mean weighted loss).

    Caffe keeps float sums (`test_score[idx] += score`, `loss += iter_loss`) and divides them by the int count.
    """
    from ..log import format_value

    sums = {name: np.zeros(net.blobs[name].count, F32) for name in net.outputs}
    loss = F32(0)
    for i in range(iterations):
        loss = F32(loss + F32(net.forward_prefilled()))
        for name in net.outputs:
            values = net.blobs[name].data.reshape(-1)
            if values.size != sums[name].size:
                raise CaffeUnstableError(f"blob '{name}'", f"changed size from {sums[name].size} to {values.size} "
                                                           f"elements at batch {i}")
            sums[name] += values
            if log.enabled:
                for v in values:
                    log.info(f"Batch {i}, {name} = {format_value(v)}", "caffe.cpp:304")
    n = F32(iterations)
    return {name: (s / n).astype(F32) for name, s in sums.items()}, F32(loss / n)


def _number(value):
    return float(value) if value is not None else None


def write_json(path, payload):
    from ..io.atomic import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(payload, f, indent=2)
            f.write("\n")
