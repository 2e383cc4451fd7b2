"""cu-train against real `caffe train` (golden/solvers/logs): the log line for line from `Solving` on, the
snapshots, resuming, Caffe's log parsers, signals, interrupted writes and the one-line errors.

In-process runs (CliRunner) take about 0.3 s per golden solver; the SIGKILL test starts 21 subprocesses
(15-30 s on 2 cores).
"""
import datetime
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import OrderedDict

import numpy as np
import pytest
from click.testing import CliRunner

import caffe_unstable as caffe
from caffe_unstable.cli import train as train_cli
from caffe_unstable.io import solverstate
from caffe_unstable.proto import caffe_pb2

from ..solvers.golden_runs import GOLDEN_SOLVERS, glog_message, manifest, working_copy

NUMBER = re.compile(r"-?nan|-?inf|-?\d+(?:\.\d*)?(?:e[-+]?\d+)?")
TIMING = re.compile(r"\(\S+ iter/s, \S+s/(\d+) iters\)")


def cu_train(*args):
    result = CliRunner().invoke(train_cli.main, [str(a) for a in args])
    return result.exit_code, result.stderr


def golden_log_cases():
    names = [entry["solver"] for entry in manifest()]
    if not names:
        return [pytest.param(None, None, marks=pytest.mark.skip(reason=f"{GOLDEN_SOLVERS} absent"))]
    cases = [pytest.param(n, (f"--solver={n}.solver.prototxt", "--weights=init.caffemodel"), id=n) for n in names]
    cases.append(pytest.param("sgd_step_h5", ("sgd_step_h5.solver.prototxt", "--weights", "init.caffemodel"),
                              id="sgd_step_h5"))
    cases.append(pytest.param("sgd_step_resumed", ("--solver=sgd_step_resumed.solver.prototxt",
                                                   "--snapshot=snapshots/sgd_step_iter_5.solverstate"),
                              id="sgd_step_resumed"))
    return cases


def _from_solving(text):
    """The `file:line] message` of every line from `Solving` on (continuation lines kept as themselves)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if "] Solving " in line)
    return [glog_message(line) or line for line in lines[start:]]


def _split(message):
    """(template with numbers as '#' and timings blanked, numbers as floats)."""
    message = TIMING.sub(r"(<x> iter/s, <t>s/\1 iters)", message)
    return NUMBER.sub("#", message), [float(n) for n in NUMBER.findall(message)]


def assert_same_log(ours, caffes):
    assert len(ours) == len(caffes), f"{len(ours)} lines vs Caffe's {len(caffes)}"
    for k, (a, b) in enumerate(zip(ours, caffes)):
        template_a, numbers_a = _split(a)
        template_b, numbers_b = _split(b)
        assert template_a == template_b, f"line {k}: {a!r} vs Caffe's {b!r}"
        assert numbers_a == pytest.approx(numbers_b, rel=1e-4, abs=1e-7), f"line {k}: {a!r} vs Caffe's {b!r}"


@pytest.mark.parametrize("name, args", golden_log_cases())
def test_log_matches_caffe_line_for_line(name, args, shared, tmp_path, monkeypatch):
    monkeypatch.chdir(working_copy(tmp_path, snapshots=["sgd_step_iter_5.caffemodel", "sgd_step_iter_5.solverstate"]))
    code, stderr = cu_train(*args)
    assert code == 0, stderr
    caffes = (GOLDEN_SOLVERS / "logs" / f"{name}.log").read_text()
    assert_same_log(_from_solving(stderr), _from_solving(caffes))
    # and the lines before: caffe train's own set-up lines (the net's construction lines are tested with the net)
    lines = stderr.splitlines()
    solving = next(i for i, line in enumerate(lines) if "] Solving " in line)
    head = [m for m in map(glog_message, lines[:solving]) if m]
    for expected in ("caffe.cpp:197] Use CPU.", "solver.cpp:57] Solver scaffolding done.",
                     "caffe.cpp:239] Starting Optimization"):
        assert expected in head
    if "--snapshot" in " ".join(args):
        assert head[-3:] == ["caffe.cpp:235] Resuming from snapshots/sgd_step_iter_5.solverstate",
                             "sgd_solver.cpp:336] SGDSolver: restoring history", "caffe.cpp:239] Starting Optimization"]
    else:
        assert head.count("solver.cpp:72] Finetuning from init.caffemodel") == 2


def test_solver_parameters_dumped_as_caffe_does(shared, tmp_path, monkeypatch):
    """`Initializing solver from parameters:` + DebugString (base_lr: 1, not 1.0), with caffe train's additions."""
    monkeypatch.chdir(working_copy(tmp_path))
    code, stderr = cu_train("adadelta.solver.prototxt", "--weights=init.caffemodel")
    assert code == 0, stderr
    ours = stderr.split("solver.cpp:45] ")[1].split("\nI")[0]
    caffes = (GOLDEN_SOLVERS / "logs" / "adadelta.log").read_text().split("solver.cpp:45] ")[1].split("\nI")[0]
    assert ours == caffes


