"""faults.md §3 and §12: seeded generators, golden sampling, SplitMix64 and the per-add horizon lookup."""
import hashlib

import numpy as np
import pytest

from caffe_unstable.accel.faults.carry_horizon import k_thresholds
from caffe_unstable.accel.faults.mac_flip import sample_flips
from caffe_unstable.accel.faults.rng import PassKey, generator, k_from_u32, mix64, sample_distinct, u32
from caffe_unstable.errors import CaffeUnstableError


def _key(e):
    return (e["stream_id"], e["phase"], e["iteration"], e["pass_"], e["layer_index"], e["image_index"])


def _sha(a):
    return hashlib.sha256(np.asarray(a, dtype="<i8").tobytes()).hexdigest()


def test_plan_sampling_golden(vectors, numpy_version_note):
    assert len(vectors["plan_sampling"]) == 6
    for e in vectors["plan_sampling"]:
        k, bits = sample_flips(generator(e["seed"], _key(e)), e["N"], e["rate"], e["bit_lo"], e["bit_hi"])
        assert len(k) == e["F"], numpy_version_note
        if "positions" in e:
            assert k.tolist() == e["positions"] and bits.tolist() == e["bits"], numpy_version_note
        else:
            assert k[:10].tolist() == e["positions_head"] and bits[:10].tolist() == e["bits_head"]
            assert _sha(k) == e["sha256_positions_int64le"], numpy_version_note
            assert _sha(bits) == e["sha256_bits_int64le"], numpy_version_note


def test_timing_draws_golden(vectors, numpy_version_note):
    e = vectors["timing_key_draw"]
    key = generator(e["seed"], _key(e)).integers(0, 2 ** 64, dtype=np.uint64)
    assert int(key) == int(e["key"]), numpy_version_note
    e = vectors["timing_image_draw"]
    assert generator(e["seed"], _key(e)).normal(0.0, e["jitter_ns"]) == e["eps_ns"], numpy_version_note


def test_passkey_names_streams():
    k = PassKey(7, phase=1, iteration=12, pass_=3)
    assert k.key("timing_key", 4, 2) == (2, 1, 12, 3, 4, 2)
    a = k.generator("mac_flip", 3, 0).integers(0, 2 ** 62)
    assert a == generator(7, (1, 1, 12, 3, 3, 0)).integers(0, 2 ** 62)
    with pytest.raises(CaffeUnstableError, match=r"seed: must be an integer in \[0, 2\^63\)"):
        PassKey(-1)


def test_splitmix64_vectors(vectors):
    assert len(vectors["splitmix64"]) == 6
    for e in vectors["splitmix64"]:
        assert int(mix64(np.uint64(int(e["key"])))) == int(e["mix64_of_key"])
        assert int(u32(int(e["key"]), int(e["ctr"]))) == e["u32"]
    keys = np.array([int(e["key"]) for e in vectors["splitmix64"]], np.uint64)
    ctrs = np.array([int(e["ctr"]) for e in vectors["splitmix64"]], np.uint64)
    assert u32(keys, ctrs).tolist() == [e["u32"] for e in vectors["splitmix64"]]


def test_k_from_u32_vectors(vectors):
    th = np.array(k_thresholds(260, 1.94, 0.07, 0.01), np.uint64)
    for e in vectors["k_from_u32"]:
        assert e["f_mhz"] == 260
        assert int(k_from_u32(e["u32"], th)) == e["K"]


@pytest.mark.parametrize("ratio", [1e-6, 1e-4, 1e-2, 0.1, 0.3, 0.6])
def test_sample_distinct_sorted_unique_in_range(ratio):
    rng = np.random.default_rng(5)
    for N in (1_000, 10_000_000, 2 ** 40):
        F = max(1, int(N * ratio)) if N * ratio < 10_000 else 10_000
        k = sample_distinct(rng, N, F)
        assert k.size == F and k[0] >= 0 and k[-1] < N
        assert (np.diff(k) > 0).all()


def test_sample_distinct_every_subset_and_refusal():
    rng = np.random.default_rng(1)
    assert sample_distinct(rng, 5, 5).tolist() == [0, 1, 2, 3, 4]
    assert sample_distinct(rng, 5, 0).size == 0
    with pytest.raises(CaffeUnstableError, match="cannot draw 6 distinct positions from 5"):
        sample_distinct(rng, 5, 6)
