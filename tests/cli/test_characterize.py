"""cu-characterize (faults.md §8, §9, §13 items 9-10): check and show profiles, characterization vectors, measuring
them on the numba accelerator (against the §1.2 reference loop), the maximum-likelihood fit and its refusals,
calibrate on LeNet's accuracy losses, canary sets from LeNet's TEST data."""
import csv
import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from caffe_unstable import accel
from caffe_unstable.accel import measure as measuring
from caffe_unstable.accel.faults import PassKey, char_vectors, ch_add, geometry_from, models_for, reference_layer
from caffe_unstable.accel.faults.canaries import CanarySet
from caffe_unstable.accel.faults.carry_horizon import horizon_k
from caffe_unstable.accel.faults.characterize import q_tail, read_measurements
from caffe_unstable.accel.faults.profile import SHIPPED_DIR, DeviceProfile
from caffe_unstable.accel.faults.stuck_at import materialize
from caffe_unstable.accel.quant import LayerFormat, float_to_fixed
from caffe_unstable.cli.characterize import main
from caffe_unstable.errors import CaffeUnstableError
from caffe_unstable.log import NullLogger
from caffe_unstable.net.net import TEST, Net
from tests.fmnist import build_lmdb, lenet_train_test

SHIPPED = (SHIPPED_DIR / "pipecnn_kcu1500.devprofile.yaml").read_text()
TRUTH = (2.0, 0.068, 0.012)          # t0, τ, σ of the simulated board (not the shipped starting point)
LENET_QUANT = Path(__file__).resolve().parents[2] / "models/quant/lenet.quant.yaml"


def cli(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def profile_file(folder, name, edits=()):
    text = SHIPPED
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new)
    path = folder / f"{name}.devprofile.yaml"
    path.write_text(text)
    return path


def truth_profile(folder):
    return profile_file(folder, "truth", [("name: pipecnn_kcu1500", "name: truth"),
                                          ("  t0_ns: 1.94", f"  t0_ns: {TRUTH[0]}"),
                                          ("  tau_ns_per_bit: 0.070", f"  tau_ns_per_bit: {TRUTH[1]}"),
                                          ("  jitter_ns: 0.010", f"  jitter_ns: {TRUTH[2]}")])


def reference_runner(vector, geom, fmt, plan):
    """The slow §1.2 loop as a measure runner (the numba backend must agree with it)."""
    quant = {"frac_w": fmt.frac_w, "frac_din": fmt.frac_din, "frac_dout": fmt.frac_dout, "relu": False}
    return reference_layer(vector.input, vector.weights, vector.bias, geometry_from(geom), quant, plan)


@pytest.fixture(scope="module")
def vectors_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("vectors") / "vec"
    code, stdout, stderr = cli("vectors", "--profile", "pipecnn_kcu1500", "--out", out,
                               "--chain-lens=14:17,24,26,28,30,31", "--seu-steps", "8")
    assert code == 0, stderr
    assert stdout == f"Wrote 10 vectors to {out} (9 carry, 1 seu; 16 trials per lane and vector) and " \
                     f"{out / 'vectors.yaml'}\n"
    return out


# -- check -------------------------------------------------------------------------------------------------------
def test_check_shipped_profiles():
    code, stdout, stderr = cli("check", "pipecnn_kcu1500", "pipecnn_kcu1500_vgg.devprofile.yaml")
    assert code == 0 and stderr == ""
    assert stdout.splitlines() == [
        "ok: pipecnn_kcu1500.devprofile.yaml (status starting_point; timing carry_horizon, safe 210 MHz; "
        "first failure 243.3 MHz)",
        "ok: pipecnn_kcu1500_vgg.devprofile.yaml (status starting_point; timing carry_horizon, safe 190 MHz; "
        "first failure 220.1 MHz)"]


def test_check_broken_profiles_one_line_each_exit_1(tmp_path):
    bad_tau = profile_file(tmp_path, "bad_tau", [("  tau_ns_per_bit: 0.070", "  tau_ns_per_bit: -0.07")])
    bad_key = profile_file(tmp_path, "bad_key", [("  tau_ns_per_bit: 0.070", "  tau_ns: 0.070")])
    rate = profile_file(tmp_path, "rate", [("  model: carry_horizon", "  model: rate")])
    code, stdout, stderr = cli("check", bad_tau, rate, bad_key, tmp_path / "missing.devprofile.yaml")
    assert code == 1
    assert stdout == f"ok: {rate} (status starting_point; timing rate (exponential), safe 210 MHz; first failure " \
                     f"243.3 MHz)\n"
    lines = stderr.splitlines()
    assert lines[0] == f"error: {bad_tau}:27: timing.tau_ns_per_bit: must be a number > 0, got -0.07"
    assert lines[1].startswith(f"error: {bad_key}:27: timing.tau_ns: unknown key (known: model, safe_mhz, ")
    assert lines[2].startswith(f"error: {tmp_path / 'missing.devprofile.yaml'}: profile not found")
    assert len(lines) == 3 and "Traceback" not in stderr


