"""faults.md §9: canary set files, levels, drift and the check line."""
import numpy as np
import pytest

from caffe_unstable.accel.faults.canaries import (CanarySet, check, check_line, class_scores, drifted, grade,
                                                 model_sha256, top5)
from caffe_unstable.errors import CaffeUnstableError


def _set(rng, n=16, k=10):
    ref = rng.integers(-128, 128, (n, k), dtype=np.int8)
    meta = {"format": "caffe_unstable.canary_set/1", "model_sha256": model_sha256(b"proto", b"weights"),
            "count": n, "degraded_min": 0.9, "expected": [{"freq_mhz": 260, "exact": 0.5, "top1": 1.0,
                                                            "top5": 1.0, "level": 1}]}
    return CanarySet(meta, rng.integers(-128, 128, (n, 3, 4, 4), dtype=np.int8), np.arange(n, dtype=np.int32),
                     ref, top5(ref))


def test_levels():
    assert [grade(1, 1, 1), grade(0.5, 1, 1), grade(0, 0.8, 0.95), grade(0, 0.5, 0.85)] == [0, 1, 2, 3]
    assert grade(0, 0.5, 0.85, degraded_min=0.8) == 2


def test_check_and_drift():
    rng = np.random.default_rng(0)
    s = _set(rng)
    assert check(s.ref_output, s.ref_output, s.ref_top5) == {"n": 16, "exact": 16, "top1": 16, "top5": 16,
                                                              "level": 0, "name": "exact"}
    out = s.ref_output.copy()
    low = out[:5].argmin(axis=1)
    out[np.arange(5), low] += 1                                        # raise the smallest score: benign
    r = check(out, s.ref_output, s.ref_top5)
    assert r["level"] == 1 and r["exact"] < 16 and r["top1"] == 16
    assert not drifted(r, s.expected_for(freq_mhz=260)) and not drifted(r)
    bad = s.ref_output.copy()
    bad[:, s.ref_top5[:, 0]] = -128                                    # the top-1 of every canary falls away
    r = check(bad, s.ref_output, s.ref_top5)
    assert r["level"] == 3 and drifted(r) and drifted(r, s.expected_for(freq_mhz=260))
    line = check_line(3, 40, {"n": 16, "exact": 11, "top1": 16, "top5": 16, "level": 1, "name": "benign"},
                      s.expected_for(freq_mhz=260))
    assert line == ("Canary check 3 (after batch 40): level 1 benign (exact 11/16, top-1 16/16, top-5 16/16; "
                    "expected 1): OK")


def test_set_file_round_trip_and_model_check(tmp_path):
    s = _set(np.random.default_rng(1))
    s.save(tmp_path / "a.canaries.npz")
    back = CanarySet.load(tmp_path / "a.canaries.npz", model_sha=model_sha256(b"proto", b"weights"))
    assert back.meta == s.meta and np.array_equal(back.ref_output, s.ref_output) and back.inputs.dtype == np.int8
    with pytest.raises(CaffeUnstableError, match="canary set was made for a different model"):
        CanarySet.load(tmp_path / "a.canaries.npz", model_sha=model_sha256(b"other", b"weights"))
    assert s.expected_for(ser=1e-5) is None and s.expected_for(freq_mhz=260)["level"] == 1


def test_a_class_map_is_ranked_by_channel_sums():
    """A fully convolutional classifier's last accelerated output is a classes x H x W map (SqueezeNet's conv10:
    1000 x 15 x 15): the classes are ranked by each channel's sum over its positions, as the global average pool
    after it ranks them, not by the largest single value of the flattened map."""
    maps = np.zeros((2, 4, 2, 2), np.int8)
    maps[0, 1] = [[127, -128], [-128, -128]]        # the largest single value, the smallest sum
    maps[0, 2] = [[10, 10], [10, 10]]               # sum 40: the class
    maps[0, 3] = [[9, 10], [10, 10]]                # sum 39
    maps[1, 0] = [[-1, -1], [-1, -1]]               # image 2: every sum is 0 but this one: ties go to the lower
    flat = maps.reshape(2, -1)
    np.testing.assert_array_equal(class_scores(flat, 4), [[0, -257, 40, 39], [-4, 0, 0, 0]])
    np.testing.assert_array_equal(top5(flat, 4)[:, :4], [[2, 3, 0, 1], [1, 2, 3, 0]])
    assert top5(flat)[0, 0] == 4                      # without `classes`: the flattened map's largest value
    moved = flat.copy()
    moved[0, 4] = 0                                  # channel 1 changes, the ranking's top-1 does not
    r = check(moved, flat, top5(flat, 4), classes=4)
    assert (r["exact"], r["top1"], r["level"]) == (1, 2, 1)
    moved[0, 8:12] = -128                            # channel 2 (the class) falls to the bottom
    assert check(moved, flat, top5(flat, 4), classes=4)["top1"] == 1
    with pytest.raises(CaffeUnstableError, match="outputs of 16 values are not a map of 5 classes"):
        class_scores(flat, 5)
