"""Randomness of the fault models: seed keys, streams, distinct positions and the SplitMix64 counter RNG
(faults.md §3).

Every draw comes from `generator(seed, (stream, phase, iteration, pass_, layer_index, image_index))`, a PCG64
generator seeded by a SeedSequence spawn key, so a plan depends only on the seed and the solver state; frequency
and rate never enter a key (common random numbers across a sweep). Backends draw nothing: the only randomness
they evaluate is `u32(key, counter)`, a pure integer function, for the per-add jitter of the carry horizon.
"""
from dataclasses import dataclass

import numpy as np

from ...errors import CaffeUnstableError

# Stream ids of faults.md §3.2, in the key's first slot.
STREAMS = {"mac_flip": 1, "timing_key": 2, "timing_image": 3, "timing_rate": 4, "weight_mem": 5, "act_mem": 6,
           "permanent": 7}
# `phase` of a canary check (faults.md §3.1 table); TRAIN is 0, TEST net j of a solver 1 + j.
CANARY_PHASE = 255

GAMMA = 0x9E3779B97F4A7C15
MASK64 = (1 << 64) - 1


def check_seed(seed):
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2 ** 63:
        raise CaffeUnstableError("seed", f"must be an integer in [0, 2^63), got {seed!r}")
    return int(seed)


def generator(seed, key):
    """numpy Generator(PCG64(SeedSequence(seed, spawn_key=key))) for a 6-tuple key (faults.md §3.1)."""
    seq = np.random.SeedSequence(entropy=check_seed(seed), spawn_key=tuple(int(k) for k in key))
    return np.random.Generator(np.random.PCG64(seq))


@dataclass(frozen=True)
class PassKey:
    """The solver-state part of a key: one forward pass (faults.md §3.1 table)."""

    seed: int
    phase: int = 0
    iteration: int = 0
    pass_: int = 0

    def __post_init__(self):
        check_seed(self.seed)

    def key(self, stream, layer_index=0, image_index=0):
        stream = STREAMS.get(stream, stream)
        return (stream, self.phase, self.iteration, self.pass_, layer_index, image_index)

    def generator(self, stream, layer_index=0, image_index=0):
        """The generator of `stream` (a name of STREAMS or its id) for one layer and image of this pass."""
        return generator(self.seed, self.key(stream, layer_index, image_index))


def sample_distinct(rng, N, F):
    """F distinct positions in [0, N), sorted, uniformly random among F-subsets (faults.md §3.2, exactly).

    Never allocates an N-sized array: draws F candidates, keeps the distinct ones and tops up.
    """
    if not 0 <= F <= N:
        raise CaffeUnstableError("sample_distinct", f"cannot draw {F} distinct positions from {N}")
    idx = np.empty(0, np.int64)
    while idx.size < F:
        cand = rng.integers(0, N, size=F - idx.size, dtype=np.int64)
        idx = _sorted_unique(np.concatenate([idx, cand]))
    return idx


def _sorted_unique(a):
    """numpy.unique(a) for int64 a (sorted, distinct), without its hashing overhead."""
    a = np.sort(a)
    keep = np.ones(a.size, bool)
    keep[1:] = a[1:] != a[:-1]
    return a[keep]


# -- SplitMix64 (faults.md §3.3) ---------------------------------------------------------------------------------
def mix64(z):
    """SplitMix64's finaliser on uint64 arrays (wrapping arithmetic)."""
    z = np.asarray(z, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def u32(key, ctr):
    """The (ctr+1)-th SplitMix64 output of `key`, top 32 bits: mix64(key + (ctr+1)·GAMMA) >> 32, as uint64."""
    key = np.asarray(key, dtype=np.uint64)
    ctr = np.asarray(ctr, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = key + (ctr + np.uint64(1)) * np.uint64(GAMMA)
    return mix64(z) >> np.uint64(32)


def counter_accumulate(oidx, t, L):
    """Counter of the accumulate add of step t of real output oidx: (oidx·L + t)·4 + 0."""
    return (np.asarray(oidx, dtype=np.uint64) * np.uint64(L) + np.asarray(t, dtype=np.uint64)) * np.uint64(4)


def counter_final(oidx, i, P):
    """Counter of final-reduce add i (1 … P−1): (oidx·P + i)·4 + 1."""
    base = np.asarray(oidx, dtype=np.uint64) * np.uint64(P) + np.asarray(i, dtype=np.uint64)
    return base * np.uint64(4) + np.uint64(1)


def counter_tree(oidx, t, i, L, vec_size):
    """Counter of adder-tree add i (1 … VEC/4−1) at step t: ((oidx·L + t)·(VEC/4) + i)·4 + 2."""
    step = np.asarray(oidx, dtype=np.uint64) * np.uint64(L) + np.asarray(t, dtype=np.uint64)
    return (step * np.uint64(vec_size // 4) + np.asarray(i, dtype=np.uint64)) * np.uint64(4) + np.uint64(2)


def k_from_u32(u, thresholds):
    """Horizon from a draw: K = 31 − #{j : u < thresholds[j]} (branch-free; thresholds[..., 31] cumulative).

    `u`: uint64 array; `thresholds`: uint64 array whose last axis has the 31 entries (broadcast against u).
    """
    u = np.asarray(u, dtype=np.uint64)[..., None]
    return (31 - (u < np.asarray(thresholds, dtype=np.uint64)).sum(axis=-1)).astype(np.int64)
