"""Caffe's SGDSolver (solvers/sgd_solver.cpp): ApplyUpdate for every solver, and the momentum SGD rule.

ApplyUpdate (caffe.md §4.2, §4.4): rate = GetLearningRate(); clip all diffs by their global L2 norm; per param
divide by iter_size, add weight decay (L2: wd*decay_mult*w, L1: wd*decay_mult*sign(w)), ComputeUpdateValue;
then w -= diff and iter += 1. Everything is float32 and in place: the diff ends up holding the update.
"""
import numpy as np

from ..errors import CaffeUnstableError
from ..log import format_value as _fmt
from ..net.net import Net
from . import lr_policy
from .blas import axpby, fused_axpy, sgd_update
from .base import Solver

f32 = np.float32


class SGDSolver(Solver):
    """Momentum SGD: h = momentum*h + lr*g; update = h (sgd_solver.cpp:224-254)."""

    type = "SGD"

    def check_param(self):
        super().check_param()
        lr_policy.check(self.param, self.where)
        if self.param.regularization_type not in ("L1", "L2"):
            raise CaffeUnstableError(self.where("regularization_type"), "Unknown regularization type: "
                                                                        f"{self.param.regularization_type} "
                                                                        "(known types: L1, L2)")

    def pre_solve(self):
        """SGDSolver::PreSolve: zero history per learnable param (twice for AdaDelta/Adam), plus work buffers."""
        shapes = [blob.shape for blob in self.net.learnable_params]
        self.history = [np.zeros(s, f32) for _ in range(self.history_sets) for s in shapes]
        self._update = [np.zeros(s, f32) for s in shapes]
        self._temp = [np.zeros(s, f32) for s in shapes]

    @property
    def lr(self):
        """pycaffe's SGDSolver.lr: the current learning rate (GetLearningRate)."""
        return float(self.get_learning_rate())

    def get_learning_rate(self):
        rate, self.current_step, advanced = lr_policy.learning_rate(self.param, self.iter, self.current_step)
        if advanced:
            self.log.info(f"MultiStep Status: Iteration {self.iter}, step = {self.current_step}", "sgd_solver.cpp:50")
        return rate

    def apply_update(self):
        """SGDSolver::ApplyUpdate."""
        p = self.param
        rate = self.get_learning_rate()
        if p.display and self.iter % p.display == 0:
            self.log.info(f"Iteration {self.iter}, lr = {_fmt(rate)}", "sgd_solver.cpp:112")
        self.clip_gradients()
        if self._fused_update():
            # plain momentum SGD with L2 decay: one pass per param does regularize, the update and Net::Update
            for i, blob in enumerate(self.net.learnable_params):
                self.normalize(i)
                local_decay = f32(p.weight_decay) * f32(self.net.params_weight_decay[i])
                sgd_update(blob.data, blob.diff, self.history[i], local_decay, self.local_rate(i, rate),
                           p.momentum)
        else:
            for i in range(len(self.net.learnable_params)):
                self.normalize(i)
                self.regularize(i)
                self.compute_update_value(i, rate)
            self.net.update()
        self.iter += 1

    def _fused_update(self):
        """Whether apply_update may fuse its per-param steps (sgd_update): this class's rule and L2 decay."""
        cls = type(self)
        return (cls.compute_update_value is SGDSolver.compute_update_value and cls.regularize is SGDSolver.regularize
                and type(self.net).update is Net.update and self.param.regularization_type == "L2")

    def clip_gradients(self):
        """Scale all diffs by clip/||g|| when the L2 norm of all accumulated diffs exceeds `clip_gradients`."""
        clip = f32(self.param.clip_gradients)
        if clip < 0:
            return
        params = self.net.learnable_params
        sumsq = f32(0)
        for blob in params:
            d = blob.diff.reshape(-1)
            sumsq += f32(np.dot(d, d))       # Blob::sumsq_diff (BLAS sdot), summed in float
        norm = np.sqrt(sumsq)
        if norm > clip:
            scale = clip / norm
            self.log.info(f"Gradient clipping: scaling down gradients (L2 norm {_fmt(norm)} > {_fmt(clip)}) "
                          f"by scale factor {_fmt(scale)}", "sgd_solver.cpp:99")
            for blob in params:
                blob.diff *= scale

    def normalize(self, i):
        """Undo the accumulation over iter_size passes: diff *= 1/iter_size (only when iter_size > 1)."""
        if self.param.iter_size == 1:
            return
        self.net.learnable_params[i].diff *= f32(1) / f32(self.param.iter_size)

    def regularize(self, i):
        """diff += local_decay * w (L2) or local_decay * sign(w) (L1); local_decay = weight_decay * decay_mult."""
        local_decay = f32(self.param.weight_decay) * f32(self.net.params_weight_decay[i])
        if not local_decay:
            return
        blob = self.net.learnable_params[i]
        if self.param.regularization_type == "L2":
            fused_axpy(local_decay, blob.data, blob.diff)     # caffe_axpy: OpenBLAS saxpy, one rounding
        else:
            temp = self._temp[i]
            np.sign(blob.data, out=temp)    # caffe_cpu_sign: sign(0) = 0; the product by +-1 is exact
            temp *= local_decay
            blob.diff += temp

    def local_rate(self, i, rate):
        return f32(rate * f32(self.net.params_lr[i]))

    def compute_update_value(self, i, rate):
        """h = momentum*h + local_rate*g (caffe_cpu_axpby); diff = h."""
        g = self.net.learnable_params[i].diff
        h = self.history[i]
        axpby(self.local_rate(i, rate), g, f32(self.param.momentum), h)
        np.copyto(g, h)
