"""Caffe's element-wise neuron layers (layers/neuron_layer.cpp and the relu, prelu, elu, sigmoid, tanh, absval,
power, exp, log, bnll, threshold, clip, swish and dropout _layer.cpp files; caffe.md §3.4).

Every layer here has one bottom and one top of the same shape. The math is float32, as Caffe's Dtype=float.
In place (top is bottom) Caffe's backward sees the post-forward values as "bottom data" (caffe.md §2.9); a layer
whose backward needs x itself keeps a copy of it during an in-place forward, so it is right where Caffe is not.
"""
import math

import numpy as np

from ..proto import caffe_pb2
from .base import Layer, register

F32 = np.float32


# -- the math: pure functions on float32 arrays (any shape; x, y, dy, dx all the same shape) -----------------------

def relu_forward(x, negative_slope, out=None):
    """y = max(x, 0) + negative_slope * min(x, 0), written into `out` when given (may be x itself)."""
    ns = F32(negative_slope)
    if ns == 0:
        return np.maximum(x, F32(0), out=out)
    if 0 < ns <= 1:  # then y = max(x, ns x), one pass cheaper than a select
        return np.maximum(x, x * ns, out=out)
    y = np.where(x > 0, x, x * ns)
    if out is None:
        return y
    out[...] = y
    return out


def relu_backward(x, dy, negative_slope, out=None):
    """dx = dy * ([x > 0] + negative_slope * [x <= 0]): at exactly 0 the slope is negative_slope (relu_layer.cpp)."""
    if negative_slope == 0:
        return np.multiply(dy, x > 0, out=out)
    return np.multiply(dy, (x > 0) + F32(negative_slope) * (x <= 0), out=out)


def prelu_forward(x, a):
    """y = max(x, 0) + a * min(x, 0); `a` broadcasts against x (per channel or one scalar)."""
    return np.maximum(x, F32(0)) + a * np.minimum(x, F32(0))


def prelu_backward(x, dy, a, param_axes):
    """dx = dy * ([x > 0] + a [x <= 0]); da = sum over param_axes of dy * x * [x <= 0] (prelu_layer.cpp)."""
    neg = x <= 0
    da = np.sum(dy * x * neg, axis=param_axes, dtype=F32)
    dx = dy * ((x > 0) + a * neg)
    return dx, da


def elu_forward(x, alpha):
    """y = max(x, 0) + alpha * (exp(min(x, 0)) - 1)."""
    return np.maximum(x, F32(0)) + F32(alpha) * (np.exp(np.minimum(x, F32(0))) - F32(1))


def elu_backward(x, y, dy, alpha):
    """dx = dy * ([x > 0] + (alpha + y) [x <= 0]); at 0 the gradient is alpha * dy (elu_layer.cpp)."""
    return dy * np.where(x > 0, F32(1), (F32(alpha) + y) * (x <= 0))


def sigmoid_forward(x):
    """y = 0.5 tanh(0.5 x) + 0.5, the overflow-free form Caffe's sigmoid_layer.cpp uses."""
    return F32(0.5) * np.tanh(F32(0.5) * x) + F32(0.5)


def power_forward(x, power, scale, shift):
    """y = (shift + scale x)^power; Caffe skips the input when power * scale == 0 (power_layer.cpp:20-45)."""
    power, scale, shift = F32(power), F32(scale), F32(shift)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):  # NaN/inf where Caffe's pow gives them
        if power * scale == 0:
            value = F32(1) if power == 0 else F32(shift ** power)
            return np.full(x.shape, value, F32)
        t = x
        if scale != 1:
            t = t * scale
        if shift != 0:
            t = t + shift
        if power != 1:
            t = np.power(t, power)
    return t


def power_backward(x, y, dy, power, scale, shift):
    """dx with Caffe's special cases (caffe.md §3.4, power_layer.cpp:47-93), including NaN/inf at x = 0 for shift 0."""
    power, scale, shift = F32(power), F32(scale), F32(shift)
    diff_scale = power * scale
    if diff_scale == 0:
        return np.zeros_like(dy)
    if power == 1:
        return dy * diff_scale
    with np.errstate(divide="ignore", invalid="ignore"):
        if power == 2:
            g = (diff_scale * scale) * x
            if shift != 0:
                g = g + diff_scale * shift
        elif shift == 0:
            g = (y / x) * power
        else:
            t = x * scale if scale != 1 else x
            g = y / (t + shift)
            if diff_scale != 1:
                g = g * diff_scale
    return dy * g


