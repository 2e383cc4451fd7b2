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


def open(backend, quant=None, profile=None, freq_mhz=None, ser=None, seed=None, **hw):  # noqa: A001
    """Open an accelerator (interface.md §"Accelerator API" 1).

    backend: "float" (plain Caffe: returns None), "numba" (or later "opencl"). quant: a `*.quant.yaml` path (see
    load_quant). hw: HwConfig keywords (vec_size, lane_num, pipe_depth, width_product, width_accumulator,
    width_final, lrn_overflow); the defaults are the paper's KCU1500 build. profile / freq_mhz / ser select fault
    models (faults.md), which this build does not have yet.
    """
    from .backends import backend_class

    if profile is not None or freq_mhz is not None or ser is not None:
        which = ", ".join(k for k, v in (("profile", profile), ("freq_mhz", freq_mhz), ("ser", ser)) if v is not None)
        raise CaffeUnstableError("--profile/--freq/--ser", f"fault injection ({which}) is not available in this "
                                                           "build yet: only the clean fixed-point accelerator")
    if backend in (None, "float"):
        if hw or quant is not None:
            raise CaffeUnstableError("--accel", "the float path is plain Caffe: it takes no quantization table or "
                                                "hardware parameters (use --accel numba)")
        return None
    unknown = sorted(set(hw) - set(HwConfig.keys()))
    if unknown:
        raise CaffeUnstableError("accel.open", f"unknown hardware parameter '{unknown[0]}' "
                                               f"(known: {', '.join(HwConfig.keys())})")
    config = HwConfig(**hw)
    cls = backend_class(backend)
    from .session import Accelerator

    return Accelerator(cls(config), quant=load_quant(quant), seed=seed)
