"""cu-train: Caffe's `caffe train` (tools/caffe.cpp:165-253) — the same log lines on stderr, the same snapshots.

Signals as Caffe's SignalHandler (util/signal_handler.cpp): SIGINT stops (after the end-of-training snapshot),
SIGHUP writes a snapshot and goes on; both are checked after every iteration and between test batches.
A progress bar appears only when stderr is a terminal, so a redirected log stays pure glog lines.
"""
import contextlib
import signal
import sys

import click

from ..errors import CaffeUnstableError
from . import accel_options, console_logger, open_accel, report_accel, run

EFFECTS = ("stop", "snapshot", "none")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("solver_file", metavar="SOLVER", required=False, type=click.Path(dir_okay=False))
@click.option("--solver", "solver_option", type=click.Path(dir_okay=False),
              help="The solver prototxt (the same as the SOLVER argument).")
@click.option("--weights", default=None, help="Weights to start from (fine-tuning), separated by ','; loaded in "
                                              "order into the train and test nets. Not with --snapshot.")
@click.option("--snapshot", default=None, type=click.Path(dir_okay=False),
              help="A .solverstate or .solverstate.h5 to resume from. Not with --weights.")
@click.option("--level", type=int, default=0, show_default=True, help="The train net state's level.")
@click.option("--stage", default="", help="The train net state's stages, separated by ','.")
@click.option("--sigint_effect", "--sigint-effect", type=click.Choice(EFFECTS), default="stop", show_default=True,
              help="What SIGINT (Ctrl-C) does: stop, snapshot or none.")
@click.option("--sighup_effect", "--sighup-effect", type=click.Choice(EFFECTS), default="snapshot",
              show_default=True, help="What SIGHUP does: snapshot, stop or none.")
@click.option("--fault-log", "fault_log", type=click.Path(dir_okay=False), default=None,
              help="Write one JSON line per TRAIN forward pass per accelerated layer (faults.md §10.4).")
@click.option("--ste", type=click.Choice(["clipped", "plain"]), default="clipped", show_default=True,
              help="Straight-through backward of the accelerated layers: 'clipped' cuts the gradient where the "
                   "fault-free output saturated (faults.md §10.2); 'plain' passes it everywhere.")
@click.option("--backward-weights", "backward_weights", type=click.Choice(["master", "quantized"]),
              default="master", show_default=True,
              help="Weights of the accelerated layers' bottom diffs: the float master weights (the paper's) or the "
                   "dequantized int8 weights on the device (Ristretto's).")
@accel_options
def main(solver_file, solver_option, weights, snapshot, level, stage, sigint_effect, sighup_effect, fault_log, ste,
         backward_weights, accel, quant, freq, ser, profile, seed, fault_layers):
    """Train with the solver SOLVER, as `caffe train --solver=SOLVER` does (--seed overrides random_seed)."""
    if solver_file and solver_option and solver_file != solver_option:
        raise click.UsageError(f"two solvers given: {solver_file} and --solver={solver_option}")
    path = solver_file or solver_option
    if not path:
        raise click.UsageError("Need a solver definition to train: cu-train SOLVER (or --solver=SOLVER).")
    run(train, path, weights=weights, snapshot=snapshot, level=level, stages=stage.split(","),
        sigint_effect=sigint_effect, sighup_effect=sighup_effect,
        accel=accel, quant=quant, freq=freq, ser=ser, profile=profile, seed=seed, fault_layers=fault_layers,
        fault_log=fault_log, ste=ste, backward_weights=backward_weights)