# -- show --------------------------------------------------------------------------------------------------------
def test_show_horizon_table_of_the_shipped_profile():
    code, stdout, stderr = cli("show", "pipecnn_kcu1500", "--freq", "200:270:10")
    assert code == 0
    assert "status is starting_point" in stderr
    lines = stdout.splitlines()
    assert lines[0] == ("pipecnn_kcu1500 (starting_point): timing carry_horizon, t0 1.94 ns, tau 0.07 ns/bit, "
                        "jitter 0.01 ns per_add, safe 210 MHz; first failure 243.3 MHz")
    rows = {int(line.split()[0]): line.split() for line in lines[2:]}
    assert sorted(rows) == list(range(200, 271, 10))
    assert [rows[f][2] for f in (250, 260, 270)] == ["29", "27", "25"]           # faults.md §5.5 table
    assert rows[250][3:] == ["28:0.00135", "29:0.9986", "30:3.167e-05", "0.00024"]
    assert rows[260][3:] == ["26:0.05311", "27:0.9469", "0.00119"]
    assert rows[270][3:] == ["24:0.08529", "25:0.9147", "0.00589"]
    assert rows[210][2:] == ["31", "31:1", "(safe)", "0"] and rows[240][2:] == ["31", "31:1", "0"]


def test_show_per_lane_horizons_and_fixed_k(tmp_path):
    offsets = "[" + ", ".join(["0.0"] * 15 + ["0.1"]) + "]"
    lanes = profile_file(tmp_path, "lanes", [("  lane_offsets_ns: null", f"  lane_offsets_ns: {offsets}"),
                                             ("  jitter_ns: 0.010", "  jitter_ns: 0")])
    code, stdout, _ = cli("show", lanes, "--freq=260")
    assert code == 0
    row = stdout.splitlines()[2].split()
    assert row[2] == ",".join(["27"] * 15 + ["25"])                              # K = floor(27.23 − 0.1/0.07)
    assert row[3:5] == ["25:0.0625", "27:0.9375"]                                 # 1 of 16 lanes at K = 25
    fixed = profile_file(tmp_path, "fixed", [("  t0_ns: 1.94", "  t0_ns: 1.94\n  fixed_k: 20")])
    code, stdout, _ = cli("show", fixed, "--freq", "200")
    assert code == 0 and stdout.splitlines()[2].split()[2:4] == ["20", "20:1"]
    code, _, stderr = cli("show", fixed, "--freq", "300:200:10")
    assert code == 1 and stderr.splitlines()[-1] == "error: --freq: a clock range is LO:HI:STEP with 0 < LO <= HI " \
                                                    "and STEP > 0, got '300:200:10'"


def test_show_materialize_writes_the_permanent_map(tmp_path):
    stuck = ("permanent:\n  stuck_at:\n    - {site: multiplier, lane: 1, vec: 2, bit: 14, value: 1}\n"
             "    - {site: weight_mem, layer: conv1, address: 7, bit: 3, value: 0}\n"
             "  random:\n    - {site: accumulator, count: 3, seed: 5}\n"
             "    - {site: act_mem, fraction: 0.001, seed: 1}\n")
    path = profile_file(tmp_path, "stuck", [("permanent:\n  stuck_at: []\n", stuck)])
    out = tmp_path / "map.csv"
    code, stdout, stderr = cli("show", path, "--materialize", out)
    assert code == 0, stderr
    assert "warning: permanent.random[1] (act_mem): a memory map is materialised per layer" in stderr
    assert stdout.splitlines()[-1] == (f"Wrote 5 stuck-at entries to {out} (multiplier 1, product 0, "
                                       f"accumulator 3, weight_mem 1, act_mem 0)")
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["site", "lane", "vec", "bit", "value", "layer", "address"]
    assert rows[1] == ["multiplier", "1", "2", "14", "1", "", ""]
    assert rows[2] == ["weight_mem", "", "", "3", "0", "conv1", "7"]
    drawn = materialize({"site": "accumulator", "count": 3, "seed": 5}, 0, 16, 4, (32, 32, 32))
    assert rows[3:] == [["accumulator", str(m["lane"]), "", str(m["bit"]), str(m["value"]), "", ""] for m in drawn]
    # the written map is a valid stuck_at_file of the same device
    again = profile_file(tmp_path, "again", [("permanent:\n  stuck_at: []\n",
                                              f"permanent:\n  stuck_at_file: {out.name}\n")])
    assert len(DeviceProfile.load(again).stuck_file_entries()) == 5


