"""Splitting a kernel's outer range over the ops' thread pool (the kernels are nogil).

The accelerator's kernels share one pool with the float ops (ops/parallel.py), and follow its rule: OpenBLAS
runs single-threaded inside a split, which is cut into more pieces than threads, claimed as threads come free.
Two pools, or OpenBLAS's spinning threads between our kernels, fight for the cores (measured before this:
cifar10_quick's fixed forward 3x slower on two busy cores than on one), and a thread that gets its core late
on a shared machine just takes fewer pieces. Kernels are serial over a [start, stop) range, and what a piece
computes never depends on how the range is cut, so results do not depend on the thread count.
"""
from ....ops.parallel import PIECES_PER_THREAD, copy_threads, for_each, in_parallel, serial_blas

PARALLEL_MIN_WORK = 1 << 18         # below this much work (about one element's cost each) a kernel runs serially

__all__ = ["split", "for_each", "serial_blas", "thread_count", "PIECES_PER_THREAD", "PARALLEL_MIN_WORK"]


def thread_count():
    return copy_threads()


def split(kernel, count, work, *args, guided=False):
    """kernel(*args, start, stop) over [0, count), on the ops' threads when `work` merits it (guided: pieces
    shrinking to single items, for items that are each a long computation)."""
    if count <= 0:
        return
    if work < PARALLEL_MIN_WORK or count == 1 or copy_threads() <= 1:
        kernel(*args, 0, count)
        return
    in_parallel(lambda a, b: kernel(*args, a, b), count, work, guided=guided)
