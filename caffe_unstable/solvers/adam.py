"""Caffe's AdamSolver (solvers/adam_solver.cpp:26-75)."""
import math

import numpy as np

from .blas import axpby, powx
from .sgd import SGDSolver

f32 = np.float32


class AdamSolver(SGDSolver):
    """m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g^2; update = lr*corr * m / (sqrt(v) + eps),
    corr = sqrt(1 - b2^t) / (1 - b1^t), t = iter + 1. Weight decay is plain L2 in g (not AdamW).

    History: the first N blobs hold m, the next N v.
    """

    type = "Adam"
    history_sets = 2

    def compute_update_value(self, i, rate):
        n = len(self.net.learnable_params)
        g = self.net.learnable_params[i].diff
        m, v = self.history[i], self.history[n + i]
        temp = self._temp[i]
        beta1, beta2 = f32(self.param.momentum), f32(self.param.momentum2)
        t = self.iter + 1
        # pow(float, int) promotes to double; the whole correction is double, then stored as float
        correction = f32(math.sqrt(1.0 - float(beta2) ** t) / (1.0 - float(beta1) ** t))
        axpby(f32(1) - beta1, g, beta1, m)      # 1 - 0.9f, 1 - 0.999f in float (0.00099998713)
        np.multiply(g, g, out=temp)
        axpby(f32(1) - beta2, temp, beta2, v)
        powx(v, 0.5, temp)
        temp += f32(self.param.delta)
        np.divide(m, temp, out=temp)
        np.multiply(temp, self.local_rate(i, rate) * correction, out=g)