# -- vectors -----------------------------------------------------------------------------------------------------
def test_vectors_are_self_consistent(vectors_dir):
    manifest = yaml.safe_load((vectors_dir / "vectors.yaml").read_text())
    assert manifest["format"] == "caffe_unstable.characterization_vectors/1"
    assert manifest["accelerator"] == {"name": "PipeCNN", "vec_size": 4, "lane_num": 16, "pipe_depth": 6,
                                       "width_product": 18, "width_accumulator": 32, "width_final": 32}
    assert manifest["profile"]["name"] == "pipecnn_kcu1500"
    metas = {m["name"]: m for m in manifest["vectors"]}
    assert list(metas) == ["carry_l14", "carry_l15", "carry_l16", "carry_l17", "carry_l24", "carry_l26",
                           "carry_l28", "carry_l30", "carry_l31", "seu_L8"]
    assert metas["carry_l15"]["construction"] == "run" and metas["carry_l16"]["construction"] == "crossing"
    seu = metas["seu_L8"]
    assert (seu["vector_class"], seu["M"], seu["V"], seu["chain_len"]) == ("seu", 32, 1.0, None)
    for meta in manifest["vectors"]:
        payload = (vectors_dir / meta["file"]).read_bytes()
        assert hashlib.sha256(payload).hexdigest() == meta["sha256"]
        v = char_vectors.load_vector(vectors_dir, meta)
        g = meta["geometry"]
        assert v.input.shape == (1, g["C"], 4, 4) and v.weights.shape == (16, g["C"], 1, 1)
        assert g["C"] == 4 * g["L"] and g["O"] == 16 and meta["trials_per_lane"] == 16
        assert (v.expected == meta["expected_output"]).all()
        if meta["vector_class"] == "seu":
            assert not v.input.any()
            continue
        # the step values the data really computes: exactly one add with a chain of length ℓ, no other carry
        steps = (v.input[0, :, 0, 0].astype(np.int64) * v.weights[0, :, 0, 0]).reshape(-1, 4).sum(1)
        A, chains = np.zeros(6, np.int64), []
        for t, m in enumerate(steps):
            _, late = ch_add(np.full(32, A[t % 6]), np.full(32, m), np.arange(32))
            chains.append(int((late != 0).sum()))
            A[t % 6] += m
        ell = meta["chain_len"]
        assert sorted(chains)[-1] == ell and sorted(chains)[-2] == 0 == meta["max_other_chain"]
        assert chains.index(ell) == meta["long_add_step"] == 6


def test_carry_vectors_err_exactly_below_their_chain_length(vectors_dir):
    """By the §1.2 reference loop with a fixed horizon K on every add: every output differs for K < ℓ, none for
    K >= ℓ, under each sampled value."""
    manifest = char_vectors.load_manifest(vectors_dir)
    profile = DeviceProfile.load("pipecnn_kcu1500")
    hw = measuring.hw_config(manifest)
    for meta in manifest["vectors"][:-1]:
        v = char_vectors.load_vector(vectors_dir, meta)
        geom = measuring.conv_geometry(meta, hw)
        ell = meta["chain_len"]
        for K, mode in ((ell - 1, "carry_dropped"), (ell - 1, "stale"), (0, "drop"), (ell, "carry_dropped"),
                        (31, "carry_dropped")):
            timing = dict(profile.timing, sampled_value=mode)
            plan = measuring.vector_plan(models_for(DeviceProfile(dict(profile.data, timing=timing)), horizon_k=K),
                                         0, meta, geom, hw, PassKey(0))
            out = reference_runner(v, geom, LayerFormat(**meta["frac"]), plan)
            assert ((out != v.expected).all() if K < ell else (out == v.expected).all()), (meta["name"], K, mode)


def test_a_vector_without_a_visible_late_outcome_is_refused():
    profile = DeviceProfile.load("pipecnn_kcu1500")
    m, _, _ = char_vectors.carry_steps(20, 6)
    with pytest.raises(CaffeUnstableError, match="chain length 21: chains"):
        char_vectors.check_carry(m, 21, 6, profile.timing, 4)
    m[5] = 0                       # no negative previous result: the `stale` sampled value keeps the clean bits
    with pytest.raises(CaffeUnstableError, match=r"chain length 20 \(stale\): the output does not change at K = 0"):
        char_vectors.check_carry(m, 20, 6, profile.timing, 4)


# -- measure -----------------------------------------------------------------------------------------------------
def test_measure_at_the_safe_clock_has_no_errors(vectors_dir, tmp_path):
    out = tmp_path / "meas.csv"
    code, stdout, stderr = cli("measure", "--vectors", vectors_dir, "--accel", "numba", "--mhz", "210",
                               "--profile", "pipecnn_kcu1500", "--seed", "1", "--repeat", "2", "--out", out)
    assert code == 0, stderr
    assert stdout == ("Measured 10 vectors at 210 MHz (simulated: pipecnn_kcu1500 at 210 MHz, seed 1): carry 0 errors "
                      f"in 4608 trials; seu 0 errors in 512 trials; wrote 320 rows to {out}\n")
    rows = read_measurements(out)
    assert len(rows) == 10 * 16 * 2 and all(r["errors"] == 0 and r["trials"] == 16 for r in rows)
    assert [r["lane"] for r in rows[:17]] == list(range(16)) + [0]
    text = out.read_text().splitlines()
    assert text[0] == "mhz,vector_class,chain_len,lane,trials,errors,macs_per_trial,visible_fraction,repeat"
    assert text[1] == "210.0,carry,14,0,16,0,,,0" and text[-1] == "210.0,seu,,15,16,0,32,1.0,1"


