"""Caffe's layers/batch_norm_layer.cpp: normalisation by batch or running statistics (caffe.md §3.6)."""
import numpy as np

from ..proto import caffe_pb2
from .base import Layer, register


def channel_sum(a3):
    """a3: (N, C, S) -> (C,) float64: float32 pairwise sums along the contiguous spatial axis, then float64
    across N (as accurate as a float64 sum at float32 speed)."""
    return a3.sum(axis=2).sum(axis=0, dtype=np.float64)


def batch_norm_stats(x3):
    """x3: (N, C, S) -> per-channel mean and biased variance (C,), float32 as Caffe keeps them."""
    m = x3.shape[0] * x3.shape[2]
    mean = (channel_sum(x3) / m).astype(np.float32)
    centred = x3 - mean[None, :, None]
    var = (channel_sum(np.square(centred, out=centred)) / m).astype(np.float32)
    return mean, var


def batch_norm_forward(x3, mean, var, eps):
    """x3: (N, C, S); mean, var: (C,) -> y = (x - mean) / sqrt(var + eps), and that std (C,)."""
    std = np.sqrt(var + np.float32(eps)).astype(np.float32)
    y = x3 - mean[None, :, None]
    y /= std[None, :, None]
    return y, std


def batch_norm_backward(y3, dy3, std, use_global_stats):
    """y3, dy3: (N, C, S); std: (C,) -> dx (N, C, S).

    Global stats are constants: dx = dy / std. Batch stats (batch_norm_layer.cpp:190-239):
    dx = (dy - mean(dy) - y * mean(dy * y)) / std, means per channel over N and space.
    """
    if use_global_stats:
        return dy3 / std[None, :, None]
    m = dy3.shape[0] * dy3.shape[2]
    mean_dy = (channel_sum(dy3) / m).astype(np.float32)[None, :, None]
    mean_dy_y = (channel_sum(dy3 * y3) / m).astype(np.float32)[None, :, None]
    dx = y3 * mean_dy_y
    np.subtract(dy3, dx, out=dx)
    dx -= mean_dy
    dx /= std[None, :, None]
    return dx


def update_running_stats(blobs, mean, var, maf, m):
    """In TRAIN forward: factor = factor*maf + 1, sums = sums*maf + batch stat (var unbiased by m/(m-1))."""
    maf = np.float32(maf)
    blobs[2].data[...] = blobs[2].data * maf + np.float32(1)
    blobs[0].data[...] = mean + maf * blobs[0].data
    correction = np.float32(m) / np.float32(m - 1) if m > 1 else np.float32(1)
    blobs[1].data[...] = correction * var + maf * blobs[1].data


@register
class BatchNorm(Layer):
    """y = (x - mean) / sqrt(var + eps) per channel (axis 1); no learned scale/shift (pair with Scale).

    blobs: mean_sum (C), var_sum (C), factor (1), zero-initialised; their lr_mult is forced to 0.
    `use_global_stats` defaults to (phase == TEST): normalise by mean_sum/factor, var_sum/factor.
    Otherwise batch statistics are used and the running sums updated inside forward (maf = 0.999).
    """

    type = "BatchNorm"
    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def layer_setup(self, bottom, top):
        p = self.param.batch_norm_param
        self.moving_average_fraction = p.moving_average_fraction
        # defaults to (phase == TEST) unless given
        self.use_global_stats = p.use_global_stats if p.HasField("use_global_stats") else (
            self.phase == caffe_pb2.TEST)
        self.eps = p.eps
        # Caffe takes shape(1) as channels; a 1-D blob counts as one channel.
        self.channels = 1 if bottom[0].num_axes == 1 else bottom[0].shape[1]
        if not self.blobs:
            zeros = caffe_pb2.FillerParameter(type="constant", value=0.0)
            self.blobs = [self.fill_param(shape, zeros) for shape in ((self.channels,), (self.channels,), (1,))]
        # batch_norm_layer.cpp:39-48: the statistics are not learnable. Caffe adds `param { lr_mult: 0 }` for
        # every blob without a spec (the Net reads these, and ToProto writes them) and refuses any other lr_mult.
        for i in range(len(self.blobs)):
            if len(self.param.param) == i:
                self.param.param.add(lr_mult=0.0)
            elif self.param.param[i].lr_mult != 0:
                raise self.error("Cannot configure batch normalization statistics as layer parameters.")
        self._x_norm = None
        self._std = None

    def reshape(self, bottom, top):
        channels = 1 if bottom[0].num_axes == 1 else bottom[0].shape[1]
        if channels != self.channels:
            raise self.error(f"Check failed: bottom[0]->shape(1) == channels_ ({channels} vs. {self.channels})")
        if top[0] is not bottom[0]:
            top[0].reshape(bottom[0].shape)

    def _view3(self, arr):
        return arr.reshape(arr.shape[0] if arr.ndim else 1, self.channels, -1)

    def forward(self, bottom, top):
        x3 = self._view3(bottom[0].data)
        if self.use_global_stats:
            factor = self.blobs[2].data.reshape(-1)[0]
            scale = np.float32(0) if factor == 0 else np.float32(1) / factor
            mean = (self.blobs[0].data * scale).astype(np.float32)
            var = (self.blobs[1].data * scale).astype(np.float32)
        else:
            mean, var = batch_norm_stats(x3)
            update_running_stats(self.blobs, mean, var, self.moving_average_fraction,
                                 bottom[0].count // self.channels)
        y3, self._std = batch_norm_forward(x3, mean, var, self.eps)
        # Keep a copy of the output: a later in-place layer may clobber the top (batch_norm_layer.cpp:158).
        self._x_norm = y3
        top[0].data[...] = y3.reshape(top[0].shape)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dy3 = self._view3(top[0].diff)
        dx3 = batch_norm_backward(self._x_norm, dy3, self._std, self.use_global_stats)
        bottom[0].diff[...] = dx3.reshape(bottom[0].shape)