def test_resumed_run_reproduces_caffes_resumed_snapshot(shared, tmp_path, monkeypatch):
    """Resuming restores weights, history, iter and current_step but not the data position: Caffe's resumed
    iteration-20 files, not the uninterrupted run's."""
    monkeypatch.chdir(working_copy(tmp_path, snapshots=["sgd_step_iter_5.caffemodel", "sgd_step_iter_5.solverstate"]))
    code, stderr = cu_train("--solver=sgd_step_resumed.solver.prototxt",
                            "--snapshot=snapshots/sgd_step_iter_5.solverstate")
    assert code == 0, stderr
    ours = solverstate.read_state("snapshots/sgd_step_resumed_iter_20.solverstate")
    theirs = solverstate.read_state(GOLDEN_SOLVERS / "snapshots" / "sgd_step_resumed_iter_20.solverstate")
    assert (ours.iter, ours.current_step, ours.learned_net) == (theirs.iter, theirs.current_step, theirs.learned_net)
    for j, (a, b) in enumerate(zip(ours.history, theirs.history)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5, err_msg=f"history {j}")
    mine = caffe.Net("tiny_lenet.prototxt", caffe.TRAIN, weights="snapshots/sgd_step_resumed_iter_20.caffemodel")
    resumed = caffe.Net("tiny_lenet.prototxt", caffe.TRAIN,
                        weights=str(GOLDEN_SOLVERS / "snapshots" / "sgd_step_resumed_iter_20.caffemodel"))
    straight = caffe.Net("tiny_lenet.prototxt", caffe.TRAIN,
                         weights=str(GOLDEN_SOLVERS / "snapshots" / "sgd_step_iter_20.caffemodel"))
    for layer in ("conv1", "conv2", "ip1", "ip2"):
        for i in (0, 1):
            np.testing.assert_allclose(mine.params[layer][i].data, resumed.params[layer][i].data, rtol=0, atol=1e-5)
    assert max(np.abs(mine.params[l][0].data - straight.params[l][0].data).max() for l in ("conv1", "ip1")) > 1e-3


# ------------------------------------------------------------------------------------------ parse_log.py
# Caffe's tools/extra/parse_log.py and extract_seconds.py (caffe.md §5.4), ported as they are.
REGEX_ITERATION = re.compile(r"Iteration (\d+)")
REGEX_TRAIN_OUTPUT = re.compile(r"Train net output #(\d+): (\S+) = ([\.\deE+-]+)")
REGEX_TEST_OUTPUT = re.compile(r"Test net output #(\d+): (\S+) = ([\.\deE+-]+)")
REGEX_LEARNING_RATE = re.compile(r"lr = ([-+]?[0-9]*\.?[0-9]+([eE]?[-+]?[0-9]+)?)")


def extract_datetime_from_line(line, year):
    line = line.strip().split()
    month = int(line[0][1:3])
    day = int(line[0][3:])
    timestamp = line[1]
    pos = timestamp.rfind(".")
    ts = [int(x) for x in timestamp[:pos].split(":")]
    return datetime.datetime(year, month, day, ts[0], ts[1], ts[2], int(timestamp[pos + 1:]))


