"""The few of Caffe's math_functions the solvers use (util/math_functions.cpp), with Caffe's rounding.

- caffe_cpu_axpby is OpenBLAS saxpby: beta*y rounded to float, then fused with alpha*x (one rounding).
- caffe_axpy (weight decay) is OpenBLAS saxpy, a fused multiply-add on x86-64: one rounding of y + a*x.
  The product of two floats is exact in double, so the double sum rounded to float reproduces the FMA
  (golden/solvers: elements with a zero gradient pin both down; a plain float sum differs in ~20% of them).
- caffe_powx is a loop over C's powf, and glibc's powf is not correctly rounded (up to 0.82 ULP): powf(g, 2)
  differs from g*g in about one element in a thousand, so the adaptive solvers call the C library's powf.
The loops are numba kernels: no temporaries, one pass over memory; unsigned indices, so that LLVM vectorizes
them (a signed index carries numpy's negative-index wraparound).
"""
import math

import numba
import numpy as np

from ..ops.parallel import in_parallel


def axpby(alpha, x, beta, y):
    """y = alpha*x + beta*y in place, as OpenBLAS saxpby rounds it: fma(alpha, x, float(beta*y))."""
    _axpby_loop(np.float32(alpha), x.reshape(-1), np.float32(beta), y.reshape(-1))


def fused_axpy(alpha, x, y):
    """y += alpha*x in place, float32, with a single rounding (saxpy's FMA)."""
    _fused_axpy_loop(np.float32(alpha), x.reshape(-1), y.reshape(-1))


def sgd_update(w, g, h, local_decay, local_rate, momentum):
    """Momentum SGD's whole per-param step in one pass, bit for bit the sequence regularize (caffe_axpy),
    ComputeUpdateValue (caffe_cpu_axpby, copy) and Net::Update (w -= diff): g += decay*w (skipped when decay is
    0, as Caffe skips it), h = rate*g + momentum*h, g = h, w -= h. Large params are split over the ops' threads
    (elementwise: the split changes nothing)."""
    wf, gf, hf = w.reshape(-1), g.reshape(-1), h.reshape(-1)
    args = (np.float32(local_decay), np.float32(local_rate), np.float32(momentum))
    in_parallel(lambda a, b: _sgd_update_loop(wf, gf, hf, *args, a, b), wf.size, wf.size, pieces=2)


def powx(a, b, out):
    """out = powf(a, b) elementwise, float32 (caffe_powx / vsPowx); `out` may be `a`."""
    _powf_loop(a.reshape(-1), np.float32(b), out.reshape(-1))
    return out


@numba.njit(cache=True, nogil=True)
def _axpby_loop(alpha, x, beta, y):
    a = np.float64(alpha)
    for i in range(numba.uint64(x.size)):
        by = np.float32(beta * y[i])
        y[i] = np.float32(a * np.float64(x[i]) + np.float64(by))


@numba.njit(cache=True, nogil=True)
def _fused_axpy_loop(alpha, x, y):
    a = np.float64(alpha)
    for i in range(numba.uint64(x.size)):
        y[i] = np.float32(np.float64(y[i]) + a * np.float64(x[i]))


@numba.njit(cache=True, nogil=True)
def _sgd_update_loop(w, g, h, decay, rate, momentum, i0, i1):
    d, r = np.float64(decay), np.float64(rate)
    for i in range(numba.uint64(i0), numba.uint64(i1)):
        gi = g[i]
        if decay != 0:       # loop-invariant: LLVM unswitches it
            gi = np.float32(np.float64(gi) + d * np.float64(w[i]))
        hi = np.float32(r * np.float64(gi) + np.float64(np.float32(momentum * h[i])))
        h[i] = hi
        g[i] = hi
        w[i] = w[i] - hi


@numba.njit(cache=True, nogil=True)
def _powf_loop(a, b, out):
    for i in range(numba.uint64(a.size)):
        out[i] = math.pow(a[i], b)      # float32 arguments: LLVM's llvm.pow.f32, i.e. the C library's powf
