"""Fault models of the unstable PipeCNN accelerator (faults.md): seeded, backend-independent fault plans.

Fault models are registered by the `model:` name a `*.devprofile.yaml` uses; each one's method
`plan(op, geometry, rng) -> LayerPlan` turns an accelerated layer (`LayerOp`), its fault geometry
(`indexing.conv_geometry`) and the pass's seed key (`rng.PassKey`) into plain arrays. Backends consume plans
(`FaultPlan`) and never draw random numbers. This package imports no backend.
"""
from .carry_horizon import CarryHorizon, add_horizon, ch_add, first_failure_mhz, horizon_k, k_thresholds
from .indexing import conv_geometry, geometry_from
from .mac_flip import MacFlip, corrected_sums, output_groups
from .memory import MemoryFlips
from .plan import FaultPlan, LayerOp, LayerPlan, TimingPlan, output_offsets
from .profile import DeviceProfile
from .rate import RateTiming, rate_corrected_sums
from .reference_layer import reference_layer
from .rng import PassKey, generator, sample_distinct
from .sampler import models_for, sample_plan
from .stuck_at import StuckAt

# `model:` names of a device profile (timing.model) and the soft-error / permanent sections -> model classes
MODELS = {"carry_horizon": CarryHorizon, "rate": RateTiming, "mac_flip": MacFlip, "memory": MemoryFlips,
          "stuck_at": StuckAt}

__all__ = ["MODELS", "CarryHorizon", "DeviceProfile", "FaultPlan", "LayerOp", "LayerPlan", "MacFlip", "MemoryFlips",
           "PassKey", "RateTiming", "StuckAt", "TimingPlan", "add_horizon", "ch_add", "conv_geometry",
           "corrected_sums", "first_failure_mhz", "generator", "geometry_from", "horizon_k", "k_thresholds",
           "models_for", "output_groups", "output_offsets", "rate_corrected_sums", "reference_layer", "sample_distinct",
           "sample_plan"]
