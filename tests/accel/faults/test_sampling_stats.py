"""faults.md §13.1: per-layer flip counts follow Binomial(N, rate); positions and bits are uniform."""
import math

import numpy as np

from caffe_unstable.accel.faults.indexing import conv_geometry, decode_mac
from caffe_unstable.accel.faults.mac_flip import MacFlip, sample_flips
from caffe_unstable.accel.faults.plan import LayerOp
from caffe_unstable.accel.faults.rate import RateTiming, bit_pmf_array, sample_rate_events
from caffe_unstable.accel.faults.rng import PassKey
from caffe_unstable.accel.faults.stats import binomial_counts_gof, chi2_gof

SEED = 20181201


def _uniform_p(values, bins):
    counts = np.bincount(values, minlength=bins)
    return chi2_gof(counts, np.full(bins, counts.sum() / bins))[2]


def test_counts_binomial_and_positions_uniform():
    """4,000 (layer, image) keys, N = 10^6, rate = 10^-4 (the spec's reference sampler: p = 0.56, 0.80, 0.87)."""
    N, rate = 10 ** 6, 1e-4
    key = PassKey(SEED)
    F, ks, bits = [], [], []
    for layer in range(40):
        for image in range(100):
            k, b = sample_flips(key.generator("mac_flip", layer, image), N, rate, 0, 31)
            F.append(len(k))
            ks.append(k)
            bits.append(b)
    F, ks, bits = np.array(F), np.concatenate(ks), np.concatenate(bits)
    p_count = binomial_counts_gof(F, N, rate)[2]
    p_bits = _uniform_p(bits, 32)
    p_k = _uniform_p(ks * 64 // N, 64)
    print(f"\nχ² p-values: counts {p_count:.3f}, bits {p_bits:.3f}, positions {p_k:.3f}")
    assert p_count > 0.01 and p_bits > 0.01 and p_k > 0.01
    se = math.sqrt(N * rate * (1 - rate) / F.size)
    assert abs(F.mean() - N * rate) < 3 * se


def test_positions_uniform_over_outputs_steps_and_slots():
    g = conv_geometry(16, 10, 10, 100, 3, 3, 1, 0, 1, 4, 16, 6)     # N_MAC = 1,032,192; 12 padded lanes of 112
    key = PassKey(SEED + 1)
    ks = []
    for image in range(300):
        k, _ = sample_flips(key.generator("mac_flip", 2, image), g["N_MAC"], 3e-4, 0, 31)
        ks.append(k)
    ks = np.concatenate(ks)
    o, y, x, t, v, valid = decode_mac(ks, g)
    n_out = g["O"] * g["conv_y"] * g["conv_x"]
    real = ((o * g["conv_y"] + y) * g["conv_x"] + x)[valid]
    p_out = _uniform_p(real * 64 // n_out, 64)
    p_t, p_v = _uniform_p(t, g["L"]), _uniform_p(v, g["VEC_SIZE"])
    masked = 1 - valid.mean()
    print(f"\nχ² p-values: outputs {p_out:.3f}, steps {p_t:.3f}, slots {p_v:.3f}; masked {masked:.4f}")
    assert p_out > 0.01 and p_t > 0.01 and p_v > 0.01
    assert abs(masked - 12 / 112) < 4 * math.sqrt(12 / 112 * 100 / 112 / len(ks))


def test_layer_plans_count_per_image():
    """MacFlip.plan: the records plus masked flips of each image are that image's Binomial draw."""
    g = conv_geometry(16, 10, 10, 100, 3, 3, 1, 0, 1, 4, 16, 6)
    key, op = PassKey(SEED + 2), LayerOp(5, "conv", 200)
    lp = MacFlip(2e-4).plan(op, g, key)
    per_image = np.bincount(lp.mac_events["n"], minlength=200)
    drawn = [len(sample_flips(key.generator("mac_flip", 5, n), g["N_MAC"], 2e-4, 0, 31)[0]) for n in range(200)]
    assert per_image.sum() + lp.masked == sum(drawn)
    assert (per_image <= np.array(drawn)).all()
    assert binomial_counts_gof(drawn, g["N_MAC"], 2e-4)[2] > 0.01


def test_rate_model_counts_and_bits():
    """The rate model's stream 4: F ~ Binomial(N_ADD, p); bits follow the pmf (geometric over [26, 31])."""
    pmf = bit_pmf_array("geometric", 26)
    assert np.round(pmf[26:], 3).tolist() == [0.016, 0.032, 0.063, 0.127, 0.254, 0.508]
    key = PassKey(SEED + 3)
    F, bits = [], []
    for image in range(1000):
        a, b = sample_rate_events(key.generator("timing_rate", 1, image), 100_000, 2e-4, pmf)
        F.append(len(a))
        bits.append(b)
    bits = np.concatenate(bits)
    assert binomial_counts_gof(F, 100_000, 2e-4)[2] > 0.01
    counts = np.bincount(bits, minlength=32)
    assert counts[:26].sum() == 0
    assert chi2_gof(counts[26:], len(bits) * pmf[26:])[2] > 0.01
    curve = RateTiming(None, 210, poff_mhz=243.3, f_ref_mhz=250, p_ref=2.4e-4, beta_per_mhz=0.16)
    ps = [curve.p(f) for f in range(200, 301)]
    assert ps[:44] == [0.0] * 44 and all(a <= b for a, b in zip(ps, ps[1:])) and max(ps) == 0.5
