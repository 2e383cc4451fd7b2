"""faults.md §3.1's per-image generators, without building a SeedSequence and a PCG64 per image.

`rng.generator(seed, key)` is numpy's Generator(PCG64(SeedSequence(seed, spawn_key=key))); building one costs
about 11 us, and a soft-error plan wants one per layer and image (LeNet: 256 per forward, more than the draws
cost). Here SeedSequence's hash mixing and PCG64's seeding run in numba, bit for bit numpy's
(numpy/random/bit_generator.pyx, pcg64.c), and the state is written straight into one reused PCG64, whose memory
numpy arrays view; the draws then come from numba's Generator methods, which reproduce numpy's (tested). The
numpy path stays the reference (`rng.generator`), and the tests compare the two.
"""
import ctypes
import threading

import numpy as np
from numba import njit, uint32, uint64

# SeedSequence's constants (bit_generator.pyx)
INIT_A, MULT_A, INIT_B, MULT_B = 0x43B0D7E5, 0x931E8875, 0x8B51F9DD, 0x58F38DED
MIX_MULT_L, MIX_MULT_R, XSHIFT = 0xCA01F9DD, 0x4973F715, 16
POOL_SIZE = 4
# PCG64's 128-bit multiplier (pcg64.h PCG_DEFAULT_MULTIPLIER_128), high and low words
PCG_MULT_HI, PCG_MULT_LO = 2549297995355413924, 4865540595714422341


def uint32_words(n):
    """SeedSequence's _coerce_to_uint32_array of one non-negative int: its 32-bit words, low first ([0] for 0)."""
    n = int(n)
    words = []
    while True:
        words.append(n & 0xFFFFFFFF)
        n >>= 32
        if not n:
            return words


@njit(cache=True, nogil=True)
def _hashmix(value, hash_const):
    value = uint32(value ^ hash_const[0])
    hash_const[0] = uint32(hash_const[0] * uint32(MULT_A))
    value = uint32(value * hash_const[0])
    return uint32(value ^ (value >> uint32(XSHIFT)))


@njit(cache=True, nogil=True)
def _mix(x, y):
    r = uint32(uint32(uint32(MIX_MULT_L) * x) - uint32(uint32(MIX_MULT_R) * y))
    return uint32(r ^ (r >> uint32(XSHIFT)))


@njit(cache=True, nogil=True)
def _key_words(entropy_words, key, out):
    """The assembled entropy of SeedSequence(entropy, spawn_key=key) into `out`; its length. The run entropy is
    padded with zeros to the pool size (a spawn key is present); each key entry is one or two 32-bit words."""
    m = 0
    for w in entropy_words:
        out[m] = w
        m += 1
    while m < POOL_SIZE:
        out[m] = 0
        m += 1
    for k in key:
        v = uint64(k)
        while True:
            out[m] = uint32(v & uint64(0xFFFFFFFF))
            m += 1
            v = v >> uint64(32)
            if v == 0:
                break
    return m


@njit(cache=True, nogil=True)
def _mulhi64(a, b):
    """The high 64 bits of the 128-bit product of two uint64."""
    mask = uint64(0xFFFFFFFF)
    a_lo, a_hi, b_lo, b_hi = a & mask, a >> uint64(32), b & mask, b >> uint64(32)
    lo_lo, hi_lo, lo_hi, hi_hi = a_lo * b_lo, a_hi * b_lo, a_lo * b_hi, a_hi * b_hi
    cross = (lo_lo >> uint64(32)) + (hi_lo & mask) + lo_hi
    return hi_hi + (hi_lo >> uint64(32)) + (cross >> uint64(32))


@njit(cache=True, nogil=True)
def _pcg_step(s_hi, s_lo, i_hi, i_lo):
    """state * MULT + inc (mod 2^128): pcg_setseq_128_step_r."""
    m_hi, m_lo = uint64(PCG_MULT_HI), uint64(PCG_MULT_LO)
    lo = s_lo * m_lo
    hi = _mulhi64(s_lo, m_lo) + s_lo * m_hi + s_hi * m_lo
    new_lo = lo + i_lo
    carry = uint64(1) if new_lo < lo else uint64(0)
    return hi + i_hi + carry, new_lo


