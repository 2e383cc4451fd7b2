"""faults.md §4: MAC-flip sampling, mapping, and the exact correction of §4.4 against the register loop."""
import numpy as np
import pytest

from caffe_unstable.accel.faults.indexing import (conv_geometry, decode_mac, decode_model_mac, encode_out,
                                                  model_mac_count)
from caffe_unstable.accel.faults import mac_flip, mac_records
from caffe_unstable.accel.faults.mac_flip import MacFlip, corrected_sums
from caffe_unstable.accel.faults.plan import MAC_EVENT_DTYPE, LayerOp, mac_events
from caffe_unstable.accel.faults.registers import flip, force, wrap32
from caffe_unstable.accel.faults.rng import PassKey, sample_distinct
from caffe_unstable.errors import CaffeUnstableError

from .brute import Faults, register_loop

SITE = {"product": 0, "accumulator": 1, "final": 2}


def clean_registers(x, w, P):
    """m_t [R, L], the clean chain prefixes A_t [R, L] and S [R] of operands x, w [R, L, VEC]."""
    m = (x.astype(np.int64) * w.astype(np.int64)).sum(axis=2)
    A = np.empty_like(m)
    for r in range(P):
        A[:, r::P] = np.cumsum(m[:, r::P], axis=1)
    return m, A, wrap32(m.sum(axis=1))


def fast_path(x, w, events, P, widths):
    """S of every output: clean S, corrected at the faulted outputs (the backend's way, §4.4)."""
    m, A, S = clean_registers(x, w, P)
    rows, t = events["n"].astype(np.int64), events["t"].astype(np.int64)
    cur = np.where(events["site"] == 0, m[rows, t], A[rows, t])
    geometry = {"PIPE_DEPTH": P, "width_product": widths[0], "width_accumulator": widths[1], "width_final": widths[2]}
    first, S_fault = corrected_sums(events, cur, S[rows[np.unique(rows, return_index=True)[1]]], geometry)
    S = S.copy()
    S[rows[first]] = S_fault
    return S


def loop_faults(events):
    flips = {}
    for name, code in SITE.items():
        e = events[events["site"] == code]
        if len(e):
            flips[name] = (e["n"].astype(np.int64), e["t"].astype(np.int64), e["bit"].astype(np.int64))
    return Faults(flips=flips)


def test_register_helpers():
    assert flip(5, 1, 32) == 7 and flip(7, 1, 32) == 5
    assert flip(0, 31, 32) == -2 ** 31 and flip(-2 ** 31, 31, 32) == 0
    assert flip(0, 19, 20) == -2 ** 19 and flip(-2 ** 19, 19, 20) == 0        # sign bit of a 20-bit register
    assert flip(2 ** 19, 19, 20) == 2 ** 20                                 # bit 19 set: +2^19 (mod 2^32 only)
    assert flip(-1, 23, 24) == -1 + 2 ** 23
    assert force(100, 15, 1, 16) == 100 - 2 ** 15 and force(100, 2, 1, 16) == 100 and force(100, 2, 0, 16) == 96
    assert flip(2 ** 31 - 1, 0, 32) == 2 ** 31 - 2 and flip(-1, 0, 29) == -2


def test_mac_flip_register_vectors(vectors):
    cases = vectors["mac_flip_register"]
    assert len(cases) == 30
    for c in cases:
        x = np.asarray(c["x"], np.int64)[None]
        w = np.asarray(c["w"], np.int64)[None]
        ev = c["events"]
        events = mac_events(np.zeros(len(ev)), 0, 0, 0, [0 if s == "final" else t for t, s, _ in ev],
                            [s for _, s, _ in ev], [b for _, _, b in ev])
        widths = (c["width"],) * 3
        S_loop, _ = register_loop(x, w, c["PIPE_DEPTH"], widths, faults=loop_faults(events))
        assert clean_registers(x, w, c["PIPE_DEPTH"])[2][0] == c["S_clean"]
        assert S_loop[0] == c["S_faulty"], c
        assert fast_path(x, w, events, c["PIPE_DEPTH"], widths)[0] == c["S_faulty"], c


