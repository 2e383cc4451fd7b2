"""The numba backend: PipeCNN simulated bit for bit on the CPU (pipecnn.md §10), `cache=True` kernels.

Device memory is a dict of NumPy buffers per slot, in PipeCNN's layouts (accel/layouts.py). A clean conv launch
runs the exact GEMM path (conv.py), or the register-level MAC-order loop (mac.py) when it asks for path="mac"; both
give identical clean results (tested on every layer of the nets). A launch with a fault plan goes through
plan_conv.py, which picks the path per output (GEMM plus exact corrections, or the register loop).
"""
import numpy as np

from .... import errors
from ... import layouts, lrn_table
from ...geometry import check_events
from ...interface import Backend
from ...quant import bias_term, fixed_range
from . import conv, fixed, mac_run, plan_conv, pool_lrn
from .threads import split


class NumbaBackend(Backend):
    name = "numba"

    def __init__(self, hw):
        super().__init__(hw)
        self.mem = {}
        self._scratch = {}
        self._bounds = {}

    # -- float <-> fixed --------------------------------------------------------------------------------------
    def float_to_fixed(self, x, frac, bits=8):
        x = np.ascontiguousarray(x, np.float32)
        out = np.empty(x.shape, np.int8)
        lo, hi = fixed_range(bits)
        split(fixed.float_to_fixed_flat, x.size, x.size, x.reshape(-1), float(np.ldexp(1.0, int(frac))), lo, hi,
              out.reshape(-1))
        return out

    def fixed_to_float(self, q, frac, out=None):
        q = np.ascontiguousarray(q, np.int8)
        if out is None:
            out = np.empty(q.shape, np.float32)
        split(fixed.fixed_to_float_flat, q.size, q.size, q.reshape(-1), float(np.ldexp(1.0, -int(frac))),
              out.reshape(-1))
        return out

    # -- layouts ------------------------------------------------------------------------------------------------
    def data_layout_reorder(self, q, kind, geom=None):
        if kind == "activations":
            return layouts.activations_reorder(q, self.hw.vec_size)
        return layouts.reorder(q, kind, geom)

    def data_layout_recover(self, dev, kind, geom=None, channels=None):
        return layouts.recover(dev, kind, geom, channels)

    # fused forms of float_to_fixed + data_layout_reorder and data_layout_recover + fixed_to_float (hot paths)
    def input_from_float(self, x, frac, geom):
        x = np.ascontiguousarray(x, np.float32).reshape(geom.N, geom.C, geom.H, geom.W)
        out = np.empty((geom.N, geom.group, geom.Cb, geom.H, geom.W, geom.vec), np.int8)
        split(fixed.float_to_conv_input, geom.N * geom.group * geom.Cb, out.size, x,
              float(np.ldexp(1.0, int(frac))), geom.group, out)
        return out

    def activations_from_float(self, x, frac):
        x = np.ascontiguousarray(x, np.float32)
        n, c, h, w = x.shape
        vec = self.hw.vec_size
        out = np.empty((n, -(-c // vec), h, w, vec), np.int8)
        split(fixed.float_to_activations, n * out.shape[1], out.size, x, float(np.ldexp(1.0, int(frac))), out)
        return out

    def float_from_activations(self, dev, frac, out):
        """Device activations -> float32 NCHW `out` (its channel count), q 2^-frac."""
        split(fixed.activations_to_float, out.shape[0] * out.shape[1], out.size, dev,
              float(np.ldexp(1.0, -int(frac))), out)
        return out

    def quantizes_to(self, x, q, frac, bits=8):
        """Whether float_to_fixed(x, frac, bits) == q, in one pass (the weight-change check; threaded, early
        exit): the accelerator only needs new weights when their quantised values change."""
        if x.shape != q.shape:
            return False
        x, q = np.ascontiguousarray(x, np.float32).reshape(-1), np.ascontiguousarray(q, np.int8).reshape(-1)
        if not -126 <= frac <= 127:
            return np.array_equal(self.float_to_fixed(x, frac, bits), q)   # 2^frac is not a normal float32
        bounds = self._bounds.get(bits)
        if bounds is None:
            bounds = self._bounds[bits] = fixed.rounding_bounds(*fixed_range(bits))
        flag = np.ones(1, np.int64)
        split(fixed.same_fixed, x.size, x.size // 4, x, q, np.float32(np.ldexp(1.0, int(frac))), *bounds, flag)
        return bool(flag[0])

    def _scratch_buffer(self, key, shape, dtype):
        """A reusable buffer (grow-only per key and dtype)."""
        size = int(np.prod(shape))
        buf = self._scratch.get((key, dtype))
        if buf is None or buf.size < size:
            buf = self._scratch[(key, dtype)] = np.empty(max(size, 1), dtype)
        return buf[:size].reshape(shape)

    # -- device memory and launches ---------------------------------------------------------------------------
    def data_to_fpga(self, slot, **buffers):
        mem = self.mem.setdefault(slot, {})
        for key, value in buffers.items():
            mem[key] = value

    def data_from_fpga(self, slot):
        mem = self.mem.get(slot, {})
        return {k: mem[k] for k in ("conv", "pool", "lrn") if k in mem}

    def launch_accelerator(self, launch):
        mem = self.mem.get(launch.slot)
        if mem is None or "input" not in mem:
            raise errors.CaffeUnstableError(launch.slot, "launch_accelerator: no input on the device "
                                                         "(call data_to_fpga first)")
        for key in ("conv", "pool", "lrn"):
            mem.pop(key, None)
        cur = mem["input"]
        if launch.conv is not None:
            cur = mem["conv"] = self._conv(mem, launch)
        if launch.pool is not None:
            p = launch.pool
            out = np.zeros((cur.shape[0], cur.shape[1], p.Ho, p.Wo, cur.shape[4]), np.int8)
            split(pool_lrn.max_pool, out.shape[0] * out.shape[1] * p.Ho, out.size * p.kernel_h * p.kernel_w, cur,
                  p.kernel_h, p.kernel_w, p.stride_h, p.stride_w, p.pad_h, p.pad_w, out)
            cur = mem["pool"] = out
        if launch.lrn is not None:
            out = np.zeros(cur.shape, np.int8)
            split(pool_lrn.lrn, out.shape[0] * out.shape[2], out.size * 8, cur, launch.lrn.C, -launch.lrn.frac_in,
                  self.hw.lrn_overflow == "clamp", lrn_table.X_SAMPLE, lrn_table.H_INV, lrn_table.COEF1,
                  lrn_table.COEF0, out)
            mem["lrn"] = out
        return launch

    def _conv(self, mem, launch):
        stage = launch.conv
        g = stage.geom
        wdev = mem["weights"]
        if g.vec != self.hw.vec_size or g.lane != self.hw.lane_num or g.pipe != self.hw.pipe_depth:
            raise errors.CaffeUnstableError(launch.slot, "launch_accelerator: geometry built for another "
                                                         "VEC/LANE/PIPE_DEPTH than this accelerator's")
        out = np.zeros((g.N, g.Ob, g.Ho, g.Wo, g.vec), np.int8)
        plan, legacy = launch.plan, False
        if launch.events is not None and len(launch.events):
            check_events(launch.events, g, self.hw)
            legacy = plan is None          # the older shorthand keeps its routing: the MAC-order loop
            plan = plan_conv.legacy_plan(launch.events) if legacy else plan_conv.with_events(plan, launch.events)
        if plan is not None and (not plan.is_empty() or launch.path == "mac"):
            launch.stats.update(plan_conv.PlanConv(self, mem, launch, plan, legacy).run(out))
            return out
        rb = self.bias_terms(mem, stage)
        mask = self._saturation_mask(g) if launch.clean_saturation else None
        if launch.path == "mac":
            mac_run.conv_mac_order(mem["input"], wdev, rb, stage, self.hw, out)
            if mask is not None:
                self.clean_pass(mem, stage, conv.SaturationReader(mask, stage.fmt.n))
        else:
            reader = conv.SaturationReader(mask, stage.fmt.n) if mask is not None else None
            conv.conv_fast(mem["input"], self.conv_weights(mem, wdev, g), rb, stage, out, launch.sums_hook,
                           self._scratch_buffer, reader)
        if mask is not None:
            launch.stats["clean_saturated"] = mask.reshape(g.N, g.O, g.Ho, g.Wo).view(bool)
        launch.stats["path"] = "mac" if launch.path == "mac" else "fast"
        return out

    # -- helpers of conv launches (plan_conv.py uses them too) ------------------------------------------------
    @staticmethod
    def bias_terms(mem, stage):
        """rb of the output conversion from the slot's device bias (zeros without one)."""
        g = stage.geom
        bdev = mem.get("bias") if stage.has_bias else None
        if bdev is None:
            return np.zeros(g.O, np.int64)
        return bias_term(layouts.bias_recover(bdev, g).astype(np.int64), stage.fmt.m)

    @staticmethod
    def conv_weights(mem, wdev, g):
        """The GEMM form of device weights wdev, cached for the slot's weights."""
        cached = mem.get("_weights")
        if cached is None or not cached.matches(wdev, g):
            cached = conv.ConvWeights(wdev, g)
            if wdev is mem.get("weights"):
                mem["_weights"] = cached
        return cached

    @staticmethod
    def _saturation_mask(g):
        return np.zeros((g.N, g.O, g.Ho * g.Wo), np.uint8)

    def clean_pass(self, mem, stage, reader=None):
        """The slot's fault-free layer once more, from its clean device buffers (device activations); `reader`
        sees its sums (conv_fast's sums_reader). For what a faulty launch cannot see: the clean outputs under
        memory faults, the clean saturation of register-loop outputs."""
        g = stage.geom
        out = np.zeros((g.N, g.Ob, g.Ho, g.Wo, g.vec), np.int8)
        conv.conv_fast(mem["input"], self.conv_weights(mem, mem["weights"], g), self.bias_terms(mem, stage), stage,
                       out, None, self._scratch_buffer, reader)
        return out

BACKEND = NumbaBackend
