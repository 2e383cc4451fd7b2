"""The numba backend equals accel/reference.py (np.array_equal) on every op: conv/FC by the fast exact path and by
the MAC-order path, max pool, LRN (clamp and wrap), fused launches, MAC fault records, and the seven functions."""
import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from caffe_unstable.accel import layouts, quant, reference
from caffe_unstable.accel.backends.numba import NumbaBackend
from caffe_unstable.accel.geometry import ConvGeometry, ConvStage, LrnStage, PoolStage, mac_events
from caffe_unstable.accel.interface import HwConfig, Launch
from caffe_unstable.errors import CaffeUnstableError

from ..conftest import CI
from ..test_reference import MAC_SCENARIOS, scenario_widths, vector_layer

_BACKENDS = {}


def backend(**hw):
    key = tuple(sorted(hw.items()))
    if key not in _BACKENDS:
        _BACKENDS[key] = NumbaBackend(HwConfig(**hw))
    return _BACKENDS[key]


def run_conv(be, x, w, b, geom, fmt, relu, path, events=None):
    be.data_to_fpga("t", weights=be.data_layout_reorder(w, "weights", geom),
                    bias=be.data_layout_reorder(b, "bias", geom), input=be.data_layout_reorder(x, "input", geom))
    launch = be.launch_accelerator(Launch("t", conv=ConvStage(geom, fmt, relu, True), events=events, path=path))
    assert launch.stats["path"] == (path if path != "auto" else ("mac" if events is not None else "fast"))
    dev = be.data_from_fpga("t")["conv"]
    pad = layouts.activations_recover(dev, dev.shape[1] * dev.shape[4])[:, geom.O:]
    assert not pad.any()                                     # padded output channels stay zero
    return be.data_layout_recover(dev, "activations", channels=geom.O)


@st.composite
def conv_cases(draw):
    vec = draw(st.sampled_from([4, 8]))
    lane = draw(st.integers(1, 7))
    pipe = draw(st.integers(1, 7))
    group = draw(st.integers(1, 2))
    k = draw(st.integers(1, 3))
    geom = ConvGeometry(N=draw(st.integers(1, 2)), C=group * draw(st.integers(1, 9)), H=draw(st.integers(1, 7)),
                        W=draw(st.integers(1, 7)), O=group * draw(st.integers(1, 5)), group=group, Kh=k,
                        Kw=draw(st.integers(1, 3)), stride_h=draw(st.integers(1, 3)), stride_w=draw(st.integers(1, 2)),
                        pad_h=draw(st.integers(0, 1)), pad_w=draw(st.integers(0, 2)), vec=vec, lane=lane, pipe=pipe)
    frac_w = draw(st.integers(-2, 10))
    n = draw(st.integers(1, 14))
    frac_dout = frac_w - draw(st.integers(1, 12))
    fmt = quant.LayerFormat(frac_w, n - frac_w + frac_dout, frac_dout)
    return geom, fmt, draw(st.booleans()), draw(st.integers(0, 2 ** 20))


@CI
@given(case=conv_cases())
def test_conv_fast_and_mac_paths_equal_reference(case):
    geom, fmt, relu, seed = case
    rng = np.random.default_rng(seed)
    x = rng.integers(-128, 128, (geom.N, geom.C, geom.H, geom.W)).astype(np.int8)
    w = rng.integers(-128, 128, (geom.O, geom.Cg, geom.Kh, geom.Kw)).astype(np.int8)
    b = rng.integers(-128, 128, geom.O).astype(np.int8)
    want = reference.conv_reference(x, w, b, geom, fmt, relu)
    be = backend(vec_size=geom.vec, lane_num=geom.lane, pipe_depth=geom.pipe)
    assert np.array_equal(run_conv(be, x, w, b, geom, fmt, relu, "fast"), want)
    assert np.array_equal(run_conv(be, x, w, b, geom, fmt, relu, "mac"), want)


def test_large_sums_chunk_and_wrap_like_int32():
    """K = 140,000 full-scale products: the GEMM is cut into exact float32 chunks and the sum wraps modulo 2^32
    as the hardware's int32 registers do; fast == MAC order == reference."""
    geom = ConvGeometry(N=1, C=140000, H=1, W=1, O=3, group=1, Kh=1, Kw=1, stride_h=1, stride_w=1, pad_h=0,
                        pad_w=0)
    x = np.full((1, 140000, 1, 1), -128, np.int8)
    w = np.full((3, 140000, 1, 1), -128, np.int8)
    w[1] = 127
    w[2, ::2] = 3
    b = np.zeros(3, np.int8)
    fmt = quant.LayerFormat(0, 0, -1)
    want = reference.conv_reference(x, w, b, geom, fmt)
    be = backend()
    assert np.array_equal(run_conv(be, x, w, b, geom, fmt, False, "fast"), want)
    assert np.array_equal(run_conv(be, x, w, b, geom, fmt, False, "mac"), want)
    assert want[0, 0, 0, 0] == -128          # 140000 * 16384 wrapped past 2^31 into the negatives