def bnll_forward(x):
    """y = x + log(1 + e^-x) for x > 0, else log(1 + e^x) == max(x, 0) + log1p(e^-|x|); computed in double."""
    x64 = x.astype(np.float64)
    return np.maximum(x64, 0.0) + np.log1p(np.exp(-np.abs(x64)))


def bnll_backward(x, dy):
    """dx = dy * e / (e + 1), e = exp(min(x, 50)) (bnll_layer.cpp's kBNLL_THRESHOLD)."""
    e = np.exp(np.minimum(x, F32(50))).astype(np.float64)
    return dy * (e / (e + 1.0))


def clip_forward(x, lo, hi):
    """y = max(lo, min(x, hi)); fmax makes NaN -> lo as std::max(lo, NaN) does."""
    return np.fmax(np.minimum(x, F32(hi)), F32(lo))


# -- the layers -----------------------------------------------------------------------------------------------------

class NeuronLayer(Layer):
    """Caffe's NeuronLayer: one bottom, one top of the bottom's shape. Subclasses give `compute(x)` and
    `gradient(x, y, dy)`; `reads_bottom()` says whether `gradient` needs x itself (then an in-place forward keeps a
    copy of x, so backward is right in place)."""

    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1
    needs_x = True  # does `gradient` read x (not recoverable from y)?
    _bottom_copy = None

    def reads_bottom(self):
        return self.needs_x

    def forward(self, bottom, top):
        self.keep_bottom(bottom, top)
        y = self.compute(bottom[0].data)
        if y is not top[0].data:  # an identity in place (Dropout in TEST) writes nothing
            top[0].data[...] = y

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            dx = self.gradient(self.bottom_data(bottom, top), top[0].data, top[0].diff)
            if dx is not bottom[0].diff:
                bottom[0].diff[...] = dx

    def keep_bottom(self, bottom, top):
        in_place = top[0] is bottom[0]
        self._bottom_copy = bottom[0].data.copy() if in_place and self.reads_bottom() else None

    def bottom_data(self, bottom, top):
        """x as it was before forward: the kept copy when the last forward ran in place."""
        if top[0] is bottom[0] and self._bottom_copy is not None:
            return self._bottom_copy
        return bottom[0].data


@register
class ReLU(NeuronLayer):
    """y = max(x, 0) + negative_slope * min(x, 0) (relu_param.negative_slope = 0)."""

    type = "ReLU"

    def reads_bottom(self):
        # with slope >= 0, y > 0 exactly where x > 0, so Caffe's in-place backward is already right
        return self.param.relu_param.negative_slope < 0

    def forward(self, bottom, top):
        self.keep_bottom(bottom, top)  # the hottest layer of most nets: write straight into the top
        relu_forward(bottom[0].data, self.param.relu_param.negative_slope, out=top[0].data)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            relu_backward(self.bottom_data(bottom, top), top[0].diff, self.param.relu_param.negative_slope,
                          out=bottom[0].diff)


@register
class PReLU(NeuronLayer):
    """ReLU with a learned slope per channel (axis 1), or one slope with channel_shared; default filler constant
    0.25; bottom >= 2-D. Slope diffs are accumulated (+=)."""

    type = "PReLU"

    def layer_setup(self, bottom, top):
        self._check_axes(bottom)
        pp = self.param.prelu_param
        channels = bottom[0].shape[1]
        if not self.blobs:
            filler = pp.filler if pp.HasField("filler") else caffe_pb2.FillerParameter(type="constant", value=0.25)
            self.blobs = [self.fill_param(() if pp.channel_shared else (channels,), filler)]
        if self.blobs[0].count != (1 if pp.channel_shared else channels):
            raise self.error("Negative slope size is inconsistent with prototxt config")

    def _check_axes(self, bottom):
        if bottom[0].num_axes < 2:
            raise self.error("Number of axes of bottom blob must be >=2.")

    def reshape(self, bottom, top):
        self._check_axes(bottom)
        top[0].reshape(bottom[0].shape)

    def _slope(self, ndim):
        a = self.blobs[0].data
        if self.param.prelu_param.channel_shared:
            return a.reshape(())
        return a.reshape((1, -1) + (1,) * (ndim - 2))

    def compute(self, x):
        return prelu_forward(x, self._slope(x.ndim))

    def backward(self, top, propagate_down, bottom):
        x = self.bottom_data(bottom, top)
        shared = self.param.prelu_param.channel_shared
        axes = None if shared else (0,) + tuple(range(2, x.ndim))
        # the param diff first: in place, writing bottom diff would clobber top diff (prelu_layer.cpp)
        dx, da = prelu_backward(x, top[0].diff, self._slope(x.ndim), axes)
        if (self.param_propagate_down or [True])[0]:
            self.blobs[0].diff[...] += da.reshape(self.blobs[0].shape)
        if propagate_down[0]:
            bottom[0].diff[...] = dx


