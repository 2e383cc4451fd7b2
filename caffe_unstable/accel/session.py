"""An opened accelerator: one backend, its build parameters, the quantisation table and the fault models, driven
through the seven-function interface in the paper's host order (pipecnn.md §6.2, §10.2):

    float_to_fixed -> data_layout_reorder -> data_to_fpga -> launch_accelerator -> data_from_fpga
                   -> data_layout_recover -> fixed_to_float

It works on arrays and geometry only (net/accel_bridge.py maps Caffe layers onto it). Weights are re-quantised and
re-sent only when their quantised values changed since the last upload (a solver update, copy_from, a new frac_w):
the same as re-quantising them before every forward, as ICT did (§10.4), at the cost of one read of the weights.

Faults (faults.md §2-§3): every forward pass begins with `begin_pass(phase, iteration, pass_)`; each accelerated
conv/FC layer then gets its LayerPlan, sampled on the host from the seed and that key (or taken from `fixed_plan`),
and the backend applies it. The pass's plan is `last_plan`, its per-layer counters `last_stats`.
"""
import time
from dataclasses import dataclass

import numpy as np

from .geometry import ConvStage
from .interface import Launch

PATHS = ("auto", "fast", "mac")
STE_MODES = ("clipped", "plain")
BACKWARD_WEIGHTS = ("master", "quantized")
STATS_FIELDS = ("images", "mac_flips", "masked", "outputs_changed", "outputs_saturated", "rate_events", "late_adds",
                "outputs_hit", "k_min", "k_mean", "weight_flips", "act_flips", "stuck_outputs_changed", "plan_ms",
                "layer_ms")


@dataclass
class BackwardState:
    """A conv/FC forward's record for its backward (faults.md §10.2): clean_saturated, bool (N, O, Ho, Wo) where
    the fault-free r1 left the int8 range (None: not known); input, the float32 input the launch consumed (None:
    the bottom blob holds it)."""

    clean_saturated: object
    input: object