def test_measure_overclocked_every_chain_above_the_horizon_errs(vectors_dir, tmp_path):
    """At 270 MHz the horizon is 24 or 25 (faults.md §5.5): every carry vector with ℓ >= 26 errs in every trial,
    those with ℓ <= 24 never; numba gives the reference loop's outputs bit for bit. At 266 MHz the chain of
    length 26 is late with probability P(K <= 25) = Q((T − t0 − 26τ)/σ) ≈ 0.52."""
    out = tmp_path / "meas.csv"
    code, _, stderr = cli("measure", "--vectors", vectors_dir, "--mhz", "270", "--profile", "pipecnn_kcu1500",
                          "--seed", "4", "--out", out)
    assert code == 0, stderr
    code, stdout, _ = cli("measure", "--vectors", vectors_dir, "--mhz", "210", "--out", out, "--append")
    assert code == 0 and stdout.endswith(f"appended 160 rows to {out}\n")           # a clean, unsimulated run
    rows = read_measurements(out)
    per_len = {}
    for r in rows[:160]:
        e, t = per_len.get(r.get("chain_len"), (0, 0))
        per_len[r.get("chain_len")] = (e + r["errors"], t + r["trials"])
    assert per_len[14] == per_len[15] == per_len[16] == per_len[17] == (0, 256)
    assert per_len[26] == per_len[28] == per_len[30] == per_len[31] == (256, 256)
    assert per_len[24] == (0, 256)
    assert all(r["errors"] == 0 and r["mhz"] == 210 for r in rows[160:])
    manifest = char_vectors.load_manifest(vectors_dir)
    profile = DeviceProfile.load("pipecnn_kcu1500")
    runner = measuring.BackendRunner("numba", measuring.hw_config(manifest))
    models = models_for(profile, freq_mhz=270)
    counts = lambda rows: [(r.get("chain_len"), r["lane"], r["trials"], r["errors"]) for r in rows]  # noqa: E731
    assert counts(measuring.measure(vectors_dir, runner, 270, models, seed=4)) == counts(rows[:160])
    assert counts(measuring.measure(vectors_dir, reference_runner, 270, models, seed=4)) == counts(rows[:160])
    rows = measuring.measure(vectors_dir, runner, 266, models_for(profile, freq_mhz=266), seed=9)
    late = sum(r["errors"] for r in rows if r["chain_len"] == 26)
    p = float(q_tail((1000 / 266 - 1.94 - 26 * 0.07) / 0.01))
    assert abs(late - 256 * p) < 4 * (256 * p * (1 - p)) ** 0.5, (late, p)


def test_measure_refuses_other_builds_and_both_operating_points(vectors_dir, tmp_path):
    other = profile_file(tmp_path, "vec8", [("  vec_size: 4", "  vec_size: 8"),
                                            ("  width_product: 18 ", "  width_product: 19 ")])
    code, _, stderr = cli("measure", "--vectors", vectors_dir, "--mhz", "260", "--profile", other,
                          "--out", tmp_path / "m.csv")
    assert code == 1
    assert stderr.splitlines()[-1] == (f"error: {other}: the vectors were made for vec_size = 4, the profile "
                                       f"pipecnn_kcu1500 has 8: write vectors for this profile")
    code, _, stderr = cli("measure", "--vectors", vectors_dir, "--mhz", "260", "--freq", "260", "--ser", "1e-5",
                          "--out", tmp_path / "m.csv")
    assert (code, stderr) == (1, "error: --freq and --ser are exclusive; put soft errors in the profile to "
                                 "combine them\n")
    code, _, stderr = cli("measure", "--vectors", tmp_path, "--mhz", "260", "--out", tmp_path / "m.csv")
    assert (code, stderr) == (1, f"error: {tmp_path}: no vectors.yaml here (write one with cu-characterize "
                                 f"vectors)\n")


# -- fit ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def truth_measurements(tmp_path_factory, vectors_dir):
    """Synthetic measurements of a board with t0, τ, σ = TRUTH: the carry vectors at 5 clocks around each chain
    length's transition f_ℓ = 1000/(t0 + ℓτ), a fresh seed per clock (independent runs, as on a board)."""
    folder = tmp_path_factory.mktemp("fit")
    truth = truth_profile(folder)
    out = folder / "meas.csv"
    seed = 0
    for ell in (24, 26, 28, 30):
        f_ell = 1000.0 / (TRUTH[0] + ell * TRUTH[1])
        for df in (-1.0, -0.5, 0.0, 0.5, 1.0):
            seed += 1
            code, _, stderr = cli("measure", "--vectors", vectors_dir, "--mhz", f"{f_ell + df:.3f}", "--profile",
                                  truth, "--seed", seed, "--out", out, "--append")
            assert code == 0, stderr
    return folder, out


