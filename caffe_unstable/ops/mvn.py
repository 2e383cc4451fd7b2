"""Caffe's layers/mvn_layer.cpp: mean-variance normalisation per (n, c) or per n (caffe.md §3.6)."""
import numpy as np

from .base import Layer, register


def mvn_forward(x2, normalize_variance, eps):
    """x2: (num, dim) -> y = x - mean, divided by (sqrt(var) + eps) with normalize_variance; and that
    divisor (num,) (None without). eps goes AFTER the square root (mvn_layer.cpp:60-62)."""
    # float32 pairwise sums along the contiguous rows
    mean = x2.sum(axis=1) / np.float32(x2.shape[1])
    y = x2 - mean[:, None]
    if not normalize_variance:
        return y, None
    var = np.square(y).sum(axis=1) / np.float32(x2.shape[1])
    std = (np.sqrt(var) + np.float32(eps)).astype(np.float32)
    y /= std[:, None]
    return y, std


def mvn_backward(y2, dy2, std):
    """y2, dy2: (num, dim); std: (num,) or None -> dx.

    Caffe's analytic form (mvn_layer.cpp:86-108): dx = (dy - mean(dy) - y * mean(dy * y)) / std with
    variance normalisation, else dx = dy - mean(dy). With eps > 0 it differs from the exact derivative
    by O(eps / std).
    """
    dim = np.float32(dy2.shape[1])
    mean_dy = (dy2.sum(axis=1) / dim)[:, None]
    if std is None:
        return dy2 - mean_dy
    mean_dy_y = ((dy2 * y2).sum(axis=1) / dim)[:, None]
    dx = y2 * mean_dy_y
    np.subtract(dy2, dx, out=dx)
    dx -= mean_dy
    dx /= std[:, None]
    return dx


def legacy_shape(layer, shape):
    """Caffe's num/channels/height/width: the shape padded with 1s to 4 axes (more than 4 is fatal)."""
    if len(shape) > 4:
        raise layer.error("Cannot use legacy accessors on Blobs with > 4 axes.")
    return tuple(shape) + (1,) * (4 - len(shape))


@register
class MVN(Layer):
    """y = (x - mean) [/ (std + eps)] over each (n, c) slice, or each n with `across_channels`.

    normalize_variance = true, across_channels = false, eps = 1e-9. Like Caffe, the top is 4-D
    (num, channels, height, width) whatever the bottom's number of axes (at most 4).
    """

    type = "MVN"
    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def reshape(self, bottom, top):
        shape = legacy_shape(self, bottom[0].shape)
        top[0].reshape(shape)
        across = self.param.mvn_param.across_channels
        self.num = shape[0] if across else shape[0] * shape[1]
        self.std = None

    def forward(self, bottom, top):
        p = self.param.mvn_param
        x2 = bottom[0].data.reshape(self.num, -1)
        y2, self.std = mvn_forward(x2, p.normalize_variance, p.eps)
        top[0].data[...] = y2.reshape(top[0].shape)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        # Caffe reads the top data here (not a saved copy), so it runs in place.
        y2 = top[0].data.reshape(self.num, -1) if self.param.mvn_param.normalize_variance else None
        dx = mvn_backward(y2, top[0].diff.reshape(self.num, -1), self.std)
        bottom[0].diff[...] = dx.reshape(bottom[0].shape)
