"""Caffe's Convolution and Deconvolution (layers/base_conv_layer.cpp, conv_layer.cpp, deconv_layer.cpp).

Shapes (N = product of the axes before `axis`, spatial axes after the channel axis, any number of them):
  Convolution    bottom (N, C, *S)  top (N, O, *S_out)  weight (O, C/g, *k)  bias (O)
  Deconvolution  bottom (N, C, *S)  top (N, O, *S_out)  weight (C, O/g, *k)  bias (O)
Both run on one im2col + GEMM core written in terms of the "conv input" (the image im2col reads: bottom for
Convolution, top for Deconvolution) and the "columns" (one column per conv-output position), exactly as Caffe's
forward_cpu_gemm / backward_cpu_gemm / weight_cpu_gemm do. Unlike Caffe, im2col covers a chunk of the batch at once
(columns (group, C/g * prod(k), n * P), sized to stay in cache for the GEMM that reads them) and each group is one
matmul per chunk. The GEMMs write and read position-major "rows" (group, n * P, O/g), col^T W^T, the orientation
OpenBLAS runs fastest for few output channels; im2col.py transposes them from and to the (n, O, P) blobs.
"""
import math

import numpy as np

from . import direct_conv
from .base import Layer, register
from .im2col import SCRATCH, col2im, im2col, image_to_rows, rows_to_image
from .parallel import for_each

# The batch is split into chunks whose columns hold about this many floats: small enough that im2col's output is
# still in cache when the GEMM reads it, large enough for a GEMM near peak.
COL_CHUNK_FLOATS = 1 << 18
WEIGHT_SLOTS = 4    # the weight gradient's partial sums (see weight_gemm)
TRANSPOSED_RATIO = 2  # use it when the im2col of dout copies at most twice what col2im would add (a copy costs
# a third of col2im's scattered add)


# -- geometry ----------------------------------------------------------------------------------------
def conv_out_dim(size, kernel, stride, pad, dilation):
    """conv_layer.cpp compute_output_shape: (size + 2p - extent) / s + 1 with C's truncating division."""
    num = size + 2 * pad - (dilation * (kernel - 1) + 1)
    q = num // stride if num >= 0 else -((-num) // stride)
    return q + 1


def deconv_out_dim(size, kernel, stride, pad, dilation):
    """deconv_layer.cpp compute_output_shape: s(size - 1) + extent - 2p."""
    return stride * (size - 1) + dilation * (kernel - 1) + 1 - 2 * pad


