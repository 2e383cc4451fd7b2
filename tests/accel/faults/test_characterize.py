"""faults.md §8.2-8.3 and §13.10: maximum-likelihood fits of carry and SEU measurements."""
import math

import numpy as np
import pytest

from caffe_unstable.accel.faults.characterize import (carry_p, deviance_parts, fit_carry, fit_seu, q_tail,
                                                      read_measurements, seu_p)
from caffe_unstable.accel.faults.stats import chi2_sf
from caffe_unstable.errors import CaffeUnstableError

TRUTH = (1.94, 0.070, 0.010)


def simulate_carry(rng, truth=TRUTH, freqs=range(240, 282, 6), ells=range(22, 32, 2), trials=60, deltas=None):
    rows = []
    for f in freqs:
        for ell in ells:
            for lane in (range(len(deltas)) if deltas is not None else [None]):
                d = 0.0 if lane is None else deltas[lane]
                p = float(q_tail((1000.0 / f - truth[0] - d - ell * truth[1]) / truth[2]))
                rows.append({"vector_class": "carry", "mhz": f, "chain_len": ell, "lane": lane, "trials": trials,
                             "errors": int(rng.binomial(trials, p))})
    return rows


def transition_set(rng, trials=100):
    """A small characterisation set: clocks around each chain length's transition f_ℓ = 1000/(t0 + ℓτ), as a
    measurement campaign scans them (the transition is about 2σ/τ·f²/1000 ≈ 1 MHz wide)."""
    rows = []
    for ell in (24, 26, 28, 30):
        f_ell = 1000.0 / (TRUTH[0] + ell * TRUTH[1])
        rows += simulate_carry(rng, freqs=f_ell + np.array([-0.8, -0.4, 0.0, 0.4, 0.8]), ells=[ell], trials=trials)
    return rows


def test_fit_recovers_truth_and_intervals_cover():
    """100 seeded repetitions of a small set: t0 and τ within 4 SE, 95 % intervals cover the truth ≥ 90 times."""
    covered = {"t0_ns": 0, "tau_ns_per_bit": 0}
    for seed in range(100):
        r = fit_carry(transition_set(np.random.default_rng(seed)), base=(2.05, 0.066, 0.02))
        for k, truth in (("t0_ns", TRUTH[0]), ("tau_ns_per_bit", TRUTH[1])):
            value, se = r.params[k]
            assert abs(value - truth) < 4 * se, (seed, k, value, se)
            covered[k] += abs(value - truth) <= 1.96 * se
    assert covered["t0_ns"] >= 90 and covered["tau_ns_per_bit"] >= 90, covered


def test_fit_single_set_within_3_se_and_goodness_of_fit():
    rows = simulate_carry(np.random.default_rng(7), freqs=range(236, 290, 2), ells=range(18, 32), trials=200)
    r = fit_carry(rows, base=(1.8, 0.08, 0.03))
    for k, truth in zip(("t0_ns", "tau_ns_per_bit", "jitter_ns"), TRUTH):
        assert abs(r.params[k][0] - truth) < 3 * r.params[k][1], k
    assert r.rows == len(rows) and r.dof == len(rows) - 3 and r.valid_mhz == [236, 288]
    assert math.isclose(r.g2, float((r.residuals ** 2).sum()), rel_tol=1e-9)
    assert r.p_value == pytest.approx(chi2_sf(r.g2, r.dof)) and r.p_value > 0.01
    block = r.fit_block()
    assert set(block) == {"params", "loglik", "g2", "dof", "p_value", "rows", "valid_mhz"}
    assert len(block["params"]["t0_ns"]) == 2


def test_fit_lane_offsets():
    deltas = np.array([-0.03, -0.01, 0.01, 0.03])
    rows = simulate_carry(np.random.default_rng(3), freqs=range(236, 284, 3), ells=range(20, 32, 2), trials=100,
                          deltas=deltas)
    r = fit_carry(rows, base=(2.0, 0.065, 0.02), lane_num=4, fit_lanes=True)
    got = np.array([r.params[f"lane_offsets_ns[{i}]"][0] for i in range(4)])
    se = np.array([r.params[f"lane_offsets_ns[{i}]"][1] for i in range(4)])
    assert abs(got.sum()) < 1e-12 and (np.abs(got - deltas) < 4 * se).all()