class Accelerator:
    """`caffe_unstable.accel.open(...)`'s result; pass it as `caffe.Net(..., accel=acc)`.

    Attributes: `backend` (a interface.Backend), `hw` (HwConfig), `quant` (QuantTable or None; replace it freely),
    `profile` (faults.DeviceProfile or None), `freq_mhz`, `ser`, `seed` (the fault seed; drawn from OS entropy
    when faults are active and none was given: `seed_drawn` is then True), `models` (the active fault models),
    `fault_layers` (layer names that get faults; None = every accelerated conv/FC), `path` ("auto": the fastest
    exact path for the layer's plan, "fast", "mac": always the register-level MAC-order loop), `fixed_plan`
    (a faults.FaultPlan replayed on every forward; None = sample a fresh plan per forward), `last_plan`,
    `last_stats` (layer name -> the --fault-log fields of the latest forward), `last_hits` (layer name -> bool
    (N, O, Ho, Wo) of the outputs with a late carry-horizon add, where the backend ran the register loop),
    `fixed_events` (layer name ->
    MAC_EVENT_DTYPE records replayed on every forward: the older explicit-record hook), `ste` ("clipped": the
    backward cuts the gradient where the fault-free output saturated; "plain") and `backward_weights` ("master":
    bottom diffs use the float master weights; "quantized": the dequantized int8 weights), faults.md §10.2.
    """

    def __init__(self, backend, quant=None, seed=None, profile=None, freq_mhz=None, ser=None, models=(),
                 fault_layers=None, horizon_k=None, backward_weights="master", ste="clipped"):
        self.backend = backend
        self.hw = backend.hw
        self.quant = quant
        self.profile = profile
        self.freq_mhz = freq_mhz
        self.ser = ser
        self.horizon_k = horizon_k
        self.models = list(models)
        self.fault_layers = None if fault_layers is None else list(fault_layers)
        self.backward_weights = backward_weights
        self.seed_drawn = False
        if seed is None and self.models:
            seed = int(np.random.SeedSequence().entropy % (1 << 63))    # logged, so a run can be repeated
            self.seed_drawn = True
        self.seed = seed
        self.path = "auto"
        self.fixed_plan = None
        self.last_plan = None
        self.fixed_events = {}
        self.last_stats = {}
        self.last_hits = {}          # layer name -> bool (N, O, Ho, Wo): outputs with a late add (carry horizon)
        self._pass = None            # the current pass's rng.PassKey (None: no faults are sampled)
        self._uploaded = {}          # slot -> (int8 weights, int8 bias or None, format/shape key) on the device
        self.backward_state = {}     # slot -> BackwardState of the latest forward that kept one
        self.ste = ste
        self._geometry = {}          # slot -> (ConvGeometry, faults geometry dict)

    @property
    def faulty(self):
        """Whether forwards carry faults (sampled models or a fixed plan)."""
        return bool(self.models) or self.fixed_plan is not None or bool(self.fixed_events)

    def begin_pass(self, phase=1, iteration=0, pass_=0):
        """Start one forward pass (faults.md §3.1 key: phase, iteration, pass_): a fresh `last_plan`/`last_stats`."""
        from .faults import FaultPlan, PassKey

        self.last_stats, self.last_hits = {}, {}
        if self.fixed_plan is not None:
            self._pass = None
            self.last_plan = self.fixed_plan
            return
        if not self.models:
            self._pass, self.last_plan = None, None
            return
        if int(phase) == 0 and int(pass_) == 0:
            # every TRAIN iteration re-sends the re-quantized weights (faults.md §6.1, §10.1): DDR upsets are gone
            for model in self.models:
                if hasattr(model, "upload"):
                    model.upload()
        self._pass = PassKey(self.seed, int(phase), int(iteration), int(pass_))
        self.last_plan = FaultPlan(seed=self.seed, phase=int(phase), iteration=int(iteration), pass_=int(pass_),
                                   freq_mhz=self.freq_mhz, ser=float(self.ser or self._profile_ser()),
                                   profile=self.profile.describe() if self.profile is not None else "")

    def _profile_ser(self):
        return self.profile.soft_errors["mac_flip_rate"] if self.profile is not None else 0.0

    def fault_geometry(self, slot, geom):
        """The faults.md §1.1 geometry dict of a conv/FC launch (cached per slot and shape)."""
        cached = self._geometry.get(slot)
        if cached is None or cached[0] != geom:
            from .faults import geometry_from

            hw = self.hw
            cached = self._geometry[slot] = (geom, geometry_from(geom, (hw.width_product, hw.width_accumulator,
                                                                          hw.width_final)))
        return cached[1]

    def layer_plan(self, slot, layer_index, geom):
        """This pass's LayerPlan for a conv/FC layer (None = clean): replayed, or sampled from the pass key."""
        if self.fixed_plan is not None:
            lp = self.fixed_plan.layer(slot)
            if lp is None and layer_index is not None and layer_index >= 0:
                lp = self.fixed_plan.layer(layer_index)
            if lp is not None:
                lp.validate(self.fault_geometry(slot, geom), geom.N)
            return lp
        events = self.fixed_events.get(slot)
        if events is not None:
            from .faults.plan import LayerPlan

            return LayerPlan(-1 if layer_index is None else layer_index, slot, mac_events=events)
        if self._pass is None or (self.fault_layers is not None and slot not in self.fault_layers):
            return None
        from .faults.plan import LayerOp, LayerPlan
        from .faults.sampler import merge

        geometry = self.fault_geometry(slot, geom)
        index = -1 if layer_index is None else int(layer_index)
        op = LayerOp(index, slot, geom.N)
        lp = LayerPlan(index, slot, geometry)
        for model in self.models:
            merge(lp, model.plan(op, geometry, self._pass))
        if lp.is_empty():
            return None
        self.last_plan.batch = geom.N
        self.last_plan.layers.append(lp)
        return lp

    def events_for(self, layer_name):
        """The MAC fault records of this forward for a layer (None = clean)."""
        lp = self.fixed_plan.layer(layer_name) if self.fixed_plan is not None else None
        return lp.mac_events if lp is not None else self.fixed_events.get(layer_name)

    @property
    def name(self):
        return self.backend.name

    def __repr__(self):
        return (f"<caffe_unstable accelerator {self.name}: VEC_SIZE {self.hw.vec_size}, LANE_NUM {self.hw.lane_num}, "
                f"PIPE_DEPTH {self.hw.pipe_depth}, lrn_overflow {self.hw.lrn_overflow}>")

    # -- one layer each (the bridge's calls) ------------------------------------------------------------------
    def conv(self, slot, x, w, b, geom, fmt, relu, out, layer_index=None, keep=False, input_exact=False):
        """Conv/FC: float32 x (N, C, H, W), float32 weights (O, Cg, Kh, Kw) and bias (O,) or None -> float32
        out (N, O, Ho, Wo) = q 2^-frac_dout, under this pass's fault plan for the layer. Returns the Launch.
        keep: remember what the layer's backward needs (faults.md §10.2) in `backward_state[slot]`; input_exact:
        x already holds q 2^-frac_din (an accelerated producer), so the consumed input is x itself unless
        activation-memory faults changed it."""
        be = self.backend
        t0 = time.perf_counter()
        plan = self.layer_plan(slot, layer_index, geom) if self.faulty else None
        t1 = time.perf_counter()
        self._upload_weights(slot, w, b, geom, fmt)
        if hasattr(be, "input_from_float"):
            xdev = be.input_from_float(x, fmt.frac_din, geom)
        else:
            xdev = be.data_layout_reorder(be.float_to_fixed(x, fmt.frac_din), "input", geom)
        be.data_to_fpga(slot, input=xdev)
        path = self.path if self.path in PATHS else "auto"
        launch = be.launch_accelerator(Launch(slot, conv=ConvStage(geom, fmt, relu, b is not None),
                                              plan=plan, path=path, clean_saturation=keep))
        self._read_back(slot, "conv", geom.O, fmt.frac_dout, out)
        if keep:
            self.backward_state[slot] = self._backward_state(launch, x, xdev, geom, fmt, input_exact)
        else:
            self.backward_state.pop(slot, None)
        self.last_stats[slot] = layer_stats(launch.stats, plan, geom.N, (t1 - t0) * 1e3,
                                            (time.perf_counter() - t0) * 1e3)
        if launch.stats.get("hit_mask") is not None:
            self.last_hits[slot] = launch.stats["hit_mask"]
        return launch

    def _backward_state(self, launch, x, xdev, geom, fmt, input_exact):
        """What faults.md §10.2's backward of a conv/FC needs from its forward: the clean-saturation mask (the
        clipped straight-through cut) and the input the launch consumed, as float32 NCHW (None when it is x)."""
        be = self.backend
        consumed = launch.stats.pop("input_consumed", None)
        if consumed is None and input_exact:
            inp = None
        else:
            q = be.data_layout_recover(xdev if consumed is None else consumed, "input", geom)
            inp = be.fixed_to_float(q, fmt.frac_din).reshape(x.shape)
        return BackwardState(launch.stats.pop("clean_saturated", None), inp)

    def backward_weights_of(self, slot, shape):
        """The dequantized int8 weights on the device for slot (backward_weights="quantized"), float32 `shape`."""
        wq, _, key = self._uploaded[slot]
        return self.backend.fixed_to_float(wq, key[0]).reshape(shape)

    def pool(self, slot, x, frac, stage, out):
        """Max pooling of float32 x holding q 2^-frac (or any float: it is quantised at frac) -> out, same frac."""
        self._send_activations(slot, x, frac)
        self.backend.launch_accelerator(Launch(slot, pool=stage))
        self._read_back(slot, "pool", stage.C, frac, out)

    def lrn(self, slot, x, stage, out):
        """PipeCNN's LRN of float32 x holding q 2^-stage.frac_in -> out holding integers (fraction 0)."""
        self._send_activations(slot, x, stage.frac_in)
        self.backend.launch_accelerator(Launch(slot, lrn=stage))
        self._read_back(slot, "lrn", stage.C, 0, out)

    # -- host side of the interface ---------------------------------------------------------------------------
    def _upload_weights(self, slot, w, b, geom, fmt):
        """float_to_fixed -> data_layout_reorder -> data_to_fpga for the weights and bias, unless their quantised
        values are those already on the device (checked in one pass over the float weights)."""
        key = (fmt.frac_w, fmt.w_bits, geom.vec, geom.lane, geom.O, geom.group, w.shape, b is None)
        done = self._uploaded.get(slot)
        be = self.backend
        if done is not None and done[2] == key and self._quantizes_to(w, done[0], fmt) and (
                b is None or self._quantizes_to(b, done[1], fmt)):
            return
        wq = be.float_to_fixed(w, fmt.frac_w, fmt.w_bits)
        buffers = {"weights": be.data_layout_reorder(wq, "weights", geom)}
        bq = None
        if b is not None:
            bq = be.float_to_fixed(b, fmt.frac_w, fmt.w_bits)    # the bias shares the weights' format (§1.2)
            buffers["bias"] = be.data_layout_reorder(bq, "bias", geom)
        be.data_to_fpga(slot, **buffers)
        self._uploaded[slot] = (wq, bq, key)

    def _quantizes_to(self, x, q, fmt):
        be = self.backend
        if hasattr(be, "quantizes_to"):
            return be.quantizes_to(x, q, fmt.frac_w, fmt.w_bits)
        return np.array_equal(be.float_to_fixed(x, fmt.frac_w, fmt.w_bits), q)

    def _send_activations(self, slot, x, frac):
        be = self.backend
        if hasattr(be, "activations_from_float"):
            dev = be.activations_from_float(x, frac)
        else:
            dev = be.data_layout_reorder(be.float_to_fixed(x, frac), "activations")
        be.data_to_fpga(slot, input=dev)

    def _read_back(self, slot, stage, channels, frac, out):
        be = self.backend
        dev = be.data_from_fpga(slot)[stage]
        out4 = out.reshape(out.shape[0], channels, -1, out.shape[-1]) if out.ndim == 4 else \
            out.reshape(out.shape[0], channels, 1, 1)
        if hasattr(be, "float_from_activations"):
            be.float_from_activations(dev, frac, out4)
        else:
            q = be.data_layout_recover(dev, "activations", channels=channels)
            out4[...] = be.fixed_to_float(q, frac)



