"""The command-line error boundary: library errors become one line `error: <where>: <what>`, exit 1.

No traceback unless CU_DEBUG=1. Every cu-* command runs its body through `run`.
"""
import os
import sys

from ..errors import CaffeUnstableError


def format_error(exc):
    return f"error: {exc.line()}"


def run(body, *args, **kwargs):
    """Call body(*args, **kwargs); turn CaffeUnstableError (and unreadable files) into one line + exit 1."""
    try:
        return body(*args, **kwargs)
    except CaffeUnstableError as exc:
        if os.environ.get("CU_DEBUG") == "1":
            raise
        print(format_error(exc), file=sys.stderr)
        raise SystemExit(1) from None
    except OSError as exc:
        if os.environ.get("CU_DEBUG") == "1":
            raise
        where = exc.filename or "<io>"
        print(f"error: {where}: {exc.strerror or exc}", file=sys.stderr)
        raise SystemExit(1) from None


def console_logger():
    """The glog logger of the cu-* commands: every INFO line on stderr, as `caffe` prints them."""
    from ..log import GlogLogger

    return GlogLogger(stream=sys.stderr, min_level=int(os.environ.get("GLOG_minloglevel", "0")))


def accel_options(command):
    """The accelerator options every command shares (interface.md): --accel, --freq | --ser, --profile, --seed."""
    import click

    command = click.option("--seed", type=int, default=None, help="Seed of the fault plans and fillers.")(command)
    command = click.option("--profile", type=click.Path(dir_okay=False), default=None,
                           help="Device error profile (*.devprofile.yaml, faults.md §7).")(command)
    command = click.option("--ser", type=str, default=None,
                           help="Soft-error rate per MAC (or a sweep LO:HI:STEP in log10 steps).")(command)
    command = click.option("--freq", type=str, default=None,
                           help="Accelerator clock in MHz (or a sweep LO:HI:STEP).")(command)
    command = click.option("--quant", type=click.Path(dir_okay=False), default=None,
                           help="Fixed-point formats per layer (*.quant.yaml, pipecnn.md §10.5).")(command)
    command = click.option("--accel", type=click.Choice(["float", "numba", "opencl"]), default="float",
                           show_default=True, help="Where the forward pass runs: plain float (Caffe), or the "
                                                   "simulated PipeCNN accelerator.")(command)
    return command


def open_accel(accel, quant=None, freq=None, ser=None, profile=None, seed=None):
    """None for the float path (plain Caffe), else caffe_unstable.accel.open(...)."""
    if accel in (None, "float") and freq is None and ser is None:
        return None
    if freq is not None and ser is not None:
        raise CaffeUnstableError("--freq/--ser", "give either --freq or --ser, not both")
    try:
        from .. import accel as accel_module
    except ImportError:
        raise CaffeUnstableError("--accel", f"the '{accel}' accelerator backend is not available in this build "
                                            "(only --accel float)") from None
    return accel_module.open(accel, quant=quant, profile=profile,
                             freq_mhz=float(freq) if freq is not None else None,
                             ser=float(ser) if ser is not None else None, seed=seed)
