"""Caffe's learning-rate policies: SGDSolver::GetLearningRate (sgd_solver.cpp:27-70), caffe.md §4.3.

The hyper-parameters are float32 fields, and the arithmetic follows the C++ types exactly, because the
golden trajectories are bit-exact: `pow(float, int)` (step, exp, multistep) promotes to double and the
product is rounded to float; `inv` and `poly` call `powf`, `sigmoid` calls `expf`.
"""
import numpy as np

from ..errors import CaffeUnstableError

POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")

f32 = np.float32


def check(param, where_of):
    """Refuse what GetLearningRate would abort on, before training starts (Caffe aborts at the first update).

    `where_of(field)` names the place of a solver field in error messages.
    """
    policy = param.lr_policy
    if policy not in POLICIES:
        shown = policy if policy else '""'
        raise CaffeUnstableError(where_of("lr_policy"), f"Unknown learning rate policy: {shown} "
                                                        f"(known policies: {', '.join(POLICIES)})")
    if policy in ("step", "exp", "inv", "multistep", "sigmoid") and f32(param.gamma) < 0:
        raise CaffeUnstableError(where_of("gamma"), f"lr_policy \"{policy}\" needs gamma >= 0 "
                                                    f"(got {_show(param.gamma)})")
    if policy in ("step", "sigmoid") and param.stepsize <= 0:
        raise CaffeUnstableError(where_of("stepsize"), f"lr_policy \"{policy}\" needs stepsize > 0 "
                                                       f"(got {param.stepsize})")
    if policy == "poly" and param.max_iter <= 0:
        raise CaffeUnstableError(where_of("max_iter"), f"lr_policy \"poly\" needs max_iter > 0 "
                                                       f"(got {param.max_iter})")


def learning_rate(param, it, current_step):
    """(rate as float32, new current_step, multistep advanced?) for `it` completed updates."""
    policy = param.lr_policy
    base_lr = f32(param.base_lr)
    gamma = f32(param.gamma)
    advanced = False
    if policy == "fixed":
        rate = base_lr
    elif policy == "step":
        current_step = it // param.stepsize
        rate = _times_int_power(base_lr, gamma, current_step)
    elif policy == "exp":
        rate = _times_int_power(base_lr, gamma, it)
    elif policy == "inv":
        # pow(Dtype(1) + gamma * iter, -power): all float, powf
        rate = base_lr * np.power(f32(1) + gamma * f32(it), -f32(param.power))
    elif policy == "multistep":
        # advances at most one step per call, as Caffe's `if` (not `while`)
        if current_step < len(param.stepvalue) and it >= param.stepvalue[current_step]:
            current_step += 1
            advanced = True
        rate = _times_int_power(base_lr, gamma, current_step)
    elif policy == "poly":
        rate = base_lr * np.power(f32(1) - f32(it) / f32(param.max_iter), f32(param.power))
    elif policy == "sigmoid":
        rate = base_lr * (f32(1) / (f32(1) + np.exp(-gamma * (f32(it) - f32(param.stepsize)))))
    else:
        raise CaffeUnstableError("lr_policy", f"Unknown learning rate policy: {policy}")
    return f32(rate), current_step, advanced


def _times_int_power(base_lr, gamma, k):
    """base_lr * pow(gamma, k) with C++'s promotion: the power and the product in double, then float."""
    return f32(float(base_lr) * float(gamma) ** int(k))


def _show(value):
    return "%g" % float(f32(value))
