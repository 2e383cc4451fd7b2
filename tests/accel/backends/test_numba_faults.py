"""The numba backend consumes whole fault plans (faults.md §2.4) bit-exactly: every `layers` scenario of
fault_vectors.json through `Launch(plan=...)`, and random plans on small random layers, where the path "auto"
(GEMM plus §4.4/§5.6 corrections where they are exact, the register loop for the lanes timing or stuck bits
reach) equals the path "mac" (every output through the register loop) and the package's slow reference
(faults.reference_layer, the §1.2 loop in NumPy)."""
import dataclasses
import json

import numpy as np
import pytest

from caffe_unstable.accel.backends.numba import NumbaBackend, corrections, mac_run, plan_conv
from caffe_unstable.accel.faults import MacFlip, PassKey, conv_geometry, k_thresholds, reference_layer, sample_plan
from caffe_unstable.accel.faults.carry_horizon import ch_add
from caffe_unstable.accel.faults.plan import (MAC_EVENT_DTYPE, MEM_EVENT_DTYPE, RATE_EVENT_DTYPE, STUCK_DTYPE,
                                              LayerPlan, TimingPlan, mac_events, records)
from caffe_unstable.accel.geometry import ConvGeometry, ConvStage
from caffe_unstable.accel.interface import HwConfig, Launch
from caffe_unstable.accel.quant import LayerFormat
from caffe_unstable.errors import CaffeUnstableError

from ..faults.vector_plans import scenario_plan, widths

SCENARIOS = 13


@pytest.fixture(scope="module")
def vectors(shared):
    path = shared / "specs" / "fault_vectors.json"
    if not path.is_file():
        pytest.skip(f"{path}: fault vectors not found")
    return json.loads(path.read_text())


class Layer:
    """An int8 layer run through the backend the way accel/session.py drives it: float_to_fixed ->
    data_layout_reorder -> data_to_fpga -> launch_accelerator -> data_from_fpga -> data_layout_recover."""

    def __init__(self, x, w, b, geom, fmt, relu, hw):
        self.x, self.w, self.b, self.geom, self.fmt, self.relu, self.hw = x, w, b, geom, fmt, relu, hw
        self.be = NumbaBackend(hw)
        be = self.be
        wq = be.float_to_fixed(w.astype(np.float32) * 2.0 ** -fmt.frac_w, fmt.frac_w)
        bq = be.float_to_fixed(b.astype(np.float32) * 2.0 ** -fmt.frac_w, fmt.frac_w)
        xq = be.float_to_fixed(x.astype(np.float32) * 2.0 ** -fmt.frac_din, fmt.frac_din)
        assert np.array_equal(wq, w) and np.array_equal(bq, b) and np.array_equal(xq, x)
        be.data_to_fpga("conv", weights=be.data_layout_reorder(wq, "weights", geom),
                        bias=be.data_layout_reorder(bq, "bias", geom))
        self.xdev = be.data_layout_reorder(xq, "input", geom)

    def run(self, plan=None, path="auto"):
        be = self.be
        be.data_to_fpga("conv", input=self.xdev)
        launch = be.launch_accelerator(Launch("conv", conv=ConvStage(self.geom, self.fmt, self.relu, True),
                                              plan=plan, path=path))
        out = be.data_layout_recover(be.data_from_fpga("conv")["conv"], "activations", channels=self.geom.O)
        return out, launch.stats

    def fault_geometry(self):
        g, hw = self.geom, self.hw
        return conv_geometry(g.C, g.H, g.W, g.O, g.Kh, g.Kw, (g.stride_h, g.stride_w), (g.pad_h, g.pad_w), g.group,
                             hw.vec_size, hw.lane_num, hw.pipe_depth, hw.width_product, hw.width_accumulator,
                             hw.width_final)

    def reference(self, plan):
        q = {"frac_w": self.fmt.frac_w, "frac_din": self.fmt.frac_din, "frac_dout": self.fmt.frac_dout,
             "relu": self.relu}
        return reference_layer(self.x, self.w, self.b, self.fault_geometry(), q, plan, with_hit=True)


def vector_layer(layer, scenario):
    g = layer["geometry"]
    wp, wa, wf = widths(scenario)
    hw = HwConfig(vec_size=g["VEC_SIZE"], lane_num=g["LANE_NUM"], pipe_depth=g["PIPE_DEPTH"], width_product=wp,
                  width_accumulator=wa, width_final=wf)
    geom = ConvGeometry(1, g["Cin"], g["H"], g["W_in"], g["O"], g["group"], g["Kh"], g["Kw"], g["stride"],
                        g["stride"], g["pad"], g["pad"], hw.vec_size, hw.lane_num, hw.pipe_depth)
    q = layer["quant"]
    return Layer(np.array(layer["input"], np.int8)[None], np.array(layer["weights"], np.int8),
                 np.array(layer["bias"], np.int8), geom, LayerFormat(q["frac_w"], q["frac_din"], q["frac_dout"]),
                 bool(q["relu"]), hw)