@register
class ELU(NeuronLayer):
    """y = max(x, 0) + alpha (exp(min(x, 0)) - 1) (elu_param.alpha = 1)."""

    type = "ELU"

    def reads_bottom(self):
        return self.param.elu_param.alpha < 0  # with alpha >= 0, y > 0 exactly where x > 0

    def compute(self, x):
        return elu_forward(x, self.param.elu_param.alpha)

    def gradient(self, x, y, dy):
        return elu_backward(x, y, dy, self.param.elu_param.alpha)


@register
class Sigmoid(NeuronLayer):
    type = "Sigmoid"
    needs_x = False

    def compute(self, x):
        return sigmoid_forward(x)

    def gradient(self, x, y, dy):
        return dy * y * (F32(1) - y)


@register
class TanH(NeuronLayer):
    type = "TanH"
    needs_x = False

    def compute(self, x):
        return np.tanh(x)

    def gradient(self, x, y, dy):
        return dy * (F32(1) - y * y)


@register
class AbsVal(NeuronLayer):
    """y = |x|, dx = sign(x) dy with sign(0) = 0. Caffe refuses in place; here it works (a copy of x is kept)."""

    type = "AbsVal"

    def compute(self, x):
        return np.abs(x)

    def gradient(self, x, y, dy):
        return np.sign(x) * dy


@register
class Power(NeuronLayer):
    """y = (shift + scale x)^power (power_param: power = 1, scale = 1, shift = 0)."""

    type = "Power"

    def _args(self):
        p = self.param.power_param
        return p.power, p.scale, p.shift

    def reads_bottom(self):
        power, scale, _ = self._args()
        return F32(power) * F32(scale) != 0 and F32(power) != 1

    def compute(self, x):
        return power_forward(x, *self._args())

    def gradient(self, x, y, dy):
        return power_backward(x, y, dy, *self._args())


def _log_of_base(layer, base):
    """ln(base), base -1 meaning e (exp_layer.cpp / log_layer.cpp LayerSetUp checks)."""
    if base != -1 and not base > 0:
        raise layer.error("base must be strictly positive.")
    return F32(1) if base == -1 else F32(math.log(base))


@register
class Exp(NeuronLayer):
    """y = base^(shift + scale x) = outer * exp(inner * x), inner = ln(base) scale, outer = base^shift
    (exp_param: base = -1 meaning e, scale = 1, shift = 0)."""

    type = "Exp"
    needs_x = False

    def layer_setup(self, bottom, top):
        p = self.param.exp_param
        self.inner_scale = _log_of_base(self, p.base) * F32(p.scale)
        if p.shift == 0:
            self.outer_scale = F32(1)
        else:
            self.outer_scale = F32(p.base ** p.shift if p.base != -1 else math.exp(p.shift))

    def compute(self, x):
        y = np.exp(x if self.inner_scale == 1 else self.inner_scale * x)
        return y * self.outer_scale if self.outer_scale != 1 else y

    def gradient(self, x, y, dy):
        dx = y * dy
        return dx * self.inner_scale if self.inner_scale != 1 else dx


