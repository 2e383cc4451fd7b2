"""Spin-waiting without the GIL, for the ops' thread team (parallel.py).

Waking a sleeping thread costs 50-100 us on a virtual machine (often far more: the idle vCPU has to be
re-scheduled), which is as long as a LeNet layer's share of a thread's work. So a thread that has just finished
its pieces watches a counter for a short while before it sleeps. The watch is a nogil numba loop over an atomic
acquire load (a plain load would be hoisted out of the loop) and the CPU's `pause` hint.
"""
import platform
import time

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic


@intrinsic
def _acquire_load(typingctx, counter):
    """counter[0] of an int64 array, read with an atomic acquire load."""
    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        return builder.load_atomic(ary.data, ordering="acquire", align=8)
    return types.int64(counter), codegen


@intrinsic
def _pause(typingctx):
    """x86's spin-loop hint (llvm.x86.sse2.pause): frees the core's resources for a moment."""
    def codegen(context, builder, signature, args):
        if platform.machine().lower() in ("x86_64", "amd64", "i686", "x86"):
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                "llvm.x86.sse2.pause")
            builder.call(fn, [])
        return context.get_dummy_value()
    return types.void(), codegen


@njit(cache=True, nogil=True)
def wait_while_equal(counter, old, rounds):
    """Spin until counter[0] != old, at most `rounds` rounds; True when it changed."""
    for _ in range(rounds):
        if _acquire_load(counter) != old:
            return True
        _pause()
    return _acquire_load(counter) != old


def rounds_per_us():
    """How many spin rounds take a microsecond here (the pause hint's cost varies 10x between CPUs)."""
    probe = np.zeros(1, np.int64)
    wait_while_equal(probe, 0, 10)          # compiled or loaded before timing
    n = 20000
    start = time.perf_counter()
    wait_while_equal(probe, 0, n)
    return max(1.0, n / max(1e-9, (time.perf_counter() - start) * 1e6))


@njit(cache=True, nogil=True)
def bump_and_wait(counter, acks, old_acks, rounds, grace):
    """counter[0] += 1 without the GIL, then spin until acks[0] != old_acks (at most `rounds`), then `grace`
    more rounds: a spinning helper that sees the bump finds the GIL free, and has time to pass it on."""
    counter[0] += 1
    wait_while_equal(acks, old_acks, rounds)
    for _ in range(grace):
        _pause()


@intrinsic
def _atomic_add(typingctx, counter, amount):
    """counter[0] += amount as one atomic read-modify-write (several helpers report at once)."""
    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        builder.atomic_rmw("add", ary.data, args[1], "seq_cst")
        return context.get_dummy_value()
    return types.void(counter, types.int64), codegen


@njit(cache=True, nogil=True)
def add_and_wait(counter, amount, watched, old, rounds):
    """Atomically add `amount` to counter[0], then spin until watched[0] != old (at most `rounds`): a helper
    reports its finished pieces and waits for the next task in one call without the GIL, so the caller waiting
    on the report never finds the GIL held by it."""
    _atomic_add(counter, amount)
    return wait_while_equal(watched, old, rounds)
