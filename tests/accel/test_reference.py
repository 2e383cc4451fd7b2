"""accel/reference.py against the spec's known answers: the fault vectors' tiny layers (clean outputs and the
MAC-flip scenarios of faults.md §12), the single-output register vectors, and the LRN's worked cases (§3.5)."""
import json

import numpy as np
import pytest

from caffe_unstable.accel import lrn_table, reference
from caffe_unstable.accel.geometry import SITES, ConvGeometry, PoolStage, mac_events
from caffe_unstable.accel.quant import LayerFormat

MAC_SCENARIOS = ("mac_flip_accumulator", "mac_flip_product", "mac_flip_mixed_widths")


@pytest.fixture(scope="module")
def vectors(shared):
    return json.loads((shared / "specs/fault_vectors.json").read_text())


def vector_layer(case):
    g, q = case["geometry"], case["quant"]
    geom = ConvGeometry(1, g["Cin"], g["H"], g["W_in"], g["O"], g["group"], g["Kh"], g["Kw"], g["stride"],
                        g["stride"], g["pad"], g["pad"], g["VEC_SIZE"], g["LANE_NUM"], g["PIPE_DEPTH"])
    x = np.array(case["input"], np.int8)[None]
    w = np.array(case["weights"], np.int8)
    b = np.array(case["bias"], np.int8)
    return geom, x, w, b, LayerFormat(q["frac_w"], q["frac_din"], q["frac_dout"]), bool(q["relu"])


def scenario_widths(sc):
    a = sc.get("accelerator", {})
    return a.get("width_product", 32), a.get("width_accumulator", 32), a.get("width_final", 32)


def test_vector_layers_geometry_and_clean_outputs(vectors):
    for case in vectors["layers"]:
        geom, x, w, b, fmt, relu = vector_layer(case)
        g = case["geometry"]
        assert (geom.Cg, geom.Cp, geom.L, geom.Op, geom.po, geom.Ho, geom.Wo, geom.n_mac) == (
            g["Cg"], g["Cp"], g["L"], g["Op"], g["po"], g["conv_y"], g["conv_x"], g["N_MAC"]), case["name"]
        want = np.array(case["clean_output"])
        assert np.array_equal(reference.conv_reference(x, w, b, geom, fmt, relu)[0], want), case["name"]
        assert np.array_equal(reference.conv_mac_reference(x, w, b, geom, fmt, relu)[0], want), case["name"]


def test_vector_layers_mac_flip_scenarios(vectors):
    for case in vectors["layers"]:
        geom, x, w, b, fmt, relu = vector_layer(case)
        for sc in case["scenarios"]:
            if sc["name"] not in MAC_SCENARIOS:
                continue
            ev = mac_events([tuple(r) for r in sc["plan"]["mac_events"]])
            got = reference.conv_mac_reference(x, w, b, geom, fmt, relu, ev, scenario_widths(sc))[0]
            assert np.array_equal(got, np.array(sc["output"])), (case["name"], sc["name"])


def test_register_vectors(vectors):
    for c in vectors["mac_flip_register"]:
        ev = [(t, SITES[s], bit) for t, s, bit in c["events"]]
        widths = (c["width"],) * 3
        assert reference.mac_output(c["x"], c["w"], [], c["VEC"], c["PIPE_DEPTH"], widths) == c["S_clean"]
        assert reference.mac_output(c["x"], c["w"], ev, c["VEC"], c["PIPE_DEPTH"], widths) == c["S_faulty"]


def isolated(q, frac, c=5, overflow="clamp"):
    """LRN output of one nonzero channel (the others 0)."""
    x = np.zeros((1, c, 1, 1), np.int8)
    x[0, c // 2] = q
    return int(reference.lrn_reference(x, frac, overflow)[0, c // 2, 0, 0])


def test_lrn_worked_cases():
    # q = 20 at F = -4: a = 320, s = 102400 (address 15), f = 0.43370625, o = 138.786 (§3.5)
    assert int(lrn_table.segment(np.array([102400]))[0]) == 15
    assert isolated(20, -4) == 127 and isolated(20, -4, overflow="wrap") == -117
    assert isolated(81, -2) == 127 and isolated(81, -2, overflow="wrap") == 139 - 256
    assert isolated(127, -1) == 127 and isolated(127, -1, overflow="wrap") == 136 - 256
    outs = [isolated(q, 0, overflow="wrap") for q in range(128)]
    assert max(outs) == 103 and min(outs) >= 0                 # F = 0 never overflows (max 102.98)


def test_lrn_table_end_gives_zero():
    x = np.full((1, 9, 1, 1), 120, np.int8)                     # s = 5 (120 * 16)^2 >= 2^24 at F = -4
    out = reference.lrn_reference(x, -4)[0, :, 0, 0]
    assert not out[2:7].any() and out[0] > 0                    # full windows read the zero entry; edges do not


def test_lrn_table_approximates_caffe_lrn():
    s = np.arange(1, 1 << 24, 997, dtype=np.int64)
    addr = lrn_table.segment(s)
    sf = s.astype(np.float32)
    f = ((sf - lrn_table.X_SAMPLE[addr]) * lrn_table.H_INV[addr]) * lrn_table.COEF1[addr] + lrn_table.COEF0[addr]
    exact = (1 + 2e-5 * s) ** -0.75
    rel = np.abs(f / exact - 1)
    assert rel[addr == 0].max() < 0.0021 and rel[addr > 0].max() < 0.0045


def test_max_pool_reference_clips_windows():
    q = np.arange(-40, 40, dtype=np.int8).reshape(1, 1, 8, 10)
    st = PoolStage(1, 1, 8, 10, 3, 3, 2, 2, 1, 1)
    assert (st.Ho, st.Wo) == (5, 6)                             # Caffe's ceil mode
    out = reference.max_pool_reference(q, st)
    assert out[0, 0, 0, 0] == q[0, 0, :2, :2].max() and out[0, 0, -1, -1] == q[0, 0, 7:, 9:].max()