@pytest.mark.parametrize("index", range(4))
def test_every_vector_scenario_through_the_backend(vectors, index):
    layer = vectors["layers"][index]
    assert len(layer["scenarios"]) == SCENARIOS
    for s in layer["scenarios"]:
        lay = vector_layer(layer, s)
        clean, stats = lay.run()
        assert np.array_equal(clean[0], layer["clean_output"]) and stats["path"] == "fast"
        lp = scenario_plan(layer, s).layers[0]
        for path in ("auto", "mac"):
            out, stats = lay.run(lp, path)
            where = (layer["name"], s["name"], path)
            assert np.array_equal(out[0], s["output"]), where
            assert stats["outputs_changed"] == s["outputs_changed"], where
            if "outputs_hit" in s:
                assert stats["outputs_hit"] == s["outputs_hit"], where
            assert stats["mac_flips"] == len(lp.mac_events) and stats["rate_events"] == len(lp.rate_events), where
            assert 0 <= stats["outputs_saturated"] <= stats["outputs_changed"], where
            assert (stats["late_adds"] > 0) == (stats["outputs_hit"] > 0), where
            if path == "auto":
                timing_or_stuck = lp.timing is not None or len(lp.stuck)
                assert ("mac" in stats["path"]) if timing_or_stuck else stats["path"] == "fast", where


@pytest.mark.parametrize("K", [31, 32])
def test_horizon_of_31_or_more_is_the_clean_layer(vectors, K):
    """faults.md §13.4: fixed_k 31 / 32 at every site and sampled value equal the clean forward bit for bit."""
    for layer in vectors["layers"]:
        lay = vector_layer(layer, {})
        clean, _ = lay.run()
        for mode in ("carry_dropped", "stale", "drop"):
            tp = TimingPlan(mode, ("accumulate", "final_reduce", "adder_tree"), 1, 1,
                            K_lane=np.full((1, lay.hw.lane_num), K, np.int8))
            lp = LayerPlan(1, layer["name"], timing=tp)
            for path in ("auto", "mac"):
                out, stats = lay.run(lp, path)
                assert np.array_equal(out, clean), (layer["name"], mode, path)
                assert stats["late_adds"] == stats["outputs_hit"] == stats["outputs_changed"] == 0


# -- random layers and plans ------------------------------------------------------------------------------------
def random_layer(rng, vec, lane, group, batch, widths=(32, 32, 32)):
    k = int(rng.integers(1, 4))
    geom = ConvGeometry(N=batch, C=group * int(rng.integers(1, 11)), H=int(rng.integers(k, 8)),
                        W=int(rng.integers(k, 8)), O=group * int(rng.integers(1, 7)), group=group, Kh=k,
                        Kw=int(rng.integers(1, k + 1)), stride_h=int(rng.integers(1, 3)), stride_w=1,
                        pad_h=int(rng.integers(0, 2)), pad_w=int(rng.integers(0, 2)), vec=vec, lane=lane, pipe=6)
    hw = HwConfig(vec_size=vec, lane_num=lane, pipe_depth=6, width_product=widths[0], width_accumulator=widths[1],
                  width_final=widths[2])
    x = rng.integers(-128, 128, (batch, geom.C, geom.H, geom.W))
    x = np.where(rng.random(x.shape) < 0.4, 0, x).astype(np.int8)                 # ReLU-like zeros
    w = rng.integers(-128, 128, (geom.O, geom.Cg, geom.Kh, geom.Kw)).astype(np.int8)
    b = rng.integers(-128, 128, geom.O).astype(np.int8)
    frac_w = int(rng.integers(6, 10))
    fmt = LayerFormat(frac_w, 0, frac_w - int(rng.integers(8, 13)))
    return Layer(x, w, b, geom, fmt, bool(rng.integers(0, 2)), hw)


def random_mac_events(rng, g, hw, count):
    cols = {"n": rng.integers(0, g.N, count), "o": rng.integers(0, g.O, count), "y": rng.integers(0, g.Ho, count),
            "x": rng.integers(0, g.Wo, count), "t": rng.integers(0, g.L, count), "site": rng.integers(0, 3, count)}
    width = np.array([hw.width_product, hw.width_accumulator, hw.width_final])[cols["site"]]
    cols["bit"] = (rng.random(count) * width).astype(np.int64)
    cols["t"] = np.where(cols["site"] == 2, 0, cols["t"])
    if count > 2:                                   # collisions: a repeated record, a second flip of one output
        for k in cols:
            cols[k][1] = cols[k][0]
        cols["t"][2], cols["site"][2] = cols["t"][0], 0 if cols["site"][0] else 1
        cols["bit"][2] = cols["bit"][0] % 20
        for k in ("n", "o", "y", "x"):
            cols[k][2] = cols[k][0]
    return mac_events(*(cols[k] for k in ("n", "o", "y", "x", "t", "site", "bit")))


