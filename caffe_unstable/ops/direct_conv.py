"""Direct 2-D convolution for few taps per output (LeNet's conv1: one channel, 5x5), used by ops/conv.py.

With K = C/g * kh * kw small, im2col + GEMM is bound by memory, not arithmetic: the columns are K times the
image, and a GEMM with a 25-deep inner dimension runs far below peak. Here a stride-1 convolution is read as
1-D correlations over the flattened image instead: output (y, x) sits at flat position i = y * W + x of the
(padded) image, tap (c, ky, kx) reads position i + (c * H + ky * dh) * W + kx * dw, and one pass over the
positions [0, L), L = (oh - 1) * W + ow, computes every output at once, plus the W - ow wrapped-around
positions at the end of each row, which are dropped. The passes are vectorizable shifted adds (forward) and
dot products (weight gradient), four taps per pass so that each stored value carries four products.

Sums run over the taps in Caffe's (c, ky, kx) order and add the bias last, as Caffe's forward_cpu_gemm and
forward_cpu_bias do; the weight gradient's dot products are reassociated (vectorized) but each output channel
is summed by one thread over the images in order, so the result does not depend on the thread count.
"""
import numpy as np
from numba import njit, uint64

from .parallel import in_parallel

# Few enough taps for the direct path to beat im2col + GEMM: measured on this 2-core machine, LeNet's conv1
# (K 25) runs 2.8x faster forward and 4x backward; cifar10_quick's conv1 (K 75) runs no faster, so the line is
# drawn between.
DIRECT_MAX_TAPS = 48
TAPS_PER_PASS = 4


def applies(geo, num_spatial_axes, channels_per_group):
    """Whether a Convolution of this geometry takes the direct path: 2-D, stride 1, few taps."""
    return (num_spatial_axes == 2 and all(s == 1 for s in geo.stride)
            and channels_per_group * geo.kernel[0] * geo.kernel[1] <= DIRECT_MAX_TAPS)


def padded(x, pad, scratch):
    """x (n, C, H, W) with `pad` zeros around each plane, in a scratch buffer (x itself when pad is 0)."""
    ph, pw = pad
    if ph == 0 and pw == 0:
        return np.ascontiguousarray(x)
    n, c, h, w = x.shape
    xp = scratch.get("direct_padded", (n, c, h + 2 * ph, w + 2 * pw))
    xp[:, :, :ph] = 0
    xp[:, :, h + ph:] = 0
    xp[:, :, ph:h + ph, :pw] = 0
    xp[:, :, ph:h + ph, w + pw:] = 0
    xp[:, :, ph:h + ph, pw:w + pw] = x
    return xp


@njit(cache=True, nogil=True, error_model="numpy")
def tap_offsets(cg, h, w, kh, kw, dh, dw):
    """Flat offsets of the taps (c, ky, kx) of one group, in Caffe's weight order."""
    offs = np.empty(cg * kh * kw, np.uint64)
    for c in range(cg):
        for ky in range(kh):
            for kx in range(kw):
                offs[(c * kh + ky) * kw + kx] = (c * h + ky * dh) * w + kx * dw
    return offs


@njit(cache=True, nogil=True, error_model="numpy")
def _passes(xp, o_all, oh, ow, group, dh, dw):
    """(outputs per group, channels per group, the taps' flat offsets, the pass length L) of a layer."""
    c_all, h, w = xp.shape[1], xp.shape[2], xp.shape[3]
    kh, kw = (h - oh) // dh + 1, (w - ow) // dw + 1
    cg = c_all // group
    return o_all // group, cg, tap_offsets(cg, h, w, kh, kw, dh, dw), uint64((oh - 1) * w + ow)


