"""Caffe's Python layer (include/caffe/layers/python_layer.hpp, layer_factory.cpp GetPythonLayer).

    layer { name: "loss" type: "Python" bottom: "a" bottom: "b" top: "loss" loss_weight: 1
            python_param { module: "pyloss" layer: "EuclideanLossLayer" param_str: "..." } }

`module` is imported (from sys.path, else from the current directory), `layer` is looked up in it and called with
the LayerParameter, as pycaffe does; the object is usually a subclass of `caffe.Layer` (PyLayer below). Before the
user's `setup(bottom, top)` it gets `param_str` and `phase`; `reshape`, `forward` and `backward(top,
propagate_down, bottom)` are forwarded unchanged, and `reshape` runs before every forward. Params the user appends to
`self.blobs` (`self.blobs.add_blob(*shape)`) are the layer's params, seen by the Net and the solver. A Python layer
is not a LossLayer: it is a loss only when the prototxt gives `loss_weight`.
"""
import importlib
import os
import sys

from ..errors import CaffeUnstableError
from ..net.blob import Blob
from .base import Layer, register


class BlobVec(list):
    """pycaffe's BlobVec: a list of Blobs with `add_blob(*shape)` (_caffe.cpp BlobVec_add_blob)."""

    def add_blob(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        self.append(Blob(shape))


class PyLayer:
    """Base class of Python layers, exported as `caffe.Layer`.

    Subclasses define `setup(bottom, top)`, `reshape(bottom, top)`, `forward(bottom, top)` and
    `backward(top, propagate_down, bottom)`; bottoms and tops are lists of Blob (`.data`, `.diff`, `.reshape`).
    Attributes set by Caffe: `param_str` (python_param.param_str), `phase` (0 TRAIN, 1 TEST), `blobs`.
    """

    def __init__(self, p):
        self.layer_param = p  # the caffe_pb2.LayerParameter, as pycaffe's Layer(LayerParameter) takes it
        self.param_str = p.python_param.param_str
        self.phase = int(p.phase)
        self.blobs = BlobVec()

    @property
    def type(self):
        return "Python"

    def setup(self, bottom, top):
        """One-time setup; the default does nothing."""

    def reshape(self, bottom, top):
        """Shape the tops; the default leaves them as they are."""

    def forward(self, bottom, top):
        raise CaffeUnstableError(f"layer '{self.layer_param.name}'",
                                 f"Python layer {type(self).__name__} does not define forward(bottom, top)")

    def backward(self, top, propagate_down, bottom):
        if any(propagate_down):
            raise CaffeUnstableError(f"layer '{self.layer_param.name}'", f"Python layer {type(self).__name__} does "
                                     "not define backward(top, propagate_down, bottom)")


def import_layer_module(module):
    """Import `module` from sys.path as is; if it is missing there, retry with the current directory on the path,
    which `python -c`, the REPL and `caffe train` with PYTHONPATH=. give pycaffe users."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        top_level = module.split(".")[0]
        if e.name not in (module, top_level):
            raise  # the module exists but one of its own imports is missing
    # a file written after the path's directory listing was cached is only found after invalidation
    importlib.invalidate_caches()
    cwd = os.getcwd()
    added = "" not in sys.path and cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(module)
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


@register
class Python(Layer):
    """Runs a user's Python class as a layer; any number of bottoms and tops."""

    type = "Python"

    def __init__(self, param, rng=None):
        super().__init__(param, rng)
        pp = param.python_param
        if not pp.module:
            raise self.error("python_param.module is not set (the module that defines the layer class)")
        if not pp.layer:
            raise self.error("python_param.layer is not set (the name of the layer class in module "
                             f"'{pp.module}')")
        try:
            module = import_layer_module(pp.module)
        except Exception as e:
            raise self.error(f"cannot import Python layer module '{pp.module}': {type(e).__name__}: {e} "
                             "(is its folder on sys.path or PYTHONPATH?)") from e
        cls = getattr(module, pp.layer, None)
        if cls is None:
            raise self.error(f"Python layer module '{pp.module}' ({getattr(module, '__file__', '?')}) "
                             f"has no attribute '{pp.layer}'")
        self.blobs = BlobVec(self.blobs)
        self.py = cls(param)
        # pycaffe's layer and the C++ layer share one blobs vector: what the user appends are the layer's params
        self.py.blobs = self.blobs

    def layer_setup(self, bottom, top):
        # PythonLayer::LayerSetUp sets these two right before calling the user's setup
        self.py.param_str = self.param.python_param.param_str
        self.py.phase = int(self.phase)
        self.py.setup(bottom, top)

    def reshape(self, bottom, top):
        self.py.reshape(bottom, top)

    def forward(self, bottom, top):
        self.py.forward(bottom, top)

    def backward(self, top, propagate_down, bottom):
        self.py.backward(top, list(propagate_down), bottom)