def layer_stats(backend_stats, plan, images, plan_ms, layer_ms):
    """One layer's --fault-log fields (faults.md §10.4): the backend's counters, completed from the plan."""
    stats = {k: None for k in STATS_FIELDS}
    stats.update(images=images, mac_flips=0, masked=0, outputs_changed=0, outputs_saturated=0, rate_events=0,
                 late_adds=0, outputs_hit=0, weight_flips=0, act_flips=0, stuck_outputs_changed=0)
    if plan is not None:     # what only the backend can know stays None unless it reports it
        stats.update({k: None for k in ("outputs_changed", "outputs_saturated", "late_adds", "outputs_hit",
                                        "stuck_outputs_changed")})
        stats.update(mac_flips=int(len(plan.mac_events)), masked=int(plan.masked), rate_events=int(len(
            plan.rate_events)), weight_flips=int(len(plan.weight_events)), act_flips=int(len(plan.act_events)))
        stats["k_min"], stats["k_mean"] = horizon_summary(plan.timing)
    stats.update({k: v for k, v in backend_stats.items() if k in STATS_FIELDS})
    stats["path"] = backend_stats.get("path")
    stats["plan_ms"], stats["layer_ms"] = round(plan_ms, 3), round(layer_ms, 3)
    return stats


def horizon_summary(timing):
    """(k_min, k_mean) of a TimingPlan: over images and lanes for K_lane; for per-add jitter the smallest K with
    a positive probability and the expected K, E[K] = sum_j P(K > j) (faults.md §5.5), averaged over lanes."""
    if timing is None:
        return None, None
    if timing.K_lane is not None:
        k = np.asarray(timing.K_lane, np.float64)
        return int(k.min()), float(k.mean())
    cdf = np.asarray(timing.thresholds, np.float64) / 2.0 ** 32          # [LANE, 31]: P(K <= j)
    k_min = int(min((np.flatnonzero(row > 0)[0] if (row > 0).any() else 31) for row in cdf))
    return k_min, float(np.mean((1.0 - cdf).sum(axis=1)))