def test_carry_p_lane_mean_and_gradient():
    T, ell = np.array([4.0, 3.9]), np.array([28.0, 29.0])
    d = np.array([0.0, 0.05])
    p_lane, _ = carry_p(1.94, 0.07, 0.01, d, T, ell, np.array([1, 1]))
    p_all, grad = carry_p(1.94, 0.07, 0.01, d, T, ell, np.array([-1, -1]))
    p0, _ = carry_p(1.94, 0.07, 0.01, d, T, ell, np.array([0, 0]))
    assert np.allclose(p_all, (p_lane + p0) / 2)
    h = 1e-7
    p_h, _ = carry_p(1.94 + h, 0.07, 0.01, d, T, ell, np.array([-1, -1]))
    assert np.allclose((p_h - p_all) / h, grad[:, 0], rtol=1e-4, atol=1e-6)


def test_seu_fit_and_probability():
    assert float(seu_p(1e-5, 1000, 0.5)) == pytest.approx(1 - (1 - 5e-6) ** 1000)
    rng = np.random.default_rng(2)
    rows = [{"vector_class": "seu", "mhz": 210, "lane": None, "trials": 4000, "macs_per_trial": M,
             "visible_fraction": V, "errors": int(rng.binomial(4000, float(seu_p(3e-6, M, V))))}
            for M, V in ((5000, 0.4), (20000, 0.4), (10000, 0.9))]
    r = fit_seu(rows)
    rate, se = r.params["mac_flip_rate"]
    assert abs(rate - 3e-6) < 3 * se and se < 0.2 * rate


def test_refusals():
    rows = simulate_carry(np.random.default_rng(0), freqs=[200, 210], ells=[20])
    with pytest.raises(CaffeUnstableError, match="measurements: no errors observed; raise the clock"):
        fit_carry(rows, TRUTH)
    rows = simulate_carry(np.random.default_rng(0), freqs=[300], ells=[25, 26])
    rows[0]["errors"] = 0
    with pytest.raises(CaffeUnstableError, match="cannot identify tau: errors at one chain length only"):
        fit_carry(rows, TRUTH)


def test_deviance_parts_edges():
    d, r = deviance_parts(np.array([0.5, 1e-9, 0.5]), np.array([10.0, 10.0, 10.0]), np.array([5.0, 0.0, 10.0]))
    assert d[0] == 0 and d[1] == pytest.approx(2 * 10 * -math.log1p(-1e-9), rel=1e-6)
    assert d[2] == pytest.approx(2 * 10 * math.log(2)) and r[2] > 0


def test_read_measurements_csv_and_yaml(tmp_path):
    csv = tmp_path / "meas.csv"
    csv.write_text("mhz,vector_class,chain_len,lane,trials,errors,macs_per_trial,visible_fraction,temperature_c\n"
                   "250,carry,29,,100,3,,,41\n260,carry,28,2,100,90,,,41\n210,seu,,,1000,12,5000,0.4,\n")
    rows = read_measurements(csv)
    assert rows[0] == {"vector_class": "carry", "mhz": 250.0, "trials": 100, "errors": 3, "lane": None,
                       "chain_len": 29}
    assert rows[1]["lane"] == 2 and rows[2]["macs_per_trial"] == 5000
    (tmp_path / "bad.csv").write_text("mhz,vector_class,chain_len,trials,errors\n250,carry,29,100,101\n")
    with pytest.raises(CaffeUnstableError) as info:
        read_measurements(tmp_path / "bad.csv")
    assert info.value.line() == f"{tmp_path / 'bad.csv'}:2: errors: must be in [0, trials = 100], got 101"
    (tmp_path / "bad2.csv").write_text("mhz,vector_class,trials,errors\n250,carry,100,1\n")
    with pytest.raises(CaffeUnstableError, match=r"bad2.csv:2: chain_len: required for vector_class 'carry'"):
        read_measurements(tmp_path / "bad2.csv")
    yml = tmp_path / "meas.yaml"
    yml.write_text("rows:\n  - {mhz: 250, vector_class: carry, chain_len: 29, trials: 10, errors: 1}\n")
    assert read_measurements(yml)[0]["chain_len"] == 29
