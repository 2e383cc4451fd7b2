"""numba kernels for InnerProduct with few rows (inner_product_layer.cpp's GEMMs when M = batch is small).

OpenBLAS runs these skinny GEMMs (M <= 16 against a weight of millions of floats) at a fraction of its peak, and
worse on two threads; here each weight row is streamed once, with four bottom rows per pass (four independent
accumulator chains), over a range [n0, n1) of weight rows that ops/inner_product.py splits over threads. The
backward computes both gradients over the same rows, so the weights are read once and their diff written once.
fastmath lets LLVM vectorize the dot products (the summation order differs from BLAS's: float rounding only).
"""
import numpy as np
from numba import njit


@njit(cache=True, nogil=True, fastmath={'reassoc', 'contract'}, error_model="numpy")
def forward(x, w, y, n0, n1):
    """y (M, N)[:, n] = x (M, K) . w (N, K)[n] for n in [n0, n1), two weight rows by four x rows at a time."""
    m, k = x.shape
    n = n0
    while n < n1:
        two = n + 1 < n1
        w0 = w[n]
        w1 = w[n + 1] if two else w[n]
        r = 0
        while r < m:
            r1, r2, r3 = min(r + 1, m - 1), min(r + 2, m - 1), min(r + 3, m - 1)
            x0, x1, x2, x3 = x[r], x[r1], x[r2], x[r3]
            a0 = a1 = a2 = a3 = b0 = b1 = b2 = b3 = np.float32(0.0)
            for j in range(k):
                u, v = w0[j], w1[j]
                p0, p1, p2, p3 = x0[j], x1[j], x2[j], x3[j]
                a0 += u * p0
                a1 += u * p1
                a2 += u * p2
                a3 += u * p3
                b0 += v * p0
                b1 += v * p1
                b2 += v * p2
                b3 += v * p3
            # rows past m repeat row m - 1: written last, with the same value
            y[r3, n], y[r2, n], y[r1, n], y[r, n] = a3, a2, a1, a0
            if two:
                y[r3, n + 1], y[r2, n + 1], y[r1, n + 1], y[r, n + 1] = b3, b2, b1, b0
            r += 4
        n += 2


@njit(cache=True, nogil=True, fastmath={'reassoc', 'contract'}, error_model="numpy")
def backward(dy, x, w, dw, dx, n0, n1, want_dw, overwrite, want_dx):
    """Both gradients of y = x W^T over the weight rows n in [n0, n1):
    dw (N, K)[n] (+)= sum_r dy (M, N)[r, n] x (M, K)[r] (written when `overwrite`: the diff was all zeros), and
    dx (M, K) = sum_n dy[r, n] w (N, K)[n], overwritten (the caller sums the parts of several row ranges).
    Each weight row is read once and each diff row written once (the weights and their diff dwarf the rest;
    cutting the rows into column blocks to keep x and dx in L1 measured far slower: strided weight reads)."""
    m, k = x.shape
    if want_dw:
        for n in range(n0, n1):
            dr = dw[n]
            r = 0
            if overwrite and m >= 4:   # the first four rows' terms are written, not added to zeros
                c0, c1, c2, c3 = dy[0, n], dy[1, n], dy[2, n], dy[3, n]
                x0, x1, x2, x3 = x[0], x[1], x[2], x[3]
                for j in range(k):
                    dr[j] = c0 * x0[j] + c1 * x1[j] + c2 * x2[j] + c3 * x3[j]
                r = 4
            elif overwrite:
                for j in range(k):
                    dr[j] = 0.0
            while r + 4 <= m:
                c0, c1, c2, c3 = dy[r, n], dy[r + 1, n], dy[r + 2, n], dy[r + 3, n]
                x0, x1, x2, x3 = x[r], x[r + 1], x[r + 2], x[r + 3]
                for j in range(k):
                    dr[j] += c0 * x0[j] + c1 * x1[j] + c2 * x2[j] + c3 * x3[j]
                r += 4
            while r < m:
                c, xr = dy[r, n], x[r]
                for j in range(k):
                    dr[j] += c * xr[j]
                r += 1
    if want_dx:
        for r in range(m):
            for j in range(k):
                dx[r, j] = 0.0
        # four weight rows per pass over dx: a quarter of the dx traffic (dx stays in L2, the weights stream)
        n = n0
        while n < n1:
            g = min(4, n1 - n)
            w0, w1 = w[n], w[n + 1 if g > 1 else n]
            w2, w3 = w[n + 2 if g > 2 else n], w[n + 3 if g > 3 else n]
            for r in range(m):
                c0 = dy[r, n]
                c1 = dy[r, n + 1] if g > 1 else np.float32(0.0)
                c2 = dy[r, n + 2] if g > 2 else np.float32(0.0)
                c3 = dy[r, n + 3] if g > 3 else np.float32(0.0)
                xr = dx[r]
                for j in range(k):
                    xr[j] += c0 * w0[j] + c1 * w1[j] + c2 * w2[j] + c3 * w3[j]
            n += 4
