"""cu-time: the lines of `caffe time` (caffe.cpp:330-417) on the golden tiny LeNet (HDF5 data, runs in ~1 s)."""
import re

import pytest
from click.testing import CliRunner

import caffe_unstable as caffe
from caffe_unstable.cli.time import benchmark, main
from caffe_unstable.log import NullLogger
from tests.fmnist import glog_messages

MS = r"\d+(?:\.\d+)?(?:e[+-]\d+)?"


def cu_time(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.stderr


@pytest.fixture
def solvers(shared, monkeypatch):
    monkeypatch.chdir(shared / "golden/solvers")     # the HDF5 lists hold relative paths
    return shared / "golden/solvers"


@pytest.mark.parametrize("phase", ["TRAIN", "TEST"])
def test_caffe_time_lines(solvers, phase):
    code, err = cu_time("--model", "tiny_lenet.prototxt", "--iterations", 3, "--phase", phase)
    assert code == 0, err[-2000:]
    names = caffe.Net("tiny_lenet.prototxt", caffe.TRAIN if phase == "TRAIN" else caffe.TEST)._layer_names
    lines = glog_messages(err, files=("caffe.cpp",))
    head = [("caffe.cpp:343", "Use CPU."), ("caffe.cpp:351", "Performing Forward")]
    assert lines[:2] == head
    assert lines[2][0] == "caffe.cpp:356" and re.fullmatch(r"Initial loss: \d+\.\d+", lines[2][1])
    assert lines[3:6] == [("caffe.cpp:357", "Performing Backward"), ("caffe.cpp:365", "*** Benchmark begins ***"),
                          ("caffe.cpp:366", "Testing for 3 iterations.")]
    for j in range(3):
        assert lines[6 + j][0] == "caffe.cpp:394"
        assert re.fullmatch(rf"Iteration: {j + 1} forward-backward time: \d+ ms.", lines[6 + j][1])
    assert lines[9] == ("caffe.cpp:397", "Average time per layer: ")
    per_layer = lines[10:10 + 2 * len(names)]
    for i, name in enumerate(names):
        for k, (src, what) in enumerate((("caffe.cpp:400", "forward"), ("caffe.cpp:403", "backward"))):
            got = per_layer[2 * i + k]
            assert got[0] == src and re.fullmatch(rf"{name:>10}\t{what}: {MS} ms.", got[1]), got
    tail = lines[10 + 2 * len(names):]
    assert [src for src, _ in tail] == ["caffe.cpp:408", "caffe.cpp:410", "caffe.cpp:412", "caffe.cpp:414",
                                        "caffe.cpp:415"]
    assert [re.sub(MS, "#", m) for _, m in tail] == [
        "Average Forward pass: # ms.", "Average Backward pass: # ms.", "Average Forward-Backward: # ms.",
        "Total Time: # ms.", "*** Benchmark ends ***"]
    # Total Time is whole milliseconds (Caffe's CPU timer) and the average is it over the iterations
    total = float(tail[3][1].split()[2])
    assert total == int(total) and float(tail[2][1].split()[2]) == pytest.approx(total / 3, rel=1e-5)


def test_backward_runs_for_every_layer_with_its_bottom_need_backward(solvers, monkeypatch):
    """The TEST net's accuracy layer needs no backward, yet caffe time calls it (with all-False propagate_down)."""
    calls = []
    from caffe_unstable.ops.accuracy import Accuracy

    original = Accuracy.backward

    def spy(self, top, propagate_down, bottom):
        calls.append(list(propagate_down))
        return original(self, top, propagate_down, bottom)

    monkeypatch.setattr(Accuracy, "backward", spy)
    forward_us, backward_us = benchmark("tiny_lenet.prototxt", 2, "TEST", 0, [""], NullLogger())
    assert calls == [[False, False]] * 2
    layers = len(caffe.Net("tiny_lenet.prototxt", caffe.TEST).layers)          # 12, the two Splits included
    assert len(forward_us) == len(backward_us) == layers == 12 and all(isinstance(t, int) for t in forward_us)


def test_bad_phase_and_missing_model(solvers):
    code, err = cu_time("--model", "tiny_lenet.prototxt", "--phase", "VAL")
    assert code == 2 and "Invalid value for '--phase'" in err
    code, err = cu_time("--model", "none.prototxt")
    assert (code, err.splitlines()[-1]) == (1, "error: none.prototxt: no such file (NetParameter prototxt)")


def test_sweeps_are_for_cu_test_only():
    code, err = cu_time("--model", "m.prototxt", "--freq", "200:300:10")
    assert (code, err) == (1, "error: --freq: sweeps (200:300:10) are for cu-test; give a single value\n")

