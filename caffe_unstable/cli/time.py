"""cu-time: Caffe's `caffe time` (tools/caffe.cpp:330-417) — per-layer forward/backward timings; caffe.md §5.6.

Times are taken as Caffe's CPU Timer takes them: whole microseconds for the per-layer and pass sums, whole
milliseconds (truncated) for an iteration and the total.
"""
import time

import click
import numpy as np

from . import accel_options, console_logger, open_accel, report_accel, run
from .test import reject_sweep


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", required=True, type=click.Path(dir_okay=False), help="The net prototxt to time.")
@click.option("--iterations", type=click.IntRange(min=1), default=50, show_default=True,
              help="Number of timed forward-backward passes.")
@click.option("--phase", type=click.Choice(["TRAIN", "TEST"]), default="TRAIN", show_default=True,
              help="The phase the net is built in.")
@click.option("--level", type=int, default=0, show_default=True, help="The net state's level.")
@click.option("--stage", default="", help="The net state's stages, separated by ','.")
@accel_options
def main(model, iterations, phase, level, stage, accel, quant, freq, ser, profile, seed, fault_layers):
    """Benchmark MODEL layer by layer, as `caffe time` does (filler weights; data layers read their sources)."""
    run(benchmark, model, iterations, phase, level, stage.split(","), console_logger(),
        accel=accel, quant=quant, freq=freq, ser=ser, profile=profile, seed=seed, fault_layers=fault_layers)


def _now_us():
    return time.perf_counter_ns() // 1000


def _ms(value):
    """ostream output of a double (or of Caffe's float milliseconds): %g, 6 significant digits."""
    return "%g" % value


def benchmark(model, iterations, phase, level, stages, log, accel=None, quant=None, freq=None, ser=None,
              profile=None, seed=None, fault_layers=None):
    """Run `caffe time`; returns (forward µs per layer, backward µs per layer) summed over the iterations."""
    from ..log import format_value
    from ..net.net import TEST, TRAIN, Net

    reject_sweep(freq, ser)
    acc = open_accel(accel, quant=quant, freq=freq, ser=ser, profile=profile, seed=seed, fault_layers=fault_layers)
    log.info("Use CPU.", "caffe.cpp:343")
    net = Net(model, TRAIN if phase == "TRAIN" else TEST, level=level, stages=stages, accel=acc, rng=seed, log=log)
    report_accel(acc, net, log)
    log.info("Performing Forward", "caffe.cpp:351")
    initial_loss = net.forward_prefilled()
    log.info(f"Initial loss: {format_value(initial_loss)}", "caffe.cpp:356")
    log.info("Performing Backward", "caffe.cpp:357")
    last = len(net.layers) - 1
    net.backward_from_to(last, 0)
    need = net.bottom_need_backward
    log.info("*** Benchmark begins ***", "caffe.cpp:365")
    log.info(f"Testing for {iterations} iterations.", "caffe.cpp:366")
    total_start = _now_us()
    forward_us, backward_us = [0] * len(net.layers), [0] * len(net.layers)
    forward_time = backward_time = 0
    for j in range(iterations):
        iter_start = _now_us()
        for i in range(len(net.layers)):
            t = _now_us()
            net.forward_from_to(i, i)    # Layer::Forward: reshape, forward (on the accelerator if it runs it), loss
            forward_us[i] += _now_us() - t
        forward_time += _now_us() - iter_start
        backward_start = _now_us()
        for i in range(last, -1, -1):
            t = _now_us()
            # every layer, with its bottom_need_backward, whether or not the net would run its backward
            net.layers[i].backward(net._tops(i), need[i], net._bottoms(i))
            backward_us[i] += _now_us() - t
        backward_time += _now_us() - backward_start
        log.info(f"Iteration: {j + 1} forward-backward time: {(_now_us() - iter_start) // 1000} ms.",
                 "caffe.cpp:394")
    log.info("Average time per layer: ", "caffe.cpp:397")
    for i, name in enumerate(net._layer_names):
        log.info(f"{name:>10}\tforward: {_ms(forward_us[i] / 1000 / iterations)} ms.", "caffe.cpp:400")
        log.info(f"{name:>10}\tbackward: {_ms(backward_us[i] / 1000 / iterations)} ms.", "caffe.cpp:403")
    total_ms = (_now_us() - total_start) // 1000
    log.info(f"Average Forward pass: {_ms(forward_time / 1000 / iterations)} ms.", "caffe.cpp:408")
    log.info(f"Average Backward pass: {_ms(backward_time / 1000 / iterations)} ms.", "caffe.cpp:410")
    average_ms = np.float32(total_ms) / np.float32(iterations)      # Timer::MilliSeconds() is a float
    log.info(f"Average Forward-Backward: {format_value(average_ms)} ms.", "caffe.cpp:412")
    log.info(f"Total Time: {format_value(total_ms)} ms.", "caffe.cpp:414")
    log.info("*** Benchmark ends ***", "caffe.cpp:415")
    return forward_us, backward_us