def random_plan(rng, lay, kinds):
    g, hw = lay.geom, lay.hw
    gd = lay.fault_geometry()
    lp = LayerPlan(3, "random", gd)
    if "mac" in kinds:
        lp.mac_events = random_mac_events(rng, g, hw, int(rng.integers(1, 40)))
    if "rate" in kinds:
        c = int(rng.integers(1, 30))
        lp.rate_events = records(RATE_EVENT_DTYPE, ["n", "o", "y", "x", "t"], n=rng.integers(0, g.N, c),
                                 o=rng.integers(0, g.O, c), y=rng.integers(0, g.Ho, c), x=rng.integers(0, g.Wo, c),
                                 t=rng.integers(0, g.L, c), bit=rng.integers(10, 32, c))
    if "timing" in kinds:
        sites = tuple(s for s in ("accumulate", "final_reduce", "adder_tree") if rng.random() < 0.7) or \
            ("accumulate",)
        mode = ("carry_dropped", "stale", "drop")[int(rng.integers(0, 3))]
        slack = (int(rng.integers(-4, 3)), int(rng.integers(-6, 2)))
        if rng.random() < 0.5:
            K = rng.integers(14, 33, (g.N, hw.lane_num)).astype(np.int8)
            lp.timing = TimingPlan(mode, sites, *slack, K_lane=K)
        else:
            f = float(rng.uniform(280, 330))
            th = np.array([k_thresholds(f, 1.94, 0.07, 0.02, 0.03 * (ln % 3)) for ln in range(hw.lane_num)],
                          np.uint64)
            keys = rng.integers(0, 2 ** 63, g.N, dtype=np.int64).astype(np.uint64) * np.uint64(2) + np.uint64(1)
            lp.timing = TimingPlan(mode, sites, *slack, thresholds=th, keys=keys)
    if "memory" in kinds:
        for kind, size, n_lo in (("weight_events", gd["N_WBYTES"], -1), ("act_events", gd["N_ABYTES"], 0)):
            c = int(rng.integers(1, 12))
            setattr(lp, kind, records(MEM_EVENT_DTYPE, ["n", "addr", "bit"], n=rng.integers(n_lo, g.N, c),
                                      addr=rng.integers(0, size, c), bit=rng.integers(0, 8, c)))
    if "stuck" in kinds:
        rows = []
        for _ in range(int(rng.integers(1, 4))):
            site = int(rng.integers(0, 5))
            lane, vec = int(rng.integers(0, hw.lane_num)), int(rng.integers(0, hw.vec_size))
            bit = int(rng.integers(0, [16, hw.width_product, hw.width_accumulator, 8, 8][site]))
            addr = int(rng.integers(0, gd["N_WBYTES"] if site == 3 else gd["N_ABYTES"])) if site >= 3 else -1
            rows.append((site, lane if site < 3 else -1, vec if site == 0 else -1, addr, bit,
                         int(rng.integers(0, 2))))
        lp.stuck = np.array(rows, STUCK_DTYPE)
    return lp


KIND_SETS = [("mac",), ("rate",), ("mac", "rate"), ("timing",), ("mac", "rate", "timing"), ("stuck",),
             ("memory",), ("mac", "memory"), ("mac", "rate", "timing", "memory", "stuck")]


@pytest.fixture(params=["position-major", "channel-major"])
def loop_layout(request, monkeypatch):
    """Both first passes of the register loop (mac_run.layout): position-major wherever it applies, or never;
    either way with the channels cut into chunks of one or two, as layers with fewer tiles than threads are."""
    monkeypatch.setattr(mac_run, "POS_MIN", 1 if request.param == "position-major" else 1 << 40)
    monkeypatch.setattr(mac_run, "MIN_CHUNK", 1)
    monkeypatch.setattr(mac_run, "POS_MIN_CHUNK", 1)
    monkeypatch.setattr(mac_run, "MIN_ITEMS", 1 << 10)
    return request.param


@pytest.fixture(params=["chain columns", "padded input"])
def chain_source(request, monkeypatch):
    """Both sources of the accumulator corrections' chain prefixes: the chain-major columns (corrections.
    chain_columns) whenever there is an accumulator record, or never (the chain offsets into the padded input)."""
    monkeypatch.setattr(corrections, "CHAIN_COLUMNS_GAIN", 0.0 if request.param == "chain columns" else np.inf)
    return request.param


@pytest.mark.parametrize("case", range(12))
def test_random_plans_auto_equals_mac_order_and_reference(case, loop_layout, chain_source):
    rng = np.random.default_rng(100 + case)
    vec = (4, 8)[case % 2]
    lane = (3, 4, 5)[case % 3]
    group = 1 + (case % 4 == 1)
    narrow = case % 3 == 2
    wd = (int(rng.integers(16 + (vec - 1).bit_length(), 33)), int(rng.integers(20, 33)), int(rng.integers(20, 33))) \
        if narrow else (32, 32, 32)
    lay = random_layer(rng, vec, lane, group, int(rng.integers(2, 4)), wd)
    clean, _ = lay.run()
    for kinds in KIND_SETS:
        lp = random_plan(rng, lay, kinds)
        auto, sa = lay.run(lp, "auto")
        mac, sm = lay.run(lp, "mac")
        ref, hit = lay.reference(lp)
        where = (case, kinds)
        assert np.array_equal(mac, ref), where
        assert np.array_equal(auto, ref), where
        changed = int((ref != clean).sum())
        assert sa["outputs_changed"] == sm["outputs_changed"] == changed, where
        assert sa["outputs_hit"] == sm["outputs_hit"] == int(hit.sum()), where
        assert sa["outputs_saturated"] == sm["outputs_saturated"] and sa["late_adds"] == sm["late_adds"], where
        if set(kinds) <= {"mac", "rate", "memory"}:
            assert sa["path"] == "fast", where
            fast, _ = lay.run(lp, "fast")
            assert np.array_equal(fast, ref), where