def test_measure_then_fit_recovers_the_truth(truth_measurements):
    """faults.md §13 item 10: t0 and τ within 3 SE of the simulated board's."""
    folder, meas = truth_measurements
    out, png = folder / "board.devprofile.yaml", folder / "fit.png"
    code, stdout, stderr = cli("fit", meas, "--base", "pipecnn_kcu1500", "--out", out, "--plot", png)
    assert code == 0, stderr
    fitted = DeviceProfile.load(out)
    params = fitted.data["fit"]["params"]
    for key, truth in zip(("t0_ns", "tau_ns_per_bit", "jitter_ns"), TRUTH):
        value, se = params[key]
        assert 0 < se and abs(value - truth) < 3 * se, (key, value, se)
        assert fitted.timing[key] == pytest.approx(value, rel=1e-5)
    assert fitted.status == "measured" and fitted.name == "board"
    assert fitted.data["measurements"] == {"file": "meas.csv",
                                           "sha256": hashlib.sha256(meas.read_bytes()).hexdigest()}
    block = fitted.data["fit"]
    assert block["method"] == "mle" and block["tool"] == "cu-characterize 0.1.0" and block["rows"] == 20 * 9 * 16
    assert block["dof"] == block["rows"] - 3 and block["targets"] == [] and block["heldout"] == []
    lines = stdout.splitlines()
    assert lines[0].startswith("t0_ns = ") and lines[2].startswith("jitter_ns = ")
    assert lines[3].startswith("carry: 2880 rows, measured ") and ", predicted " in lines[3]
    assert lines[4].startswith("seu: 320 rows, measured 0 errors in 5120 trials: soft_errors.mac_flip_rate not "
                               "fitted")
    assert lines[-1] == f"Wrote {out} (status measured, 3200 rows) and {png}"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10000
    code, stdout, _ = cli("check", out)
    assert code == 0 and stdout.startswith(f"ok: {out} (status measured; timing carry_horizon, safe 210 MHz;")


def write_rows(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["mhz", "vector_class", "chain_len", "lane", "trials", "errors"])
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.mark.parametrize("rows, message", [
    ([{"mhz": f, "vector_class": "carry", "chain_len": 28, "lane": "", "trials": 50, "errors": 0}
      for f in (240, 250)], "measurements: no errors observed; raise the clock"),
    ([{"mhz": f, "vector_class": "carry", "chain_len": 28, "lane": "", "trials": 50, "errors": 10}
      for f in (240, 250)], "measurements: cannot identify tau: errors at one chain length only"),
    ([{"mhz": 260, "vector_class": "carry", "chain_len": ell, "lane": "", "trials": 50, "errors": e}
      for ell, e in ((27, 5), (28, 50))], "measurements: cannot identify t0: carry rows at one clock only; measure "
                                          "at two or more clocks"),
    ([{"mhz": 260, "vector_class": "layer", "chain_len": "", "lane": "", "trials": 50, "errors": 5}],
     "measurements: no carry or seu rows to fit"),
])
def test_fit_refusals(tmp_path, rows, message):
    meas = write_rows(tmp_path / "meas.csv", rows)
    code, stdout, stderr = cli("fit", meas, "--base", "pipecnn_kcu1500", "--out", tmp_path / "o.devprofile.yaml")
    assert (code, stderr) == (1, f"error: {meas}: {message}\n")
    assert not (tmp_path / "o.devprofile.yaml").exists()


def test_fit_refuses_a_profile_failing_at_its_safe_clock(truth_measurements, tmp_path):
    """A base whose safe clock the fitted delays cannot meet: the schema's safe-clock rule, as one line."""
    _, meas = truth_measurements
    base = profile_file(tmp_path, "fast", [("  safe_mhz: 210", "  safe_mhz: 245"), ("  t0_ns: 1.94", "  t0_ns: 1.5"),
                                           ("  valid_mhz: [200, 300]", "  valid_mhz: [245, 300]"),
                                           ("    poff_mhz: 243.3", "    poff_mhz: 245")])
    code, _, stderr = cli("fit", meas, "--base", base, "--out", tmp_path / "o.devprofile.yaml")
    assert code == 1
    assert stderr == (f"error: {meas}: fit: the fitted profile is refused: timing.safe_mhz: the model fails at the "
                      f"safe clock (K = 29 < 31 at 245 MHz)\n")


def test_fit_bad_rows_and_missing_files(tmp_path):
    meas = write_rows(tmp_path / "meas.csv", [{"mhz": 250, "vector_class": "carry", "chain_len": 28, "lane": "",
                                               "trials": 16, "errors": 17}])
    code, _, stderr = cli("fit", meas, "--base", "pipecnn_kcu1500", "--out", tmp_path / "o.devprofile.yaml")
    assert (code, stderr) == (1, f"error: {meas}:2: errors: must be in [0, trials = 16], got 17\n")
    code, _, stderr = cli("fit", tmp_path / "nope.csv", "--base", "pipecnn_kcu1500", "--out", tmp_path / "o.yaml")
    assert (code, stderr) == (1, f"error: {tmp_path / 'nope.csv'}: No such file or directory\n")


def test_every_subcommand_has_help():
    for sub in ("check", "show", "vectors", "measure", "fit", "calibrate", "canaries"):
        code, stdout, _ = cli(sub, "--help")
        assert code == 0 and stdout.startswith(f"Usage: main {sub} ")


