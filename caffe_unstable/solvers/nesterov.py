"""Caffe's NesterovSolver (solvers/nesterov_solver.cpp:14-41)."""
import numpy as np

from .blas import axpby
from .sgd import SGDSolver

f32 = np.float32


class NesterovSolver(SGDSolver):
    """h_old = h; h = momentum*h + lr*g; update = (1+momentum)*h - momentum*h_old."""

    type = "Nesterov"

    def compute_update_value(self, i, rate):
        g = self.net.learnable_params[i].diff
        h, h_old = self.history[i], self._update[i]
        momentum = f32(self.param.momentum)
        np.copyto(h_old, h)
        axpby(self.local_rate(i, rate), g, momentum, h)
        axpby(f32(1) + momentum, h, -momentum, h_old)   # step back, then over-step
        np.copyto(g, h_old)
