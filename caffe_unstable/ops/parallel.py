"""The ops' threads: one pool of Python threads running nogil numba kernels and single-threaded BLAS calls.

Why one pool: OpenBLAS's worker threads spin for a while after every GEMM (about 0.1 s by default), and numba's
parallel=True threads spin likewise; two pools on the same cores fight, and a net that alternates GEMMs with
im2col/pooling kernels then runs no faster on two cores than on one. So while an op runs, OpenBLAS is held to
one thread (`serial_blas`), and every split (a batch of im2col + GEMM chunks, a GEMM's row blocks, a pooling
kernel's planes) runs on this pool. Work is cut into more pieces than threads and threads claim pieces as they
come, so a thread that gets its core late (a busy shared machine) just does fewer of them. What a piece computes
never depends on the thread count: results are the same on one thread as on eight.
"""
import ctypes
import glob
import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor

# Kernels over at least this many floats are split over THREADS threads; None: as many as BLAS gets,
# OMP_NUM_THREADS / OPENBLAS_NUM_THREADS, else the usable CPUs (at most 8), read once.
PARALLEL_MIN_FLOATS = 1 << 16
PIECES_PER_THREAD = 4
THREADS = None
_POOL = []
_IN_TASK = threading.local()   # set inside a pool piece: nested splits run serially (no pool deadlock)


def copy_threads():
    """The number of threads the ops use."""
    global THREADS
    if THREADS is None:
        env = [os.environ.get(v, "") for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")]
        given = [int(v) for v in env if v.isdigit() and int(v) > 0]
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        THREADS = min(given[0] if given else cpus, 8)
    return THREADS


def in_parallel(fn, count, work, pieces=None):
    """fn(a, b) over [0, count) cut into contiguous pieces (`pieces` of them, else PIECES_PER_THREAD per
    thread), run by the calling thread and the pool's threads when `work` floats merit it. fn must release the
    GIL for the most part (nogil numba kernels, BLAS calls) and may call BLAS: OpenBLAS is held to one thread
    meanwhile."""
    t = min(copy_threads() if work >= PARALLEL_MIN_FLOATS else 1, count)
    if t <= 1 or getattr(_IN_TASK, "on", False):
        with serial_blas():
            fn(0, count)
        return
    if not _POOL or _POOL[0][0] < t:
        _POOL[:] = [(t, ThreadPoolExecutor(t - 1, thread_name_prefix="cu-ops"))]
    pieces = min(count, pieces or PIECES_PER_THREAD * t)
    bounds = [count * i // pieces for i in range(pieces + 1)]
    claim = itertools.count()   # next() is atomic under the GIL
    errors = []

    def run():
        _IN_TASK.on = True
        try:
            for i in iter(claim.__next__, None):
                if i >= pieces or errors:
                    return
                fn(bounds[i], bounds[i + 1])
        except BaseException as e:   # the first error is re-raised by the caller
            errors.append(e)
        finally:
            _IN_TASK.on = False

    with serial_blas():
        helpers = [_POOL[0][1].submit(run) for _ in range(t - 1)]
        run()
        for f in helpers:
            f.cancel() or f.result()   # a helper that never started has nothing to finish
    if errors:
        raise errors[0]


def for_each(fn, count, work):
    """fn(i) for i in range(count), one piece each (chunks of a batch), spread over the pool as in_parallel."""
    in_parallel(lambda a, b: [fn(i) for i in range(a, b)], count, work, pieces=count)


# -- OpenBLAS's thread count -----------------------------------------------------------------------------
class _Blas:
    """OpenBLAS's global thread setter/getter (numpy's bundled build or a system one), found once; None where
    numpy uses another BLAS (which is left alone)."""

    NAMES = [("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
             ("scipy_openblas_set_num_threads", "scipy_openblas_get_num_threads"),
             ("openblas_set_num_threads64_", "openblas_get_num_threads64_"),
             ("openblas_set_num_threads", "openblas_get_num_threads")]

    def __init__(self):
        self.lock = threading.Lock()
        self.depth = 0
        self.saved = 1
        self.set = self.get = None
        for path in self._candidates():
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            for set_name, get_name in self.NAMES:
                if hasattr(lib, set_name) and hasattr(lib, get_name):
                    self.set, self.get = getattr(lib, set_name), getattr(lib, get_name)
                    self.set.argtypes, self.set.restype = [ctypes.c_int], None
                    self.get.argtypes, self.get.restype = [], ctypes.c_int
                    return

    @staticmethod
    def _candidates():
        import numpy as np   # loads numpy's BLAS, if it was not loaded yet

        seen = []
        try:
            with open("/proc/self/maps") as maps:
                for line in maps:
                    path = line.split()[-1] if line.count("/") else ""
                    if "openblas" in os.path.basename(path).lower() and path not in seen:
                        seen.append(path)
        except OSError:
            pass
        base = os.path.dirname(os.path.dirname(np.__file__))
        for pattern in ("numpy.libs/*openblas*", "numpy/.dylibs/*openblas*"):
            seen += [p for p in glob.glob(os.path.join(base, pattern)) if p not in seen]
        return seen


_BLAS = []


class serial_blas:
    """Context: OpenBLAS runs on the calling thread only (re-entrant and thread-safe: the first to enter saves
    the count, the last to leave restores it)."""

    __slots__ = ()

    def __enter__(self):
        if not _BLAS:
            _BLAS.append(_Blas())
        b = _BLAS[0]
        if b.set is None:
            return self
        with b.lock:
            if b.depth == 0:
                b.saved = b.get()
                if b.saved != 1:
                    b.set(1)
            b.depth += 1
        return self

    def __exit__(self, *exc):
        b = _BLAS[0]
        if b.set is None:
            return False
        with b.lock:
            b.depth -= 1
            if b.depth == 0 and b.saved != 1:
                b.set(b.saved)
        return False