@register
class Log(NeuronLayer):
    """y = log_base(shift + scale x) (log_param: base = -1 meaning e, scale = 1, shift = 0)."""

    type = "Log"

    def layer_setup(self, bottom, top):
        p = self.param.log_param
        log_base = _log_of_base(self, p.base)
        if log_base == 0:
            raise self.error(f"Inf result: 1/log(base) = 1/log({p.base:g}) = inf")
        self.base_scale = F32(1) / log_base
        self.input_scale, self.input_shift = F32(p.scale), F32(p.shift)
        self.backward_num_scale = self.input_scale / log_base

    def _inner(self, x):
        t = x * self.input_scale if self.input_scale != 1 else x
        return t + self.input_shift if self.input_shift != 0 else t

    def compute(self, x):
        with np.errstate(divide="ignore", invalid="ignore"):
            y = np.log(self._inner(x))
        return y * self.base_scale if self.base_scale != 1 else y

    def gradient(self, x, y, dy):
        with np.errstate(divide="ignore"):
            g = F32(1) / self._inner(x)
        if self.backward_num_scale != 1:
            g = g * self.backward_num_scale
        return dy * g


@register
class BNLL(NeuronLayer):
    """y = log(1 + e^x), the binomial normal log likelihood, computed without overflow."""

    type = "BNLL"

    def compute(self, x):
        return bnll_forward(x)

    def gradient(self, x, y, dy):
        return bnll_backward(x, dy)


@register
class Threshold(NeuronLayer):
    """y = [x > threshold] (threshold_param.threshold = 0); forward only, as in Caffe."""

    type = "Threshold"
    needs_x = False

    def compute(self, x):
        return x > F32(self.param.threshold_param.threshold)

    def backward(self, top, propagate_down, bottom):
        if any(propagate_down):
            raise self.error("Threshold Layer cannot backpropagate (Not Implemented Yet)")


@register
class Clip(NeuronLayer):
    """y = max(min, min(x, max)); dx = dy [min <= x <= max]. clip_param.min and .max are required."""

    type = "Clip"

    def layer_setup(self, bottom, top):
        cp = self.param.clip_param
        missing = [f for f in ("min", "max") if not cp.HasField(f)]
        if missing:
            raise self.error(f"Message missing required fields: clip_param.{', clip_param.'.join(missing)} "
                             "(Clip needs clip_param { min: ... max: ... })")

    def compute(self, x):
        return clip_forward(x, self.param.clip_param.min, self.param.clip_param.max)

    def gradient(self, x, y, dy):
        cp = self.param.clip_param
        return dy * ((x >= F32(cp.min)) & (x <= F32(cp.max)))


@register
class Swish(NeuronLayer):
    """y = x sigmoid(beta x) (swish_param.beta = 1); dx = dy (beta y + s (1 - beta y)), s = sigmoid(beta x)."""

    type = "Swish"
    needs_x = False  # backward reads y and the kept sigmoid, never x

    def compute(self, x):
        self._sigmoid = sigmoid_forward(x * F32(self.param.swish_param.beta))
        return x * self._sigmoid

    def gradient(self, x, y, dy):
        by = F32(self.param.swish_param.beta) * y
        return dy * (by + self._sigmoid * (F32(1) - by))


@register
class Dropout(NeuronLayer):
    """TRAIN (the layer's phase): y = x m / (1 - p) with a fresh Bernoulli mask m, P(m = 1) = 1 - p, drawn from
    `self.rng` every forward; backward reuses that mask. TEST: identity both ways. p = dropout_param.dropout_ratio
    (= 0.5)."""

    type = "Dropout"
    needs_x = False

    def layer_setup(self, bottom, top):
        p = self.param.dropout_param.dropout_ratio
        if not 0 <= p < 1:
            raise self.error(f"dropout_ratio must be in [0, 1), got {p:g}")
        self.ratio = F32(p)
        self.scale = F32(1.0 / (1.0 - float(self.ratio)))  # Caffe: scale_ = 1. / (1. - threshold_)
        self._mask = None

    def compute(self, x):
        if self.phase != caffe_pb2.TRAIN:
            return x
        keep = self.rng.random(x.shape, dtype=F32) < F32(1) - self.ratio
        self._mask = keep * self.scale  # scale where kept, 0 where dropped: x * m * scale == x * self._mask
        return x * self._mask

    def gradient(self, x, y, dy):
        if self.phase != caffe_pb2.TRAIN:
            return dy
        return dy * self._mask
