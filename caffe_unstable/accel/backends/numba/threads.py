"""Splitting a kernel's outer range over a few Python threads (the kernels are nogil).

numba's own parallel=True threads fight OpenBLAS's spinning threads for the cores between GEMM calls (measured:
10x slower on 2 cores), so the kernels are serial over a [start, stop) range and large calls are split here, as
the float path splits im2col (ops/conv.py).
"""
import os
from concurrent.futures import ThreadPoolExecutor

PARALLEL_MIN_WORK = 1 << 18
_POOL = []


def thread_count():
    for var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        if os.environ.get(var, "").isdigit() and int(os.environ[var]) > 0:
            return min(int(os.environ[var]), 8)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(cpus, 8)


def split(kernel, count, work, *args):
    """kernel(*args, start, stop) over [0, count), on up to thread_count() threads when `work` merits it."""
    t = min(thread_count() if work >= PARALLEL_MIN_WORK else 1, count)
    if t <= 1:
        kernel(*args, 0, count)
        return
    if not _POOL or _POOL[0][0] < t:
        _POOL[:] = [(t, ThreadPoolExecutor(t, thread_name_prefix="cu-accel"))]
    bounds = [count * i // t for i in range(t + 1)]
    futures = [_POOL[0][1].submit(kernel, *args, bounds[i], bounds[i + 1]) for i in range(t)]
    for f in futures:
        f.result()
