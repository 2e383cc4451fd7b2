"""Caffe's AdaDeltaSolver (solvers/adadelta_solver.cpp:26-91)."""
import numpy as np

from .blas import axpby, powx
from .sgd import SGDSolver

f32 = np.float32


class AdaDeltaSolver(SGDSolver):
    """h = m*h + (1-m)*g^2; u = g*sqrt((h2+delta)/(h+delta)); h2 = m*h2 + (1-m)*u^2; update = lr*u.

    History: the first N blobs hold E[g^2], the next N E[dx^2] (h2, used BEFORE its own update).
    """

    type = "AdaDelta"
    history_sets = 2

    def compute_update_value(self, i, rate):
        n = len(self.net.learnable_params)
        g = self.net.learnable_params[i].diff
        h, h2 = self.history[i], self.history[n + i]
        update, temp = self._update[i], self._temp[i]
        momentum, delta = f32(self.param.momentum), f32(self.param.delta)
        powx(g, 2, update)
        axpby(f32(1) - momentum, update, momentum, h)
        np.add(h2, delta, out=update)                # delta + E[dx^2]
        np.add(h, delta, out=temp)                   # delta + E[g^2]
        np.divide(update, temp, out=update)
        powx(update, 0.5, update)
        g *= update                                  # the update before the rate
        powx(g, 2, update)
        axpby(f32(1) - momentum, update, momentum, h2)
        g *= self.local_rate(i, rate)