def _operands(rng, R, L, VEC, mode):
    if mode == "uniform":
        return rng.integers(-128, 128, (R, L, VEC), dtype=np.int8), rng.integers(-128, 128, (R, L, VEC), dtype=np.int8)
    if mode == "relu":
        x = (rng.integers(0, 60, (R, L, VEC)) * (rng.random((R, L, VEC)) < 0.4)).astype(np.int8)
        return x, rng.integers(-30, 31, (R, L, VEC), dtype=np.int8)
    extreme = np.array([-128, 127, -1, 0, 1], np.int8)
    return extreme[rng.integers(0, 5, (R, L, VEC))], extreme[rng.integers(0, 5, (R, L, VEC))]


def _random_records(rng, layer_rows, L, P, widths):
    """1–50 records on one layer's outputs, with forced collisions (repeats, one step, one chain, sign bits)."""
    F = int(rng.integers(1, 51))
    rows = rng.choice(layer_rows, F)
    site = rng.integers(0, 3, F)
    t = np.where(site == 2, 0, rng.integers(0, L, F))
    w = np.asarray(widths)[site]
    bit = np.where(rng.random(F) < 0.2, w - 1, rng.integers(0, w))
    for i in range(1, F):
        u = rng.random()
        if u < 0.15:                       # an exact repeat (cancels)
            rows[i], site[i], t[i], bit[i] = rows[i - 1], site[i - 1], t[i - 1], bit[i - 1]
        elif u < 0.35 and site[i - 1] != 2:  # same register and step, another bit
            rows[i], site[i], t[i] = rows[i - 1], site[i - 1], t[i - 1]
            bit[i] = rng.integers(0, widths[site[i]])
        elif u < 0.5 and site[i] != 2:      # same output and chain, a later step
            rows[i], t[i] = rows[i - 1], min(L - 1, t[i - 1] + P * int(rng.integers(0, 3)))
    return rows, t, site, bit


@pytest.mark.parametrize("VEC", [4, 8, 16])
def test_correction_equals_brute_force(VEC):
    """faults.md §13.3: 0 differing outputs over 3 × 3,360 random int8 layers with 1–50 records each."""
    rng = np.random.default_rng(VEC)
    P, layers, mismatches, n_records = 6, 0, 0, 0
    for widths in [(32, 32, 32), (29, 29, 29), (24, 24, 24), (20, 20, 20)]:
        for L, mode in [(int(rng.integers(1, 13)), "extreme"), (int(rng.integers(13, 200)), "relu"),
                        (int(rng.integers(200, 701)), "uniform")]:
            n_layers = 280
            per_layer = rng.integers(1, 5, n_layers)
            R = int(per_layer.sum())
            starts = np.concatenate([[0], np.cumsum(per_layer)])
            x, w = _operands(rng, R, L, VEC, mode)
            cols = [_random_records(rng, np.arange(starts[i], starts[i + 1]), L, P, widths) for i in range(n_layers)]
            rows, t, site, bit = (np.concatenate(c) for c in zip(*cols))
            events = mac_events(rows, 0, 0, 0, t, site, bit)
            S_loop, _ = register_loop(x, w, P, widths, faults=loop_faults(events))
            S_fast = fast_path(x, w, events, P, widths)
            mismatches += int((S_loop != S_fast).sum())
            layers += n_layers
            n_records += len(events)
    print(f"\nVEC {VEC}: {layers} layers, {n_records} records, {mismatches} mismatches")
    assert layers == 3360 and n_records > 80_000
    assert mismatches == 0


def test_sampled_plans_reproduce_layer_vectors(vectors):
    for layer in vectors["layers"]:
        for s in layer["scenarios"]:
            df = s.get("derived_from", {})
            if not s["name"].startswith("mac_flip") or not df:
                continue
            lp = MacFlip(df["rate"], df["site"], df["count"], df["bits"]).plan(
                LayerOp(df["key"][4], layer["name"], 1), layer["geometry"], PassKey(df["seed"], *df["key"][1:4]))
            assert [list(r) for r in lp.mac_events.tolist()] == s["plan"]["mac_events"], (layer["name"], s["name"])
            assert lp.masked == df["masked"]


def _sorted_records(k, bits, n, g, site):
    """The general path: decode, drop padded lanes, one sort of the whole key."""
    (o, y, x, t, b), masked, valid = mac_flip._records(k, bits, g, "hardware")
    return mac_flip.sorted_mac_events(n[valid] if masked else n, o, y, x, t, site, b, g), masked