def flipped_transposed(w, g):
    """Weights (Co, Ci/G, *k) -> (G, Co/G * prod(k), Ci/G), kernel flipped: the (transposed) GEMM weights of the
    convolution that computes W's transposed convolution (used for stride-1 data gradients)."""
    co, cig, k = w.shape[0], w.shape[1], w.shape[2:]
    flip = (slice(None),) * 3 + (slice(None, None, -1),) * len(k)
    wf = w.reshape((g, co // g, cig) + k)[flip].reshape(g, co // g, cig, -1)
    out = SCRATCH.get("w_flipped", (g, co // g, wf.shape[3], cig))
    out[...] = wf.transpose(0, 1, 3, 2)
    return out.reshape(g, -1, cig)


def chunks(n, floats_per_item):
    """Batch ranges [a, b) whose columns (floats_per_item each) fit COL_CHUNK_FLOATS, as few as that allows and
    of sizes differing by at most one (uneven chunks leave a thread idle at the end of a layer)."""
    step = max(1, COL_CHUNK_FLOATS // max(1, floats_per_item))
    count = -(-n // step)
    bounds = [n * i // count for i in range(count + 1)] if count else [0]
    return list(zip(bounds[:-1], bounds[1:]))


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

    out_dim = staticmethod(conv_out_dim)     # per spatial axis; Deconvolution's is deconv_out_dim

    def compute_output_shape(self, sp):
        g = self.geo
        return [self.out_dim(*a) for a in zip(sp, g.kernel, g.stride, g.pad, g.dilation)]

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

    def forward_gemm(self, inp, cols_sp, out, bias=None):
        """out (n, Cout, P) = W * im2col(inp) (+ bias) (forward_cpu_gemm, forward_cpu_bias), chunk by chunk: the
        GEMM writes position-major rows, col^T W^T, which are then transposed into out. Chunks are independent
        and run on the ops' threads."""
        g, n = self.geo.group, inp.shape[0]
        w3 = self._weights3()
        if self.geo.is_1x1:
            ch = chunks(n, inp[0].size + out[0].size)

            def chunk_1x1(i):
                a, b = ch[i]
                o = out[a:b].reshape(b - a, g, w3.shape[1], -1)
                np.matmul(w3, inp[a:b].reshape(b - a, g, w3.shape[2], -1), out=o)
                if bias is not None:
                    o += bias.reshape(g, -1, 1)
            for_each(chunk_1x1, len(ch), out.size)
            return
        wt = SCRATCH.get("w_t", (g, w3.shape[2], w3.shape[1]))
        wt[...] = w3.transpose(0, 2, 1)
        k, p = w3.shape[2] * g, math.prod(cols_sp)
        ch = chunks(n, k * p)

        def chunk(i):
            a, b = ch[i]
            col = im2col(inp[a:b], self.geo, cols_sp, SCRATCH.get("cols", (k, (b - a) * p)))
            rows = np.matmul(col.transpose(0, 2, 1), wt, out=SCRATCH.get("rows_out", (g, col.shape[2], wt.shape[2])))
            rows_to_image(rows, out[a:b], bias)
        for_each(chunk, len(ch), n * k * p)

    def backward_gemm(self, dout, sp, cols_sp, dinp, bias=None):
        """dinp (n, Cin, *sp) = col2im(W^T * dout) (+ bias) (backward_cpu_gemm), overwritten; dout (n, Cout, P).
        Chunks are independent and run on the ops' threads."""
        g, n, geo = self.geo.group, dout.shape[0], self.geo
        w3 = self._weights3()
        cin, cout = dinp.shape[1], dout.shape[1]
        bias_shape = (cin,) + (1,) * len(sp)
        if geo.is_1x1:
            ch = chunks(n, dout[0].size + dinp[0].size)

            def chunk_1x1(i):
                a, b = ch[i]
                d = dinp[a:b].reshape(b - a, g, w3.shape[2], -1)
                np.matmul(w3.transpose(0, 2, 1), dout[a:b].reshape(b - a, g, w3.shape[1], -1), out=d)
                if bias is not None:
                    d += bias.reshape(g, -1, 1)
            for_each(chunk_1x1, len(ch), dinp.size)
            return
        t_pad = [d * (k - 1) - p for k, p, d in zip(geo.kernel, geo.pad, geo.dilation)]
        n_sp, n_cols = math.prod(sp), math.prod(cols_sp)
        if (all(s == 1 for s in geo.stride) and all(q >= 0 for q in t_pad)
                and 10 * n_sp <= 11 * n_cols and cout * n_sp <= TRANSPOSED_RATIO * cin * n_cols
                and all(conv_out_dim(o, k, 1, q, d) == s
                        for o, k, q, d, s in zip(cols_sp, geo.kernel, t_pad, geo.dilation, sp))):
            # stride 1 and about "same" padding: the transposed convolution is a convolution of dout with the
            # flipped, transposed kernel, which trades col2im's scattered adds for one im2col copy
            tgeo = ConvGeometry(geo.kernel, geo.stride, t_pad, geo.dilation, g)
            wft = flipped_transposed(self.blobs[0].data, g)
            dimg = dout.reshape((n, cout) + tuple(cols_sp))
            kt = wft.shape[1] * g
            ch = chunks(n, kt * n_sp)

            def chunk_transposed(i):
                a, b = ch[i]
                col = im2col(dimg[a:b], tgeo, sp, SCRATCH.get("cols", (kt, (b - a) * n_sp)))
                rows = np.matmul(col.transpose(0, 2, 1), wft, out=SCRATCH.get("rows_out", (g, col.shape[2], cin // g)))
                rows_to_image(rows, dinp[a:b].reshape(b - a, cin, n_sp), bias)
            for_each(chunk_transposed, len(ch), n * kt * n_sp)
            return
        kc = w3.shape[2] * g
        ch = chunks(n, kc * n_cols)

        def chunk(i):
            a, b = ch[i]
            dy_rows = image_to_rows(dout[a:b], g)
            dcol = SCRATCH.get("dcol", (kc, dy_rows.shape[1]))
            np.matmul(w3.transpose(0, 2, 1), dy_rows.transpose(0, 2, 1), out=dcol.reshape(g, w3.shape[2], -1))
            col2im(dcol, geo, cols_sp, dinp[a:b])
            if bias is not None:
                dinp[a:b] += bias.reshape(bias_shape)
        for_each(chunk, len(ch), n * kc * n_cols)

    def weight_gemm(self, inp, cols_sp, dout, dw=None, db=None, dw_zero=False, db_zero=False):
        """dw += dout * im2col(inp)^T (weight_cpu_gemm) and db += dout summed over items and positions
        (backward_cpu_bias), chunk by chunk, as col (dout rows) = dW^T. The chunks are cut into at most
        WEIGHT_SLOTS consecutive runs, each summed in order into its own accumulator by one thread; the runs'
        sums are then added in order, so the result does not depend on the thread count. dw_zero / db_zero: the
        diff is all zeros (Blob.diff_to_accumulate), so it is written rather than added to."""
        g, n = self.geo.group, dout.shape[0]
        og, kg = dout.shape[1] // g, inp.shape[1] // g * math.prod(self.geo.kernel)
        p = math.prod(cols_sp)
        ch = chunks(n, kg * g * p)
        if not ch:   # an empty batch adds nothing
            for diff, zero in ((dw, dw_zero), (db, db_zero)):
                if diff is not None and zero:
                    diff[...] = 0
            return
        slots = min(len(ch), WEIGHT_SLOTS)
        runs = [len(ch) * s // slots for s in range(slots + 1)]
        acc = SCRATCH.get("dw_slots", (slots, g, kg, og)) if dw is not None else None
        bacc = SCRATCH.get("db_slots", (slots, g, og)) if db is not None else None

        def run(s):
            for i in range(runs[s], runs[s + 1]):
                a, b = ch[i]
                dy_rows = image_to_rows(dout[a:b], g)
                if db is not None:
                    part = np.matmul(np.ones(dy_rows.shape[1], np.float32), dy_rows)
                    if i == runs[s]:
                        bacc[s] = part
                    else:
                        bacc[s] += part
                if dw is not None:
                    col = im2col(inp[a:b], self.geo, cols_sp, SCRATCH.get("cols", (kg * g, (b - a) * p)))
                    if i == runs[s]:
                        np.matmul(col, dy_rows, out=acc[s])
                    else:
                        acc[s] += np.matmul(col, dy_rows, out=SCRATCH.get("dw_t_part", acc.shape[1:]))
        for_each(run, slots, n * kg * g * p)
        if db is not None:
            for s in range(1, slots):
                bacc[0] += bacc[s]
            if db_zero:
                db.reshape(g, og)[...] = bacc[0]
            else:
                db.reshape(g, og)[...] += bacc[0]
        if dw is not None:
            for s in range(1, slots):
                acc[0] += acc[s]
            if dw_zero:
                dw.reshape(g, og, kg)[...] = acc[0].transpose(0, 2, 1)
            else:
                dw.reshape(g, og, kg)[...] += acc[0].transpose(0, 2, 1)

    def _image(self, arr, channels, sp):
        return arr.reshape((self.num, channels) + tuple(sp))

    def _param_down(self, j):
        ppd = self.param_propagate_down
        return j >= len(ppd) or bool(ppd[j])

    def _direct(self):
        """Whether this layer's forward and weight gradient take the direct path (ops/direct_conv.py)."""
        return (not self.reverse_dimensions
                and direct_conv.applies(self.geo, self.num_spatial_axes, self.channels // self.geo.group))


@register
class Convolution(BaseConvolution):
    """y = W * x + b, cross-correlation with pad/stride/dilation/group (conv_layer.cpp)."""

    type = "Convolution"
    accel_op = "conv"

    def forward(self, bottom, top):
        bias = self.blobs[1].data if self.bias_term else None
        direct = self._direct()
        for b, t in zip(bottom, top):
            x = self._image(b.data, self.channels, self.in_sp)
            if direct:
                direct_conv.forward(x, self.blobs[0].data, bias, self.geo,
                                    self._image(t.data, self.num_output, self.out_sp), SCRATCH)
            else:
                y = t.data.reshape(self.num, self.num_output, math.prod(self.out_sp))
                self.forward_gemm(x, self.out_sp, y, bias)

    def direct_weight_gradient(self, x, dy, dw, db, dw_zero, db_zero):
        """weight_gemm's job on the direct path: computed into scratch, then written or added."""
        new_dw = SCRATCH.get("direct_dw", self.blobs[0].shape)
        new_db = SCRATCH.get("direct_db", (self.num_output,)) if db is not None else None
        direct_conv.weight_gradient(x, self._image(dy, self.num_output, self.out_sp), self.geo, new_dw, new_db,
                                    SCRATCH)
        for diff, new, zero in ((dw, new_dw, dw_zero), (db, new_db, db_zero)):
            if diff is None:
                continue
            if zero:
                diff[...] = new
            else:
                diff += new

    def backward(self, top, propagate_down, bottom):
        o = self.num_output
        dw, dw_zero = self.blobs[0].diff_to_accumulate() if self._param_down(0) else (None, False)
        db, db_zero = (self.blobs[1].diff_to_accumulate() if self.bias_term and self._param_down(1)
                       else (None, False))
        for i, (t, b) in enumerate(zip(top, bottom)):
            dy = t.diff.reshape(self.num, o, math.prod(self.out_sp))
            if (dw is not None or db is not None) and self._direct():
                self.direct_weight_gradient(self._image(b.data, self.channels, self.in_sp), dy, dw, db,
                                            dw_zero and i == 0, db_zero and i == 0)
            elif dw is not None or db is not None:
                # Caffe re-reads the bottom here: the columns are rebuilt from it, never kept from forward
                self.weight_gemm(self._image(b.data, self.channels, self.in_sp), self.out_sp, dy, dw, db,
                                 dw_zero and i == 0, db_zero and i == 0)
            if propagate_down[i]:
                self.backward_gemm(dy, self.in_sp, self.out_sp, self._image(b.diff, self.channels, self.in_sp))


@register
class Deconvolution(BaseConvolution):
    """Transposed convolution: forward is Convolution's backward-data pass, backward its forward (deconv_layer.cpp)."""

    type = "Deconvolution"
    reverse_dimensions = True
    out_dim = staticmethod(deconv_out_dim)

    def forward(self, bottom, top):
        bias = self.blobs[1].data if self.bias_term else None
        for b, t in zip(bottom, top):
            y = self._image(t.data, self.num_output, self.out_sp)
            x = b.data.reshape(self.num, self.channels, math.prod(self.in_sp))
            self.backward_gemm(x, self.out_sp, self.in_sp, y, bias)

    def backward(self, top, propagate_down, bottom):
        o = self.num_output
        dw = self.blobs[0].diff if self._param_down(0) else None
        for i, (t, b) in enumerate(zip(top, bottom)):
            dy = self._image(t.diff, o, self.out_sp)
            if self.bias_term and self._param_down(1):
                per_item = dy.reshape(self.num, o, math.prod(self.out_sp))
                self.blobs[1].diff[...] += per_item.sum(axis=(0, 2), dtype=np.float32)
            if dw is not None:
                # dW: the deconv's input plays the conv output's part
                self.weight_gemm(dy, self.in_sp, b.data.reshape(self.num, self.channels, math.prod(self.in_sp)), dw)
            if propagate_down[i]:
                # dx = W * im2col(dy)
                self.forward_gemm(dy, self.in_sp, b.diff.reshape(self.num, self.channels, math.prod(self.in_sp)))