def get_start_time(line_iterable, year):
    for line in line_iterable:
        line = line.strip()
        if line.find("Solving") != -1:
            return extract_datetime_from_line(line, year)
    return None


def parse_line_for_net_output(regex_obj, row, row_dict_list, line, iteration, seconds, learning_rate):
    output_match = regex_obj.search(line)
    if output_match:
        if not row or row["NumIters"] != iteration:
            if row:
                row_dict_list.append(row)
            row = OrderedDict([("NumIters", iteration), ("Seconds", seconds), ("LearningRate", learning_rate)])
        row[output_match.group(2)] = float(output_match.group(3))
    if row and len(row_dict_list) >= 1 and len(row) == len(row_dict_list[0]):
        row_dict_list.append(row)
        row = None
    return row_dict_list, row


def parse_log(path):
    """parse_log.py's parse_log, including its strictness: after the first `Iteration` every line goes through
    extract_datetime_from_line, where a blank line raises IndexError (uncaught) and other junk is skipped."""
    iteration, learning_rate = -1, float("NaN")
    train_dict_list, test_dict_list, train_row, test_row = [], [], None, None
    year = datetime.datetime.fromtimestamp(os.path.getctime(path)).year
    skipped = []
    with open(path) as f:
        start_time = get_start_time(f, year)
        last_time = start_time
        for line in f:
            iteration_match = REGEX_ITERATION.search(line)
            if iteration_match:
                iteration = float(iteration_match.group(1))
            if iteration == -1:
                continue
            try:
                time_ = extract_datetime_from_line(line, year)
            except ValueError:
                skipped.append(line)
                continue
            if time_.month < last_time.month:
                year += 1
                time_ = extract_datetime_from_line(line, year)
            last_time = time_
            seconds = (time_ - start_time).total_seconds()
            learning_rate_match = REGEX_LEARNING_RATE.search(line)
            if learning_rate_match:
                learning_rate = float(learning_rate_match.group(1))
            train_dict_list, train_row = parse_line_for_net_output(REGEX_TRAIN_OUTPUT, train_row, train_dict_list,
                                                                   line, iteration, seconds, learning_rate)
            test_dict_list, test_row = parse_line_for_net_output(REGEX_TEST_OUTPUT, test_row, test_dict_list,
                                                                 line, iteration, seconds, learning_rate)
    for rows in (train_dict_list, test_dict_list):
        if len(rows) > 1:
            rows[0]["LearningRate"] = rows[1]["LearningRate"]
    return train_dict_list, test_dict_list, skipped


def _without_seconds(rows):
    return [{k: v for k, v in row.items() if k != "Seconds"} for row in rows]


@pytest.mark.parametrize("name", ["sgd_step", "sgd_itersize2", "sgd_clip"])
def test_parse_log_reads_ours_as_caffes(name, shared, tmp_path, monkeypatch):
    monkeypatch.chdir(working_copy(tmp_path))
    code, stderr = cu_train(f"{name}.solver.prototxt", "--weights=init.caffemodel")
    assert code == 0, stderr
    (tmp_path / "ours.log").write_text(stderr)
    train, test, skipped = parse_log(tmp_path / "ours.log")
    train_c, test_c, skipped_c = parse_log(GOLDEN_SOLVERS / "logs" / f"{name}.log")
    assert skipped == skipped_c == []
    assert len(train) == len(train_c) == 20 and len(test) == len(test_c) == 3      # tests at 0, 10, 20
    for ours, caffes in ((train, train_c), (test, test_c)):
        for a, b in zip(_without_seconds(ours), _without_seconds(caffes)):
            assert list(a) == list(b)
            assert list(a.values()) == pytest.approx(list(b.values()), rel=1e-4)
    # every line after the first `Iteration` match is a glog line (extract_seconds.py reads them all)
    lines = stderr.splitlines()
    first = next(i for i, line in enumerate(lines) if REGEX_ITERATION.search(line))
    assert all(glog_message(line) for line in lines[first:])
    start = get_start_time(lines, 2000)
    assert all(extract_datetime_from_line(line, 2000) >= start for line in lines[first:] if "Iteration" in line)


