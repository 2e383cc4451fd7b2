"""Caffe's layers/softmax_layer.cpp: softmax over one axis (caffe.md §3.8)."""
import numpy as np

from .base import Layer, register


def softmax_forward(x, axis):
    """x: any shape, float32 -> y of the same shape, softmax over `axis` independently at every other position.

    Like Caffe, subtract the max over the axis first, exponentiate, divide by the sum.
    """
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    e /= e.sum(axis=axis, keepdims=True)
    return e


def softmax_backward(y, dy, axis):
    """y, dy: same shape -> dx = y * (dy - sum_axis(dy * y))."""
    return (dy - np.sum(dy * y, axis=axis, keepdims=True)) * y


@register
class Softmax(Layer):
    """Softmax over softmax_param.axis (= 1: channels, per spatial position for N x C x H x W)."""

    type = "Softmax"
    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def reshape(self, bottom, top):
        self.axis = self.canonical_axis(self.param.softmax_param.axis, bottom[0].num_axes)
        top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        top[0].data[...] = softmax_forward(bottom[0].data, self.axis)

    def backward(self, top, propagate_down, bottom):
        # reads only the top, so it is right in place, as in Caffe
        if propagate_down[0]:
            bottom[0].diff[...] = softmax_backward(top[0].data, top[0].diff, self.axis)
