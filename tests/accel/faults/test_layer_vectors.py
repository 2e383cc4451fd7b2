"""fault_vectors.json `layers`: 4 tiny layers × 13 scenarios through the brute-force register loop, plus the
fast paths (MAC-flip and rate corrections of the clean sum) where they apply (faults.md §4.4, §12)."""
import numpy as np
import pytest

from caffe_unstable.accel.faults.mac_flip import corrected_sums
from caffe_unstable.accel.faults.rate import rate_corrected_sums

from .brute import output_conversion
from .layer_sim import simulate
from .test_mac_flip import clean_registers
from .vector_plans import geometry, scenario_plan, widths

SCENARIOS = ["mac_flip_accumulator", "mac_flip_product", "mac_flip_mixed_widths", "ch_fixed_K_carry_dropped",
             "ch_fixed_K_stale", "ch_fixed_K_drop", "ch_fixed_K_all_sites", "ch_per_add_jitter",
             "mac_flip_accumulator_plus_ch", "rate_model", "stuck_at", "weight_mem_flips", "act_mem_flips"]


def _plan_dict(scenario):
    """The scenario's plan with 64-bit decimal strings turned into ints (what the brute-force loop reads)."""
    p = dict(scenario["plan"])
    if p.get("timing") and p["timing"].get("thresholds"):
        t = dict(p["timing"])
        t["thresholds"] = [[int(v) for v in row] for row in t["thresholds"]]
        t["keys"] = [int(k) for k in t["keys"]]
        p["timing"] = t
    return p


def test_every_layer_has_the_13_scenarios(vectors):
    assert [layer["name"] for layer in vectors["layers"]] == ["A_conv3x3_padlanes", "B_conv5x5_s2_chpad",
                                                             "C_conv3x3_group2", "D_fc96_vec8"]
    for layer in vectors["layers"]:
        assert [s["name"] for s in layer["scenarios"]] == SCENARIOS


@pytest.mark.parametrize("index", range(4))
def test_layer_scenarios_register_loop(vectors, index):
    layer = vectors["layers"][index]
    clean, hit, _ = simulate(layer, {})
    assert np.array_equal(clean, layer["clean_output"]) and not hit.any()
    for s in layer["scenarios"]:
        out, hit, _ = simulate(layer, _plan_dict(s), widths(s))
        assert np.array_equal(out, s["output"]), (layer["name"], s["name"])
        assert int((out != clean).sum()) == s["outputs_changed"], (layer["name"], s["name"])
        if "outputs_hit" in s:
            assert int(hit.sum()) == s["outputs_hit"], (layer["name"], s["name"])
        scenario_plan(layer, s).layers[0].validate(batch=1)


@pytest.mark.parametrize("index", range(4))
def test_layer_scenarios_fast_paths(vectors, index):
    """MAC flips and rate errors from the clean sums plus per-output corrections, as a backend's fast path."""
    layer = vectors["layers"][index]
    q, b = layer["quant"], np.asarray(layer["bias"], np.int64)
    _, _, (xs, ws, _) = simulate(layer, {})
    g = layer["geometry"]
    m, A, S_clean = clean_registers(xs, ws, g["PIPE_DEPTH"])
    o_of_row = np.repeat(np.arange(g["O"]), g["conv_y"] * g["conv_x"])
    for s in layer["scenarios"]:
        lp = scenario_plan(layer, s).layers[0]
        if s["name"] not in ("mac_flip_accumulator", "mac_flip_product", "mac_flip_mixed_widths", "rate_model"):
            continue
        ev = lp.rate_events if s["name"] == "rate_model" else lp.mac_events
        rows = ((ev["o"].astype(np.int64) * g["conv_y"] + ev["y"]) * g["conv_x"] + ev["x"])
        S = S_clean.copy()
        if s["name"] == "rate_model":
            first, S_fault = rate_corrected_sums(ev, S_clean[rows[np.unique(rows, return_index=True)[1]]])
        else:
            t = ev["t"].astype(np.int64)
            cur = np.where(ev["site"] == 0, m[rows, t], A[rows, t])
            first, S_fault = corrected_sums(ev, cur, S_clean[rows[np.unique(rows, return_index=True)[1]]],
                                            geometry(layer, s))
        S[rows[first]] = S_fault
        out = output_conversion(S, b[o_of_row], q["frac_w"], q["frac_din"], q["frac_dout"], q["relu"])
        assert np.array_equal(out.reshape(np.shape(s["output"])), s["output"]), (layer["name"], s["name"])


@pytest.mark.parametrize("K", [31, 32])
def test_horizon_at_least_31_is_the_clean_layer(vectors, K):
    """faults.md §13.4: fixed_k = 31 or 32 at every site and sampled value equals the clean output bit for bit."""
    for layer in vectors["layers"]:
        for mode in ("carry_dropped", "stale", "drop"):
            timing = {"model": "carry_horizon", "sampled_value": mode, "sites": ["accumulate", "final_reduce",
                                                                                 "adder_tree"],
                      "final_slack_bits": 1, "tree_slack_bits": 1, "K_lane": [[K] * layer["geometry"]["LANE_NUM"]],
                      "thresholds": None, "keys": None}
            out, hit, _ = simulate(layer, {"timing": timing})
            assert np.array_equal(out, layer["clean_output"]) and not hit.any(), (layer["name"], mode)
