"""The brute-force register loop of faults.md §1.2 for the fault tests.

The loop itself lives in the package (`caffe_unstable.accel.faults.reference_layer`, the §11 reference that backends
are tested against); this module re-exports it under the names the tests use and keeps `ripple_add`, an
independent bit-serial adder that checks `ch_add`.
"""
from caffe_unstable.accel.faults.reference_layer import (M32, Faults, flip_ref, force_ref,  # noqa: F401
                                                         horizon_fn, output_conversion, register_loop, s32)


def ripple_add(a, b, K, W):
    """Bit-serial carry_dropped add: a carry generated at bit g and arriving at bit j is late when j − g > K."""
    a, b = int(a) & ((1 << W) - 1), int(b) & ((1 << W) - 1)
    carry, origin, out, late = 0, -1, 0, 0
    for j in range(W):
        aj, bj = a >> j & 1, b >> j & 1
        if carry and j - origin > K:
            late |= 1 << j
            out |= (aj ^ bj) << j
        else:
            out |= (aj ^ bj ^ carry) << j
        if aj & bj:
            carry, origin = 1, j
        elif not (aj ^ bj):
            carry = 0
        # propagate (aj ^ bj) keeps the carry and its origin
    return out, late