def train(path, weights=None, snapshot=None, level=0, stages=("",), sigint_effect="stop",
          sighup_effect="snapshot", accel=None, quant=None, freq=None, ser=None, profile=None, seed=None,
          fault_layers=None, fault_log=None, log=None, ste="clipped", backward_weights="master"):
    """Run `caffe train`; returns the solver after Solve."""
    from ..io import prototxt as pt
    from ..solvers import create_solver

    if weights and snapshot:
        raise CaffeUnstableError("--weights/--snapshot", "Give a snapshot to resume training or weights to "
                                                         "finetune but not both.")
    for option, value in (("--freq", freq), ("--ser", ser)):
        if value is not None and ":" in value:
            raise CaffeUnstableError(option, f"a sweep ({value}) is for cu-test; training runs at one operating "
                                             "point: give a single value")
    with _progress() as progress:
        log = log or progress.logger()
        param = pt.read_solver_text(path, log)
        param.train_state.level = level
        param.train_state.stage.extend(stages)
        log.info("Use CPU.", "caffe.cpp:197")
        if snapshot:
            param.ClearField("weights")
        elif weights:
            param.ClearField("weights")
            param.weights.append(weights)
        if seed is not None:
            param.random_seed = seed
        # the fault seed: --seed, else the solver's random_seed when set (faults.md §3.1)
        fault_seed = seed if seed is not None else (param.random_seed if param.random_seed >= 0 else None)
        acc = open_accel(accel, quant=quant, freq=freq, ser=ser, profile=profile, seed=fault_seed,
                         fault_layers=fault_layers, ste=ste, backward_weights=backward_weights)
        # hooked up before the solver is built, as caffe.cpp does: a Ctrl-C during set-up stops after iteration 0
        with _signals(sigint_effect, sighup_effect) as action:
            solver = create_solver(param, path, accel=acc, log=log)
            solver.set_action_function(action)
            report_accel(acc, solver.net, log)
            faults_report = _fault_report(solver, acc, param.display, fault_log, log)
            if snapshot:
                log.info(f"Resuming from {snapshot}", "caffe.cpp:235")
                solver.restore(snapshot)
            log.info("Starting Optimization", "caffe.cpp:239")
            progress.follow(solver)
            try:
                solver.solve()
            finally:
                if faults_report is not None:
                    faults_report.close()
        log.info("Optimization Done.", "caffe.cpp:250")
    return solver


class _FaultReport:
    """`Faults TRAIN iters a-b: ...` every `display` iterations and the --fault-log lines of the TRAIN forwards
    (faults.md §10.4), from the accelerator's counters after each iteration's forward-backward (the last
    sub-batch's when iter_size > 1)."""

    def __init__(self, solver, acc, display, path, log):
        from ..accel.faults.report import FaultLog, FaultTally

        self.solver, self.acc, self.display, self.log = solver, acc, max(int(display), 1), log
        self.new_tally = FaultTally
        self.tally, self.start = FaultTally(), None
        self.writer = FaultLog(path) if path else None
        self.indices = {name: i for i, name in enumerate(solver.net._layer_names)}
        solver.add_callback(lambda: None, self.after_iteration)

    def after_iteration(self):
        it = self.solver.iter
        self.start = it if self.start is None else self.start
        self.tally.add(self.acc.last_stats)
        if self.writer is not None:
            self.writer.write(self.acc, self.indices)
        if (it + 1) % self.display == 0:
            self.log.info(self.tally.line(f"TRAIN iters {self.start}-{it}"), "faults.cpp:7")
            self.tally, self.start = self.new_tally(), None

    def close(self):
        if self.writer is not None:
            self.writer.close()


def _fault_report(solver, acc, display, fault_log, log):
    if acc is None or not getattr(acc, "faulty", False):
        if fault_log:
            raise CaffeUnstableError("--fault-log", "there are no faults to log: give --freq, --ser or --profile")
        return None
    return _FaultReport(solver, acc, display, fault_log, log)


@contextlib.contextmanager
def _signals(sigint_effect, sighup_effect):
    """Caffe's SignalHandler: remember SIGINT/SIGHUP; yield a function that reports (and forgets) them."""
    got = {signal.SIGINT: False}
    if hasattr(signal, "SIGHUP"):
        got[signal.SIGHUP] = False

    def handle(signum, frame):
        got[signum] = True

    def action():
        # SIGHUP first, as SignalHandler::CheckForSignals
        for signum, effect in ((getattr(signal, "SIGHUP", None), sighup_effect), (signal.SIGINT, sigint_effect)):
            if signum is not None and got.get(signum):
                got[signum] = False
                return effect
        return "none"

    previous = {}
    try:
        for signum in got:
            previous[signum] = signal.signal(signum, handle)
    except ValueError:                 # not the main thread: no signals, as in pycaffe
        previous = {}
    try:
        yield action
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class _progress(contextlib.AbstractContextManager):
    """A tqdm bar on stderr when stderr is a terminal; log lines are then printed above it."""

    def __init__(self):
        self.bar = None
        self.tty = sys.stderr.isatty()

    def logger(self):
        log = console_logger()
        if self.tty:
            log.stream = _BarSafeStream()
        return log

    def follow(self, solver):
        if not self.tty:
            return
        from tqdm import tqdm

        self.bar = tqdm(total=solver.param.max_iter, initial=solver.iter, file=sys.stderr, unit="iter",
                        dynamic_ncols=True, leave=False)

        def on_start():
            self.bar.update(solver.iter - self.bar.n)

        solver.add_callback(on_start, lambda: None)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()
        return False


class _BarSafeStream:
    """A stream for the logger that writes through tqdm.write, so the bar is redrawn below each line."""

    def write(self, text):
        from tqdm import tqdm

        tqdm.write(text.rstrip("\n"), file=sys.stderr)

    def flush(self):
        sys.stderr.flush()
