"""streams.py: numba's SeedSequence + PCG64 seeding and the per-image MAC-flip draws equal numpy's, bit for bit."""
import numpy as np

from caffe_unstable.accel.faults import streams
from caffe_unstable.accel.faults.carry_horizon import CarryHorizon
from caffe_unstable.accel.faults.mac_flip import sample_flips
from caffe_unstable.accel.faults.rng import PassKey, generator


def test_pcg64_state_equals_numpys_seeding():
    """Seeds of one and two 32-bit words and 0, keys with entries of one and two words (an iteration past 2^32)."""
    rng = np.random.default_rng(0)
    scratch = np.empty(64, np.uint32)
    for t in range(2000):
        seed = [0, int(rng.integers(0, 2 ** 32)), int(rng.integers(0, 2 ** 63))][t % 3]
        key = tuple(int(v) for v in rng.integers(0, [8, 256, 2 ** 40, 4, 64, 5000]))
        want = np.random.PCG64(np.random.SeedSequence(entropy=seed, spawn_key=key)).state["state"]
        lo, hi, inc_lo, inc_hi = streams.pcg64_state(np.array(streams.uint32_words(seed), np.uint32),
                                                     np.array(key, np.int64), scratch)
        assert (int(lo) | int(hi) << 64, int(inc_lo) | int(inc_hi) << 64) == (want["state"], want["inc"]), (seed, key)


def test_layer_flips_equal_the_reference_draws():
    """Counts from the inversion and the BTPE regimes of binomial, top-ups of the distinct positions, bit ranges;
    and the reseeded generator leaves no trace between calls."""
    g = streams.reseedable()
    rng = np.random.default_rng(1)
    regimes = 0
    for t in range(200):
        seed = int(rng.integers(0, 2 ** 63))
        N = int(rng.integers(1, 3_000_000)) if t % 10 else 50          # N 50: draws collide, top-ups happen
        rate = float(10 ** rng.uniform(-7, -2.5)) if t % 10 else 0.3
        lo = int(rng.integers(0, 8))
        hi = int(rng.integers(lo, 32))
        prefix = [1, int(rng.integers(0, 3)), int(rng.integers(0, 10 ** 6)), 0, int(rng.integers(0, 20)), 0]
        batch = int(rng.integers(1, 12))
        k, bits, n = streams.layer_flips(g.generator, g.words, g.flags, np.array(streams.uint32_words(seed), np.uint32),
                                         np.array(prefix, np.int64), batch, N, rate, lo, hi)
        ref = [sample_flips(generator(seed, tuple(prefix[:5]) + (i,)), N, rate, lo, hi) for i in range(batch)]
        np.testing.assert_array_equal(k, np.concatenate([r[0] for r in ref]))
        np.testing.assert_array_equal(bits, np.concatenate([r[1] for r in ref]))
        np.testing.assert_array_equal(n, np.concatenate([np.full(len(r[0]), i) for i, r in enumerate(ref)]))
        regimes |= 1 if N * rate <= 30 else 2
    assert regimes == 3


def test_reseeded_generator_draws_like_a_fresh_one():
    """The numpy path for layers with many flips per image: the reused Generator, reseeded, draws exactly what
    generator(seed, key) draws, including after a previous use left it mid-stream."""
    words = np.array(streams.uint32_words(2 ** 40 + 5), np.uint32)
    for image in range(5):
        key = (1, 0, 7, 0, 3, image)
        stream = streams.reseeded(words, key)
        got = sample_flips(stream, 10 ** 8, 10 ** -4.5, 0, 31)
        stream.integers(0, 10, size=3)                         # leave it mid-stream, with a buffered half-word
        want = sample_flips(generator(2 ** 40 + 5, key), 10 ** 8, 10 ** -4.5, 0, 31)
        assert len(got[0]) > 1000
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


def test_first_uint64s_equal_numpys_timing_keys():
    """A carry-horizon plan's per-image keys: generator(seed, key).integers(0, 2**64, dtype=uint64), bit for bit,
    for seeds of one and two words and keys with two-word entries; and through CarryHorizon with a PassKey."""
    rng = np.random.default_rng(5)
    for t in range(300):
        seed = [0, int(rng.integers(0, 2 ** 32)), int(rng.integers(0, 2 ** 63))][t % 3]
        prefix = [2, int(rng.integers(0, 256)), int(rng.integers(0, 2 ** 40)), int(rng.integers(0, 4)),
                  int(rng.integers(0, 64)), 0]
        count = int(rng.integers(1, 9))
        got = streams.first_uint64s(np.array(streams.uint32_words(seed), np.uint32), np.array(prefix, np.int64),
                                    count)
        want = [generator(seed, tuple(prefix[:5]) + (n,)).integers(0, 2 ** 64, dtype=np.uint64)
                for n in range(count)]
        assert got.dtype == np.uint64 and got.tolist() == [int(w) for w in want], (seed, prefix)
    model = CarryHorizon(260, 210, t0_ns=2.0, tau_ns_per_bit=0.06, jitter_ns=0.05)
    key = PassKey(2 ** 40 + 3, phase=1, iteration=9)
    tp = model.timing_plan(6, 16, 4, key)
    assert tp.keys.tolist() == [int(key.generator("timing_key", 4, n).integers(0, 2 ** 64, dtype=np.uint64))
                                for n in range(6)]
    assert model.timing_plan(6, 16, 5, key).thresholds is tp.thresholds      # one table for every layer


def test_sort_uniform_equals_numpys_sort():
    """The bucket sort of the numba draws: any values in [0, N), uniform or not (sorted, reversed, repeated)."""
    rng = np.random.default_rng(8)
    cases = [rng.integers(0, N, m) for m in (0, 1, 2, 5, 84, 3000) for N in (1, 7, 10 ** 9, 2 ** 50)]
    cases += [np.arange(700), np.arange(700)[::-1].copy(), np.full(300, 5), np.array([2 ** 50 - 1, 0])]
    for a in cases:
        N = max(int(a.max(initial=0)) + 1, 2 ** 50 if len(a) == 2 else 1)
        np.testing.assert_array_equal(streams._sort_uniform(a.astype(np.int64), N), np.sort(a))
