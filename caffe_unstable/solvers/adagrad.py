"""Caffe's AdaGradSolver (solvers/adagrad_solver.cpp:14-50)."""
import numpy as np

from ..errors import CaffeUnstableError
from .blas import powx
from .sgd import SGDSolver

f32 = np.float32


class AdaGradSolver(SGDSolver):
    """h += g^2; update = lr * g / (sqrt(h) + delta). Momentum must be 0 (sgd_solvers.hpp)."""

    type = "AdaGrad"

    def check_param(self):
        super().check_param()
        if self.param.momentum != 0:
            raise CaffeUnstableError(self.where("momentum"), "Momentum cannot be used with AdaGrad.")

    def compute_update_value(self, i, rate):
        g = self.net.learnable_params[i].diff
        h, update = self.history[i], self._update[i]
        powx(g, 2, update)
        h += update
        adaptive_step(g, h, f32(self.param.delta), self.local_rate(i, rate), update)


def adaptive_step(g, h, delta, local_rate, update):
    """g = local_rate * g / (sqrt(h) + delta), the common tail of AdaGrad and RMSProp."""
    powx(h, 0.5, update)
    update += delta
    np.divide(g, update, out=update)
    np.multiply(update, local_rate, out=g)         # caffe_cpu_axpby(local_rate, update, 0, diff)