def test_branch_free_horizon_and_late_equal_the_scalar_ones():
    """The register loop's common second pass: the binary search of a sorted table and _late without a branch."""
    from caffe_unstable.accel.backends.numba import mac
    rng = np.random.default_rng(12)
    th = np.array([k_thresholds(float(f), 1.94, 0.07, 0.02) for f in rng.uniform(250, 340, 6)], np.uint64)
    th[0, :5] = 0                                        # rows with repeated values, and a row of zeros
    th[5] = 0
    for u in list(rng.integers(0, 2 ** 32, 3000)) + [int(v) for v in th.reshape(-1)[:40]] + [0, 2 ** 32 - 1]:
        lane = int(rng.integers(0, 6))
        assert mac._horizon_sorted(np.uint64(u), th, lane) == 31 - int((np.uint64(u) < th[lane]).sum())
    for _ in range(3000):
        a, b = (int(v) for v in rng.integers(-2 ** 31, 2 ** 31, 2))
        if rng.random() < 0.5:                           # long carry chains: b = -a plus a little
            b = int(np.int32(np.int64(-a) + int(rng.integers(-3, 4))))
        K = int(rng.integers(0, 33))
        assert mac._late_any_k(a, b, K) == ch_add(a, b, K)[1], (a, b, K)


def test_unsorted_thresholds_take_the_general_second_pass(loop_layout):
    """A plan's threshold rows need not be sorted (a file may say anything): the loop then counts compares."""
    rng = np.random.default_rng(21)
    lay = random_layer(rng, 4, 4, 1, 2)
    lp = random_plan(rng, lay, ("timing",))
    if lp.timing.thresholds is None:
        lp = random_plan(np.random.default_rng(22), lay, ("timing",))
    th = np.array(lp.timing.thresholds)
    th[:, ::2] = th[:, ::-2][:, :th[:, ::2].shape[1]]     # no row sorted any more
    assert (np.diff(th.astype(np.int64), axis=1) < 0).any(axis=1).all()
    lp.timing = dataclasses.replace(lp.timing, thresholds=th)
    auto, stats = lay.run(lp, "auto")
    assert np.array_equal(auto, lay.reference(lp)[0]) and stats["late_adds"] > 0


def test_fast_corrections_equal_the_loop_on_dense_flips(chain_source):
    """Many records per output and chain (every site, narrow widths, repeats) on batch 3, groups, padded lanes."""
    rng = np.random.default_rng(7)
    lay = random_layer(rng, 8, 5, 2, 3, (24, 29, 30))
    g = lay.geom
    lp = LayerPlan(0, "dense", mac_events=random_mac_events(rng, g, lay.hw, 3 * g.N * g.O * g.Ho * g.Wo))
    lp.rate_events = records(RATE_EVENT_DTYPE, ["n", "o", "y", "x", "t"], n=lp.mac_events["n"][:200],
                             o=lp.mac_events["o"][:200], y=lp.mac_events["y"][:200], x=lp.mac_events["x"][:200],
                             t=rng.integers(0, g.L, 200), bit=rng.integers(0, 32, 200))
    fast, sf = lay.run(lp, "fast")
    mac, sm = lay.run(lp, "mac")
    assert np.array_equal(fast, mac) and sf["path"] == "fast" and sm["path"] == "mac"
    assert sf["outputs_changed"] == sm["outputs_changed"] > 0
    assert np.array_equal(fast, lay.reference(lp)[0])


def test_legacy_events_and_plan_errors():
    rng = np.random.default_rng(3)
    lay = random_layer(rng, 4, 4, 1, 2)
    ev = random_mac_events(rng, lay.geom, lay.hw, 5)
    be = lay.be
    be.data_to_fpga("conv", input=lay.xdev)
    stage = ConvStage(lay.geom, lay.fmt, lay.relu, True)
    legacy = be.launch_accelerator(Launch("conv", conv=stage, events=ev))
    got = be.data_from_fpga("conv")["conv"].copy()
    assert legacy.stats["path"] == "mac" and legacy.stats["mac_flips"] == 5
    via_plan, _ = lay.run(LayerPlan(0, "l", mac_events=ev))
    assert np.array_equal(be.data_layout_recover(got, "activations", channels=lay.geom.O), via_plan)
    tp = TimingPlan(K_lane=np.full((2, lay.hw.lane_num), 20, np.int8))
    with pytest.raises(CaffeUnstableError, match="fast path cannot apply carry-horizon"):
        lay.run(LayerPlan(0, "l", timing=tp), "fast")
    bad = LayerPlan(0, "l", mac_events=mac_events([0], [lay.geom.O], [0], [0], [0], [1], [3]))
    with pytest.raises(CaffeUnstableError, match="mac_events.o"):
        lay.run(bad)
    wrong = LayerPlan(0, "l", geometry=dict(lay.fault_geometry(), L=lay.geom.L + 1), mac_events=ev)
    with pytest.raises(CaffeUnstableError, match="geometry L"):
        lay.run(wrong)


