"""Caffe's Solver (src/caffe/solver.cpp): nets, the Step loop, testing, the displayed loss, snapshots, Solve.

The update itself (learning rate, clipping, regularization, the rule) is SGDSolver's, in sgd.py; the solver
history lives here because snapshot and restore write and read it (caffe.md §4, §1.7-1.8).
"""
import abc
import os
import re
import tempfile
import time

import numpy as np

from ..errors import CaffeUnstableError
from ..io import prototxt as pt
from ..io import solverstate
from ..log import GlogLogger, format_value
from ..net.net import _new_rng
from ..proto import caffe_pb2
from . import nets

f32 = np.float32

# Caffe's SolverAction (solver.hpp): what a signal asks the running solver to do
NONE, STOP, SNAPSHOT = "none", "stop", "snapshot"


class Solver(abc.ABC):
    """pycaffe's Solver: `net`, `test_nets`, `iter`, `step(n)`, `solve()`, `restore(state)`, `snapshot()`.

    `solver_file` is a solver prototxt path or a caffe_pb2.SolverParameter (then `source` names it in errors).
    `accel` is given to the train net and every test net. `log` receives Caffe's glog lines (default: the
    GLOG_minloglevel-filtered stderr logger, silent at INFO as pycaffe is).
    """

    type = None
    history_sets = 1          # AdaDelta and Adam keep a second set of history blobs

    def __init__(self, solver_file, accel=None, log=None, source=None):
        self.log = log or GlogLogger()
        if isinstance(solver_file, caffe_pb2.SolverParameter):
            self.source = os.fspath(source) if source is not None else "<SolverParameter>"
            self.param = caffe_pb2.SolverParameter()
            self.param.CopyFrom(solver_file)
        else:
            self.source = os.fspath(solver_file)
            self.param = pt.read_solver_text(self.source, self.log)
        self.accel = accel
        self._lines = field_lines(self.source)
        self.log.info("Initializing solver from parameters: \n" + pt.debug_string(self.param).rstrip("\n"),
                      "solver.cpp:45")
        self.check_param()
        self._check_snapshot_prefix()
        seed = self.param.random_seed
        self.rng = np.random.default_rng(seed) if seed >= 0 else _new_rng(None)
        self.net = nets.train_net(self)
        self.test_nets = nets.test_nets(self)
        self.log.info("Solver scaffolding done.", "solver.cpp:57")
        self.iter = 0
        self.current_step = 0
        self.history = []
        self._callbacks = []
        self._action_function = None
        self._requested_early_exit = False
        self._losses, self._smoothed_loss = [], f32(0)
        self._iterations_last = 0
        self._timer_start = time.perf_counter()
        self._outputs = _output_table(self.net)
        self.pre_solve()

    # ------------------------------------------------------------------------------------- checks
    def where(self, field=None):
        """`<solver file>:<line>` of `field` when the file sets it, else the file."""
        line = self._lines.get(field)
        return f"{self.source}:{line}" if line else self.source

    def check_param(self):
        """The SolverParameter checks of Solver::Init; subclasses add theirs (sgd_solvers.hpp)."""
        if self.param.average_loss < 1:
            raise CaffeUnstableError(self.where("average_loss"), "average_loss should be non-negative "
                                                                 f"(>= 1; got {self.param.average_loss})")
        if self.param.iter_size < 1:
            raise CaffeUnstableError(self.where("iter_size"), f"iter_size must be >= 1 (got {self.param.iter_size})")

    def _check_snapshot_prefix(self):
        """Solver::CheckSnapshotWritePermissions; unlike Caffe, a missing snapshot folder is created."""
        if not self.param.snapshot:
            return
        if not self.param.snapshot_prefix:
            raise CaffeUnstableError(self.where("snapshot"), "In solver params, snapshot is specified but "
                                                             "snapshot_prefix is not")
        folder = os.path.dirname(self.param.snapshot_prefix) or "."
        try:
            os.makedirs(folder, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder, prefix=os.path.basename(self.param.snapshot_prefix),
                                             suffix=".tempfile"):
                pass
        except OSError:
            raise CaffeUnstableError(self.where("snapshot_prefix"),
                                     f"Cannot write to snapshot prefix '{self.param.snapshot_prefix}'.  Make sure "
                                     "that the directory exists and is writable.") from None

    # ------------------------------------------------------------------------- the training loop
    def step(self, iters):
        """Solver::Step: `iters` updates, testing/displaying/snapshotting as the parameters say."""
        p = self.param
        start_iter, stop_iter = self.iter, self.iter + int(iters)
        self._losses, self._smoothed_loss = [], f32(0)
        self._timer_start = time.perf_counter()
        while self.iter < stop_iter:
            self.net.clear_param_diffs()
            if p.test_interval and self.iter % p.test_interval == 0 and (self.iter > 0 or p.test_initialization):
                self.test_all()
                if self._requested_early_exit:
                    break
            for on_start, _ in self._callbacks:
                on_start()
            display = p.display and self.iter % p.display == 0
            loss = f32(0)
            for sub in range(p.iter_size):
                self.net.fault_key = (0, self.iter, sub)        # faults.md §3.1: plans follow solver state
                loss += f32(self.net.forward_backward())
            loss /= f32(p.iter_size)
            self._update_smoothed_loss(loss, start_iter)
            if display:
                self._display()
            for _, on_gradients_ready in self._callbacks:
                on_gradients_ready()
            self.apply_update()
            request = self._requested_action()
            if (p.snapshot and self.iter % p.snapshot == 0) or request == SNAPSHOT:
                self.snapshot()
            if request == STOP:
                self._requested_early_exit = True
                break

    def solve(self, resume_file=None):
        """Solver::Solve: step to max_iter, the final snapshot, one extra forward to show the loss, a last test."""
        p = self.param
        self.log.info(f"Solving {self.net.name}", "solver.cpp:289")
        self.log.info(f"Learning Rate Policy: {p.lr_policy}", "solver.cpp:290")
        self._requested_early_exit = False
        if resume_file:
            self.log.info(f"Restoring previous solver status from {resume_file}", "solver.cpp:296")
            self.restore(resume_file)
        start_iter = self.iter
        self.step(p.max_iter - self.iter)
        if p.snapshot_after_train and (not p.snapshot or self.iter % p.snapshot != 0):
            self.snapshot()
        if self._requested_early_exit:
            self.log.info("Optimization stopped early.", "solver.cpp:311")
            return
        if p.display and self.iter % p.display == 0:
            # Net::Forward only: the parameters were already updated max_iter times (consumes a batch)
            self.net.fault_key = (0, self.iter, 0)
            loss = f32(self.net.forward_prefilled())
            self._update_smoothed_loss(loss, start_iter)
            self.log.info(f"Iteration {self.iter}, loss = {format_value(self._smoothed_loss)}", "solver.cpp:327")
        if p.test_interval and self.iter % p.test_interval == 0:
            self.test_all()
        self.log.info("Optimization Done.", "solver.cpp:332")

    def _update_smoothed_loss(self, loss, start_iter):
        """Solver::UpdateSmoothedLoss: the mean of the last `average_loss` losses, in float."""
        average_loss = self.param.average_loss
        if len(self._losses) < average_loss:
            self._losses.append(loss)
            size = len(self._losses)
            self._smoothed_loss = (self._smoothed_loss * f32(size - 1) + loss) / f32(size)
        else:
            idx = (self.iter - start_iter) % average_loss
            self._smoothed_loss += (loss - self._losses[idx]) / f32(average_loss)
            self._losses[idx] = loss

    def _display(self):
        p = self.param
        # Caffe's CPU Timer counts whole milliseconds (Timer::Seconds = ElapsedMilliSeconds / 1000)
        lapse = f32(int((time.perf_counter() - self._timer_start) * 1000) / 1000.0)
        per_s = f32(self.iter - self._iterations_last) / (lapse if lapse else f32(1))
        self.log.info(f"Iteration {self.iter} ({format_value(per_s)} iter/s, {format_value(lapse)}s/{p.display} "
                      f"iters), loss = {format_value(self._smoothed_loss)}", "solver.cpp:239")
        self._timer_start = time.perf_counter()
        self._iterations_last = self.iter
        for line in _output_lines(self._outputs, "Train"):
            self.log.info(line, "solver.cpp:258")

    # ------------------------------------------------------------------------------------ testing
    def test_all(self):
        """Solver::TestAll: test every test net in order (stops early on a STOP request)."""
        for i in range(len(self.test_nets)):
            if self._requested_early_exit:
                break
            self.test(i)

    def test(self, test_net_id=0):
        """Solver::Test: test_iter[i] forward passes; log the mean of every output element."""
        self.log.info(f"Iteration {self.iter}, Testing net (#{test_net_id})", "solver.cpp:347")
        test_net = self.test_nets[test_net_id]
        test_net.share_with(self.net)
        outputs = _output_table(test_net)
        iterations = self.param.test_iter[test_net_id]
        scores, loss = None, f32(0)
        for batch in range(iterations):
            request = self._requested_action()
            while request != NONE:
                if request == SNAPSHOT:
                    self.snapshot()
                elif request == STOP:
                    self._requested_early_exit = True
                request = self._requested_action()
            if self._requested_early_exit:
                break
            test_net.fault_key = (1 + test_net_id, self.iter, batch)
            iter_loss = f32(test_net.forward_prefilled())
            if self.param.test_compute_loss:
                loss += iter_loss
            values = np.concatenate([blob.data.reshape(-1) for _, blob, _ in outputs]) if outputs else \
                np.zeros(0, f32)
            scores = values.astype(f32) if scores is None else scores + values   # float sums, pass by pass
        if self._requested_early_exit:
            self.log.info("Test interrupted.", "solver.cpp:396")
            return
        if self.param.test_compute_loss:
            self.log.info(f"Test loss: {format_value(loss / f32(iterations))}", "solver.cpp:401")
        if scores is None:
            return
        means = scores / f32(iterations)
        for line in _output_lines(outputs, "Test", means):
            self.log.info(line, "solver.cpp:414")

    # ---------------------------------------------------------------------------------- snapshots
    def snapshot(self):
        """Solver::Snapshot: the train net (model) first, then the solver state naming it."""
        p = self.param
        if p.snapshot_format == caffe_pb2.SolverParameter.HDF5:
            model = self._snapshot_filename(".caffemodel.h5")
            self.log.info(f"Snapshotting to HDF5 file {model}", "solver.cpp:474")
            _make_folder(model)
            self.net.save_hdf5(model, write_diff=p.snapshot_diff)
            state = self._snapshot_filename(".solverstate.h5")
            self.log.info(f"Snapshotting solver state to HDF5 file {state}", "sgd_solver.cpp:296")
            solverstate.write_hdf5_state(state, self.iter, model, self.current_step, self.history)
        else:
            model = self._snapshot_filename(".caffemodel")
            self.log.info(f"Snapshotting to binary proto file {model}", "solver.cpp:464")
            _make_folder(model)
            self.net.save(model, write_diff=p.snapshot_diff)
            state = self._snapshot_filename(".solverstate")
            self.log.info(f"Snapshotting solver state to binary proto file {state}", "sgd_solver.cpp:284")
            solverstate.write_binary_state(state, self.iter, model, self.current_step, self.history)
        return state

    def _snapshot_filename(self, extension):
        return f"{self.param.snapshot_prefix}_iter_{self.iter}{extension}"

    def restore(self, state_file):
        """SGDSolver::RestoreSolverState: iter, current_step, the train net's weights (from learned_net, relative
        to the working directory) and the history. Data layers are not rewound (caffe.md §4.10)."""
        state_file = os.fspath(state_file)
        state = solverstate.read_state(state_file)
        self._check_history(state, state_file)
        self.iter = state.iter
        if state.learned_net:
            if not os.path.exists(state.learned_net):
                raise CaffeUnstableError(state_file, f"learned_net '{state.learned_net}' not found (the path is "
                                                     f"relative to the working directory, {os.getcwd()})")
            self.net.copy_from(state.learned_net)
        self.current_step = state.current_step
        if not state.hdf5:
            self.log.info("SGDSolver: restoring history", "sgd_solver.cpp:336")
        for h, arr in zip(self.history, state.history):
            np.copyto(h, arr.reshape(h.shape))

    def _check_history(self, state, state_file):
        """The history must be this solver's for this net: same count, same shapes (Caffe checks the count)."""
        if len(state.history) != len(self.history):
            raise CaffeUnstableError(state_file, f"Incorrect length of history blobs: the state holds "
                                                 f"{len(state.history)}, a {self.type} solver of net "
                                                 f"'{self.net.name}' needs {len(self.history)} (a state of another "
                                                 "net or solver type?)")
        for i, (h, arr) in enumerate(zip(self.history, state.history)):
            if _strip_ones(arr.shape) != _strip_ones(h.shape):
                raise CaffeUnstableError(state_file, f"history blob {i} has shape {_shape(arr.shape)}; the "
                                                     f"{self.type} solver of net '{self.net.name}' needs "
                                                     f"{_shape(h.shape)} (a state of another net?)")

    # ------------------------------------------------------------------------------ pycaffe extras
    def add_callback(self, on_start, on_gradients_ready):
        """pycaffe's Solver.add_callback: called before each iteration's passes and before each update."""
        self._callbacks.append((on_start, on_gradients_ready))

    def set_action_function(self, function):
        """Solver::SetActionFunction: `function()` returns "none", "stop" or "snapshot" (caffe train's signals)."""
        self._action_function = function

    def _requested_action(self):
        return self._action_function() if self._action_function is not None else NONE

    # --------------------------------------------------------------------- what subclasses define
    @abc.abstractmethod
    def pre_solve(self):
        """Create the history blobs (SGDSolver::PreSolve)."""

    @abc.abstractmethod
    def apply_update(self):
        """Turn the accumulated diffs into updates (SGDSolver::ApplyUpdate)."""


