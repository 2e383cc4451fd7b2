"""Caffe's Convolution and Deconvolution (layers/base_conv_layer.cpp, conv_layer.cpp, deconv_layer.cpp).

Shapes (N = product of the axes before `axis`, spatial axes after the channel axis, any number of them):
  Convolution    bottom (N, C, *S)  top (N, O, *S_out)  weight (O, C/g, *k)  bias (O)
  Deconvolution  bottom (N, C, *S)  top (N, O, *S_out)  weight (C, O/g, *k)  bias (O)
Both run on one im2col + GEMM core written in terms of the "conv input" (the image im2col reads: bottom for
Convolution, top for Deconvolution) and the "columns" (one column per conv-output position), exactly as Caffe's
forward_cpu_gemm / backward_cpu_gemm / weight_cpu_gemm do. Unlike Caffe, im2col covers a whole chunk of the batch at
once and each group is one large matmul: columns are laid out (group, C/g * prod(k), N * P).
"""
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .base import Layer, register

# Columns of at most this many floats are built at once (the batch is split into chunks beyond it); when the
# whole batch fits, Convolution keeps its forward columns for backward's dW.
COL_CHUNK_FLOATS = 1 << 25
TRANSPOSED_RATIO = 1  # use it when the im2col of dout copies no more than col2im would add


class Scratch:
    """Grow-only float32 buffers by key: fresh large arrays would cost page faults on every call."""

    def __init__(self):
        self._bufs = {}

    def get(self, key, shape):
        n = math.prod(shape)
        buf = self._bufs.get(key)
        if buf is None or buf.size < n:
            buf = self._bufs[key] = np.empty(max(n, 1), np.float32)
        return buf[:n].reshape(shape)


class _ThreadScratch(threading.local):
    """Transient buffers shared by every conv layer of one Python thread (nothing is kept in them across calls)."""

    def __init__(self):
        self.scratch = Scratch()

    def get(self, key, shape):
        return self.scratch.get(key, shape)


_SCRATCH = _ThreadScratch()

# im2col/col2im copies of at least this many floats are split over threads by channel (numpy releases the
# GIL inside them), as many threads as BLAS gets: OMP_NUM_THREADS / OPENBLAS_NUM_THREADS, else the usable CPUs.
PARALLEL_MIN_FLOATS = 1 << 19
_POOL = []


def copy_threads():
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        if os.environ.get(var, "").isdigit() and int(os.environ[var]) > 0:
            return min(int(os.environ[var]), 8)
    return min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, 8)


