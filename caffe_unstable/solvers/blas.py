"""The few of Caffe's math_functions the solvers use (util/math_functions.cpp), with Caffe's rounding.

- caffe_cpu_axpby is OpenBLAS saxpby: beta*y rounded to float, then fused with alpha*x (one rounding).
- caffe_axpy (weight decay) is OpenBLAS saxpy, a fused multiply-add on x86-64: one rounding of y + a*x.
  The product of two floats is exact in double, so the double sum rounded to float reproduces the FMA
  (golden/solvers: elements with a zero gradient pin both down; a plain float sum differs in ~20% of them).
- caffe_powx is a loop over C's powf, and glibc's powf is not correctly rounded (up to 0.82 ULP): powf(g, 2)
  differs from g*g in about one element in a thousand, so the adaptive solvers call the C library's powf.
The loops are numba kernels: no temporaries, one pass over memory.
"""
import math

import numba
import numpy as np


def axpby(alpha, x, beta, y):
    """y = alpha*x + beta*y in place, as OpenBLAS saxpby rounds it: fma(alpha, x, float(beta*y))."""
    _axpby_loop(np.float32(alpha), x.reshape(-1), np.float32(beta), y.reshape(-1))


def fused_axpy(alpha, x, y):
    """y += alpha*x in place, float32, with a single rounding (saxpy's FMA)."""
    _fused_axpy_loop(np.float32(alpha), x.reshape(-1), y.reshape(-1))


def powx(a, b, out):
    """out = powf(a, b) elementwise, float32 (caffe_powx / vsPowx); `out` may be `a`."""
    _powf_loop(a.reshape(-1), np.float32(b), out.reshape(-1))
    return out


@numba.njit(cache=True, nogil=True)
def _axpby_loop(alpha, x, beta, y):
    a = np.float64(alpha)
    for i in range(x.size):
        by = np.float32(beta * y[i])
        y[i] = np.float32(a * np.float64(x[i]) + np.float64(by))


@numba.njit(cache=True, nogil=True)
def _fused_axpy_loop(alpha, x, y):
    a = np.float64(alpha)
    for i in range(x.size):
        y[i] = np.float32(np.float64(y[i]) + a * np.float64(x[i]))


@numba.njit(cache=True, nogil=True)
def _powf_loop(a, b, out):
    for i in range(a.size):
        out[i] = math.pow(a[i], b)      # float32 arguments: LLVM's llvm.pow.f32, i.e. the C library's powf
