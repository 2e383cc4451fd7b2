"""Caffe's layers/scale_layer.cpp and layers/bias_layer.cpp: broadcast multiply / add (caffe.md §3.6)."""
import numpy as np

from .base import Layer, register


def broadcast_dims(x_shape, axis, p_shape):
    """(outer, dim, inner) of x around the axes [axis, axis + p.ndim) that a scale/bias blob covers."""
    outer = int(np.prod(x_shape[:axis], dtype=np.int64))
    dim = int(np.prod(p_shape, dtype=np.int64))
    inner = int(np.prod(x_shape[axis + len(p_shape):], dtype=np.int64))
    return outer, dim, inner


def scale_forward(x3, s):
    """x3: (outer, dim, inner); s: (dim,) -> y = x * s broadcast."""
    return x3 * s.reshape(1, -1, 1)


def scale_backward(x3, s, dy3):
    """x3, dy3: (outer, dim, inner); s: (dim,) -> dx = dy * s, ds = sum over outer and inner of dy * x."""
    dx = dy3 * s.reshape(1, -1, 1)
    # float32 product, pairwise sums along the contiguous inner axis, float64 across outer
    ds = (dy3 * x3).sum(axis=2).sum(axis=0, dtype=np.float64).astype(np.float32)
    return dx, ds


def bias_forward(x3, b):
    """x3: (outer, dim, inner); b: (dim,) -> y = x + b broadcast."""
    return x3 + b.reshape(1, -1, 1)


def bias_backward(dy3):
    """dy3: (outer, dim, inner) -> db = sum over outer and inner (dx is dy itself)."""
    return dy3.sum(axis=2).sum(axis=0, dtype=np.float64).astype(np.float32)


def _param_shape(layer, x_shape, axis, num_axes, what):
    """Shape of a learned scale/bias blob: x_shape[axis : axis + num_axes] (num_axes -1 = to the end)."""
    if num_axes < -1:
        raise layer.error("num_axes must be non-negative, or -1 to extend to the end of bottom[0]")
    if num_axes >= 0 and len(x_shape) < axis + num_axes:
        raise layer.error(f"{what} blob's shape extends past bottom[0]'s shape when applied "
                          f"starting with bottom[0] axis = {axis}")
    return tuple(x_shape[axis:] if num_axes == -1 else x_shape[axis:axis + num_axes])


def _check_broadcast(layer, x_shape, axis_param, p_shape, what):
    """Caffe's Reshape checks; returns the axis (0 for a scalar blob, where the choice does not matter)."""
    axis = 0 if len(p_shape) == 0 else layer.canonical_axis(axis_param, len(x_shape))
    if len(x_shape) < axis + len(p_shape):
        raise layer.error(f"{what} blob's shape extends past bottom[0]'s shape when applied "
                          f"starting with bottom[0] axis = {axis}")
    for i, d in enumerate(p_shape):
        if x_shape[axis + i] != d:
            raise layer.error(f"dimension mismatch between bottom[0]->shape({axis + i}) and {what}->shape({i}) "
                              f"({x_shape[axis + i]} vs. {d})")
    return axis


def _propagate_param(layer, j):
    ppd = layer.param_propagate_down
    return ppd[j] if j < len(ppd) else True


@register
class Bias(Layer):
    """y = x + b, b broadcast over bottom axes [axis, axis + b.num_axes) (axis = 1).

    b is a learned blob of shape bottom.shape[axis : axis + num_axes] (num_axes = 1; -1 = to the end;
    filler default constant 0) or a second bottom. db is accumulated when learned, written when a bottom.
    """

    type = "Bias"
    min_bottom_blobs = 1
    max_bottom_blobs = 2
    exact_num_top_blobs = 1

    def layer_setup(self, bottom, top):
        if len(bottom) == 1 and not self.blobs:
            p = self.param.bias_param
            axis = self.canonical_axis(p.axis, bottom[0].num_axes)
            shape = _param_shape(self, bottom[0].shape, axis, p.num_axes, "bias")
            self.blobs = [self.fill_param(shape, p.filler)]

    def _bias(self, bottom):
        return bottom[1] if len(bottom) > 1 else self.blobs[0]

    def reshape(self, bottom, top):
        b = self._bias(bottom)
        self.axis = _check_broadcast(self, bottom[0].shape, self.param.bias_param.axis, b.shape, "bias")
        self.dims = broadcast_dims(bottom[0].shape, self.axis, b.shape)
        if top[0] is not bottom[0]:
            top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        x3 = bottom[0].data.reshape(self.dims)
        top[0].data[...] = bias_forward(x3, self._bias(bottom).data.reshape(-1)).reshape(top[0].shape)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0] and bottom[0] is not top[0]:
            bottom[0].diff[...] = top[0].diff
        learned = len(bottom) == 1
        if (learned and _propagate_param(self, 0)) or (not learned and propagate_down[1]):
            db = bias_backward(top[0].diff.reshape(self.dims))
            b = self._bias(bottom)
            if learned:
                b.diff[...] += db.reshape(b.shape)
            else:
                b.diff[...] = db.reshape(b.shape)


