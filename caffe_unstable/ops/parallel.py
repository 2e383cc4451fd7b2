"""The ops' threads: one team of Python threads running nogil numba kernels and single-threaded BLAS calls.

Why one team: OpenBLAS's worker threads spin for a while after every GEMM (about 0.1 s by default), and numba's
parallel=True threads spin likewise; two pools on the same cores fight, and a net that alternates GEMMs with
im2col/pooling kernels then runs no faster on two cores than on one. So while an op runs, OpenBLAS is held to
one thread (`serial_blas`), and every split (a batch of im2col + GEMM chunks, a GEMM's row blocks, a pooling
kernel's planes) runs on this team. Work is cut into more pieces than threads and threads claim pieces as they
come, so a thread that gets its core late (a busy shared machine) just does fewer of them. What a piece computes
never depends on the thread count: results are the same on one thread as on eight.
The helpers spin for a millisecond between tasks (spin.py) and the caller hands a task over without holding the
GIL: waking a sleeping thread, or one asleep on the GIL, costs 20-100 us here, as much as a small layer's work.
"""
import ctypes
import glob
import itertools
import os
import threading
import time

import numpy as np

from . import spin

# Kernels over at least this many floats are split over THREADS threads; None: as many as BLAS gets,
# OMP_NUM_THREADS / OPENBLAS_NUM_THREADS, else the usable CPUs (at most 8), read once.
PARALLEL_MIN_FLOATS = 1 << 16
PIECES_PER_THREAD = 4
THREADS = None
SPIN_US = 1000      # how long an idle helper watches for the next task before it sleeps
HANDOFF_US = 50     # how long the caller waits, without the GIL, for a spinning helper to pick a task up
GRACE_US = 5        # and then for that helper to pass the GIL on (enter its first kernel)
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


def guided_bounds(count, threads):
    """Boundaries of pieces of [0, count) sized by what is left, (count - start) // (2 threads), at least one:
    few large pieces first, single items at the end, so that the threads finish together."""
    bounds = [0]
    while bounds[-1] < count:
        bounds.append(bounds[-1] + max(1, (count - bounds[-1]) // (2 * threads)))
    return bounds


def in_parallel(fn, count, work, pieces=None, guided=False):
    """fn(a, b) over [0, count) cut into contiguous pieces (`pieces` of them, else PIECES_PER_THREAD per
    thread; guided: guided_bounds, for items that each cost much more than a call), run by the calling thread
    and the team's threads when `work` floats merit it. fn must release the GIL for the most part (nogil numba
    kernels, BLAS calls) and may call BLAS: OpenBLAS is held to one thread meanwhile."""
    t = min(copy_threads() if work >= PARALLEL_MIN_FLOATS else 1, count)
    team = _team(t) if t > 1 and not getattr(_IN_TASK, "on", False) else None
    if team is None or not team.busy.acquire(blocking=False):   # another thread has the team: run alone
        with serial_blas():
            fn(0, count)
        return
    try:
        pieces = min(count, pieces or PIECES_PER_THREAD * t)
        task = _Task(fn, guided_bounds(count, t) if guided else [count * i // pieces for i in range(pieces + 1)])
        with serial_blas():
            team.start(task)
            mine = task.work()
            task.wait(task.pieces - mine, team.spin_rounds)
    finally:
        team.busy.release()
    if task.errors:
        raise task.errors[0]


class _Task:
    """One in_parallel call: pieces claimed by whichever thread comes first; the helpers report how many they
    finished (an atomic add without the GIL, spin.add_and_wait)."""

    def __init__(self, fn, bounds):
        self.fn, self.bounds = fn, bounds
        self.pieces = len(bounds) - 1
        self.claim = itertools.count()            # next() is atomic under the GIL
        self.started = np.zeros(1, np.int64)      # helpers that began a piece (the hand-over watches it)
        self.helped = np.zeros(1, np.int64)       # pieces the helpers finished
        self.errors = []                          # the first error is re-raised by the caller

    def work(self, helper=False):
        """Claim and run pieces until none are left; the number run."""
        done = 0
        _IN_TASK.on = True
        try:
            for i in iter(self.claim.__next__, None):
                if i >= self.pieces:
                    break
                if helper and not done:
                    self.started[0] += 1
                if not self.errors:               # after an error the rest is skipped, but still counted
                    try:
                        self.fn(self.bounds[i], self.bounds[i + 1])
                    except BaseException as e:
                        self.errors.append(e)
                done += 1
        finally:
            _IN_TASK.on = False
        return done

    def wait(self, helped, rounds):
        """Until the helpers have reported `helped` pieces: their last pieces are short, so spin (at most
        `rounds` rounds at a time), then poll with short sleeps (a long piece)."""
        while True:
            got = int(self.helped[0])
            if got >= helped:
                return
            if not spin.wait_while_equal(self.helped, got, rounds):
                time.sleep(50e-6)


class _Team:
    """The ops' helper threads. Each waits for the next task by watching a counter (spin.py) for SPIN_US, then
    sleeps on a condition; the caller bumps the counter (without the GIL while they spin) or notifies them.
    Spinning is what makes a split worth it for LeNet-sized layers: a sleeping thread, or one asleep on the GIL,
    takes 20-100 us to wake up."""

    def __init__(self, helpers):
        per_us = spin.rounds_per_us()
        self.spin_rounds, self.handoff_rounds, self.grace_rounds = (int(us * per_us)
                                                                    for us in (SPIN_US, HANDOFF_US, GRACE_US))
        self.size = helpers + 1
        self.busy = threading.Lock()               # one in_parallel call at a time uses the team
        self.generation = np.zeros(1, np.int64)
        self.wakeup = threading.Condition()
        self.task = None
        self.sleepers = 0
        for _ in range(helpers):
            threading.Thread(target=self._serve, name="cu-ops", daemon=True).start()

    def start(self, task):
        self.task = task
        if self.sleepers or task is None:
            with self.wakeup:
                self.generation[0] += 1
                self.wakeup.notify_all()
        else:
            # the helpers are spinning: bump their counter without the GIL, so that the first to see it finds
            # the GIL free, and give it time to pass the GIL on (taking a held GIL means sleeping on it)
            spin.bump_and_wait(self.generation, task.started, 0, self.handoff_rounds, self.grace_rounds)

    def stop(self):
        self.start(None)

    def _serve(self):
        seen, task, done = 0, None, 0
        nothing = np.zeros(1, np.int64)
        while True:
            report = task.helped if task is not None else nothing
            if not spin.add_and_wait(report, done, self.generation, seen, self.spin_rounds):
                with self.wakeup:
                    self.sleepers += 1
                    while self.generation[0] == seen:
                        self.wakeup.wait()
                    self.sleepers -= 1
            seen = int(self.generation[0])
            task, done = self.task, 0
            if task is None:
                return
            done = task.work(helper=True)


_TEAM = []


def _team(threads):
    """The team with at least `threads` threads (the caller included), started on first use."""
    if not _TEAM or _TEAM[0].size < threads:
        if _TEAM:
            _TEAM[0].stop()
        _TEAM[:] = [_Team(threads - 1)]
    return _TEAM[0]


if hasattr(os, "register_at_fork"):      # a forked child has none of the parent's threads
    os.register_at_fork(after_in_child=_TEAM.clear)


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
