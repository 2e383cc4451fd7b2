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
    """The accelerator options every command shares (interface.md; faults.md §11): --accel, --quant, --freq | --ser,
    --profile, --seed, --fault-layers."""
    import click

    command = click.option("--fault-layers", default=None,
                           help="Comma-separated conv/FC layer names that get faults (default: every accelerated "
                                "one).")(command)
    command = click.option("--seed", type=int, default=None, help="Seed of the fault plans and fillers.")(command)
    command = click.option("--profile", type=click.Path(dir_okay=False), default=None,
                           help="Device error profile (*.devprofile.yaml or a shipped profile's name, "
                                "faults.md §7).")(command)
    command = click.option("--ser", type=str, default=None,
                           help="Soft-error rate per MAC (cu-test: or a sweep LO:HI:STEP in log10 steps).")(command)
    command = click.option("--freq", type=str, default=None,
                           help="Accelerator clock in MHz (cu-test: or a sweep LO:HI:STEP).")(command)
    command = click.option("--quant", type=click.Path(dir_okay=False), default=None,
                           help="Fixed-point formats per layer (*.quant.yaml, pipecnn.md §10.5).")(command)
    command = click.option("--accel", type=click.Choice(["float", "numba", "opencl"]), default=None,
                           help="Where the forward pass runs: plain float (Caffe; the default), or the simulated "
                                "PipeCNN accelerator (the default when --freq, --ser or --profile is given).")(command)
    return command


def check_operating_point(freq, ser):
    """--freq and --ser exclude each other on one command line (faults.md §11)."""
    if freq is not None and ser is not None:
        raise CaffeUnstableError(None, "--freq and --ser are exclusive; put soft errors in the profile to combine "
                                       "them")


def parse_number(option, value):
    try:
        return float(value)
    except (TypeError, ValueError):
        raise CaffeUnstableError(option, f"expected a number, got {value!r}") from None


def open_accel(accel, quant=None, freq=None, ser=None, profile=None, seed=None, fault_layers=None, **training):
    """None for the float path (plain Caffe), else caffe_unstable.accel.open(...). Fault options without --accel
    select the numba simulator. training: ste, backward_weights (cu-train)."""
    check_operating_point(freq, ser)
    faults = freq is not None or ser is not None or profile is not None
    if accel is None:
        accel = "numba" if faults or quant is not None else "float"
    if accel == "float" and not faults:
        return None
    try:
        from .. import accel as accel_module
    except ImportError:
        raise CaffeUnstableError("--accel", f"the '{accel}' accelerator backend is not available in this build "
                                            "(only --accel float)") from None
    layers = [n for n in fault_layers.split(",") if n] if fault_layers else None
    return accel_module.open(accel, quant=quant, profile=profile,
                             freq_mhz=parse_number("--freq", freq) if freq is not None else None,
                             ser=parse_number("--ser", ser) if ser is not None else None, seed=seed,
                             fault_layers=layers, **training)


def report_accel(acc, net, log):
    """Log an accelerator's warnings and `Fault model:` lines (faults.md §7.2, §10.4) once its net is built."""
    if acc is None or not hasattr(acc, "models"):
        return
    from ..accel.faults.report import model_lines
    from ..net import accel_bridge

    prof = acc.profile
    notes = list(prof.warnings()) if prof is not None and acc.freq_mhz is not None else []
    if prof is not None:
        note = prof.check_freq(acc.freq_mhz)
        if note:
            notes.append(note)
    for note in notes:
        print(note, file=sys.stderr)
    if acc.models:
        for line in model_lines(acc, accel_bridge.fault_geometries(net)):
            log.info(line, "faults.cpp:1")