@njit(cache=True, nogil=True, error_model="numpy")
def forward_kernel(xp, wf, bias, group, dh, dw, out, n0, n1):
    """out (N, O, oh, ow) for images [n0, n1) from the padded input xp (N, C, H, W) and weights wf (O, K);
    bias (O) or empty."""
    w = xp.shape[3]
    o_all, k_all = wf.shape
    oh, ow = out.shape[2], out.shape[3]
    og, cg, offs, length = _passes(xp, o_all, oh, ow, group, dh, dw)
    acc = np.empty(length, np.float32)
    for n in range(n0, n1):
        for o in range(o_all):
            xf = xp[n, (o // og) * cg:(o // og + 1) * cg].reshape(-1)
            for i in range(length):
                acc[i] = 0.0
            k = 0
            while k + 4 <= k_all:
                w0, w1, w2, w3 = wf[o, k], wf[o, k + 1], wf[o, k + 2], wf[o, k + 3]
                p0, p1, p2, p3 = offs[k], offs[k + 1], offs[k + 2], offs[k + 3]
                for i in range(length):
                    acc[i] = acc[i] + w0 * xf[p0 + i] + w1 * xf[p1 + i] + w2 * xf[p2 + i] + w3 * xf[p3 + i]
                k += 4
            while k < k_all:
                w0, p0 = wf[o, k], offs[k]
                for i in range(length):
                    acc[i] += w0 * xf[p0 + i]
                k += 1
            b = bias[o] if bias.size else np.float32(0.0)
            of = out[n, o].reshape(-1)
            for y in range(oh):
                d, s = uint64(y * ow), uint64(y * w)
                if bias.size:
                    for j in range(uint64(ow)):
                        of[d + j] = acc[s + j] + b
                else:
                    for j in range(uint64(ow)):
                        of[d + j] = acc[s + j]


@njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc", "contract"})
def weight_kernel(xp, dy, group, dh, dw, dwf, db, o0, o1):
    """dwf (O, K) and db (O) (empty: no bias) for output channels [o0, o1), overwritten: the weight and bias
    gradients of the padded input xp (N, C, H, W) and top diff dy (N, O, oh, ow), images summed in order."""
    n_all, w = xp.shape[0], xp.shape[3]
    o_all, k_all = dwf.shape
    oh, ow = dy.shape[2], dy.shape[3]
    og, cg, offs, length = _passes(xp, o_all, oh, ow, group, dh, dw)
    dyp = np.zeros(length, np.float32)   # the top diff laid out on image rows; the wrapped positions stay 0
    for o in range(o0, o1):
        for k in range(k_all):
            dwf[o, k] = 0.0
        bsum = np.float32(0.0)
        for n in range(n_all):
            df = dy[n, o].reshape(-1)
            for y in range(oh):
                d, s = uint64(y * ow), uint64(y * w)
                for j in range(uint64(ow)):
                    dyp[s + j] = df[d + j]
            if db.size:
                part = np.float32(0.0)
                for i in range(uint64(oh * ow)):
                    part += df[i]
                bsum += part
            xf = xp[n, (o // og) * cg:(o // og + 1) * cg].reshape(-1)
            k = 0
            while k + 4 <= k_all:
                p0, p1, p2, p3 = offs[k], offs[k + 1], offs[k + 2], offs[k + 3]
                s0 = s1 = s2 = s3 = np.float32(0.0)
                for i in range(length):
                    g = dyp[i]
                    s0 += g * xf[p0 + i]
                    s1 += g * xf[p1 + i]
                    s2 += g * xf[p2 + i]
                    s3 += g * xf[p3 + i]
                dwf[o, k] += s0
                dwf[o, k + 1] += s1
                dwf[o, k + 2] += s2
                dwf[o, k + 3] += s3
                k += 4
            while k < k_all:
                p0 = offs[k]
                s0 = np.float32(0.0)
                for i in range(length):
                    s0 += dyp[i] * xf[p0 + i]
                dwf[o, k] += s0
                k += 1
        if db.size:
            db[o] = bsum


NO_BIAS = np.zeros(0, np.float32)


def forward(x, weights, bias, geo, out, scratch):
    """out (n, O, oh, ow) = the convolution of x (n, C, H, W) (+ bias), stride 1, images split over the threads."""
    if out.size == 0:            # no images, or an image smaller than the kernel's extent
        return
    xp = padded(x, geo.pad, scratch)
    wf = weights.reshape(weights.shape[0], -1)
    b = NO_BIAS if bias is None else bias
    dh, dw = geo.dilation
    n = x.shape[0]
    in_parallel(lambda a, z: forward_kernel(xp, wf, b, geo.group, dh, dw, out, a, z), n, out.size)


def weight_gradient(x, dy, geo, dw_out, db_out, scratch):
    """dw_out (O, K) and db_out (O) (None: not wanted) = the weight and bias gradients, overwritten; output
    channels split over the threads."""
    if dy.size == 0:
        dw_out[...] = 0
        if db_out is not None:
            db_out[...] = 0
        return
    xp = padded(x, geo.pad, scratch)
    o = dy.shape[1]
    dwf = dw_out.reshape(o, -1)
    db = NO_BIAS if db_out is None else db_out
    dh, dw = geo.dilation
    in_parallel(lambda a, z: weight_kernel(xp, dy, geo.group, dh, dw, dwf, db, a, z), o, xp.size * o)
