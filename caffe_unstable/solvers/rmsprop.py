"""Caffe's RMSPropSolver (solvers/rmsprop_solver.cpp:14-51)."""
import numpy as np

from ..errors import CaffeUnstableError
from .adagrad import adaptive_step
from .blas import axpby, powx
from .sgd import SGDSolver

f32 = np.float32


class RMSPropSolver(SGDSolver):
    """h = rms_decay*h + (1-rms_decay)*g^2; update = lr * g / (sqrt(h) + delta)."""

    type = "RMSProp"

    def check_param(self):
        super().check_param()
        if self.param.momentum != 0:
            raise CaffeUnstableError(self.where("momentum"), "Momentum cannot be used with RMSProp.")
        if not 0 <= self.param.rms_decay < 1:
            raise CaffeUnstableError(self.where("rms_decay"), "rms_decay should lie between 0 and 1 "
                                                              f"(0 <= rms_decay < 1; got {self.param.rms_decay:g})")

    def compute_update_value(self, i, rate):
        g = self.net.learnable_params[i].diff
        h, update = self.history[i], self._update[i]
        rms_decay = f32(self.param.rms_decay)
        powx(g, 2, update)
        axpby(f32(1) - rms_decay, update, rms_decay, h)
        adaptive_step(g, h, f32(self.param.delta), self.local_rate(i, rate), update)
