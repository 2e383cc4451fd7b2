"""faults.md §7: the device profile schema, its one-line errors (`error: FILE:LINE: key: problem`, exit 1),
defaults, the shipped profiles and the load → dump → load round trip."""
import pytest

from caffe_unstable.accel.faults.profile import SHIPPED_DIR, DeviceProfile
from caffe_unstable.cli import run
from caffe_unstable.errors import CaffeUnstableError

SHIPPED = (SHIPPED_DIR / "pipecnn_kcu1500.devprofile.yaml").read_text()
TOP_KEYS = "format, name, status, description, provenance, conditions, accelerator, timing, soft_errors, " \
           "permanent, canaries, measurements, fit"

# (old text, new text, expected "key: problem", text marking the expected line)
CASES = [
    ("name: pipecnn_kcu1500\n", "name: pipecnn_kcu1500\nfoo: 1\n", f"foo: unknown key (known: {TOP_KEYS})", "foo:"),
    ("  tau_ns_per_bit: 0.070", "  tau_ns: 0.070",
     "timing.tau_ns: unknown key (known: model, safe_mhz, valid_mhz, fixed_k, t0_ns, tau_ns_per_bit, jitter_ns, "
     "jitter_scope, sampled_value, sites, final_slack_bits, tree_slack_bits, lane_offsets_ns, rate)", "tau_ns:"),
    ("format: caffe_unstable.device_profile/1", "format: caffe_unstable.device_profile/2",
     "format: expected 'caffe_unstable.device_profile/1', got 'caffe_unstable.device_profile/2'", "format:"),
    ("format: caffe_unstable.device_profile/1\n", "", "format: required", "name:"),
    ("status: starting_point ", "status: guessed ",
     "status: must be one of starting_point, calibrated, measured, got 'guessed'", "status:"),
    ("  name: PipeCNN", "  name: Angel-Eye", "accelerator.name: only PipeCNN is implemented, got 'Angel-Eye'",
     "Angel-Eye"),
    ("  vec_size: 4", "  vec_size: 6", "accelerator.vec_size: must be a multiple of 4 (4-product DSP blocks), got 6",
     "vec_size"),
    ("  vec_size: 4", "  vec_size: true", "accelerator.vec_size: must be an integer, got True", "vec_size"),
    ("  lane_num: 16", "  lane_num: 0", "accelerator.lane_num: must be an integer >= 1, got 0", "lane_num"),
    ("  lane_num: 16", "  lane_num: 16.0", "accelerator.lane_num: must be an integer, got 16.0", "lane_num"),
    ("  pipe_depth: 6", "  pipe_depth: 0", "accelerator.pipe_depth: must be an integer >= 1, got 0", "pipe_depth"),
    ("  width_product: 18", "  width_product: 17",
     "accelerator.width_product: must be an integer in [18, 32], got 17", "width_product"),
    ("  width_accumulator: 32", "  width_accumulator: 33",
     "accelerator.width_accumulator: must be an integer in [1, 32], got 33", "width_accumulator"),
    ("  lrn_overflow: clamp", "  lrn_overflow: saturate",
     "accelerator.lrn_overflow: must be one of clamp, wrap, got 'saturate'", "lrn_overflow"),
    ("  model: carry_horizon", "  model: razor",
     "timing.model: must be one of carry_horizon, rate, none, got 'razor'", "model: razor"),
    ("  safe_mhz: 210\n", "", "timing.safe_mhz: required when timing.model is carry_horizon", "timing:"),
    ("  safe_mhz: 210", "  safe_mhz: -210", "timing.safe_mhz: must be a number > 0, got -210", "safe_mhz"),
    ("  valid_mhz: [200, 300]", "  valid_mhz: [300, 200]", "timing.valid_mhz: must have lo < hi, got [300, 200]",
     "valid_mhz"),
    ("  valid_mhz: [200, 300]", "  valid_mhz: 200", "timing.valid_mhz: must be a list [lo, hi] of two numbers, got 200",
     "valid_mhz"),
    ("  t0_ns: 1.94\n", "", "timing.t0_ns: required when timing.model is carry_horizon", "timing:"),
    ("  tau_ns_per_bit: 0.070", "  tau_ns_per_bit: -0.07", "timing.tau_ns_per_bit: must be a number > 0, got -0.07",
     "tau_ns_per_bit"),
    ("  tau_ns_per_bit: 0.070", "  tau_ns_per_bit: fast", "timing.tau_ns_per_bit: must be a number > 0, got 'fast'",
     "tau_ns_per_bit"),
    ("  t0_ns: 1.94", "  t0_ns: 1.94\n  fixed_k: 33", "timing.fixed_k: must be an integer in [0, 32], got 33",
     "fixed_k"),
    ("  jitter_ns: 0.010", "  jitter_ns: -0.01", "timing.jitter_ns: must be a number >= 0, got -0.01", "jitter_ns"),
    ("  jitter_scope: per_add", "  jitter_scope: per_layer",
     "timing.jitter_scope: must be one of per_add, per_image, got 'per_layer'", "jitter_scope"),
    ("  sampled_value: carry_dropped", "  sampled_value: zero",
     "timing.sampled_value: must be one of carry_dropped, stale, drop, got 'zero'", "sampled_value"),
    ("  sites: [accumulate]", "  sites: []", "timing.sites: must be a non-empty list of distinct sites, got []",
     "sites"),
    ("  sites: [accumulate]", "  sites: [accumulate, accumulate]",
     "timing.sites: must be a non-empty list of distinct sites, got ['accumulate', 'accumulate']", "sites"),
    ("  sites: [accumulate]", "  sites: [accumulate, multiplier]",
     "timing.sites[1]: must be one of accumulate, final_reduce, adder_tree, got 'multiplier'", "sites"),
    ("  sites: [accumulate]", "  sites: [accumulate]\n  final_slack_bits: 40",
     "timing.final_slack_bits: must be an integer in [-32, 32], got 40", "final_slack_bits"),
    ("  lane_offsets_ns: null", "  lane_offsets_ns: [0.0, 0.1]",
     "timing.lane_offsets_ns: must be a list of accelerator.lane_num (16) numbers, got [0.0, 0.1]",
     "lane_offsets_ns"),
    ("  safe_mhz: 210", "  safe_mhz: 250", "timing.safe_mhz: the model fails at the safe clock (K = 28 < 31 at "
                                           "250 MHz)", "safe_mhz"),
    ("    curve: exponential", "    curve: linear",
     "timing.rate.curve: must be one of exponential, gaussian_tail, table, got 'linear'", "curve"),
    ("    p_ref: 2.4e-4", "    p_ref: 0", "timing.rate.p_ref: must be a number in (0, 1], got 0", "p_ref"),
    ("    beta_per_mhz: 0.16", "    beta_per_mhz: -0.16", "timing.rate.beta_per_mhz: must be a number >= 0, got -0.16",
     "beta_per_mhz"),
    ("    poff_mhz: 243.3", "    poff_mhz: 200", "timing.rate.poff_mhz: must be a number >= timing.safe_mhz, got 200",
     "poff_mhz"),
    ("    f_ref_mhz: 250\n", "", "timing.rate.f_ref_mhz: required for curve exponential", "rate:"),
    ("    curve: exponential", "    curve: gaussian_tail\n    amplitude: 0.5\n    mu_ns: 3.8",
     "timing.rate.sigma_ns: required for curve gaussian_tail", "rate:"),
    ("    curve: exponential", "    curve: table\n    table: [[250, 0.001], [250, 0.01]]",
     "timing.rate.table[1]: mhz must be strictly increasing", "table:"),
    ("    curve: exponential", "    curve: table\n    table: [[250, 0.01], [260, 0.001]]",
     "timing.rate.table[1]: p must be non-decreasing", "table:"),
    ("    p_max: 0.5", "    p_max: 0", "timing.rate.p_max: must be a number in (0, 1], got 0", "p_max"),
    ("    bit_pmf: geometric", "    bit_pmf: {31: 1, 32: 1}",
     "timing.rate.bit_pmf: bits must be integers in [0, 31], got 32", "bit_pmf"),
    ("    bit_lo: 26", "    bit_lo: 32", "timing.rate.bit_lo: must be an integer in [0, 31], got 32", "bit_lo"),
    ("  mac_flip_rate: 0.0 ", "  mac_flip_rate: -1e-5 ",
     "soft_errors.mac_flip_rate: must be a number in [0, 0.01], got -1e-5", "mac_flip_rate"),
    ("  mac_flip_rate: 0.0 ", "  mac_flip_rate: 0.02 ",
     "soft_errors.mac_flip_rate: must be a number in [0, 0.01], got 0.02", "mac_flip_rate"),
    ("  site: product", "  site: final", "soft_errors.site: must be one of accumulator, product, got 'final'",
     "site: final"),
    ("  count: hardware", "  count: caffe", "soft_errors.count: must be one of hardware, model, got 'caffe'",
     "count: caffe"),
    ("  flip_bits: [0, 17]", "  flip_bits: [0, 18]",
     "soft_errors.flip_bits: must satisfy 0 <= lo <= hi <= 17 (the product width), got [0, 18]", "flip_bits"),
    ("  weight_scope: buffer", "  weight_scope: sram",
     "soft_errors.weight_scope: must be one of buffer, ddr, got 'sram'", "weight_scope"),
    ("  act_bit_flip_prob: 0.0", "  act_bit_flip_prob: 1",
     "soft_errors.act_bit_flip_prob: must be a number in [0, 0.01], got 1", "act_bit_flip_prob"),
    ("  stuck_at: []", "  stuck_at:\n    - {site: product, lane: 1, bit: 3, value: 1}\n"
                       "    - {site: accumulator, lane: 2, bit: 5, value: 0}\n"
                       "    - {site: multiplier, lane: 16, vec: 0, bit: 3, value: 1}",
     "permanent.stuck_at[2].lane: must be < accelerator.lane_num (16), got 16", "site: multiplier"),
    ("  stuck_at: []", "  stuck_at:\n    - {site: multiplier, lane: 1, vec: 4, bit: 3, value: 1}",
     "permanent.stuck_at[0].vec: must be < accelerator.vec_size (4), got 4", "site: multiplier"),
    ("  stuck_at: []", "  stuck_at:\n    - {site: multiplier, lane: 1, vec: 0, bit: 16, value: 1}",
     "permanent.stuck_at[0].bit: must be in [0, 15] for site multiplier, got 16", "site: multiplier"),
    ("  stuck_at: []", "  stuck_at:\n    - {site: product, lane: 1, bit: 3, value: 2}",
     "permanent.stuck_at[0].value: must be 0 or 1, got 2", "{site: product"),
    ("  stuck_at: []", "  stuck_at:\n    - {site: weight_mem, layer: conv1, bit: 3, value: 1}",
     "permanent.stuck_at[0].address: required for site weight_mem", "site: weight_mem"),
    ("  stuck_at: []", "  stuck_at:\n    - {site: product, lane: 1, vec: 0, bit: 3, value: 1}",
     "permanent.stuck_at[0].vec: unknown key (known: site, lane, bit, value)", "{site: product"),
    ("  stuck_at: []", "  stuck_at: []\n  random:\n    - {site: product, count: 2, fraction: 0.1, seed: 1}",
     "permanent.random[0]: needs exactly one of count or fraction", "{site: product"),
    ("  stuck_at: []", "  stuck_at: []\n  stuck_at_file: missing.csv",
     "permanent.stuck_at_file: file not found: missing.csv", "stuck_at_file"),
    ("permanent:", "canaries: {set: canaries/alexnet.canaries.npz}\npermanent:",
     "canaries.set: file not found: canaries/alexnet.canaries.npz", "canaries:"),
]


