"""Caffe's InnerProduct and Embed layers (layers/inner_product_layer.cpp, layers/embed_layer.cpp).

InnerProduct: bottom (*lead, *rest) with M = prod(lead) rows of K = prod(rest) (lead = the axes before `axis`),
  top (*lead, N); weight (N, K), or (K, N) with transpose; bias (N). y = x W^T + b (x W + b when transposed).
Embed: bottom of integer-valued indices in [0, input_dim), any shape; top = bottom shape + (N);
  weight (input_dim, N); y[..., :] = W[x] + b. No gradient to the bottom.
"""
import numpy as np

from . import fc_kernels
from .base import Layer, register
from .im2col import SCRATCH
from .parallel import for_each, in_parallel, serial_blas

# Few rows against a large weight: the numba kernels of fc_kernels.py instead of OpenBLAS's skinny GEMMs
SKINNY_MAX_ROWS = 16
SKINNY_MIN_WEIGHT = 1 << 20
SKINNY_BLOCKS = 8   # fixed row ranges of the skinny backward (not the thread count: results must not vary)


def _skinny(m, w):
    return m <= SKINNY_MAX_ROWS and w.size >= SKINNY_MIN_WEIGHT


def _row_blocks(rows, macs_per_row, min_macs=1 << 22, most=4):
    """Bounds of the row blocks a GEMM's output is cut into for the ops' threads: one block under min_macs
    multiply-adds, else at most `most` blocks of whole multiples of 32 rows and at least 128 rows (smaller
    blocks cost OpenBLAS more than a thread saves). Fixed by the shape alone, so results never depend on the
    thread count."""
    if rows * macs_per_row < min_macs:
        return [0, rows]
    per = max(128, -(-rows // most))
    per = -(-per // 32) * 32
    return list(range(0, rows, per)) + [rows]


def _add_or_write(out, a, b, overwrite):
    """out = a @ b when `overwrite` (out's Blob diff was all zeros), else out += a @ b."""
    if overwrite:
        np.matmul(a, b, out=out)
    else:
        accumulate_matmul(out, a, b)


def accumulate_matmul(out, a, b, block_floats=1 << 18):
    """out += a @ b without a full-size temporary: row blocks of the product go through a small buffer that
    stays in cache (a large fresh temporary costs page faults plus two extra passes over `out`)."""
    if out.size <= 4 * block_floats:
        out += a @ b
        return
    rows = max(1, block_floats // out.shape[1])
    tmp = np.empty((rows, out.shape[1]), np.float32)
    for r in range(0, out.shape[0], rows):
        t = tmp[:min(rows, out.shape[0] - r)]
        np.matmul(a[r:r + rows], b, out=t)
        out[r:r + rows] += t


def _param_down(layer, j):
    ppd = layer.param_propagate_down
    return j >= len(ppd) or bool(ppd[j])


@register
class InnerProduct(Layer):
    """Fully connected layer (GEMM over the flattened trailing axes)."""

    type = "InnerProduct"
    accel_op = "conv"
    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def layer_setup(self, bottom, top):
        ip = self.param.inner_product_param
        self.num_output = ip.num_output
        self.bias_term = ip.bias_term
        self.transpose = ip.transpose
        axis = self.canonical_axis(ip.axis, bottom[0].num_axes)
        self.k = bottom[0].count_range(axis)
        if not self.blobs:
            shape = (self.k, self.num_output) if self.transpose else (self.num_output, self.k)
            self.blobs = [self.fill_param(shape, ip.weight_filler)]
            if self.bias_term:
                self.blobs.append(self.fill_param((self.num_output,), ip.bias_filler))

    def reshape(self, bottom, top):
        axis = self.canonical_axis(self.param.inner_product_param.axis, bottom[0].num_axes)
        k = bottom[0].count_range(axis)
        if k != self.k:
            raise self.error(f"Check failed: K_ == new_K ({self.k} vs. {k}) "
                             "Input size incompatible with inner product parameters.")
        self.m = bottom[0].count_range(0, axis)
        top[0].reshape(bottom[0].shape[:axis] + (self.num_output,))

    def forward(self, bottom, top):
        x = bottom[0].data.reshape(self.m, self.k)
        w = self.blobs[0].data
        y = top[0].data.reshape(self.m, self.num_output)
        if self.transpose:
            with serial_blas():
                np.matmul(x, w, out=y)
        elif _skinny(self.m, w):
            in_parallel(lambda a, b: fc_kernels.forward(x, w, y, a, b), w.shape[0], w.size)
        else:
            # W x^T, by blocks of weight rows over the ops' threads: OpenBLAS is about twice as fast on W x^T
            # than on x W^T for few rows, and its result does not depend on where the rows are cut
            yt = SCRATCH.get("ip_yt", (self.num_output, self.m))
            blocks = _row_blocks(self.num_output, self.m * self.k)
            for_each(lambda i: np.matmul(w[blocks[i]:blocks[i + 1]], x.T, out=yt[blocks[i]:blocks[i + 1]]),
                     len(blocks) - 1, y.size * self.k)
            y[...] = yt.T
        if self.bias_term:
            y += self.blobs[1].data

    def backward(self, top, propagate_down, bottom):
        dy = top[0].diff.reshape(self.m, self.num_output)
        x = bottom[0].data.reshape(self.m, self.k)
        want_dw = _param_down(self, 0)
        skinny = not self.transpose and _skinny(self.m, self.blobs[0].data)
        if skinny:
            self._skinny_backward(dy, x, want_dw, propagate_down[0], bottom[0])
        elif want_dw:
            dw, zero = self.blobs[0].diff_to_accumulate()
            if self.transpose:
                with serial_blas():
                    _add_or_write(dw, x.T, dy, zero)
            else:
                # dW += dy^T x by blocks of weight rows (each row's sum is the same wherever the rows are cut)
                blocks = _row_blocks(self.num_output, self.m * self.k)
                for_each(lambda i: _add_or_write(dw[blocks[i]:blocks[i + 1]], dy[:, blocks[i]:blocks[i + 1]].T,
                                                 x, zero), len(blocks) - 1, dw.size * self.m)
        if self.bias_term and _param_down(self, 1):
            self.blobs[1].diff[...] += dy.sum(axis=0, dtype=np.float32)
        if propagate_down[0] and not skinny:
            w = self.blobs[0].data
            dx = bottom[0].diff.reshape(self.m, self.k)
            if self.transpose:
                with serial_blas():
                    np.matmul(dy, w.T, out=dx)
            else:
                # dx^T = W^T dy^T by blocks of dx's columns
                dxt = SCRATCH.get("ip_dxt", (self.k, self.m))
                blocks = _row_blocks(self.k, self.m * self.num_output)
                for_each(lambda i: np.matmul(w[:, blocks[i]:blocks[i + 1]].T, dy.T, out=dxt[blocks[i]:blocks[i + 1]]),
                         len(blocks) - 1, dx.size * self.num_output)
                dx[...] = dxt.T

    def _skinny_backward(self, dy, x, want_dw, want_dx, bottom):
        """Both gradients in one pass over the weight rows (fc_kernels.backward), SKINNY_BLOCKS fixed row ranges
        on the ops' threads; the ranges' dx parts are summed in order (the same result on any thread count)."""
        w = self.blobs[0].data
        dw, zero = self.blobs[0].diff_to_accumulate() if want_dw else (w, False)
        n = w.shape[0]
        blocks = min(SKINNY_BLOCKS, n)
        bounds = [n * i // blocks for i in range(blocks + 1)]
        parts = SCRATCH.get("ip_dx_parts", (blocks, self.m, self.k) if want_dx else (blocks, 1, 1))
        for_each(lambda i: fc_kernels.backward(dy, x, w, dw, parts[i], bounds[i], bounds[i + 1], want_dw, zero,
                                               want_dx), blocks, w.size)
        if want_dx:
            dx = bottom.diff.reshape(self.m, self.k)
            dx[...] = parts[0]
            for i in range(1, blocks):
                dx += parts[i]


@register
class Embed(Layer):
    """A lookup table: one weight row per input index (a one-hot InnerProduct without the one-hot)."""

    type = "Embed"
    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def layer_setup(self, bottom, top):
        ep = self.param.embed_param
        self.num_output = ep.num_output
        if self.num_output <= 0:
            raise self.error("EmbedLayer num_output must be positive.")
        self.input_dim = ep.input_dim
        if self.input_dim <= 0:
            raise self.error("EmbedLayer input_dim must be positive.")
        self.bias_term = ep.bias_term
        if not self.blobs:
            self.blobs = [self.fill_param((self.input_dim, self.num_output), ep.weight_filler)]
            if self.bias_term:
                self.blobs.append(self.fill_param((self.num_output,), ep.bias_filler))

    def reshape(self, bottom, top):
        top[0].reshape(bottom[0].shape + (self.num_output,))

    def _indices(self, bottom):
        """The bottom as int indices; Caffe truncates (static_cast<int>) and only DCHECKs range and integrality."""
        x = bottom[0].data.reshape(-1)
        idx = x.astype(np.int64)
        bad = (idx < 0) | (idx >= self.input_dim) | (idx != x)
        if bad.any():
            v = x[np.argmax(bad)]
            raise self.error(f"Embed input {v!r} is not an integer in [0, {self.input_dim})")
        return idx

    def forward(self, bottom, top):
        y = top[0].data.reshape(-1, self.num_output)
        np.take(self.blobs[0].data, self._indices(bottom), axis=0, out=y)
        if self.bias_term:
            y += self.blobs[1].data

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            raise self.error("Can't backpropagate to EmbedLayer input.")
        dy = top[0].diff.reshape(-1, self.num_output)
        if _param_down(self, 0):
            np.add.at(self.blobs[0].diff, self._indices(bottom), dy)
        if self.bias_term and _param_down(self, 1):
            self.blobs[1].diff[...] += dy.sum(axis=0, dtype=np.float32)
