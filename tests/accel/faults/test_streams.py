"""streams.py: numba's SeedSequence + PCG64 seeding and the per-image MAC-flip draws equal numpy's, bit for bit."""
import numpy as np

from caffe_unstable.accel.faults import mac_records, streams
from caffe_unstable.accel.faults.indexing import conv_geometry
from caffe_unstable.accel.faults.carry_horizon import CarryHorizon
from caffe_unstable.accel.faults.mac_flip import _records, sample_flips, sorted_mac_events
from caffe_unstable.accel.faults.plan import MAC_EVENT_DTYPE
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


def test_layer_records_equal_the_reference_draws():
    """mac_records.layer_records draws, in numba, what sample_flips draws from generator(seed, key) image by image:
    counts from the inversion and the BTPE regimes of binomial, top-ups of the distinct positions, bit ranges;
    the reseeded generator leaves no trace between calls; columns too short are reported, not overrun."""
    g = streams.reseedable()
    rng = np.random.default_rng(1)
    regimes = 0
    for t in range(200):
        seed = int(rng.integers(0, 2 ** 63))
        vec, lane = (int(v) for v in rng.choice([4, 8, 16], 2))
        geo = conv_geometry(int(rng.integers(1, 40)), 13, 13, int(rng.integers(1, 70)), 3, 3, 1, 1, 1, vec, lane)
        N = geo["N_MAC"]
        if t % 10 == 0:
            geo = conv_geometry(1, 5, 5, 3, 1, 1, 1, 0, 1, 4, 2)    # 200 MACs, one padded lane of four
            N = geo["N_MAC"]
        rate = float(10 ** rng.uniform(-6, -2.5)) if t % 10 else 0.3    # 0.3 of 200: draws collide, top-ups
        lo = int(rng.integers(0, 8))
        hi = int(rng.integers(lo, 18))
        prefix = [1, int(rng.integers(0, 3)), int(rng.integers(0, 10 ** 6)), 0, int(rng.integers(0, 20)), 0]
        batch = int(rng.integers(1, 12))
        ev = np.empty(batch * N, MAC_EVENT_DTYPE)
        cols = tuple(ev[f] for f in MAC_EVENT_DTYPE.names) + (np.empty(batch * N, np.int64),
                                                               np.empty((batch * N, 4), np.int64))
        starts = np.zeros(batch * geo["O"] + 1, np.int64)
        args = (g.generator, g.words, g.flags, np.array(streams.uint32_words(seed), np.uint32),
                np.array(prefix, np.int64), batch, N, rate, lo, hi, geo["VEC_SIZE"], geo["L"], geo["LANE_NUM"],
                geo["conv_x"], geo["conv_y"], geo["po"], geo["O"], 1)
        kept, masked, m = mac_records.layer_records(*args, *cols, starts)
        ref = [sample_flips(generator(seed, tuple(prefix[:5]) + (i,)), N, rate, lo, hi) for i in range(batch)]
        k, bits = np.concatenate([r[0] for r in ref]), np.concatenate([r[1] for r in ref])
        n = np.concatenate([np.full(len(r[0]), i) for i, r in enumerate(ref)])
        (o, y, x, st, b), want_masked, valid = _records(k, bits, geo, "hardware")
        want = sorted_mac_events(n[valid] if want_masked else n, o, y, x, st, 1, b, geo)
        assert (kept, masked) == (len(want), want_masked)
        assert np.array_equal(ev[:kept], want)
        keys = ((want["n"].astype(np.int64) * geo["O"] + want["o"]) * geo["conv_y"] + want["y"]) * geo["conv_x"] \
            + want["x"]
        fo_key, first = np.unique(keys, return_index=True)                    # keys are sorted: runs
        fo_rng = np.stack([first, np.append(first[1:], len(keys))[:len(first)], 0 * first, 0 * first], axis=1)
        assert m == len(fo_key) and np.array_equal(cols[-2][:m], fo_key) and np.array_equal(cols[-1][:m], fo_rng)
        per_channel = np.bincount(fo_key // (geo["conv_y"] * geo["conv_x"]), minlength=batch * geo["O"])
        assert np.array_equal(starts, np.concatenate([[0], np.cumsum(per_channel)]))
        if kept:
            short = np.empty(kept - 1, MAC_EVENT_DTYPE)
            assert mac_records.layer_records(*args, *(short[f] for f in MAC_EVENT_DTYPE.names),
                                             *cols[-2:], 0 * starts) == (-1, 0, 0)
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
