"""Register faults of the PipeCNN datapath: flip and force on int32 registers of width w (faults.md §1.2).

Values are int64 NumPy arrays (or Python ints) holding int32 register contents; the 32-bit two's-complement
pattern is `v mod 2^32`. All arithmetic wraps modulo 2^32, as PipeCNN's `int` adds do (pipecnn.md §2.6);
a narrower width only decides which bits may be hit and which bit is the register's sign bit.
"""
import numpy as np

MASK32 = (1 << 32) - 1


def wrap32(v):
    """int32 value of `v mod 2^32` (sext of the low 32 bits), as int64."""
    v = np.asarray(v, dtype=np.int64)
    return ((v + (1 << 31)) & MASK32) - (1 << 31)


def bit_of(v, b):
    """Bit b of v's 32-bit two's-complement pattern (0 or 1)."""
    return (np.asarray(v, dtype=np.int64) >> np.asarray(b, dtype=np.int64)) & 1


def flip_delta(v, b, w):
    """Signed change d that flip(v, b, w) adds to v (before wrapping).

    b < w-1: +2^b when bit b is 0, -2^b when it is 1. b = w-1 (the sign bit of a w-bit register):
    -2^(w-1) when the bit is 0, +2^(w-1) when it is 1. With w = 32 both readings are `v XOR 2^b`.
    """
    b = np.asarray(b, dtype=np.int64)
    w = np.asarray(w, dtype=np.int64)
    one = bit_of(v, b)
    mag = np.left_shift(np.int64(1), b)
    sign = np.where(b < w - 1, 1 - 2 * one, 2 * one - 1)
    return sign * mag


def flip(v, b, w=32):
    """The register after a transient flip of bit b (faults.md §1.2 `flip`): `(v + d) mod 2^32`, as int32."""
    return wrap32(np.asarray(v, dtype=np.int64) + flip_delta(v, b, w))


def force(v, b, value, w=32):
    """Stuck-at: v unchanged when bit b already equals `value`, else flip(v, b, w) (faults.md §1.2 `force`)."""
    v = np.asarray(v, dtype=np.int64)
    return np.where(bit_of(v, b) == np.asarray(value, dtype=np.int64), wrap32(v), flip(v, b, w))