def test_fit_lane_offsets(truth_measurements, tmp_path):
    _, meas = truth_measurements
    out = tmp_path / "lanes.devprofile.yaml"
    code, stdout, stderr = cli("fit", meas, "--base", "pipecnn_kcu1500", "--out", out, "--fit-lanes")
    assert code == 0, stderr
    fitted = DeviceProfile.load(out)
    offsets = fitted.timing["lane_offsets_ns"]
    params = fitted.data["fit"]["params"]
    assert len(offsets) == 16 and abs(sum(offsets)) < 1e-5                       # Σ δ = 0, t0 is the lane mean
    for i, d in enumerate(offsets):                                              # the simulated lanes are equal
        value, se = params[f"lane_offsets_ns[{i}]"]
        assert d == pytest.approx(value, rel=1e-5) and abs(value) < 4 * se
    assert "lane_offsets_ns[15] = " in stdout


def test_seu_vectors_measure_and_fit_the_flip_rate(tmp_path):
    """Zero-input vectors (M = 1024 MACs per output, V = 1) at the safe clock with a known rate per MAC: the fit
    writes soft_errors.mac_flip_rate within 3 SE and keeps the base's timing."""
    vec = tmp_path / "seu"
    code, _, stderr = cli("vectors", "--profile", "pipecnn_kcu1500", "--out", vec, "--chain-lens", "",
                          "--seu-steps", "256")
    assert code == 0, stderr
    meas = tmp_path / "seu.csv"
    code, stdout, stderr = cli("measure", "--vectors", vec, "--mhz", "210", "--ser", "3e-4", "--seed", "2",
                               "--repeat", "4", "--out", meas)
    assert code == 0, stderr
    assert "(simulated: pipecnn_kcu1500 at ser 0.0003, seed 2): seu " in stdout
    rows = read_measurements(meas)
    assert {(r["macs_per_trial"], r["visible_fraction"]) for r in rows} == {(1024, 1.0)}
    errors = sum(r["errors"] for r in rows)
    p = 1 - (1 - 3e-4) ** 1024
    assert abs(errors - 1024 * p) < 4 * (1024 * p * (1 - p)) ** 0.5
    out = tmp_path / "seu.devprofile.yaml"
    code, stdout, stderr = cli("fit", meas, "--base", "pipecnn_kcu1500", "--out", out)
    assert code == 0, stderr
    fitted = DeviceProfile.load(out)
    rate, se = fitted.data["fit"]["params"]["mac_flip_rate"]
    assert abs(rate - 3e-4) < 3 * se and fitted.soft_errors["mac_flip_rate"] == pytest.approx(rate, rel=1e-5)
    assert fitted.timing["t0_ns"] == 1.94 and stdout.splitlines()[1].startswith(f"seu: 64 rows, measured {errors} ")
    code, _, stderr = cli("fit", meas, "--base", "pipecnn_kcu1500", "--out", out, "--fit-lanes")
    assert code == 0, stderr                              # no carry rows: nothing for --fit-lanes to do


def test_plot_needs_carry_rows(tmp_path):
    meas = write_rows(tmp_path / "meas.csv", [{"mhz": 210, "vector_class": "seu", "chain_len": "", "lane": 0,
                                              "trials": 100, "errors": 7}])
    with open(meas) as f:
        text = f.read().replace("lane,trials,errors", "lane,trials,errors,macs_per_trial,visible_fraction")
    meas.write_text(text.replace("0,100,7", "0,100,7,1024,1.0"))
    out = tmp_path / "o.devprofile.yaml"
    code, _, stderr = cli("fit", meas, "--base", "pipecnn_kcu1500", "--out", out, "--plot", tmp_path / "p.png")
    assert (code, stderr) == (1, "error: --plot: the plot shows carry rows; these measurements have none\n")
    assert not out.exists() and not (tmp_path / "p.png").exists()


# -- calibrate (faults.md §8.4) on LeNet: one batch of Fashion-MNIST, top-1 ------------------------------------------
@pytest.fixture(scope="module")
def lenet(shared, tmp_path_factory):
    """(prototxt, weights): Caffe's LeNet trained on Fashion-MNIST, its TEST data the test LMDB (100 per batch)."""
    folder = tmp_path_factory.mktemp("lenet")
    model = folder / "lenet_train_test.prototxt"
    model.write_text(lenet_train_test(shared, folder / "no_train_lmdb", build_lmdb("test", folder / "test_lmdb")))
    return model, shared / "golden/nets/lenet/lenet_fmnist_iter_500.caffemodel"


def lenet_args(lenet, seed=4):
    model, weights = lenet
    return ("--model", model, "--weights", weights, "--quant", LENET_QUANT, "--iterations", 1, "--seed", seed)


CURVE_LINE = re.compile(r"^K = (\d+): delta top-1 = ([-+0-9.]+) points \(SE ([0-9.]+)\)$")