def test_mac_path_applies_fault_records(shared):
    vectors = json.loads((shared / "specs/fault_vectors.json").read_text())
    for case in vectors["layers"]:
        geom, x, w, b, fmt, relu = vector_layer(case)
        for sc in case["scenarios"]:
            if sc["name"] not in MAC_SCENARIOS:
                continue
            wp, wa, wf = scenario_widths(sc)
            be = backend(vec_size=geom.vec, lane_num=geom.lane, pipe_depth=geom.pipe, width_product=wp,
                         width_accumulator=wa, width_final=wf)
            ev = mac_events([tuple(r) for r in sc["plan"]["mac_events"]])
            got = run_conv(be, x, w, b, geom, fmt, relu, "auto", ev)
            assert np.array_equal(got[0], np.array(sc["output"])), (case["name"], sc["name"])
            with pytest.raises(CaffeUnstableError, match="fast path cannot apply"):
                run_conv(be, x, w, b, geom, fmt, relu, "fast", ev)


@CI
@given(n=st.integers(1, 2), c=st.integers(1, 13), h=st.integers(1, 9), w=st.integers(1, 9),
       k=st.integers(1, 3), s=st.integers(1, 3), pad=st.integers(0, 2), frac=st.integers(-8, 0),
       overflow=st.sampled_from(["clamp", "wrap"]), seed=st.integers(0, 2 ** 20))
def test_pool_and_lrn_equal_reference(n, c, h, w, k, s, pad, frac, overflow, seed):
    pad = min(pad, k - 1)
    rng = np.random.default_rng(seed)
    q = rng.integers(-128, 128, (n, c, h, w)).astype(np.int8)
    try:
        st_pool = PoolStage(n, c, h, w, k, k, s, s, pad, pad)
    except CaffeUnstableError:
        return
    be = backend(lrn_overflow=overflow)
    be.data_to_fpga("p", input=be.data_layout_reorder(q, "activations"))
    be.launch_accelerator(Launch("p", pool=st_pool, lrn=LrnStage(n, c, st_pool.Ho, st_pool.Wo, frac)))
    out = be.data_from_fpga("p")
    pooled = reference.max_pool_reference(q, st_pool)
    assert np.array_equal(layouts.activations_recover(out["pool"], c), pooled)
    assert np.array_equal(layouts.activations_recover(out["lrn"], c), reference.lrn_reference(pooled, frac, overflow))


def test_lrn_covers_overflow_and_table_end():
    """Every int8 value at every F in [-8, 0], isolated and in full windows (the table end, §3.5)."""
    q = np.arange(-128, 128, dtype=np.int8)
    x = np.zeros((1, 9, 16, 16), np.int8)
    x[0, 4] = q.reshape(16, 16)
    x[0, 6:] = q.reshape(16, 16)
    for overflow in ("clamp", "wrap"):
        be = backend(lrn_overflow=overflow)
        for frac in range(-8, 1):
            be.data_to_fpga("l", input=be.data_layout_reorder(x, "activations"))
            be.launch_accelerator(Launch("l", lrn=LrnStage(1, 9, 16, 16, frac)))
            got = layouts.activations_recover(be.data_from_fpga("l")["lrn"], 9)
            assert np.array_equal(got, reference.lrn_reference(x, frac, overflow)), (overflow, frac)


def test_fused_conv_relu_pool_lrn_launch_reads_back_every_stage():
    rng = np.random.default_rng(3)
    geom = ConvGeometry(N=2, C=3, H=11, W=11, O=10, group=1, Kh=3, Kw=3, stride_h=2, stride_w=2, pad_h=1, pad_w=1)
    fmt = quant.LayerFormat(8, 0, -4)
    x = rng.integers(-128, 128, (2, 3, 11, 11)).astype(np.int8)
    w = rng.integers(-128, 128, (10, 3, 3, 3)).astype(np.int8)
    b = rng.integers(-128, 128, 10).astype(np.int8)
    be = backend()
    be.data_to_fpga("f", weights=be.data_layout_reorder(w, "weights", geom),
                    bias=be.data_layout_reorder(b, "bias", geom), input=be.data_layout_reorder(x, "input", geom))
    pool = PoolStage(2, 10, geom.Ho, geom.Wo, 3, 3, 2, 2)
    be.launch_accelerator(Launch("f", conv=ConvStage(geom, fmt, True), pool=pool,
                                 lrn=LrnStage(2, 10, pool.Ho, pool.Wo, fmt.frac_dout)))
    out = {k: be.data_layout_recover(v, "activations", channels=10) for k, v in be.data_from_fpga("f").items()}
    conv = reference.conv_reference(x, w, b, geom, fmt, True)
    pooled = reference.max_pool_reference(conv, pool)
    assert np.array_equal(out["conv"], conv) and np.array_equal(out["pool"], pooled)
    assert np.array_equal(out["lrn"], reference.lrn_reference(pooled, fmt.frac_dout))