def test_late_carry_filters_against_ch_add():
    """The register loop's carry-horizon helpers (mac.py): _late equals faults.ch_add's late mask, and the
    first passes' tests never miss a late add: _maybe_late (exact for operands in [-2^K, 2^K)), the window test
    of _acc_pass (bits 31-K..K-1 of a XOR m all ones, K >= 16) and that of the float passes (window_masks)."""
    from caffe_unstable.accel.backends.numba import mac
    from caffe_unstable.accel.faults import ch_add

    rng = np.random.default_rng(5)
    n = 4000
    a = rng.integers(-2 ** 31, 2 ** 31, n) >> rng.integers(0, 32, n)
    m = rng.integers(-2 ** 18, 2 ** 18, n) >> rng.integers(0, 19, n)
    a[: n // 2] = -m[: n // 2] + rng.integers(-40, 40, n // 2)           # crossings that land near zero
    for K in range(0, 33, 3):
        late = np.array([mac._late(int(x), int(y), K) for x, y in zip(a, m)])
        assert np.array_equal(late, ch_add(a, m, np.full(n, K))[1].astype(np.int64)), K
        maybe = np.array([mac._maybe_late(int(x), int(y), K) for x, y in zip(a, m)])
        assert maybe[late != 0].all(), K
        small = (np.abs(a) < 2 ** K // 2) & (np.abs(m) < 2 ** K // 2)
        assert np.array_equal(maybe[small], (late != 0)[small]), K
        if 16 <= K <= 30:
            arow, flk = a.astype(np.int32), np.zeros(n, np.uint8)
            mac._acc_pass(arow, m.astype(np.int32), flk, n, K, np.uint8(0))
            assert flk[late != 0].all(), K
            assert np.array_equal(arow, ((a + m + 2 ** 31) % 2 ** 32 - 2 ** 31).astype(np.int32))
            # the float first passes' add and test (_quad_add_test with window_masks), m_t as 1.0 * m
            test, acc = _quad_add_test(mac, a, m, mac.window_masks(K))
            assert np.array_equal(acc, arow), K
            assert test[late != 0].all(), K
            assert test.sum() < 2 * max(1, (late != 0).sum()) + 50, K          # and it is tight
    for K in (31, 40):                                                          # never fires
        assert mac.window_masks(K) == 0
        a, m = np.array([-1, 0, 5, -7, 2 ** 31 - 1, -2 ** 31]), np.array([1, 0, -5, 7, 1, -1])
        test, _ = _quad_add_test(mac, a, m, mac.window_masks(K))
        assert not test.any()


def _quad_add_test(mac, a, m, wm_or):
    """(flags, sums) of mac._quad_add_test on int32 accumulators a and dot products m (m = 1.0 * m + 0 * ...)."""
    n = len(a)
    R = np.zeros(4 * n, np.float32)
    R[:n] = m
    A, F = a.astype(np.int32), np.zeros(n, np.uint8)
    mac._quad_add_test(np.float32(1), np.float32(0), np.float32(0), np.float32(0), R, 0, n, n, A, 0, F, 0,
                       np.zeros(n, np.float32), False, np.int32(wm_or))
    return F != 0, A


def test_record_arrays_sort_records_out_of_plan_order():
    """plan_conv.record_arrays: keys and int64 columns in plan order, whatever the order it is given."""
    rng = np.random.default_rng(4)
    lay = random_layer(rng, 4, 4, 1, 3)
    g = lay.geom
    ev = random_mac_events(rng, g, lay.hw, 60)
    rt = ev[["n", "o", "y", "x", "t", "bit"]].astype(RATE_EVENT_DTYPE)
    for rec, with_site in ((ev, True), (rt, False)):
        order = ["n", "o", "y", "x", "t", "site", "bit"] if with_site else ["n", "o", "y", "x", "t"]
        want = np.sort(rec, order=order, kind="stable")
        for given in (want, rec[rng.permutation(len(rec))][::-1].copy()):
            got = plan_conv.record_arrays(given, g, with_site)
            key = ((want["n"].astype(np.int64) * g.O + want["o"]) * g.Ho + want["y"]) * g.Wo + want["x"]
            assert np.array_equal(got["key"], key) and np.array_equal(got["t"], want["t"])
            if with_site:     # rate records of one step may keep any order of their bits
                assert np.array_equal(got["bit"], want["bit"]) and np.array_equal(got["site"], want["site"])
            else:
                assert len(got["site"]) == 0
                fine = got["key"] * g.L + got["t"]
                assert (np.diff(fine) >= 0).all() and sorted(got["bit"]) == sorted(want["bit"])


def test_take_clean_finds_each_blocks_outputs():
    """corrections.take_clean: over GEMM blocks that cut images anywhere (and a run of a subset of the launch's
    images), every faulted output of a run image gets its clean sum from its own block and row, once; outputs of
    other images keep 0."""
    rng = np.random.default_rng(21)
    for _ in range(200):
        N, O, hw, group = int(rng.integers(1, 5)), int(rng.integers(1, 9)), int(rng.integers(1, 40)), \
            int(rng.integers(1, 3))
        O *= group
        og = O // group
        keys = np.unique(rng.integers(0, N * O * hw, int(rng.integers(0, N * O * hw // 2 + 2))))
        imgs = np.sort(rng.permutation(N)[:int(rng.integers(1, N + 1))]).astype(np.int64)
        rows = len(imgs) * hw
        sums = rng.integers(-2 ** 31, 2 ** 31, (group, rows, og))         # the run's sums, (row, channel)
        cuts = np.unique(np.concatenate([[0, rows], rng.integers(0, rows, int(rng.integers(0, 6)))]))
        got = np.zeros(len(keys), np.int64)
        starts = corrections.channel_starts(keys, hw, N * O)
        for j in range(group):
            for p0, p1 in zip(cuts[:-1], cuts[1:]):
                acc = sums[j, p0:p1].astype(np.float64)
                corrections.take_clean(acc, True, keys, got, starts, imgs, O, og, j, hw, int(p0), int(p1))
        want = np.zeros(len(keys), np.int64)
        for i, k in enumerate(keys):
            n, o, pos = k // (O * hw), (k // hw) % O, k % hw
            if n in imgs:
                want[i] = sums[o // og, int(np.flatnonzero(imgs == n)[0]) * hw + pos, o % og]
        assert np.array_equal(got, want)


@pytest.mark.parametrize("seed", range(6))
def test_single_accumulator_flips_settled_or_not_equal_the_reference(seed, chain_source):
    """Outputs with one accumulator flip whose two possible deltas, +2^b and -2^b, give the same int8 value are
    written without their chain prefix (corrections.py); every bit, ReLU or not, narrow accumulators, sums near a
    rounding edge or the int32 limits: the fast path equals the reference, and so do the flags."""
    rng = np.random.default_rng(700 + seed)
    wa = (32, 32, 29, 24, 32, 20)[seed]
    lay = random_layer(rng, (4, 8, 16)[seed % 3], 4, 1 + seed % 2, 2, widths=(32, wa, 32))
    g = lay.geom
    pos = [(n, o, y, x) for n in range(g.N) for o in range(g.O) for y in range(g.Ho) for x in range(g.Wo)]
    pick = rng.permutation(len(pos))[:max(1, len(pos) * 2 // 3)]
    cols = {k: np.array([pos[i][j] for i in pick]) for j, k in enumerate("noyx")}
    m = len(pick)
    cols["t"] = rng.integers(0, g.L, m)
    cols["bit"] = rng.integers(0, wa, m)
    lp = LayerPlan(3, "settled", lay.fault_geometry(),
                   mac_events=mac_events(cols["n"], cols["o"], cols["y"], cols["x"], cols["t"], np.ones(m, np.int64),
                                         cols["bit"]))
    fast, stats = lay.run(lp, "fast")
    ref, _ = lay.reference(lp)
    assert np.array_equal(fast, ref)
    clean, _ = lay.run()
    assert stats["outputs_changed"] == int((fast != clean).sum()) > 0
    loop, loop_stats = lay.run(lp, "mac")                      # the register loop's own counts
    assert np.array_equal(loop, ref)
    assert (stats["outputs_changed"], stats["outputs_saturated"]) == (loop_stats["outputs_changed"],
                                                                      loop_stats["outputs_saturated"])
    low = lp.mac_events["bit"] < lay.fmt.n - 1                 # flips that mostly vanish in the rounding
    assert 0 < low.sum() < m


@pytest.mark.parametrize("field, value", [("n", 3), ("o", -1), ("y", 99), ("x", 99), ("t", 10 ** 6), ("site", 3),
                                          ("bit", 31), ("final_t", 1), ("rate_bit", 32), ("rate_o", 99)])
def test_launch_names_a_bad_record_as_validate_does(field, value):
    """The launch checks the MAC-flip and rate records' ranges in its own pass over them (record_arrays); a bad
    one gives validate's line, naming the layer, field and record, and nothing is computed."""
    rng = np.random.default_rng(12)
    lay = random_layer(rng, 4, 4, 1, 3, widths=(18, 31, 32))
    lp = random_plan(rng, lay, ("mac", "rate"))
    lp.mac_events = np.sort(lp.mac_events, order=list(lp.mac_events.dtype.names))
    lp.rate_events = np.sort(lp.rate_events, order=["n", "o", "y", "x", "t"])
    last = len(lp.mac_events) - 1
    if field == "final_t":
        lp.mac_events["site"][last], lp.mac_events["t"][last] = 2, value
    elif field == "bit":
        lp.mac_events["site"][last], lp.mac_events["bit"][last] = 1, value      # accumulator is 31 bits here
    elif field.startswith("rate_"):
        lp.rate_events[field[5:]][0] = value
    else:
        lp.mac_events[field][last] = value
    with pytest.raises(CaffeUnstableError) as want:
        lp.validate(lay.fault_geometry(), lay.geom.N)
    assert "out of range" in want.value.line() or "must be 0" in want.value.line()
    with pytest.raises(CaffeUnstableError) as got:
        lay.run(lp, "auto")
    assert got.value.line() == want.value.line()


def test_record_arrays_outputs():
    """record_arrays' faulted outputs and record ranges equal corrections.faulted_outputs of its keys;
    out-of-order plans are still sorted (and have no outputs listed), and a bad first or last record is named."""
    rng = np.random.default_rng(31)
    for trial in range(40):
        lay = random_layer(rng, 4, 4, 1, 4)
        g = lay.geom
        ev = np.sort(random_mac_events(rng, g, lay.hw, int(rng.integers(1, 120))), order=list(MAC_EVENT_DTYPE.names))
        got = plan_conv.record_arrays(ev, g, True, LayerPlan(1, "l", mac_events=ev), lay.fault_geometry())
        key = ((ev["n"].astype(np.int64) * g.O + ev["o"]) * g.Ho + ev["y"]) * g.Wo + ev["x"]
        assert np.array_equal(got["key"], key)
        fo_key, fo_rng = corrections.faulted_outputs(key, np.empty(0, np.int64))
        assert np.array_equal(got["outputs"][0], fo_key) and np.array_equal(got["outputs"][1], fo_rng)
        shuffled = ev[rng.permutation(len(ev))]
        back = plan_conv.record_arrays(shuffled, g, True)
        assert ("outputs" in back) == np.array_equal(shuffled, ev) and np.array_equal(back["key"], key)
        bad = ev.copy()
        bad["o"][-1 if trial % 2 else 0] = g.O
        with pytest.raises(CaffeUnstableError, match="mac_events.o = "):
            plan_conv.record_arrays(bad, g, True, LayerPlan(1, "l", mac_events=bad), lay.fault_geometry())


@pytest.mark.parametrize("shape", [(0,), (7,), (8,), (3, 5, 7, 11), (5, 1021), (4, 2040)])
@pytest.mark.parametrize("full", [False, True])
def test_flag_counts_equal_numpy(shape, full):
    """Random flags, and every flag set (the per-byte counters at their largest, 255 words of 7s)."""
    flags = np.random.default_rng(len(shape)).integers(0, 8, shape).astype(np.uint8)
    if full:
        flags[...] = 7
    assert mac_run.flag_counts(flags) == (int((flags & 1).sum()), int(((flags & 2) != 0).sum()),
                                          int(((flags & 6) == 6).sum()))


def test_stats_fields_and_events_next_to_a_plan():
    rng = np.random.default_rng(9)
    lay = random_layer(rng, 4, 4, 1, 2)
    g = lay.geom
    ev = random_mac_events(rng, g, lay.hw, 6)
    lp = random_plan(rng, lay, ("rate",))
    be = lay.be
    be.data_to_fpga("conv", input=lay.xdev)
    launch = be.launch_accelerator(Launch("conv", conv=ConvStage(g, lay.fmt, lay.relu, True), plan=lp, events=ev))
    both = be.data_layout_recover(be.data_from_fpga("conv")["conv"], "activations", channels=g.O)
    merged = LayerPlan(0, "l", mac_events=np.sort(np.concatenate([lp.mac_events, ev]),
                                                  order=list(ev.dtype.names)), rate_events=lp.rate_events)
    assert np.array_equal(both, lay.reference(merged)[0])
    assert set(launch.stats) == {"path", "mac_flips", "masked", "outputs_changed", "outputs_saturated",
                                 "rate_events", "late_adds", "outputs_hit", "weight_flips", "act_flips",
                                 "stuck_outputs_changed", "hit_mask"}
    assert launch.stats["mac_flips"] == 6 and launch.stats["rate_events"] == len(lp.rate_events)


@pytest.mark.parametrize("shape", [(1, 9, 9, 3, 1), (3, 11, 7, 5, 1), (4096, 1, 1, 256, 0)])
def test_fast_corrections_on_first_layers_and_skinny_fc(shape, chain_source):
    """The GEMM path's other column and sum layouts: a first layer (C < VEC: planar columns) and an FC layer
    big enough for the int8 skinny sums (float64); MAC flips and rate errors at all sites equal the reference."""
    C, H, W, O, k = shape
    rng = np.random.default_rng(C + O)
    kk = 3 if k else H
    geom = ConvGeometry(N=3, C=C, H=H, W=W, O=O, group=1, Kh=kk, Kw=kk if k else W, stride_h=1 if k else H,
                        stride_w=1 if k else W, pad_h=k, pad_w=k)
    hw = HwConfig()
    x = np.where(rng.random((3, C, H, W)) < 0.3, 0, rng.integers(-128, 128, (3, C, H, W))).astype(np.int8)
    w = rng.integers(-128, 128, (O, C, geom.Kh, geom.Kw)).astype(np.int8)
    lay = Layer(x, w, rng.integers(-128, 128, O).astype(np.int8), geom, LayerFormat(9, 0, -5 if k else -3), True,
                hw)
    lp = random_plan(rng, lay, ("mac", "rate"))
    lp.mac_events = random_mac_events(rng, geom, hw, 300)
    fast, stats = lay.run(lp, "fast")
    assert stats["path"] == "fast" and stats["outputs_changed"] > 0
    ref, _ = lay.reference(lp)
    assert np.array_equal(fast, ref)


@pytest.mark.parametrize("case", range(4))
def test_fast_corrections_vec16_strides_and_flipped_padding(case, chain_source):
    """The corrections read int8 words of a zero-padded input copy (padded vec slots zeroed): VEC 16 (four words a
    step), stride_w 2, and many activation/weight memory flips, so that some land on padding bytes, which the
    §1.2 loop treats as 0 whatever they hold. fast == mac == reference."""
    rng = np.random.default_rng(900 + case)
    vec = (16, 4, 8, 16)[case]
    lay = random_layer(rng, vec, (4, 3, 5, 2)[case], 1 + case % 2, 2, ((32, 32, 32), (20, 24, 30))[case % 2])
    g = lay.geom
    if g.W + 2 * g.pad_w >= g.Kw + 2:
        lay = Layer(lay.x, lay.w, lay.b, dataclasses.replace(g, stride_w=2), lay.fmt, lay.relu, lay.hw)
    g = lay.geom
    gd = lay.fault_geometry()
    lp = LayerPlan(0, "pads", gd, mac_events=random_mac_events(rng, g, lay.hw, 2 * g.N * g.O * g.Ho * g.Wo))
    for kind, size, n_lo in (("weight_events", gd["N_WBYTES"], -1), ("act_events", gd["N_ABYTES"], 0)):
        c = 60
        setattr(lp, kind, records(MEM_EVENT_DTYPE, ["n", "addr", "bit"], n=rng.integers(n_lo, g.N, c),
                                  addr=rng.integers(0, size, c), bit=rng.integers(0, 8, c)))
    fast, sf = lay.run(lp, "fast")
    mac, sm = lay.run(lp, "mac")
    assert sf["path"] == "fast"
    assert np.array_equal(fast, mac)
    assert np.array_equal(fast, lay.reference(lp)[0])
    assert sf["outputs_changed"] == sm["outputs_changed"]


@pytest.mark.parametrize("site", ["accumulator", "product"])
def test_sampled_plans_skip_the_record_pass_and_equal_a_copy(site, monkeypatch):
    """A plan from the sampler carries its faulted outputs (LayerPlan.outputs, read-only records): the launch
    uses them instead of its own pass over the records, with the same outputs and counts as a writable copy
    of the plan (which takes record_arrays' path) and as the reference. An edit in place is refused; a
    replaced array, or a launch with fewer images than the plan was sampled for, takes the checked path; one
    with more images extends the channel starts."""
    rng = np.random.default_rng(41 if site == "product" else 42)
    lay = random_layer(rng, 4, 4, 2, 3, (18, 32, 32))
    g, gd = lay.geom, lay.fault_geometry()
    lp = sample_plan([MacFlip(0.01, site)], [(0, "conv", gd)], g.N, PassKey(5, 1, 0, 0)).layer(0)
    assert lp.outputs(g.N) is not None and len(lp.mac_events) > 20
    with pytest.raises(ValueError, match="read-only"):
        lp.mac_events["bit"][0] = 0
    copy = dataclasses.replace(lp, mac_events=lp.mac_events.copy())
    assert copy.outputs(g.N) is None
    passes = []
    record_arrays = plan_conv.record_arrays
    monkeypatch.setattr(plan_conv, "record_arrays", lambda rec, *a: passes.append(len(rec)) or record_arrays(rec, *a))
    fast, stats = lay.run(lp, "fast")
    assert passes == [0]                                    # the (empty) rate records only
    slow, slow_stats = lay.run(copy, "fast")
    assert passes == [0, len(lp.mac_events), 0]
    assert np.array_equal(fast, slow) and np.array_equal(fast, lay.reference(lp)[0])
    assert stats["outputs_changed"] == slow_stats["outputs_changed"] > 0
    assert stats["outputs_saturated"] == slow_stats["outputs_saturated"]
    assert lp.outputs(g.N - 1) is None
    keys, _, starts = lp.outputs(g.N + 2)                   # a launch of more images than were sampled
    assert np.array_equal(starts, corrections.channel_starts(keys, g.Ho * g.Wo, (g.N + 2) * g.O))
    more = Layer(np.concatenate([lay.x, lay.x[:2]]), lay.w, lay.b, dataclasses.replace(g, N=g.N + 2), lay.fmt,
                 lay.relu, lay.hw)
    assert np.array_equal(more.run(lp, "fast")[0], more.reference(lp)[0])
    one = Layer(lay.x[:1], lay.w, lay.b, dataclasses.replace(g, N=1), lay.fmt, lay.relu, lay.hw)
    assert one.fault_geometry() == gd and (lp.mac_events["n"] > 0).any()
    with pytest.raises(CaffeUnstableError, match="mac_events.n"):
        one.run(lp, "fast")


@pytest.mark.parametrize("vec, C, pad", [(4, 3, 0), (4, 3, 1), (8, 13, 0), (16, 20, 0), (4, 8, 0), (16, 9, 2)])
def test_padded_input_zeroes_padding_and_padded_slots(vec, C, pad):
    """corrections.padded_input: the input zero-padded, its padded vec slots zeroed whatever they held; without
    padding and with clean slots it is the input itself (no copy)."""
    rng = np.random.default_rng(vec + C + pad)
    g = ConvGeometry(N=3, C=2 * C, H=5, W=6, O=4, group=2, Kh=3, Kw=3, stride_h=1, stride_w=1, pad_h=pad, pad_w=pad,
                     vec=vec)
    x = rng.integers(-128, 128, (3, 2, g.Cb, 5, 6, vec)).astype(np.int8)
    want = np.zeros((3, 2, g.Cb, 5 + 2 * pad, 6 + 2 * pad, vec), np.int8)
    want[:, :, :, pad:pad + 5, pad:pad + 6] = x
    slots = want.transpose(0, 1, 3, 4, 2, 5).reshape(3, 2, 5 + 2 * pad, 6 + 2 * pad, g.Cb * vec)
    slots[..., g.Cg:] = 0                               # channel c is slot c % VEC of group c // VEC
    want = slots.reshape(3, 2, 5 + 2 * pad, 6 + 2 * pad, g.Cb, vec).transpose(0, 1, 4, 2, 3, 5)
    got = corrections.padded_input(x, g)
    assert np.array_equal(got, want) and (g.Cg == g.Cb * vec or not np.shares_memory(got, x))
    clean = want[:, :, :, pad:pad + 5, pad:pad + 6].copy()
    again = corrections.padded_input(clean, g)
    assert np.array_equal(again, want) and (again is clean) == (pad == 0)