# --------------------------------------------------------------------------------------- subprocesses
TINY_NET = """name: "Tiny"
layer { name: "data" type: "DummyData" top: "data" top: "target"
  dummy_data_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 2 } data_filler { type: "gaussian" } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "target" top: "loss" }
"""


def _tiny(folder, max_iter, snapshot=1, display=1):
    (folder / "tiny.prototxt").write_text(TINY_NET)
    (folder / "tiny_solver.prototxt").write_text(
        f'net: "tiny.prototxt"\nbase_lr: 0.01\nmomentum: 0.9\nlr_policy: "fixed"\nmax_iter: {max_iter}\n'
        f'display: {display}\nsnapshot: {snapshot}\nsnapshot_prefix: "snap/tiny"\nrandom_seed: 3\n')


def _spawn(folder, *args, **kwargs):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-c", "from caffe_unstable.cli.train import main; main()", *args],
                            cwd=folder, env=env, stdout=subprocess.DEVNULL, **kwargs)


def _complete(path):
    """A snapshot file that parses completely (protobuf) with its expected content."""
    raw = path.read_bytes()
    if path.suffix == ".caffemodel":
        net = caffe_pb2.NetParameter.FromString(raw)
        return [l.name for l in net.layer] == ["data", "ip", "loss"] and len(net.layer[1].blobs[0].data) == 6
    state = caffe_pb2.SolverState.FromString(raw)
    return len(state.history) == 2 and len(state.history[0].data) == 6 and state.learned_net.endswith(".caffemodel")