def test_calibrate_fits_two_targets_and_passes_a_held_out_point(lenet, tmp_path):
    out = tmp_path / "lenet_board.devprofile.yaml"
    code, stdout, stderr = cli("calibrate", *lenet_args(lenet), "--top-k", 1, "--base", "pipecnn_kcu1500",
                               "--target", "250:-30", "--target", "262:-55", "--holdout", "270:5", "--out", out)
    assert code == 0, stderr
    log = stderr.splitlines()
    assert log[0] == "clean fixed point: top-1 = 79.00 % on 100 images"      # the clean fixed point of the table
    curve = {31: 0.0}
    for line in log[1:]:
        k, delta, _ = CURVE_LINE.match(line).groups()
        curve[int(k)] = float(delta)
    assert list(curve)[1:] == list(range(30, min(curve) - 1, -1)) and curve[min(curve)] < -65  # 10 below -55
    profile = DeviceProfile.load(out)
    fit_block, t = profile.data["fit"], profile.timing
    assert (profile.name, profile.status, fit_block["method"], fit_block["images"]) == \
        ("lenet_board", "calibrated", "accuracy_targets", 100)
    model, weights = lenet
    assert fit_block["model_sha256"] == hashlib.sha256(model.read_bytes() + weights.read_bytes()).hexdigest()
    kappas = []
    for (f, d), row in zip(((250, -30), (262, -55)), fit_block["targets"]):
        k = next(k for k in range(30, -1, -1) if curve[k + 1] > d >= curve[k])       # step 3, by hand
        kappas.append(k + (d - curve[k]) / (curve[k + 1] - curve[k]))
        assert row["kappa"] == pytest.approx(kappas[-1], abs=1e-4) and row["K_fitted"] == \
            horizon_k(f, t["t0_ns"], t["tau_ns_per_bit"])
    k1, k2 = (row["kappa"] for row in fit_block["targets"])                              # step 4, from the
    tau = (1000 / 250 - 1000 / 262) / (k1 - k2)                                          # κ it records
    assert t["tau_ns_per_bit"] == pytest.approx(tau, rel=1e-5)
    assert t["t0_ns"] == pytest.approx(1000 / 250 - (k1 + 0.5) * tau, abs=1e-5)
    assert (t["jitter_ns"], t["fixed_k"]) == (0.01, None)                                # the base's σ is kept
    rows, (held,) = fit_block["targets"], fit_block["heldout"]
    assert stdout.splitlines() == [
        f"target 250 MHz: delta top-1 -30 points, kappa {rows[0]['kappa']:.3f}, fitted K {rows[0]['K_fitted']}, "
        f"simulated {rows[0]['simulated']:+.2f} points (SE {rows[0]['se']:.2f})",
        f"target 262 MHz: delta top-1 -55 points, kappa {rows[1]['kappa']:.3f}, fitted K {rows[1]['K_fitted']}, "
        f"simulated {rows[1]['simulated']:+.2f} points (SE {rows[1]['se']:.2f})",
        f"held-out 270 MHz: predicted top-1 {held['predicted_top5']:.1f} % vs given 5 %: ok",
        f"Wrote {out} (status calibrated; t0_ns {t['t0_ns']:g}, tau_ns_per_bit {t['tau_ns_per_bit']:g}, "
        f"jitter_ns 0.01; 100 images, clean top-1 79.00 %)"]
    assert held["passed"] and abs(held["predicted_top5"] - 5) <= 15
    code, stdout, _ = cli("check", out)
    assert code == 0 and stdout.startswith(f"ok: {out} (status calibrated; timing carry_horizon, safe 210 MHz; ")


def test_calibrate_a_failed_held_out_point_still_writes_and_exits_3(lenet, tmp_path):
    out = tmp_path / "b.devprofile.yaml"
    code, stdout, stderr = cli("calibrate", *lenet_args(lenet), "--top-k", 1, "--base", "pipecnn_kcu1500",
                               "--target", "250:-30", "--target", "262:-55", "--holdout", "300:60", "--out", out)
    assert code == 3, stderr
    (held,) = DeviceProfile.load(out).data["fit"]["heldout"]
    assert held["passed"] is False and held["predicted_top5"] < 45                  # LeNet collapses by 300 MHz
    assert stderr.splitlines()[-1] == (f"warning: calibrate: held-out 300 MHz predicts top-1 = "
                                       f"{held['predicted_top5']:.1f} % (given 60 %): the model collapses too early")
    assert f"held-out 300 MHz: predicted top-1 {held['predicted_top5']:.1f} % vs given 60 %: FAILED" in stdout


@pytest.mark.parametrize("targets, message", [
    (("250:-90",), "calibrate: target 250:-90 not reached for K >= 0"),          # below -79: more than every hit
    (("250:-55", "262:-30"), "calibrate: targets are not monotone in frequency"),
    (("250",), "--target: expected F:DELTA (MHz:points), got '250'"),
])
def test_calibrate_refusals_are_one_line(lenet, tmp_path, targets, message):
    out = tmp_path / "x.devprofile.yaml"
    args = [a for t in targets for a in ("--target", t)]
    code, _, stderr = cli("calibrate", *lenet_args(lenet), "--top-k", 1, "--base", "pipecnn_kcu1500", *args,
                          "--out", out)
    assert (code, stderr.splitlines()[-1]) == (1, f"error: {message}") and not out.exists()