def in_parallel(fn, count, work):
    """fn(a, b) over [0, count) split into contiguous ranges, on the thread pool when `work` floats merit it."""
    t = min(copy_threads() if work >= PARALLEL_MIN_FLOATS else 1, count)
    if t <= 1:
        fn(0, count)
        return
    if not _POOL or _POOL[0][0] < t:
        _POOL[:] = [(t, ThreadPoolExecutor(t, thread_name_prefix="cu-conv"))]
    bounds = [count * i // t for i in range(t + 1)]
    for f in [_POOL[0][1].submit(fn, bounds[i], bounds[i + 1]) for i in range(t)]:
        f.result()


# -- geometry ----------------------------------------------------------------------------------------
def conv_out_dim(size, kernel, stride, pad, dilation):
    """conv_layer.cpp compute_output_shape: (size + 2p - extent) / s + 1 with C's truncating division."""
    num = size + 2 * pad - (dilation * (kernel - 1) + 1)
    q = num // stride if num >= 0 else -((-num) // stride)
    return q + 1


def deconv_out_dim(size, kernel, stride, pad, dilation):
    """deconv_layer.cpp compute_output_shape: s(size - 1) + extent - 2p."""
    return stride * (size - 1) + dilation * (kernel - 1) + 1 - 2 * pad


def _padded_extent(sp, geo, cols_sp):
    """Padded spatial size holding every window of the cols_sp grid (> S + 2p only when C truncation let
    a window overhang, e.g. S + 2p < extent)."""
    out = []
    for size, k, s, p, d, o in zip(sp, geo.kernel, geo.stride, geo.pad, geo.dilation, cols_sp):
        needed = (o - 1) * s + d * (k - 1) + 1 if o > 0 else 0
        out.append(size + p + max(p, needed - size - p))
    return tuple(out)


def _taps(geo, cols_sp, offs):
    """The strided slices of the padded image that kernel offset `offs` reads for every column position."""
    return tuple(slice(u * d, u * d + (o - 1) * s + 1, s)
                 for u, d, o, s in zip(offs, geo.dilation, cols_sp, geo.stride))


def im2col(x, geo, cols_sp, out=None):
    """x (n, C, *S) -> columns (G, C/G * prod(k), n * prod(cols_sp)), rows ordered (c, *k) as Caffe's im2col.

    The image is first copied channel-major into a zero-padded (C, n, *S_pad) buffer, then each kernel offset
    is one strided copy (prod(k) copies, never a loop over pixels).
    """
    n, c, sp = x.shape[0], x.shape[1], x.shape[2:]
    full = _padded_extent(sp, geo, cols_sp)
    xp = _SCRATCH.get("im2col", (c, n) + full)
    inner = (slice(None),) + tuple(slice(p, p + s) for p, s in zip(geo.pad, sp))
    kk, p = math.prod(geo.kernel), math.prod(cols_sp)
    if out is None:
        out = np.empty((c * kk, n * p), np.float32)
    colv = out.reshape((c,) + tuple(geo.kernel) + (n,) + tuple(cols_sp))

    def channels(c0, c1):
        if full != tuple(sp):
            xp[c0:c1].fill(0)
        xp[(slice(c0, c1),) + inner] = x[:, c0:c1].swapaxes(0, 1)
        for offs in np.ndindex(*geo.kernel):
            colv[(slice(c0, c1),) + offs] = xp[(slice(c0, c1), slice(None)) + _taps(geo, cols_sp, offs)]

    in_parallel(channels, c, out.size)
    return out.reshape(geo.group, c // geo.group * kk, n * p)


def col2im(col, geo, n, c, sp, cols_sp):
    """Adjoint of im2col: columns (G, K, n * P) -> image, summing overlapping taps.

    Returns a (C, n, *sp) view of a scratch buffer (channel-major); prod(k) strided adds, no pixel loops.
    """
    full = _padded_extent(sp, geo, cols_sp)
    xp = _SCRATCH.get("col2im", (c, n) + full)
    colv = col.reshape((c,) + tuple(geo.kernel) + (n,) + tuple(cols_sp))

    def channels(c0, c1):
        xp[c0:c1].fill(0)
        for offs in np.ndindex(*geo.kernel):
            xp[(slice(c0, c1), slice(None)) + _taps(geo, cols_sp, offs)] += colv[(slice(c0, c1),) + offs]

    in_parallel(channels, c, col.size)
    return xp[(slice(None), slice(None)) + tuple(slice(p, p + s) for p, s in zip(geo.pad, sp))]


def to_groups(y, g, key="to_groups"):
    """(n, O, P) -> (G, O/G, n * P) in a scratch buffer (the GEMM layout of a conv output)."""
    n, o, p = y.shape
    out = _SCRATCH.get(key, (g, o // g, n, p))
    out[...] = y.reshape(n, g, o // g, p).transpose(1, 2, 0, 3)
    return out.reshape(g, o // g, n * p)


def from_groups(z, n, out):
    """(G, O/G, n * P) -> out (n, O, P)."""
    g, og, np_ = z.shape
    out.reshape(n, g, og, np_ // n)[...] = z.reshape(g, og, n, np_ // n).transpose(2, 0, 1, 3)


def flipped_transposed(w, g):
    """Weights (Co, Ci/G, *k) -> (G, Ci/G, Co/G * prod(k)) with the kernel flipped: the weights of the
    convolution that computes W's transposed convolution (used for stride-1 data gradients)."""
    co, cig, k = w.shape[0], w.shape[1], w.shape[2:]
    flip = (slice(None),) * 3 + (slice(None, None, -1),) * len(k)
    wt = w.reshape((g, co // g, cig) + k)[flip].swapaxes(1, 2)
    return np.ascontiguousarray(wt).reshape(g, cig, -1)


class ConvGeometry:
    __slots__ = ("kernel", "stride", "pad", "dilation", "group")

    def __init__(self, kernel, stride, pad, dilation, group):
        self.kernel, self.stride, self.pad, self.dilation = tuple(kernel), tuple(stride), tuple(pad), tuple(dilation)
        self.group = group

    @property
    def is_1x1(self):
        # base_conv_layer.cpp: im2col is the identity for 1x1 kernels with stride 1 and no padding
        return all(k == 1 and s == 1 and p == 0 for k, s, p in zip(self.kernel, self.stride, self.pad))


def _shape_string(shape):
    return " ".join(str(d) for d in shape) + f" ({math.prod(shape)})"


# -- the layers --------------------------------------------------------------------------------------
class BaseConvolution(Layer):
    """BaseConvolutionLayer: parameter parsing, weights, shapes and the im2col/GEMM core."""

    min_bottom_blobs = 1
    min_top_blobs = 1
    equal_num_bottom_top_blobs = True
    reverse_dimensions = False

    def _spatial_values(self, cp, name, prefix, default, n_sp):
        """A repeated per-axis field (one value, one per axis, or none when there is a default), or its 2-D
        `<prefix>_h`/`<prefix>_w` form, with base_conv_layer.cpp's checks."""
        values = list(getattr(cp, name))
        if prefix and (cp.HasField(prefix + "_h") or cp.HasField(prefix + "_w")):
            if n_sp != 2:
                raise self.error(f"{prefix}_h & {prefix}_w can only be used for 2D convolution.")
            if values:
                raise self.error(f"Either {name} or {prefix}_h/w should be specified; not both.")
            return [getattr(cp, prefix + "_h"), getattr(cp, prefix + "_w")]
        if len(values) not in ((1, n_sp) if default is None else (0, 1, n_sp)):
            raise self.error(f"{name} must be specified once, or once per spatial dimension "
                             f"({name} specified {len(values)} times; {n_sp} spatial dims).")
        return [values[0 if len(values) == 1 else i] if values else default for i in range(n_sp)]

    def layer_setup(self, bottom, top):
        cp = self.param.convolution_param
        self.channel_axis = self.canonical_axis(cp.axis, bottom[0].num_axes)
        self.num_spatial_axes = n_sp = bottom[0].num_axes - self.channel_axis - 1
        kernel = self._spatial_values(cp, "kernel_size", "kernel", None, n_sp)
        if any(k <= 0 for k in kernel):
            raise self.error("Filter dimensions must be nonzero.")
        stride = self._spatial_values(cp, "stride", "stride", 1, n_sp)
        if any(s <= 0 for s in stride):
            raise self.error("Stride dimensions must be nonzero.")
        pad = self._spatial_values(cp, "pad", "pad", 0, n_sp)
        dilation = self._spatial_values(cp, "dilation", None, 1, n_sp)
        self.channels = bottom[0].shape[self.channel_axis]
        self.num_output = cp.num_output
        if self.num_output <= 0:
            raise self.error(f"Check failed: num_output_ > 0 ({self.num_output} vs. 0)")
        group = cp.group
        if group <= 0:
            raise self.error(f"group must be positive (group: {group})")
        if self.channels % group:
            raise self.error(f"Check failed: channels_ % group_ == 0 ({self.channels % group} vs. 0)")
        if self.num_output % group:
            raise self.error(f"Check failed: num_output_ % group_ == 0 ({self.num_output % group} vs. 0) "
                             "Number of output should be multiples of group.")
        self.geo = ConvGeometry(kernel, stride, pad, dilation, group)
        if self.reverse_dimensions:
            self.conv_out_channels, self.conv_in_channels = self.channels, self.num_output
        else:
            self.conv_out_channels, self.conv_in_channels = self.num_output, self.channels
        weight_shape = (self.conv_out_channels, self.conv_in_channels // group) + tuple(kernel)
        self.bias_term = cp.bias_term
        bias_shape = (self.num_output,)
        if self.blobs:
            if len(self.blobs) != 1 + self.bias_term:
                raise self.error("Incorrect number of weight blobs.")
            if tuple(self.blobs[0].shape) != weight_shape:
                raise self.error(f"Incorrect weight shape: expected shape {_shape_string(weight_shape)}; "
                                 f"instead, shape was {_shape_string(self.blobs[0].shape)}")
            if self.bias_term and tuple(self.blobs[1].shape) != bias_shape:
                raise self.error(f"Incorrect bias shape: expected shape {_shape_string(bias_shape)}; "
                                 f"instead, shape was {_shape_string(self.blobs[1].shape)}")
        else:
            self.blobs = [self.fill_param(weight_shape, cp.weight_filler)]
            if self.bias_term:
                self.blobs.append(self.fill_param(bias_shape, cp.bias_filler))
        self._work = Scratch()  # this layer's own buffers: kept columns and the bottom snapshot
        self._kept = {}

    def compute_output_shape(self, sp):
        raise NotImplementedError

    def reshape(self, bottom, top):
        ax = self.channel_axis
        shape0 = bottom[0].shape
        if len(shape0) != ax + 1 + self.num_spatial_axes:
            raise self.error("bottom num_axes may not change.")
        if shape0[ax] != self.channels:
            raise self.error("Input size incompatible with convolution kernel.")
        for b in bottom[1:]:
            if b.shape != shape0:
                raise self.error("All inputs must have the same shape.")
        self.num = math.prod(shape0[:ax])
        self.in_sp = tuple(shape0[ax + 1:])
        self.out_sp = tuple(self.compute_output_shape(self.in_sp))
        if any(d < 0 for d in self.out_sp):
            raise self.error(f"negative output size {self.out_sp} for input {self.in_sp}")
        for t in top:
            t.reshape(shape0[:ax] + (self.num_output,) + self.out_sp)

    # -- the GEMM core: images (n, C, *S), conv outputs (n, C, P) --------------------------------------
    def _weights3(self):
        w = self.blobs[0].data
        return w.reshape(self.geo.group, w.shape[0] // self.geo.group, -1)

    def _chunks(self, n, rows, cols_sp):
        """Batch ranges whose columns (rows x items * P floats) fit COL_CHUNK_FLOATS."""
        step = max(1, COL_CHUNK_FLOATS // max(1, rows * math.prod(cols_sp)))
        return [(i, min(n, i + step)) for i in range(0, n, step)]

    def forward_gemm(self, inp, cols_sp, out, keep=None):
        """out (n, Cout, P) = W * im2col(inp) (forward_cpu_gemm). With `keep` (a key) and a batch that fits one
        chunk, the columns are built in this layer's own buffer and returned for a later weight_gemm."""
        g, n = self.geo.group, inp.shape[0]
        w3 = self._weights3()
        if self.geo.is_1x1:
            np.matmul(w3, inp.reshape(n, g, w3.shape[2], -1), out=out.reshape(n, g, w3.shape[1], -1))
            return None
        chunks = self._chunks(n, w3.shape[2] * g, cols_sp)
        keep = keep if len(chunks) == 1 else None
        p = math.prod(cols_sp)
        for a, b in chunks:
            shape = (w3.shape[2] * g, (b - a) * p)
            buf = self._work.get(keep, shape) if keep is not None else _SCRATCH.get("cols", shape)
            col = im2col(inp[a:b], self.geo, cols_sp, buf)
            z = np.matmul(w3, col, out=_SCRATCH.get("gemm_out", (g, w3.shape[1], (b - a) * p)))
            from_groups(z, b - a, out[a:b])
        return col if keep is not None else None

    def backward_gemm(self, dout, sp, cols_sp, dinp):
        """dinp (n, Cin, *sp) = col2im(W^T * dout) (backward_cpu_gemm), overwritten; dout (n, Cout, P)."""
        g, n, geo = self.geo.group, dout.shape[0], self.geo
        w3 = self._weights3()
        if geo.is_1x1:
            np.matmul(w3.transpose(0, 2, 1), dout.reshape(n, g, w3.shape[1], -1),
                      out=dinp.reshape(n, g, w3.shape[2], -1))
            return
        cin, cout = dinp.shape[1], dout.shape[1]
        t_pad = [d * (k - 1) - p for k, p, d in zip(geo.kernel, geo.pad, geo.dilation)]
        n_sp, n_cols = math.prod(sp), math.prod(cols_sp)
        if (all(s == 1 for s in geo.stride) and all(q >= 0 for q in t_pad)
                and 10 * n_sp <= 11 * n_cols and cout * n_sp <= TRANSPOSED_RATIO * cin * n_cols
                and all(conv_out_dim(o, k, 1, q, d) == s
                        for o, k, q, d, s in zip(cols_sp, geo.kernel, t_pad, geo.dilation, sp))):
            # stride 1 and about "same" padding: the transposed convolution is a convolution of dout with the
            # flipped, transposed kernel, which trades col2im's scattered adds for one im2col copy
            tgeo = ConvGeometry(geo.kernel, geo.stride, t_pad, geo.dilation, g)
            wt = flipped_transposed(self.blobs[0].data, g)
            dimg = dout.reshape((n, cout) + tuple(cols_sp))
            for a, b in self._chunks(n, wt.shape[2] * g, sp):
                col = im2col(dimg[a:b], tgeo, sp, _SCRATCH.get("cols", (wt.shape[2] * g, (b - a) * math.prod(sp))))
                z = np.matmul(wt, col, out=_SCRATCH.get("gemm_out", (g, wt.shape[1], col.shape[2])))
                from_groups(z, b - a, dinp[a:b].reshape(b - a, cin, -1))
            return
        for a, b in self._chunks(n, w3.shape[2] * g, cols_sp):
            dcol = np.matmul(w3.transpose(0, 2, 1), to_groups(dout[a:b], g),
                             out=_SCRATCH.get("dcol", (g, w3.shape[2], (b - a) * math.prod(cols_sp))))
            dinp[a:b] = col2im(dcol, geo, b - a, cin, sp, cols_sp).swapaxes(0, 1)

    def weight_gemm(self, inp, cols_sp, dout, dw, col=None):
        """dw += dout * im2col(inp)^T (weight_cpu_gemm); `col` reuses forward_gemm's kept columns."""
        g, n = self.geo.group, dout.shape[0]
        dw3 = dw.reshape(g, dw.shape[0] // g, -1)
        if self.geo.is_1x1:
            x3 = inp.reshape(n, inp.shape[1], -1)
            dw3 += np.matmul(to_groups(dout, g), to_groups(x3, g, "to_groups_x").transpose(0, 2, 1))
            return
        kept = col
        for a, b in self._chunks(n, dw3.shape[2] * g, cols_sp):
            if kept is None:
                shape = (dw3.shape[2] * g, (b - a) * math.prod(cols_sp))
                col = im2col(inp[a:b], self.geo, cols_sp, _SCRATCH.get("cols", shape))
            # as (col dout^T)^T: OpenBLAS runs this orientation faster for the few-output-channel layers
            dw3 += np.matmul(col, to_groups(dout[a:b], g).transpose(0, 2, 1)).transpose(0, 2, 1)

    def _image(self, arr, channels, sp):
        return arr.reshape((self.num, channels) + tuple(sp))

    def _param_down(self, j):
        ppd = self.param_propagate_down
        return j >= len(ppd) or bool(ppd[j])


@register
class Convolution(BaseConvolution):
    """y = W * x + b, cross-correlation with pad/stride/dilation/group (conv_layer.cpp)."""

    type = "Convolution"
    accel_op = "conv"

    def compute_output_shape(self, sp):
        g = self.geo
        return [conv_out_dim(*a) for a in zip(sp, g.kernel, g.stride, g.pad, g.dilation)]

    def forward(self, bottom, top):
        o = self.num_output
        self._kept = {}
        for i, (b, t) in enumerate(zip(bottom, top)):
            y = t.data.reshape(self.num, o, -1)
            col = self.forward_gemm(self._image(b.data, self.channels, self.in_sp), self.out_sp, y, keep=("col", i))
            if col is not None:
                # Caffe re-reads the bottom in backward: keep a copy to prove the kept columns still match it
                snap = self._work.get(("x", i), b.data.shape)
                snap[...] = b.data
                self._kept[i] = (b.data, snap, col)
            if self.bias_term:
                y += self.blobs[1].data[:, None]

    def backward(self, top, propagate_down, bottom):
        o = self.num_output
        for i, (t, b) in enumerate(zip(top, bottom)):
            dy = t.diff.reshape(self.num, o, -1)
            if self.bias_term and self._param_down(1):
                self.blobs[1].diff[...] += dy.sum(axis=(0, 2), dtype=np.float32)
            x = self._image(b.data, self.channels, self.in_sp)
            if self._param_down(0):
                kept, col = self._kept.get(i), None
                if kept is not None and kept[0] is b.data and np.array_equal(kept[1], b.data):
                    col = kept[2]
                self.weight_gemm(x, self.out_sp, dy, self.blobs[0].diff, col)
            if propagate_down[i]:
                self.backward_gemm(dy, self.in_sp, self.out_sp, self._image(b.diff, self.channels, self.in_sp))
        self._kept = {}


@register
class Deconvolution(BaseConvolution):
    """Transposed convolution: forward is Convolution's backward-data pass, backward its forward (deconv_layer.cpp)."""

    type = "Deconvolution"
    reverse_dimensions = True

    def compute_output_shape(self, sp):
        g = self.geo
        return [deconv_out_dim(*a) for a in zip(sp, g.kernel, g.stride, g.pad, g.dilation)]

    def forward(self, bottom, top):
        o = self.num_output
        for b, t in zip(bottom, top):
            y = self._image(t.data, o, self.out_sp)
            self.backward_gemm(b.data.reshape(self.num, self.channels, -1), self.out_sp, self.in_sp, y)
            if self.bias_term:
                y.reshape(self.num, o, -1)[...] += self.blobs[1].data[:, None]

    def backward(self, top, propagate_down, bottom):
        o = self.num_output
        for i, (t, b) in enumerate(zip(top, bottom)):
            dy = self._image(t.diff, o, self.out_sp)
            if self.bias_term and self._param_down(1):
                self.blobs[1].diff[...] += dy.reshape(self.num, o, -1).sum(axis=(0, 2), dtype=np.float32)
            col = None
            if propagate_down[i]:
                # dx = W * im2col(dy); the same columns then serve dW
                col = self.forward_gemm(dy, self.in_sp, b.diff.reshape(self.num, self.channels, -1),
                                        keep="dcols" if self._param_down(0) else None)
            if self._param_down(0):
                self.weight_gemm(dy, self.in_sp, b.data.reshape(self.num, self.channels, -1), self.blobs[0].diff, col)
