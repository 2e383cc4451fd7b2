"""Accelerator backends by name, imported on first use (numba and pyopencl are slow to import).

"float" is no accelerator at all: plain Caffe, and `caffe_unstable.accel.open("float")` returns None.
"""
import importlib

from ...errors import CaffeUnstableError

BACKENDS = {
    "numba": "caffe_unstable.accel.backends.numba",
}
KNOWN = ("float",) + tuple(BACKENDS)


def backend_class(name):
    """The Backend subclass registered under `name` (its module's `BACKEND`)."""
    try:
        path = BACKENDS[name]
    except KeyError:
        raise CaffeUnstableError("--accel", f"unknown accelerator backend '{name}' (known: {', '.join(KNOWN)})") \
            from None
    try:
        module = importlib.import_module(path)
    except ImportError as exc:
        raise CaffeUnstableError("--accel", f"the '{name}' backend cannot be loaded: {exc}") from None
    return module.BACKEND
