"""PipeCNN fixed point: Q 2^-F formats, float -> fixed, fixed -> float and the conv output conversion
(pipecnn.md §1.1, §1.5, §10.4, §10.6). Plain NumPy; the backends' jitted kernels must equal these functions.

A value is q 2^-F with q an int8 and F (the fraction) any integer, negative included (F = -4: an LSB of 16).
Each conv/FC layer has frac_w (weights and bias), frac_din (input) and frac_dout (output).
"""
from dataclasses import dataclass

import numpy as np

from ..errors import CaffeUnstableError

INT8_MIN, INT8_MAX = -128, 127


@dataclass(frozen=True)
class LayerFormat:
    """One layer's fixed-point formats. n = frac_w + frac_din - frac_dout is the accumulator's right shift,
    m = frac_w - frac_dout the bias's; the kernel needs 1 <= n <= 32 and, with a bias, 1 <= m <= 32."""

    frac_w: int
    frac_din: int
    frac_dout: int
    w_bits: int = 8

    @property
    def n(self):
        return self.frac_w + self.frac_din - self.frac_dout

    @property
    def m(self):
        return self.frac_w - self.frac_dout

    def problem(self, has_bias=True):
        """None when the kernel can run this format, else what is wrong (one phrase)."""
        for key in ("frac_w", "frac_din", "frac_dout"):
            v = getattr(self, key)
            if not INT8_MIN <= v <= INT8_MAX:
                return f"{key} = {v} is outside [-128, 127] (a char kernel argument)"
        if not 2 <= self.w_bits <= 8:
            return f"w_bits = {self.w_bits} must be in [2, 8]"
        if not 1 <= self.n <= 32:
            return (f"n = frac_w + frac_din - frac_dout = {self.frac_w} + {self.frac_din} - {self.frac_dout} = "
                    f"{self.n}, the kernel needs 1 <= n <= 32 (it shifts the sum right by n - 1)")
        if has_bias and not 1 <= self.m <= 32:
            return (f"m = frac_w - frac_dout = {self.frac_w} - {self.frac_dout} = {self.m}, the kernel needs "
                    f"1 <= m <= 32 for a layer with a bias (it shifts the bias right by m - 1)")
        return None


def fixed_range(bits=8):
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def float_to_fixed(x, frac, bits=8):
    """q = clamp(round_half_away_from_zero(x 2^frac), -2^(bits-1), 2^(bits-1) - 1) as int8 (§10.4; C `round`,
    as the ICT fork). x 2^frac is formed in float64, exact for float32 x. NaN gives 0."""
    lo, hi = fixed_range(bits)
    v = np.asarray(x, np.float64) * np.ldexp(1.0, int(frac))
    v = np.clip(v, lo - 1, hi + 1)           # saturates the same way and keeps v + 0.5 exact
    r = np.trunc(v + np.copysign(0.5, v))
    r = np.clip(r, lo, hi)
    return np.nan_to_num(r, nan=0.0).astype(np.int8)


def fixed_to_float(q, frac):
    """float32(q) 2^-frac: exact (blob.data of an accelerated layer, §10.4)."""
    return (np.asarray(q, np.float64) * np.ldexp(1.0, -int(frac))).astype(np.float32)


def round_shift(v, s):
    """floor((v + 2^(s-1)) / 2^s) for s >= 1: rounding to the 2^s grid with ties toward +inf (int64 arrays)."""
    v = np.asarray(v, np.int64)
    return (v + (np.int64(1) << np.int64(s - 1))) >> np.int64(s)


def bias_term(b, m):
    """rb = floor((b + 2^(m-1)) / 2^m): the int8 bias on the output grid; exactly 0 for every b when m >= 8."""
    return round_shift(b, m)


def output_conversion(acc, b, n, m, relu=False):
    """The conv/FC output conversion in closed form (pipecnn.md §1.5, verified against the kernel lines).

    acc: int32 sums (any integer array), b: int8 bias (broadcastable; 0 when the layer has none).
    r1 = floor((acc + 2^(n-1)) / 2^n); r1 >= 128 gives 127 and r1 <= -129 gives -128 with the bias IGNORED
    (saturation comes first); otherwise y = wrap_int8(r1 + rb): the bias add WRAPS. ReLU acts after the wrap.
    At acc = 2^31 - 1 with n = 1, where the kernel's 32-bit +1 overflows, this gives 127 (§10.6).
    """
    r1 = round_shift(acc, n)
    rb = bias_term(b, m) if m >= 1 else np.zeros_like(np.asarray(b, np.int64))
    y = ((r1 + rb + 128) & 255) - 128
    y = np.where(r1 >= 128, 127, np.where(r1 <= -129, -128, y))
    if relu:
        y = np.maximum(y, 0)
    return y.astype(np.int8)


def largest_frac(max_abs, limit=127):
    """The largest F with max_abs 2^F <= limit (the cu-quantize start rule, §10.5); 0 for an all-zero tensor."""
    max_abs = float(max_abs)
    if not np.isfinite(max_abs):
        raise CaffeUnstableError("quantization", f"non-finite value range {max_abs}")
    if max_abs <= 0:
        return 0
    f = int(np.floor(np.log2(limit / max_abs)))
    while max_abs * 2.0 ** (f + 1) <= limit:
        f += 1
    while max_abs * 2.0 ** f > limit:
        f -= 1
    return max(INT8_MIN, min(INT8_MAX, f))