def _output_table(net):
    """(name, blob, loss weight) of every net output, in Caffe's (sorted) output order."""
    weights = net.blob_loss_weights
    blobs = net.blobs
    return [(name, blobs[name], f32(weights[name])) for name in net.outputs]


def _output_lines(outputs, kind, values=None):
    """`    <kind> net output #k: <blob> = <v>[ (* <w> = <w*v> loss)]`, one per element of every output."""
    lines, k, offset = [], 0, 0
    for name, blob, weight in outputs:
        flat = blob.data.reshape(-1) if values is None else values[offset:offset + blob.count]
        offset += blob.count
        for v in flat:
            v = f32(v)
            suffix = f" (* {format_value(weight)} = {format_value(weight * v)} loss)" if weight else ""
            lines.append(f"    {kind} net output #{k}: {name} = {format_value(v)}{suffix}")
            k += 1
    return lines


def field_lines(path):
    """Top-level field name -> first line where a solver file sets it (for errors that point at the line).

    Fields inside messages (`net_param { layer { type: ... } }`) are skipped by tracking the brace depth."""
    lines, depth = {}, 0
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for number, text in enumerate(f, 1):
                code = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', text).split("#", 1)[0]
                match = re.match(r"\s*([A-Za-z_]\w*)\s*[:{]", code)
                if match and depth == 0:
                    lines.setdefault(match.group(1), number)
                depth += code.count("{") - code.count("}")
    except OSError:
        pass
    return lines


def _make_folder(path):
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)


def _strip_ones(shape):
    shape = tuple(shape)
    while shape and shape[0] == 1:
        shape = shape[1:]
    return shape


def _shape(shape):
    return " ".join(map(str, shape)) + f" ({int(np.prod(shape, dtype=np.int64))})"