@njit(cache=True, nogil=True)
def pcg64_state(entropy_words, key, scratch):
    """(state_lo, state_hi, inc_lo, inc_hi) of PCG64(SeedSequence(entropy, spawn_key=key)): mix_entropy,
    generate_state(4, uint64), pcg64_set_seed. `scratch`: uint32 room for the assembled entropy."""
    m = _key_words(entropy_words, key, scratch)
    hash_const = np.empty(1, np.uint32)
    hash_const[0] = INIT_A
    pool = np.empty(POOL_SIZE, np.uint32)
    for i in range(POOL_SIZE):
        pool[i] = _hashmix(scratch[i] if i < m else uint32(0), hash_const)
    for i_src in range(POOL_SIZE):
        for i_dst in range(POOL_SIZE):
            if i_src != i_dst:
                pool[i_dst] = _mix(pool[i_dst], _hashmix(pool[i_src], hash_const))
    for i_src in range(POOL_SIZE, m):
        for i_dst in range(POOL_SIZE):
            pool[i_dst] = _mix(pool[i_dst], _hashmix(scratch[i_src], hash_const))
    # generate_state(4, uint64): 8 uint32 words cycling over the pool, read as 4 little-endian uint64
    hc = uint32(INIT_B)
    words = np.empty(8, np.uint64)
    for i in range(8):
        v = uint32(pool[i % POOL_SIZE] ^ hc)
        hc = uint32(hc * uint32(MULT_B))
        v = uint32(v * hc)
        words[i] = uint64(uint32(v ^ (v >> uint32(XSHIFT))))
    val = np.empty(4, np.uint64)
    for i in range(4):
        val[i] = words[2 * i] | (words[2 * i + 1] << uint64(32))
    # pcg64_set_seed(seed = val[0:2], inc = val[2:4]), each (high, low); pcg64_srandom_r
    init_hi, init_lo, seq_hi, seq_lo = val[0], val[1], val[2], val[3]
    i_hi = (seq_hi << uint64(1)) | (seq_lo >> uint64(63))
    i_lo = (seq_lo << uint64(1)) | uint64(1)
    s_hi, s_lo = _pcg_step(uint64(0), uint64(0), i_hi, i_lo)
    s_lo2 = s_lo + init_lo
    s_hi = s_hi + init_hi + (uint64(1) if s_lo2 < s_lo else uint64(0))
    s_hi, s_lo = _pcg_step(s_hi, s_lo2, i_hi, i_lo)
    return s_lo, s_hi, i_lo, i_hi


@njit(cache=True, nogil=True)
def first_uint64s(entropy_words, key, count):
    """The first 64-bit output of generator(seed, key) with key[5] = 0 .. count-1, as numpy's
    Generator.integers(0, 2**64, dtype=uint64) gives it (the raw next_uint64; tested): PCG64 steps its state
    (pcg_setseq_128_step_r) and outputs XSL-RR of the new state, rotr64(hi ^ lo, hi >> 58). A carry-horizon
    plan wants one such key per layer and image (cifar10_quick at batch 100: 500 generators, about 6 ms)."""
    scratch = np.empty(32, np.uint32)
    out = np.empty(count, np.uint64)
    for n in range(count):
        key[5] = n
        s_lo, s_hi, i_lo, i_hi = pcg64_state(entropy_words, key, scratch)
        hi, lo = _pcg_step(s_hi, s_lo, i_hi, i_lo)
        x, rot = hi ^ lo, hi >> uint64(58)
        out[n] = (x >> rot) | (x << ((uint64(64) - rot) & uint64(63)))
    return out


class ReseedableGenerator:
    """One numpy Generator over a PCG64 whose state numba code rewrites in place (`words`: state low, high, inc
    low, high; `flags`: has_uint32, uinteger), for per-image streams drawn inside one numba call."""

    def __init__(self):
        self.bit_generator = np.random.PCG64(0)
        self.generator = np.random.Generator(self.bit_generator)
        address = self.bit_generator.ctypes.state_address        # pcg64_state: {pcg64_random_t *, int, uint32}
        inner = ctypes.cast(address, ctypes.POINTER(ctypes.c_void_p))[0]
        self.words = np.ctypeslib.as_array((ctypes.c_uint64 * 4).from_address(inner))
        self.flags = np.ctypeslib.as_array((ctypes.c_uint32 * 2).from_address(address + 8))


_LOCAL = threading.local()


def reseedable():
    """This thread's ReseedableGenerator (one per thread: numba code rewrites its state)."""
    g = getattr(_LOCAL, "generator", None)
    if g is None:
        g = _LOCAL.generator = ReseedableGenerator()
    return g


def reseeded(entropy_words, key):
    """This thread's reusable numpy Generator, set to the state of generator(seed, key) (entropy_words: the
    seed's uint32_words). Valid until the next reseed on this thread."""
    g = reseedable()
    state = pcg64_state(entropy_words, np.asarray(key, np.int64), np.empty(32, np.uint32))
    g.words[:] = state
    g.flags[:] = 0
    return g.generator


@njit(cache=True, nogil=True)
def _sort_uniform(a, N):
    """np.sort(a) for values in [0, N) drawn uniformly: one bucket per element by value, then an insertion pass
    over the nearly sorted result (linear on average). numba's np.sort took about 44 ns an element here, most of
    a soft-error plan's cost on small layers (cifar10_quick: 2 of 2.5 ms)."""
    m = a.size
    out = np.empty(m, a.dtype)
    if m == 0:
        return out
    scale = m / N
    start = np.zeros(m + 1, np.int64)
    for i in range(m):
        start[min(np.int64(a[i] * scale), m - 1) + 1] += 1
    for b in range(m):
        start[b + 1] += start[b]
    for i in range(m):
        b = min(np.int64(a[i] * scale), m - 1)
        out[start[b]] = a[i]
        start[b] += 1
    for i in range(1, m):
        v = out[i]
        j = i - 1
        while j >= 0 and out[j] > v:
            out[j + 1] = out[j]
            j -= 1
        out[j + 1] = v
    return out


@njit(cache=True, nogil=True)
def distinct(gen, N, F):
    """rng.sample_distinct's draws and result, in numba: F candidates, the distinct ones kept (sorted), topped up."""
    idx = np.empty(0, np.int64)
    while idx.size < F:
        cand = gen.integers(0, N, F - idx.size)
        merged = _sort_uniform(np.concatenate((idx, cand)), N)
        keep = np.ones(merged.size, np.bool_)
        for i in range(1, merged.size):
            keep[i] = merged[i] != merged[i - 1]
        idx = merged[keep]
    return idx