def test_hardware_records_match_the_sorted_path():
    """mac_records' counting sort by lane gives the records and masked count of decoding and sorting every key,
    on geometries with padded lanes, several flips of one step (dense draws) and several images."""
    rng = np.random.default_rng(11)
    runs = 0
    for _ in range(200):
        vec, lane = (int(v) for v in rng.choice([4, 8, 16], 2))
        K = int(rng.integers(1, 4))
        g = conv_geometry(int(rng.integers(1, 20)), K + int(rng.integers(0, 6)), K + int(rng.integers(0, 6)),
                          int(rng.integers(1, 40)), K, K, 1, int(rng.integers(0, 2)), 1, vec, lane)
        N, parts = g["N_MAC"], []
        for i in range(int(rng.integers(1, 4))):
            F = int(rng.integers(0, min(N, 400) + 1))
            parts.append((sample_distinct(rng, N, F), rng.integers(0, 32, F), np.full(F, i, np.int64)))
        k, bits, n = (np.concatenate([p[j] for p in parts]).astype(np.int64) for j in range(3))
        site = int(rng.integers(0, 3))
        ev = np.empty(len(k), MAC_EVENT_DTYPE)
        kept = mac_records.hardware_records(k, bits, n, vec, g["L"], lane, g["conv_x"], g["conv_y"], g["po"],
                                            g["O"], site, *(ev[f] for f in MAC_EVENT_DTYPE.names))
        want, masked = _sorted_records(k, bits, n, g, site)
        assert kept == len(want) and len(k) - kept == masked
        assert np.array_equal(ev[:kept], want)
        runs += int((np.diff(k // vec) == 0).sum())
    assert runs > 1000                      # flips of one step, whose bits the pass puts in order
    # positions out of order are refused, not mis-sorted
    k = np.array([5, 3], np.int64)
    ev = np.empty(2, MAC_EVENT_DTYPE)
    assert mac_records.hardware_records(k, k, np.zeros(2, np.int64), 4, 2, 4, 1, 1, 0, 4, 0,
                                        *(ev[f] for f in MAC_EVENT_DTYPE.names)) == -1


def test_model_count_mapping_vectors(vectors):
    for case in vectors["model_count_mapping"]:
        G = case["geometry"]
        g = conv_geometry(G["Cin"], G["H"], G["W_in"], G["O"], G["Kh"], G["Kw"], G["stride"], G["pad"], G["group"],
                          G["VEC_SIZE"], G["LANE_NUM"])
        assert g["N_MAC"] == G["N_MAC_hardware"] and model_mac_count(g) == G["N_MAC_model"]
        for c in case["cases"]:
            o, y, x, t, v = decode_model_mac(c["k"], g)
            assert (o, y, x, t, v) == (c["o"], c["y"], c["x"], c["t"], c["v"])
            assert encode_out(c["o"], c["y"], c["x"], g) == c["out"]
            k_hw = (c["out"] * g["L"] + c["t"]) * g["VEC_SIZE"] + c["v"]
            assert tuple(int(a) for a in decode_mac(k_hw, g)[:5]) == (c["o"], c["y"], c["x"], c["t"], c["v"])


def test_mac_flip_model_options_and_errors():
    g = conv_geometry(8, 6, 6, 6, 3, 3, 1, 1, 1, 4, 4, 6, 24, 29, 30)
    key, op = PassKey(1), LayerOp(1, "conv1", 4)
    lp = MacFlip(0.01, "product").plan(op, g, key)
    assert len(lp.mac_events) + lp.masked > 0
    assert (lp.mac_events["site"] == 0).all() and lp.mac_events["bit"].max() <= 23
    assert sorted(set(lp.mac_events["n"].tolist())) == [0, 1, 2, 3]
    lp.validate(g, 4)
    model = MacFlip(0.01, count="model", flip_bits=(3, 5)).plan(op, g, key)
    assert model.masked == 0 and set(model.mac_events["bit"].tolist()) <= {3, 4, 5}
    assert len(MacFlip(0.0).plan(op, g, key).mac_events) == 0
    with pytest.raises(CaffeUnstableError, match=r"soft_errors.mac_flip_rate: must be in \[0, 0.01\], got 0.02"):
        MacFlip(0.02)
    with pytest.raises(CaffeUnstableError, match=r"flip_bits: must satisfy 0 <= lo <= hi <= 28"):
        MacFlip(1e-3, flip_bits=(0, 31)).plan(op, g, key)
