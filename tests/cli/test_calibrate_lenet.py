"""faults.md §13 item 11: accuracy losses generated with a known profile on LeNet (per-add jitter) are fitted
back by calibrate: the fitted horizon K(f) equals the true one at both target clocks ±1."""
from pathlib import Path

import numpy as np
import pytest

from caffe_unstable.accel.faults import DeviceProfile
from caffe_unstable.accel.faults.calibrate import calibrate, paired
from caffe_unstable.accel.faults.carry_horizon import horizon_k
from caffe_unstable.cli.hits import TopKHits
from tests.fmnist import build_lmdb, lenet_train_test

TABLES = Path(__file__).resolve().parents[2] / "models/quant"


@pytest.mark.slow
def test_calibrate_recovers_a_known_profile_on_lenet(shared, tmp_path):
    test_lmdb = build_lmdb("test", tmp_path / "fmnist_test_lmdb")
    model = tmp_path / "lenet_train_test.prototxt"
    model.write_text(lenet_train_test(shared, tmp_path / "no_train", test_lmdb).replace("batch_size: 100",
                                                                                         "batch_size: 200"))
    weights = str(shared / "golden/nets/lenet/lenet_fmnist_iter_500.caffemodel")
    truth = DeviceProfile.load("pipecnn_kcu1500")                     # t0 1.94 ns, τ 0.070 ns/bit, σ 0.010
    hits = TopKHits(str(model), weights, str(TABLES / "lenet.quant.yaml"), iterations=2, seed=4,
                    base_profile=truth, top_k=1)
    h0 = hits()
    freqs = (262, 290)
    targets = [(f, paired(hits(profile=truth, freq_mhz=f), h0)[0]) for f in freqs]
    assert targets[0][1] > targets[1][1]                               # faster clock, larger loss
    base = DeviceProfile({**truth.data, "timing": {**truth.timing, "t0_ns": 2.1, "tau_ns_per_bit": 0.06}})
    fitted, report = calibrate(hits, base, targets)
    t = fitted.timing
    for f in freqs:
        assert abs(horizon_k(f, t["t0_ns"], t["tau_ns_per_bit"]) - horizon_k(f, 1.94, 0.070)) <= 1, (f, t)
    assert np.isfinite(report["clean_top5"]) and fitted.status == "calibrated"
