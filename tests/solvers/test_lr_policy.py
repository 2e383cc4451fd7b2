"""Caffe's learning-rate policies (sgd_solver.cpp:27-70): the golden logs' `Iteration N, lr = ...` lines,
known values, and the checks Caffe aborts on."""
import re

import numpy as np
import pytest

from caffe_unstable.errors import CaffeUnstableError
from caffe_unstable.io import prototxt as pt
from caffe_unstable.log import format_value
from caffe_unstable.proto import caffe_pb2
from caffe_unstable.solvers import lr_policy

from .golden_runs import GOLDEN_SOLVERS, solver_cases


def _param(**fields):
    param = caffe_pb2.SolverParameter(**fields)
    return param


def _rates(param, iterations):
    step, out = 0, []
    for it in iterations:
        rate, step, _ = lr_policy.learning_rate(param, it, step)
        out.append(rate)
    return out


@pytest.mark.parametrize("name", solver_cases())
def test_logged_rates_are_caffes(name, shared):
    """Every `lr = ` Caffe printed (float32 values, %g) comes out of our policy digit for digit, and multistep
    advances exactly where Caffe logged `MultiStep Status`."""
    param = pt.read_solver_text(str(GOLDEN_SOLVERS / f"{name}.solver.prototxt"))
    log = (GOLDEN_SOLVERS / "logs" / f"{name}.log").read_text()
    logged = [(int(i), v) for i, v in re.findall(r"\] Iteration (\d+), lr = (\S+)", log)]
    steps = {int(i): int(s) for i, s in re.findall(r"MultiStep Status: Iteration (\d+), step = (\d+)", log)}
    assert len(logged) == param.max_iter
    current_step, advanced_at = 0, {}
    for it, text in logged:
        rate, current_step, advanced = lr_policy.learning_rate(param, it, current_step)
        assert rate.dtype == np.float32
        assert format_value(rate) == text, f"iteration {it}"
        if advanced:
            advanced_at[it] = current_step
    assert advanced_at == steps


def test_known_values():
    f32 = np.float32
    step = _param(lr_policy="step", base_lr=0.01, gamma=0.5, stepsize=7)
    assert _rates(step, [0, 6, 7, 14, 21]) == [f32(0.01), f32(0.01), f32(0.005), f32(0.0025), f32(0.00125)]
    exp = _param(lr_policy="exp", base_lr=0.01, gamma=0.95)
    # pow(float, int) in double, then the product rounded once to float
    assert _rates(exp, [3]) == [f32(float(f32(0.01)) * float(f32(0.95)) ** 3)]
    inv = _param(lr_policy="inv", base_lr=0.01, gamma=1e-4, power=0.75)
    assert _rates(inv, [100])[0] == pytest.approx(0.01 * (1 + 1e-4 * 100) ** -0.75, rel=1e-6)
    poly = _param(lr_policy="poly", base_lr=0.05, power=1.5, max_iter=20)
    assert _rates(poly, [0, 20]) == [f32(0.05), f32(0)]
    sigmoid = _param(lr_policy="sigmoid", base_lr=0.02, gamma=0.5, stepsize=10)
    assert _rates(sigmoid, [10]) == [f32(0.01)]
    fixed = _param(lr_policy="fixed", base_lr=0.3)
    assert _rates(fixed, [0, 1000]) == [f32(0.3), f32(0.3)]


def test_multistep_advances_one_step_per_iteration():
    """Caffe tests `if`, not `while`: a solver resumed past two stepvalues catches up one step per iteration."""
    param = _param(lr_policy="multistep", base_lr=1.0, gamma=0.1, stepvalue=[5, 12])
    rate, step, advanced = lr_policy.learning_rate(param, 30, 0)
    assert (step, advanced) == (1, True) and rate == np.float32(0.1)
    rate, step, advanced = lr_policy.learning_rate(param, 31, step)
    assert (step, advanced) == (2, True) and rate == np.float32(float(np.float32(0.1)) ** 2)
    assert lr_policy.learning_rate(param, 32, step)[1:] == (2, False)


@pytest.mark.parametrize("fields, message", [
    (dict(lr_policy="step", gamma=-0.5, stepsize=7), 'lr_policy "step" needs gamma >= 0 (got -0.5)'),
    (dict(lr_policy="exp", gamma=-1), 'lr_policy "exp" needs gamma >= 0 (got -1)'),
    (dict(lr_policy="inv", gamma=-1e-4), 'lr_policy "inv" needs gamma >= 0 (got -0.0001)'),
    (dict(lr_policy="multistep", gamma=-0.1), 'lr_policy "multistep" needs gamma >= 0 (got -0.1)'),
    (dict(lr_policy="sigmoid", gamma=-0.5, stepsize=1), 'lr_policy "sigmoid" needs gamma >= 0 (got -0.5)'),
    (dict(lr_policy="step", gamma=0.5), 'lr_policy "step" needs stepsize > 0 (got 0)'),
    (dict(lr_policy="cosine"), "Unknown learning rate policy: cosine (known policies: fixed, step, exp, inv, "
                               "multistep, poly, sigmoid)"),
    (dict(), 'Unknown learning rate policy: "" (known policies: fixed, step, exp, inv, multistep, poly, sigmoid)'),
])
def test_checks(fields, message):
    with pytest.raises(CaffeUnstableError) as err:
        lr_policy.check(_param(**fields), lambda field: f"s.prototxt ({field})")
    assert err.value.what == message


def test_negative_gamma_allowed_where_caffe_allows_it():
    """`poly` and `fixed` never look at gamma (Caffe checks it only for step, exp, inv, multistep, sigmoid)."""
    lr_policy.check(_param(lr_policy="poly", gamma=-1, power=1, max_iter=10), str)
    lr_policy.check(_param(lr_policy="fixed", gamma=-1), str)