def _write(tmp_path, text, name="kcu1500.devprofile.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("old, new, message, marker", CASES, ids=[c[2].split(":")[0] for c in CASES])
def test_schema_errors_are_one_line(tmp_path, capsys, monkeypatch, old, new, message, marker):
    assert old in SHIPPED
    text = SHIPPED.replace(old, new, 1)
    path = _write(tmp_path, text)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if marker in t)
    monkeypatch.delenv("CU_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        run(DeviceProfile.load, path)
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == f"error: {path}:{line}: {message}\n"


def test_yaml_syntax_error(tmp_path):
    path = _write(tmp_path, SHIPPED.replace("  lane_num: 16", "  lane_num: [16"))
    with pytest.raises(CaffeUnstableError, match=r"kcu1500.devprofile.yaml:\d+: yaml: "):
        DeviceProfile.load(path)


@pytest.mark.parametrize("name", ["pipecnn_kcu1500", "pipecnn_kcu1500.devprofile.yaml", "pipecnn_kcu1500_vgg"])
def test_shipped_profiles_validate_and_round_trip(tmp_path, name):
    p = DeviceProfile.load(name)
    assert p.status == "starting_point" and p.accelerator["vec_size"] == 4 and p.accelerator["lane_num"] == 16
    p.dump(tmp_path / "copy.devprofile.yaml")
    q = DeviceProfile.load(tmp_path / "copy.devprofile.yaml")
    assert q == p and q.data == p.data
    q.dump(tmp_path / "again.devprofile.yaml")
    assert (tmp_path / "again.devprofile.yaml").read_text() == (tmp_path / "copy.devprofile.yaml").read_text()


def test_shipped_squeezenet_calibration():
    """The profile cu-characterize calibrate --fit-jitter fitted on SqueezeNet (docs/faults.md): it validates,
    round-trips, keeps the base's build and τ, and its jitter gives the fitted tail probabilities."""
    from statistics import NormalDist

    p = DeviceProfile.load("pipecnn_kcu1500_squeezenet")
    base = DeviceProfile.load("pipecnn_kcu1500")
    assert p.status == "calibrated" and p.accelerator == base.accelerator and p.soft_errors == base.soft_errors
    t = p.timing
    assert (t["t0_ns"], t["tau_ns_per_bit"], t["jitter_ns"], t["jitter_scope"]) == (0.929767, 0.07, 0.2331, "per_add")
    fit = p.data["fit"]
    assert fit["method"] == "accuracy_targets_jitter_tail" and fit["images"] == 200
    assert [(r["mhz"], r["delta"], r["simulated"]) for r in fit["targets"]] == [(250.0, -0.5, -0.5),
                                                                               (260.0, -4.3, -8.0)]
    assert fit["heldout"] == [{"mhz": 270.0, "given_top5": 10.0, "predicted_top5": 7.5, "passed": True}]
    for r in fit["targets"]:          # P(K <= 30) at the target clock is the bisection's p
        z = (1000.0 / r["mhz"] - t["t0_ns"] - 31 * t["tau_ns_per_bit"]) / t["jitter_ns"]
        assert 1.0 - NormalDist().cdf(z) == pytest.approx(r["p_k30"], rel=0.02)
    assert round(p.first_failure_mhz(), 1) == 322.6 and p.warnings() == []
    assert p.check_freq(270) is None


def test_shipped_starting_point_numbers():
    p = DeviceProfile.load("pipecnn_kcu1500")
    t = p.timing
    assert (t["safe_mhz"], t["t0_ns"], t["tau_ns_per_bit"], t["jitter_ns"]) == (210, 1.94, 0.07, 0.01)
    assert round(p.first_failure_mhz(), 1) == 243.3
    assert t["rate"]["p_ref"] == 2.4e-4 and t["rate"]["bit_pmf"] == "geometric"
    assert p.warnings() == ["warning: pipecnn_kcu1500.devprofile.yaml: status is starting_point: the timing "
                            "parameters are a calibration starting point, not measured"]
    assert p.check_freq(260) is None
    assert p.check_freq(310) == "warning: --freq 310 is outside the profile's valid_mhz [200, 300]"
    vgg = DeviceProfile.load("pipecnn_kcu1500_vgg")
    assert round(vgg.first_failure_mhz(), 1) == 220.1 and vgg.timing["safe_mhz"] == 190


def test_defaults_and_number_strings(tmp_path):
    path = _write(tmp_path, "format: caffe_unstable.device_profile/1\nsoft_errors:\n  mac_flip_rate: 1e-5\n",
                  "tiny.devprofile.yaml")
    p = DeviceProfile.load(path)
    assert p.name == "tiny" and p.status == "starting_point"
    assert p.soft_errors == {"mac_flip_rate": 1e-5, "site": "accumulator", "count": "hardware", "flip_bits": [0, 31],
                             "weight_bit_flip_prob": 0, "weight_scope": "buffer", "act_bit_flip_prob": 0}
    assert p.timing["model"] == "none" and p.accelerator["pipe_depth"] == 6 and p.warnings() == []
    assert p.check_freq(260).startswith("warning: --freq 260: profile tiny has no timing model")
    narrow = _write(tmp_path, "format: caffe_unstable.device_profile/1\naccelerator: {width_product: 18}\n"
                              "soft_errors: {site: product}\n", "narrow.devprofile.yaml")
    assert DeviceProfile.load(narrow).soft_errors["flip_bits"] == [0, 17]


def test_stuck_at_file(tmp_path):
    (tmp_path / "map.csv").write_text("site,lane,vec,bit,value,layer,address\nmultiplier,1,2,14,1,,\n"
                                      "weight_mem,,,3,0,conv1,17\n")
    text = SHIPPED.replace("  stuck_at: []", "  stuck_at: []\n  stuck_at_file: map.csv")
    p = DeviceProfile.load(_write(tmp_path, text))
    assert p.stuck_file_entries() == [{"site": "multiplier", "lane": 1, "vec": 2, "bit": 14, "value": 1},
                                      {"site": "weight_mem", "layer": "conv1", "address": 17, "bit": 3, "value": 0}]
    (tmp_path / "map.csv").write_text("site,lane,vec,bit,value,layer,address\nproduct,99,,3,1,,\n")
    with pytest.raises(CaffeUnstableError, match=r"map.csv:2: row 1.lane: must be < accelerator.lane_num \(16\)"):
        DeviceProfile.load(_write(tmp_path, text))


def test_unknown_profile_name():
    with pytest.raises(CaffeUnstableError, match=r"no_such_board: profile not found .*pipecnn_kcu1500"):
        DeviceProfile.load("no_such_board")
