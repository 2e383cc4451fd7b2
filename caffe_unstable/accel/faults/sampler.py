"""One forward pass's FaultPlan from a device profile and the operating point (faults.md §2, §7.3).

    models = models_for(profile, freq_mhz=260)              # or ser=1e-5, horizon_k=27
    plan = sample_plan(models, layers, batch, PassKey(seed, phase, iteration, pass_))

`layers` lists the accelerated conv/FC layers as (layer_index, layer_name, geometry) in net order; each model's
`plan(op, geometry, rng)` contributes its fields to the layer's LayerPlan. Layers with no fault are omitted.
The layers are sampled on the ops' threads, the largest first (every draw has its own stream, so the plan does
not depend on which thread draws what).
"""
import numpy as np

from ...errors import CaffeUnstableError
from ...ops.parallel import PARALLEL_MIN_FLOATS, in_parallel
from .carry_horizon import CarryHorizon
from .mac_flip import MacFlip
from .memory import MemoryFlips
from .plan import RECORD_FIELDS, FaultPlan, LayerOp, LayerPlan
from .rate import RateTiming
from .stuck_at import StuckAt


def models_for(profile, freq_mhz=None, ser=None, horizon_k=None):
    """The active fault models of `profile` (a DeviceProfile, or None = no faults) at clock freq_mhz (None = the
    safe clock) with `ser` overriding soft_errors.mac_flip_rate and `horizon_k` overriding timing.fixed_k."""
    if profile is None:
        if freq_mhz is not None or horizon_k is not None:
            raise CaffeUnstableError("accel", "a clock or horizon needs a device profile (profile=...)")
        return [MacFlip(ser)] if ser else []
    models = []
    t, soft, acc = profile.timing, profile.soft_errors, profile.accelerator
    if t["model"] == "carry_horizon" or horizon_k is not None:
        timing = dict(t)
        if horizon_k is not None:
            timing["fixed_k"] = horizon_k
        model = CarryHorizon.from_profile(timing, freq_mhz)
        if model.active():
            models.append(model)
    elif t["model"] == "rate" and freq_mhz is not None and freq_mhz > t["safe_mhz"]:
        models.append(RateTiming.from_profile(t, freq_mhz))
    rate = soft["mac_flip_rate"] if ser is None else ser
    if rate:
        models.append(MacFlip(rate, soft["site"], soft["count"], soft["flip_bits"]))
    if soft["weight_bit_flip_prob"] or soft["act_bit_flip_prob"]:
        models.append(MemoryFlips(soft["weight_bit_flip_prob"], soft["weight_scope"], soft["act_bit_flip_prob"]))
    perm = profile.permanent
    stuck = perm["stuck_at"] + profile.stuck_file_entries()
    if stuck or perm["random"]:
        models.append(StuckAt(stuck, perm["random"], acc["lane_num"], acc["vec_size"], profile.widths()))
    return models


def merge(into, part):
    """Add a model's LayerPlan fields to the layer's plan (each field comes from exactly one model)."""
    for kind in RECORD_FIELDS:
        extra = getattr(part, kind)
        if len(extra):
            current = getattr(into, kind)
            setattr(into, kind, np.concatenate([current, extra]) if len(current) else extra)
    if part.sampled is not None and into.mac_events is part.mac_events:
        into.sampled = part.sampled
    if part.timing is not None:
        into.timing = part.timing
    into.masked += part.masked
    into.rate_masked += part.rate_masked
    return into


def sample_plan(models, layers, batch, key, freq_mhz=None, ser=0.0, profile=""):
    """FaultPlan of one forward pass: every model's plan for every layer (models draw from their own streams)."""
    plan = FaultPlan(seed=key.seed, phase=key.phase, iteration=key.iteration, pass_=key.pass_, batch=batch,
                     freq_mhz=freq_mhz, ser=float(ser or 0.0), profile=profile)
    layers = list(layers)
    parts = [None] * len(layers)

    def sample(a, b):
        for j in order[a:b]:
            layer_index, layer_name, geometry = layers[j]
            op = LayerOp(layer_index, layer_name, batch)
            lp = LayerPlan(layer_index, layer_name, geometry)
            for model in models:
                merge(lp, model.plan(op, geometry, key))
            parts[j] = lp

    order = sorted(range(len(layers)), key=lambda j: -int(layers[j][2].get("N_MAC", 0) if layers[j][2] else 0))
    in_parallel(sample, len(layers), PARALLEL_MIN_FLOATS if len(layers) > 1 else 0, pieces=len(layers))
    plan.layers.extend(lp for lp in parts if not lp.is_empty())
    return plan
