"""Caffe's Layer (include/caffe/layer.hpp) and the layer registry (layer_factory.hpp).

A layer mirrors Caffe's protocol:
  setup(bottom, top)                      -> check blob counts, layer_setup, reshape (Net sets loss weights)
  reshape(bottom, top)                    -> shape the tops (called before every forward, as Caffe does)
  forward(bottom, top)                    -> fill top data
  backward(top, propagate_down, bottom)   -> OVERWRITE bottom diffs where propagate_down[i],
                                             ADD INTO param diffs where self.param_propagate_down[j]
`bottom`/`top` are lists of net.blob.Blob. Param blobs live in `self.blobs` (weights, bias, ...).
"""
import numpy as np

from ..errors import CaffeUnstableError

_REGISTRY = {}


class _NullLog:
    def info(self, message, src=""):
        pass

    warning = error = info
    enabled = False


_NULL_LOG = _NullLog()


def register(cls):
    """Class decorator: register a Layer subclass under its Caffe type string (`cls.type`)."""
    name = cls.type
    if not name:
        raise ValueError(f"{cls.__name__} has no Caffe type name")
    if name in _REGISTRY:
        raise ValueError(f"Layer type {name} already registered.")
    _REGISTRY[name] = cls
    return cls


def layer_class(type_name, where=""):
    try:
        return _REGISTRY[type_name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise CaffeUnstableError(where, f"Unknown layer type: {type_name} (known types: {known})") from None


def layer_type_list():
    return sorted(_REGISTRY)


class Layer:
    """Base of every Caffe layer. Subclasses set `type` and override the hooks they need."""

    type = ""
    # Arity, as Caffe's ExactNumBottomBlobs() & co.; -1 = no constraint.
    exact_num_bottom_blobs = -1
    min_bottom_blobs = -1
    max_bottom_blobs = -1
    exact_num_top_blobs = -1
    min_top_blobs = -1
    max_top_blobs = -1
    equal_num_bottom_top_blobs = False
    auto_top_blobs = False      # loss layers get an anonymous top when none is given
    is_loss = False             # Caffe's LossLayer family: default loss_weight 1, no gradient to labels
    accel_op = None             # "conv", "pool", "lrn", ... when the accelerator can run this layer

    def __init__(self, param, rng=None):
        self.param = param            # caffe_pb2.LayerParameter, phase already set by the Net
        self.name = param.name
        self.phase = param.phase
        self.rng = rng if rng is not None else np.random.default_rng()
        self.blobs = [blob_from_proto(b) for b in param.blobs]
        self.param_propagate_down = []
        self.loss_weights = []
        self.log = _NULL_LOG             # the Net gives each layer its glog logger (data layers log as Caffe)

    # -- protocol ----------------------------------------------------------------------------------
    def setup(self, bottom, top):
        self.check_blob_counts(bottom, top)
        self.layer_setup(bottom, top)
        self.reshape(bottom, top)

    def layer_setup(self, bottom, top):
        """One-time setup: read parameters, create and fill `self.blobs` (skipped when given)."""

    def reshape(self, bottom, top):
        """Shape the tops from the bottoms; the default copies bottom 0's shape to top 0."""
        top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        raise CaffeUnstableError(self.where, f"{self.type} has no forward")

    def backward(self, top, propagate_down, bottom):
        if any(propagate_down):
            raise CaffeUnstableError(self.where, f"{self.type} Layer cannot backpropagate (Not Implemented Yet)")

    def allow_force_backward(self, bottom_index):
        return not (self.is_loss and bottom_index == 1)

    # -- helpers -----------------------------------------------------------------------------------
    @property
    def where(self):
        return f"layer '{self.name}'"

    def error(self, what):
        return CaffeUnstableError(self.where, what)

    def check_blob_counts(self, bottom, top):
        nb, nt = len(bottom), len(top)
        t = self.type

        if self.exact_num_bottom_blobs >= 0 and nb != self.exact_num_bottom_blobs:
            raise self.error(f"{t} Layer takes {self.exact_num_bottom_blobs} bottom blob(s) as input.")
        if self.min_bottom_blobs >= 0 and nb < self.min_bottom_blobs:
            raise self.error(f"{t} Layer takes at least {self.min_bottom_blobs} bottom blob(s) as input.")
        if self.max_bottom_blobs >= 0 and nb > self.max_bottom_blobs:
            raise self.error(f"{t} Layer takes at most {self.max_bottom_blobs} bottom blob(s) as input.")
        if self.exact_num_top_blobs >= 0 and nt != self.exact_num_top_blobs:
            raise self.error(f"{t} Layer produces {self.exact_num_top_blobs} top blob(s) as output.")
        if self.min_top_blobs >= 0 and nt < self.min_top_blobs:
            raise self.error(f"{t} Layer produces at least {self.min_top_blobs} top blob(s) as output.")
        if self.max_top_blobs >= 0 and nt > self.max_top_blobs:
            raise self.error(f"{t} Layer produces at most {self.max_top_blobs} top blob(s) as output.")
        if self.equal_num_bottom_top_blobs and nb != nt:
            raise self.error(f"{t} Layer produces one top blob as output for each bottom blob input.")

    def fill_param(self, shape, filler, where=None):
        """A new param Blob of `shape` filled by a FillerParameter, from this layer's rng."""
        from ..net.blob import Blob
        from ..net.filler import fill

        blob = Blob(shape)
        blob.data[...] = fill(filler, shape, self.rng, where or self.where)
        return blob

    def canonical_axis(self, axis, num_axes):
        if not -num_axes <= axis < max(num_axes, 1):
            raise self.error(f"axis {axis} out of range for a {num_axes}-D blob")
        return axis + num_axes if axis < 0 else axis


def blob_from_proto(proto):
    """A Blob from a caffe_pb2.BlobProto (legacy 4-D dims or `shape`; double_data wins over data)."""
    from ..net.blob import Blob

    shape = blob_proto_shape(proto)
    blob = Blob(shape)
    values = proto.double_data if len(proto.double_data) else proto.data
    arr = np.asarray(values, np.float32)
    if arr.size != blob.count:
        raise CaffeUnstableError("", f"blob has {arr.size} values for shape {shape}")
    blob.data[...] = arr.reshape(shape)
    diffs = proto.double_diff if len(proto.double_diff) else proto.diff
    if len(diffs):
        blob.diff[...] = np.asarray(diffs, np.float32).reshape(shape)
    return blob


def blob_proto_shape(proto):
    if any(proto.HasField(f) for f in ("num", "channels", "height", "width")):
        return (proto.num, proto.channels, proto.height, proto.width)
    return tuple(int(d) for d in proto.shape.dim)