def test_sigkill_never_leaves_a_truncated_snapshot(tmp_path):
    """Kill cu-train at random moments (20 times, two runs at a time) while it snapshots every iteration: every
    file present is complete, and the last state resumes."""
    folders = [tmp_path / "a", tmp_path / "b"]
    for folder in folders:
        folder.mkdir()
        _tiny(folder, max_iter=100000)
    rng = np.random.default_rng(11)
    kills = 0
    while kills < 20:
        procs = [_spawn(folder, "tiny_solver.prototxt", stderr=subprocess.DEVNULL) for folder in folders]
        deadline = time.monotonic() + 30
        for folder in folders:
            while not list(folder.glob("snap/*.solverstate")) and time.monotonic() < deadline:
                time.sleep(0.01)
        for proc in procs:
            time.sleep(float(rng.uniform(0, 0.15)))
            proc.send_signal(signal.SIGKILL)
        for proc, folder in zip(procs, folders):
            proc.wait()
            kills += 1
            files = [p for p in (folder / "snap").iterdir() if p.suffix in (".caffemodel", ".solverstate")]
            assert files and all(_complete(p) for p in files), f"kill {kills}"
            for p in (folder / "snap").iterdir():   # temporary files may be left behind; partial finals may not
                p.unlink()
    # one more run, killed, then resumed from its last state (the model it names was written before it)
    folder = folders[0]
    snap = folder / "snap"
    proc = _spawn(folder, "tiny_solver.prototxt", stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while len(list(snap.glob("*.solverstate"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    last = max(snap.glob("*.solverstate"), key=lambda p: int(p.stem.split("_iter_")[1]))
    done = int(last.stem.split("_iter_")[1])
    solver_file = folder / "tiny_solver.prototxt"
    solver_file.write_text(solver_file.read_text().replace("max_iter: 100000", f"max_iter: {done + 2}"))
    result = subprocess.run([sys.executable, "-c", "from caffe_unstable.cli.train import main; main()",
                             "tiny_solver.prototxt", f"--snapshot=snap/{last.name}"], cwd=folder,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"Resuming from snap/{last.name}" in result.stderr
    assert solverstate.read_state(snap / f"tiny_iter_{done + 2}.solverstate").iter == done + 2


@pytest.mark.parametrize("signum, effect", [(signal.SIGINT, "stop"), (signal.SIGHUP, "snapshot")])
def test_signals(signum, effect, tmp_path):
    """SIGINT: snapshot (snapshot_after_train) and stop early; SIGHUP: snapshot now and go on."""
    _tiny(tmp_path, max_iter=100000, snapshot=0, display=0)
    log = open(tmp_path / "log.txt", "w")
    proc = _spawn(tmp_path, "tiny_solver.prototxt", stderr=log)
    deadline = time.monotonic() + 30
    while "Solving" not in (tmp_path / "log.txt").read_text() and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)
    proc.send_signal(signum)
    if effect == "snapshot":
        while not list((tmp_path / "snap").glob("*.solverstate")) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None                         # still training
        proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 0
    log.close()
    text = (tmp_path / "log.txt").read_text()
    messages = [glog_message(line) for line in text.splitlines()]
    assert messages[-1] == "caffe.cpp:250] Optimization Done."
    assert messages[-2] == "solver.cpp:311] Optimization stopped early."
    states = sorted(int(p.stem.split("_iter_")[1]) for p in (tmp_path / "snap").glob("*.solverstate"))
    assert len(states) == (1 if effect == "stop" else 2)
    assert all(_complete(p) for p in (tmp_path / "snap").iterdir())


def test_progress_bar_only_on_a_terminal(tmp_path):
    _tiny(tmp_path, max_iter=30, snapshot=0)
    redirected = subprocess.run([sys.executable, "-c", "from caffe_unstable.cli.train import main; main()",
                                 "tiny_solver.prototxt"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert redirected.returncode == 0
    assert all(glog_message(line) or not line.startswith(("I", "W", "E")) for line in redirected.stderr.splitlines())
    assert "iter/s]" not in redirected.stderr and "\r" not in redirected.stderr
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))    # a fresh pty is 0 columns wide
    proc = subprocess.Popen([sys.executable, "-c", "from caffe_unstable.cli.train import main; main()",
                             "tiny_solver.prototxt"], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    proc.wait(timeout=60)
    os.close(master)
    shown = b"".join(chunks).decode(errors="replace")
    assert "it" in shown and "/30" in shown                  # tqdm's n/total
    assert "Optimization Done." in shown


# --------------------------------------------------------------------------------------------- options
def test_seed_overrides_random_seed_and_accel_goes_through_open_accel(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _tiny(tmp_path, max_iter=2, snapshot=0)
    opened = {}

    class FakeAccel:
        pass

    def fake_open(accel, **kwargs):
        opened.update(kwargs, accel=accel)
        return FakeAccel()

    monkeypatch.setattr(train_cli, "open_accel", fake_open)
    made = []
    real_init = caffe.Net.__init__

    def spy(self, *args, **kwargs):
        made.append(kwargs.pop("accel", None))
        real_init(self, *args, **kwargs)          # run in float: only the hand-over is under test here

    monkeypatch.setattr(caffe.Net, "__init__", spy)
    code, stderr = cu_train("tiny_solver.prototxt", "--seed", 42, "--accel", "numba", "--freq", "250", "--ste",
                            "plain", "--backward-weights", "quantized")
    assert code == 0, stderr
    assert "random_seed: 42\n" in stderr
    assert opened == {"accel": "numba", "quant": None, "freq": "250", "ser": None, "profile": None, "seed": 42,
                      "fault_layers": None, "ste": "plain", "backward_weights": "quantized"}
    assert len(made) == 1 and isinstance(made[0], FakeAccel)


def test_level_and_stage_reach_the_train_net(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _tiny(tmp_path, max_iter=1, snapshot=0)
    code, stderr = cu_train("--solver=tiny_solver.prototxt", "--level=3", "--stage=a,b")
    assert code == 0, stderr
    assert 'train_state {\n  level: 3\n  stage: "a"\n  stage: "b"\n}' in stderr


@pytest.mark.parametrize("solver_text, args, message", [
    ('type: "Adamm"\n', (), 'error: s.prototxt:10: Unknown solver type: Adamm (known types: AdaDelta, AdaGrad, '
                            'Adam, Nesterov, RMSProp, SGD)'),
    ('lr_policy: "exp"\ngamma: -0.95\n', (), 'error: s.prototxt:10: lr_policy "exp" needs gamma >= 0 (got -0.95)'),
    ("", ("--weights=w.caffemodel", "--snapshot=s.solverstate"),
     "error: --weights/--snapshot: Give a snapshot to resume training or weights to finetune but not both."),
    ("", ("--snapshot=snap/other.solverstate",),
     "error: snap/other.solverstate: Incorrect length of history blobs: the state holds 4, a SGD solver of net "
     "'Tiny' needs 2 (a state of another net or solver type?)"),
])
def test_bad_input_is_one_line(solver_text, args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _tiny(tmp_path, max_iter=1, snapshot=0)
    base = (tmp_path / "tiny_solver.prototxt").read_text()
    if "lr_policy" in solver_text:
        base = base.replace('lr_policy: "fixed"\n', "")
    (tmp_path / "s.prototxt").write_text(base + solver_text)
    (tmp_path / "snap").mkdir()
    zeros = [np.zeros((2, 3), np.float32), np.zeros(2, np.float32)] * 2
    solverstate.write_binary_state("snap/other.solverstate", 5, "snap/other.caffemodel", 0, zeros)
    code, stderr = cu_train("s.prototxt", *args)
    assert code == 1
    assert stderr.strip().splitlines()[-1] == message
    assert "Traceback" not in stderr


def test_missing_net_file_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.prototxt").write_text('net: "nets/none.prototxt"\nbase_lr: 0.1\nlr_policy: "fixed"\n')
    code, stderr = cu_train("s.prototxt")
    assert code == 1
    assert stderr.strip().splitlines()[-1] == (
        f'error: s.prototxt:1: net: "nets/none.prototxt" does not exist (net paths in a solver are relative to the '
        f"working directory, {tmp_path})")


def test_solver_is_required(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, stderr = cu_train()
    assert code == 2 and "Need a solver definition to train" in stderr
    code, stderr = cu_train("missing.prototxt")
    assert code == 1 and stderr.strip() == "error: missing.prototxt: no such file (SolverParameter prototxt)"


def test_training_with_soft_errors_logs_faults_per_window(tmp_path, monkeypatch):
    """faults.md §10.4: `Faults TRAIN iters a-b:` every display window, a --fault-log line per TRAIN forward and
    accelerated layer, keyed (phase 0, iteration, pass 0); the fault seed is the solver's random_seed."""
    monkeypatch.chdir(tmp_path)
    _tiny(tmp_path, max_iter=4, snapshot=0, display=2)
    (tmp_path / "tiny.quant.yaml").write_text("format: caffe_unstable.quant/1\nlayers:\n"
                                              "  ip: {frac_w: 7, frac_din: 5, frac_dout: 5}\n")
    code, stderr = cu_train("tiny_solver.prototxt", "--quant", "tiny.quant.yaml", "--ser", "0.01",
                            "--fault-log", "faults.jsonl")
    assert code == 0, stderr[-2000:]
    assert "Fault model: mac_flip, rate 0.01 per MAC, site product, bits [0, 17], count hardware, N_MAC/image " \
           "64 (1 flips expected), seed 3" in stderr
    windows = [line.split("] ", 1)[1].split(":")[0] for line in stderr.splitlines() if "Faults TRAIN" in line]
    assert windows == ["Faults TRAIN iters 0-1", "Faults TRAIN iters 2-3"]
    records = [json.loads(line) for line in (tmp_path / "faults.jsonl").read_text().splitlines()]
    assert [(r["phase"], r["iteration"], r["pass"], r["layer"], r["images"]) for r in records] == \
        [(0, i, 0, "ip", 2) for i in range(4)]
    code, stderr = cu_train("tiny_solver.prototxt", "--fault-log", "x.jsonl")
    assert (code, stderr.splitlines()[-1]) == (1, "error: --fault-log: there are no faults to log: give --freq, "
                                                  "--ser or --profile")