@register
class Scale(Layer):
    """y = x * s (+ b), s broadcast over bottom axes [axis, axis + s.num_axes) (axis = 1).

    s is a learned blob of shape bottom.shape[axis : axis + num_axes] (num_axes = 1; -1 = to the end;
    0 = scalar; filler default constant 1) or a second bottom (its own shape decides). `bias_term` adds a
    Bias stage with `bias_filler` (default 0); params are [scale, bias] (just [bias] with two bottoms).
    """

    type = "Scale"
    min_bottom_blobs = 1
    max_bottom_blobs = 2
    exact_num_top_blobs = 1

    def layer_setup(self, bottom, top):
        p = self.param.scale_param
        if len(bottom) == 1 and not self.blobs:
            axis = self.canonical_axis(p.axis, bottom[0].num_axes)
            shape = _param_shape(self, bottom[0].shape, axis, p.num_axes, "scale")
            filler = p.filler
            if not p.HasField("filler"):
                filler = type(p.filler)(type="constant", value=1.0)  # identity by default
            self.blobs = [self.fill_param(shape, filler)]
        self.bias_layer = None
        if p.bias_term:
            self._setup_bias(bottom, top)

    def _setup_bias(self, bottom, top):
        """scale_layer.cpp:55-81: an internal Bias layer working in place on the top."""
        p = self.param.scale_param
        lp = type(self.param)()
        lp.CopyFrom(self.param)
        lp.type = "Bias"
        del lp.blobs[:]
        lp.bias_param.axis = p.axis
        lp.bias_param.num_axes = bottom[1].num_axes if len(bottom) > 1 else p.num_axes
        lp.bias_param.filler.CopyFrom(p.bias_filler)
        self.bias_layer = Bias(lp, self.rng)
        # blobs + bottoms < 3: the bias blob is new; otherwise it was given (prototxt/caffemodel blobs).
        has_bias = len(self.blobs) + len(bottom) >= 3
        if has_bias:
            self.bias_layer.blobs = [self.blobs[-1]]
        top[0].reshape(bottom[0].shape)
        self.bias_layer.setup([bottom[0]], top)
        if not has_bias:
            self.blobs.append(self.bias_layer.blobs[0])

    def _bias_stage(self):
        # The Net may swap self.blobs[-1] for a shared Blob (param sharing, test nets sharing the train
        # net's params); Caffe's Bias stage holds the same Blob object, so keep ours pointing at it.
        self.bias_layer.blobs = [self.blobs[-1]]
        return self.bias_layer

    def _scale(self, bottom):
        return bottom[1] if len(bottom) > 1 else self.blobs[0]

    def reshape(self, bottom, top):
        s = self._scale(bottom)
        self.axis = _check_broadcast(self, bottom[0].shape, self.param.scale_param.axis, s.shape, "scale")
        self.dims = broadcast_dims(bottom[0].shape, self.axis, s.shape)
        if top[0] is not bottom[0]:
            top[0].reshape(bottom[0].shape)
        if self.bias_layer is not None:
            self._bias_stage().reshape([top[0]], top)

    def forward(self, bottom, top):
        x3 = bottom[0].data.reshape(self.dims)
        # In place, backward needs the input; keep a copy (scale_layer.cpp:124-131).
        self._x_saved = x3.copy() if bottom[0] is top[0] else None
        y3 = scale_forward(x3, self._scale(bottom).data.reshape(-1))
        top[0].data[...] = y3.reshape(top[0].shape)
        if self.bias_layer is not None:
            self._bias_stage().forward([top[0]], top)

    def backward(self, top, propagate_down, bottom):
        if self.bias_layer is not None and _propagate_param(self, len(self.blobs) - 1):
            self._bias_stage().backward(top, [False], [top[0]])
        learned = len(bottom) == 1
        s = self._scale(bottom)
        want_ds = (learned and _propagate_param(self, 0)) or (not learned and propagate_down[1])
        if not (want_ds or propagate_down[0]):
            return
        x3 = self._x_saved if bottom[0] is top[0] else bottom[0].data.reshape(self.dims)
        dx3, ds = scale_backward(x3, s.data.reshape(-1), top[0].diff.reshape(self.dims))
        if want_ds:
            outer, dim, _ = self.dims
            # Caffe quirk (scale_layer.cpp:160-196): a learned diff is overwritten, not accumulated, when
            # s covers all of x or when outer == 1 with more than one scale element.
            overwrite = not learned or bottom[0].count == s.count or (outer == 1 and dim > 1)
            if overwrite:
                s.diff[...] = ds.reshape(s.shape)
            else:
                s.diff[...] += ds.reshape(s.shape)
        if propagate_down[0]:
            bottom[0].diff[...] = dx3.reshape(bottom[0].shape)