# -- canaries (faults.md §9) -----------------------------------------------------------------------------------------
def test_canary_set_from_the_test_data_at_the_safe_clock(lenet, tmp_path):
    out = tmp_path / "lenet.canaries.npz"
    code, stdout, stderr = cli("canaries", *lenet_args(lenet, seed=3), "--count", 8, "--freq", 210, "--out", out)
    assert code == 0, stderr
    model, weights = lenet
    s = CanarySet.load(out, model_sha=hashlib.sha256(model.read_bytes() + weights.read_bytes()).hexdigest())
    assert (s.inputs.dtype, s.inputs.shape, s.ref_output.dtype, s.ref_output.shape) == \
        (np.int8, (8, 1, 28, 28), np.int8, (8, 10))
    # the clean fixed-point net on the same batch, independently: conv1 reads data at F = 6, ip2 writes F = 2
    net = Net(str(model), TEST, weights=str(weights), accel=accel.open("numba", quant=LENET_QUANT),
              log=NullLogger())
    net.forward()
    images = float_to_fixed(net.blobs["data"].data, 6)
    scores = net.blobs["ip2"].data.astype(np.float64)
    labels = net.blobs["label"].data.astype(np.int32)
    chosen = [next(j for j in range(100) if np.array_equal(images[j], x)) for x in s.inputs]
    assert np.array_equal(s.ref_output, float_to_fixed(scores[chosen], 2)) and np.array_equal(s.labels,
                                                                                           labels[chosen])
    assert np.array_equal(s.ref_top5[:, 0], s.labels)                               # top-1 correct, all of them
    top2 = np.sort(scores, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    correct = scores.argmax(axis=1) == labels
    others = [j for j in range(100) if correct[j] and margin[j] > 0 and j not in chosen]
    assert 0 < margin[chosen].max() <= margin[others].min()                        # the most sensitive ones
    assert s.meta["expected"] == [{"freq_mhz": 210.0, "exact": 1.0, "top1": 1.0, "top5": 1.0, "level": 0,
                                   "checks": 8, "profile": "pipecnn_kcu1500", "seed": 3}]
    assert (s.meta["count"], s.meta["degraded_min"], s.meta["input_frac"], s.meta["output_layer"],
            s.meta["classes"]) == (8, 0.9, 6, "ip2", 10)
    assert stdout.splitlines() == [
        f"Wrote {out}: 8 canaries from 100 TEST images (8 with top-1 correct; top-1/top-2 margins "
        f"{margin[chosen].min():g} … {margin[chosen].max():g}); input 'data' [1, 28, 28] at F = 6, output of layer "
        f"'ip2' [10] at F = 2",
        "Expected at 210 MHz (8 simulated checks, seed 3): level 0 exact (exact 1.000, top-1 1.000, top-5 1.000)"]


def test_canary_expectation_under_soft_errors_is_not_exact(lenet, tmp_path):
    out = tmp_path / "ser.canaries.npz"
    code, stdout, stderr = cli("canaries", *lenet_args(lenet, seed=3), "--count", 8, "--ser", "1e-4", "--out", out)
    assert code == 0, stderr
    (e,) = CanarySet.load(out).meta["expected"]
    assert e["ser"] == 1e-4 and e["level"] >= 1 and e["exact"] < 1


@pytest.mark.parametrize("extra, message", [
    (("--profile", "pipecnn_kcu1500"), "--profile: give --freq or --ser too: the operating point of the "
                                        "expectation"),
    (("--freq", 250, "--ser", 1e-5), "--freq and --ser are exclusive; put soft errors in the profile to combine "
                                     "them"),
    (("--count", 101), "--count: 101 canaries asked for, but the TEST data gave 100 images (raise --iterations)"),
])
def test_canaries_refusals_are_one_line(lenet, tmp_path, extra, message):
    out = tmp_path / "x.canaries.npz"
    code, _, stderr = cli("canaries", *lenet_args(lenet), *extra, "--out", out)
    assert (code, stderr.splitlines()[-1]) == (1, f"error: {message}") and not out.exists()


def test_canary_candidates_from_an_image_list(lenet, tmp_path):
    """--images LIST: the candidates are listed PNGs, read through an ImageData layer with the data layer's
    transform (scale 1/256 here), so they quantise exactly as the same pictures from the LMDB do."""
    import cv2

    model, weights = lenet
    net = Net(str(model), TEST, weights=str(weights), log=NullLogger())
    net.forward()
    pixels = np.rint(net.blobs["data"].data[:12, 0] * 256).astype(np.uint8)
    labels = net.blobs["label"].data[:12].astype(int)
    lines = []
    for i, (img, label) in enumerate(zip(pixels, labels)):
        cv2.imwrite(str(tmp_path / f"{i}.png"), img)
        lines.append(f"{i}.png {label}")
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "listed.canaries.npz"
    code, stdout, stderr = cli("canaries", *lenet_args(lenet, seed=3), "--images", tmp_path / "list.txt",
                               "--root-folder", f"{tmp_path}/", "--gray", "--count", 4, "--out", out)
    assert code == 0, stderr
    s = CanarySet.load(out)
    assert s.inputs.shape == (4, 1, 28, 28) and s.meta["source"].startswith(f"{tmp_path / 'list.txt'}, ")
    mine = float_to_fixed(pixels.astype(np.float32)[:, None] * np.float32(0.00390625), 6)
    assert all(any(np.array_equal(x, m) and y == lab for m, lab in zip(mine, labels)) for x, y in
               zip(s.inputs, s.labels))
    assert stdout.startswith(f"Wrote {out}: 4 canaries from 12 listed images")