def test_the_conversion_functions_equal_quant_and_layouts():
    rng = np.random.default_rng(4)
    be = backend()
    x = (rng.normal(0, 40, (3, 7, 5, 6)) * rng.integers(0, 2, (3, 7, 5, 6))).astype(np.float32)
    x.flat[:6] = [0.5, -0.5, 127.5, -128.5, np.nan, np.inf]
    for frac in (-3, 0, 2):
        for bits in (8, 4):
            assert np.array_equal(be.float_to_fixed(x, frac, bits), quant.float_to_fixed(x, frac, bits))
        q = quant.float_to_fixed(x, frac)
        assert np.array_equal(be.fixed_to_float(q, frac), quant.fixed_to_float(q, frac))
        geom = ConvGeometry(N=3, C=7, H=5, W=6, O=2, group=1, Kh=1, Kw=1, stride_h=1, stride_w=1, pad_h=0, pad_w=0)
        assert np.array_equal(be.input_from_float(x, frac, geom), layouts.conv_input_reorder(q, geom))
        dev = be.activations_from_float(x, frac)
        assert np.array_equal(dev, layouts.activations_reorder(q, 4))
        out = np.empty_like(x)
        assert np.array_equal(be.float_from_activations(dev, frac, out), quant.fixed_to_float(q, frac))


def test_launch_errors_are_one_line():
    be = backend()
    with pytest.raises(CaffeUnstableError, match="no input on the device"):
        be.launch_accelerator(Launch("never-sent", pool=PoolStage(1, 1, 2, 2, 2, 2, 1, 1)))
    with pytest.raises(CaffeUnstableError, match="vec_size"):
        HwConfig(vec_size=6)
    with pytest.raises(CaffeUnstableError, match="lrn_overflow"):
        HwConfig(lrn_overflow="saturate")


def test_weight_change_check():
    be = backend()
    a = np.random.default_rng(0).normal(size=300001).astype(np.float32)
    q = quant.float_to_fixed(a, 6)
    assert be.quantizes_to(a, q, 6)
    b = a.copy()
    b[-1] += 1
    assert not be.quantizes_to(b, q, 6)
    b = a.copy()
    b[5] += 1e-6                                  # a change too small to move its int8 value
    assert be.quantizes_to(b, q, 6) and not be.quantizes_to(a, q, 7) and not be.quantizes_to(a[:-1], q, 6)


def test_sums_hook_edits_the_clean_sums_before_the_conversion():
    """The fast path's hook (faults.md §4.4 corrections plug in here): +2^n on one sum raises that output by 1."""
    rng = np.random.default_rng(7)
    geom = ConvGeometry(N=2, C=6, H=5, W=5, O=4, group=2, Kh=3, Kw=3, stride_h=1, stride_w=1, pad_h=1, pad_w=1)
    fmt = quant.LayerFormat(6, 0, -2)
    x = rng.integers(-20, 20, (2, 6, 5, 5)).astype(np.int8)
    w = rng.integers(-20, 20, (4, 3, 3, 3)).astype(np.int8)
    b = np.zeros(4, np.int8)
    seen = []

    def hook(j, n0, n1, s):
        seen.append((j, n0, n1, s.shape))
        if j == 1:
            s[25 + 7, 0] += 1 << fmt.n          # image 1, position 7 = (1, 2), group 1's first filter (o = 2)

    be = backend()
    be.data_to_fpga("h", weights=be.data_layout_reorder(w, "weights", geom),
                    bias=be.data_layout_reorder(b, "bias", geom), input=be.data_layout_reorder(x, "input", geom))
    be.launch_accelerator(Launch("h", conv=ConvStage(geom, fmt), path="fast", sums_hook=hook))
    got = be.data_layout_recover(be.data_from_fpga("h")["conv"], "activations", channels=4)
    want = reference.conv_reference(x, w, b, geom, fmt).astype(np.int64)
    want[1, 2, 1, 2] = min(want[1, 2, 1, 2] + 1, 127)
    assert seen == [(0, 0, 2, (50, 2)), (1, 0, 2, (50, 2))]
    assert np.array_equal(got, want)


def test_weight_check_is_exact_at_rounding_boundaries():
    be = backend()
    base = np.arange(-130, 130, 0.5, dtype=np.float32)
    x = np.concatenate([base, np.nextafter(base, np.float32(1e9)), np.nextafter(base, np.float32(-1e9)),
                        np.array([np.inf, -np.inf, 1e-40, -1e-40], np.float32)])
    for frac, bits in ((0, 8), (1, 8), (-2, 8), (0, 4)):
        xs = x * np.float32(2.0 ** -frac)
        q = quant.float_to_fixed(xs, frac, bits)
        assert be.quantizes_to(xs, q, frac, bits)
        for i in range(0, len(q), 7):
            other = q.copy()
            other[i] = other[i] + 1 if other[i] < 7 else other[i] - 1
            assert not be.quantizes_to(xs, other, frac, bits)
