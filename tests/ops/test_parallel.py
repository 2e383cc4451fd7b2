"""The ops' thread team (ops/parallel.py) and its spin-waits (ops/spin.py): every piece runs exactly once, on any
thread count, with sleeping or spinning helpers, errors re-raised, nested and concurrent calls."""
import threading
import time

import numpy as np
import pytest

import caffe_unstable.ops.parallel as parallel
from caffe_unstable.ops import spin


@pytest.fixture
def fresh_team(monkeypatch):
    """A team built for the test (and dropped after it), splitting everything."""
    monkeypatch.setattr(parallel, "PARALLEL_MIN_FLOATS", 0)
    monkeypatch.setattr(parallel, "_TEAM", [])
    yield
    if parallel._TEAM:
        parallel._TEAM[0].stop()


def _cover(count, pieces=None, sleep=0.0, guided=False):
    """How often each index of [0, count) was visited, and by how many distinct threads."""
    hits = np.zeros(count, np.int64)
    threads = set()

    def fn(a, b):
        threads.add(threading.get_ident())
        if sleep:
            time.sleep(sleep)   # releases the GIL, as a kernel does
        hits[a:b] += 1
    parallel.in_parallel(fn, count, 1 << 30, pieces=pieces, guided=guided)
    return hits, threads


@pytest.mark.parametrize("threads", [1, 2, 3, 5])
@pytest.mark.parametrize("count,pieces", [(1, None), (7, None), (64, 16), (1000, 3)])
@pytest.mark.parametrize("guided", [False, True])
def test_every_index_exactly_once(fresh_team, monkeypatch, threads, count, pieces, guided):
    monkeypatch.setattr(parallel, "THREADS", threads)
    for _ in range(20):
        hits, _ = _cover(count, pieces, guided=guided)
        np.testing.assert_array_equal(hits, np.ones(count, np.int64))


def test_guided_pieces_shrink_to_single_items():
    b = parallel.guided_bounds(237, 2)
    sizes = np.diff(b)
    assert b[0] == 0 and b[-1] == 237 and sizes[0] == 237 // 4
    assert (sizes >= 1).all() and (np.diff(sizes) <= 0).all() and sizes[-3:].tolist() == [1, 1, 1]
    assert len(b) - 1 < 40                  # far fewer calls than items
    assert parallel.guided_bounds(3, 8) == [0, 1, 2, 3] and parallel.guided_bounds(0, 2) == [0]


def test_helpers_take_pieces_spinning_and_after_sleeping(fresh_team, monkeypatch):
    """Pieces that release the GIL are shared: right after a task (helpers spinning) and after a pause long
    enough for the helpers to fall asleep (the condition's path)."""
    monkeypatch.setattr(parallel, "THREADS", 2)
    monkeypatch.setattr(parallel, "SPIN_US", 200)
    _, used = _cover(8, sleep=0.005)
    assert len(used) == 2
    _, used = _cover(8, sleep=0.005)
    assert len(used) == 2
    time.sleep(0.05)                               # the helper gives up spinning and sleeps
    assert parallel._TEAM[0].sleepers == 1
    hits, used = _cover(8, sleep=0.005)
    assert len(used) == 2 and (hits == 1).all()


def test_an_error_is_raised_and_the_team_goes_on(fresh_team, monkeypatch):
    monkeypatch.setattr(parallel, "THREADS", 3)

    def fn(a, b):
        if a <= 5 < b:
            raise ValueError("piece with 5")
    with pytest.raises(ValueError, match="piece with 5"):
        parallel.in_parallel(fn, 12, 1 << 30)
    hits, _ = _cover(12)
    assert (hits == 1).all()


def test_nested_and_concurrent_calls(fresh_team, monkeypatch):
    """A split inside a piece runs on its own thread; two Python threads calling at once both finish (one of
    them alone, since the team is busy)."""
    monkeypatch.setattr(parallel, "THREADS", 2)
    inner = np.zeros(40, np.int64)

    def outer(a, b):
        for i in range(a, b):
            parallel.in_parallel(lambda c, d, i=i: inner.__setitem__(slice(i * 4 + c, i * 4 + d),
                                                                      inner[i * 4 + c:i * 4 + d] + 1), 4, 1 << 30)
    parallel.in_parallel(outer, 10, 1 << 30)
    assert (inner == 1).all()
    results = [None, None]

    def caller(k):
        results[k] = [_cover(50, sleep=0.001)[0] for _ in range(5)]
    workers = [threading.Thread(target=caller, args=(k,)) for k in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=30)
    assert all(r is not None and all((h == 1).all() for h in r) for r in results)


def test_spin_wait_sees_another_threads_store_and_times_out():
    counter = np.zeros(1, np.int64)
    assert not spin.wait_while_equal(counter, 0, 1000)
    timer = threading.Timer(0.02, lambda: counter.__setitem__(0, 7))
    timer.start()
    start = time.perf_counter()
    assert spin.wait_while_equal(counter, 0, 1 << 62)
    assert counter[0] == 7 and time.perf_counter() - start < 5
    acks = np.zeros(1, np.int64)
    spin.bump_and_wait(counter, acks, 0, 100, 10)      # no helper answers: it gives up after its rounds
    assert counter[0] == 8
    assert spin.rounds_per_us() >= 1
