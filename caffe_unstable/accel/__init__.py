"""caffe_unstable.accel: the simulated PipeCNN accelerator (pipecnn.md §10; interface.md "Accelerator API").

    acc = caffe.accel.open("numba", quant="lenet.quant.yaml")           # vec_size=8, lrn_overflow="wrap", ...
    net = caffe.Net(model, weights, caffe.TEST, accel=acc)

Uses only NumPy, numba and (later) pyopencl; it sees arrays and geometry, never Blob, Layer or Net (the bridge
from layers is net/accel_bridge.py). Backends are imported on first use.
"""
import os

from ..errors import CaffeUnstableError
from .interface import HwConfig, Launch  # noqa: F401  (the public names)
from .quant import LayerFormat  # noqa: F401
from .quant_table import QuantTable
from .session import BACKWARD_WEIGHTS, STE_MODES

PUBLISHED_PREFIX = "pipecnn:"


def load_quant(quant):
    """A QuantTable from a path, a QuantTable, a {name: (frac_w, frac_din, frac_dout[, w_bits])} dict, or
    "pipecnn:alexnet" / "pipecnn:vgg16" (PipeCNN's published tables); None stays None."""
    if quant is None or isinstance(quant, QuantTable):
        return quant
    if isinstance(quant, dict):
        return QuantTable({k: v if isinstance(v, LayerFormat) else LayerFormat(*v) for k, v in quant.items()})
    quant = os.fspath(quant)
    if quant.startswith(PUBLISHED_PREFIX):
        from . import published

        name = quant[len(PUBLISHED_PREFIX):]
        if name not in published.TABLES:
            raise CaffeUnstableError("--quant", f"unknown published table '{name}' (known: "
                                                f"{', '.join(PUBLISHED_PREFIX + n for n in published.names())})")
        return published.table(name)
    return QuantTable.load(quant)


def open(backend, quant=None, profile=None, freq_mhz=None, ser=None, seed=None, fault_layers=None,  # noqa: A001
         horizon_k=None, backward_weights="master", ste="clipped", **hw):
    """Open an accelerator (interface.md "Accelerator API" 1; faults.md §7.3, §11).

    backend: "float" (plain Caffe: returns None), "numba" (or later "opencl"). quant: a `*.quant.yaml` path (see
    load_quant). profile: a `*.devprofile.yaml` path, a shipped profile's name or a faults.DeviceProfile; its
    `accelerator:` section sets the hardware parameters, which `hw` keywords (vec_size, lane_num, pipe_depth,
    width_product, width_accumulator, width_final, lrn_overflow) override; without a profile, faults use the
    shipped pipecnn_kcu1500. freq_mhz: the clock (timing faults above the profile's safe clock); ser: soft errors
    per MAC (overrides soft_errors.mac_flip_rate; the profile says which register: pipecnn_kcu1500 flips the
    18-bit product, docs/faults.md); seed: the fault seed (drawn and reported when None); fault_layers:
    names of the conv/FC layers that get faults (None = all); horizon_k: a fixed carry horizon (timing.fixed_k);
    backward_weights ("master" | "quantized") and ste ("clipped" | "plain"): the training backward (faults.md
    §10.2).
    """
    from .backends import backend_class

    faults_wanted = any(v is not None for v in (profile, freq_mhz, ser, horizon_k))
    if backend in (None, "float"):
        if faults_wanted:
            raise CaffeUnstableError("--accel", "fault injection needs the simulated accelerator (--accel numba): "
                                                "the float path is plain Caffe")
        if hw or quant is not None:
            raise CaffeUnstableError("--accel", "the float path is plain Caffe: it takes no quantization table or "
                                                "hardware parameters (use --accel numba)")
        return None
    unknown = sorted(set(hw) - set(HwConfig.keys()))
    if unknown:
        raise CaffeUnstableError("accel.open", f"unknown hardware parameter '{unknown[0]}' "
                                               f"(known: {', '.join(HwConfig.keys())})")
    if backward_weights not in BACKWARD_WEIGHTS:
        raise CaffeUnstableError("--backward-weights", f"must be master or quantized, got {backward_weights!r}")
    if ste not in STE_MODES:
        raise CaffeUnstableError("--ste", f"must be clipped or plain, got {ste!r}")
    prof = load_profile(profile, faults_wanted)
    build = {k: v for k, v in (prof.accelerator.items() if prof is not None else ()) if k in HwConfig.keys()}
    build.update(hw)
    config = HwConfig(**build)
    models = []
    if faults_wanted:
        from .faults import models_for
        from .faults.rng import check_seed

        if seed is not None:
            check_seed(seed)
        if freq_mhz is not None and not float(freq_mhz) > 0:
            raise CaffeUnstableError("--freq", f"must be a clock in MHz > 0, got {freq_mhz}")
        if ser is not None and not 0.0 <= float(ser) <= 0.01:
            raise CaffeUnstableError("--ser", f"must be a rate per MAC in [0, 0.01], got {ser}")
        models = models_for(prof, freq_mhz=freq_mhz, ser=ser, horizon_k=horizon_k)
    cls = backend_class(backend)
    from .session import Accelerator

    return Accelerator(cls(config), quant=load_quant(quant), seed=seed, profile=prof, freq_mhz=freq_mhz, ser=ser,
                       models=models, fault_layers=fault_layers, horizon_k=horizon_k,
                       backward_weights=backward_weights, ste=ste)


def load_profile(profile, faults_wanted=False):
    """A DeviceProfile from a path or shipped name (None stays None, unless faults are asked for: then the shipped
    pipecnn_kcu1500, faults.md §7.3)."""
    from .faults.profile import DEFAULT_PROFILE, DeviceProfile

    if isinstance(profile, DeviceProfile):
        return profile
    if profile is None:
        if not faults_wanted:
            return None
        profile = DEFAULT_PROFILE
    return DeviceProfile.load(os.fspath(profile))
