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


# -- the fast path's kernels (conv.py, fixed.py, pool_lrn.py) against the reference, on the shapes that take each
# of their branches: partial channel groups, pieces that cut images, K chunks, skinny and rows-first GEMMs, every n

def _random_conv(rng, geom, fmt, relu=False, full_scale=False):
    lim = 128 if full_scale else 20
    x = rng.integers(-128, 128, (geom.N, geom.C, geom.H, geom.W)).astype(np.int8)
    w = rng.integers(-lim, lim, (geom.O, geom.Cg, geom.Kh, geom.Kw)).astype(np.int8)
    b = rng.integers(-128, 128, geom.O).astype(np.int8)
    return x, w, b, reference.conv_reference(x, w, b, geom, fmt, relu)


FAST_SHAPES = [  # N, C, H, W, O, group, Kh, Kw, stride_h, stride_w, pad_h, pad_w
    (3, 1, 9, 8, 5, 1, 3, 2, 1, 2, 1, 0),        # C = 1: one partial channel-vector group, lanes dropped
    (2, 3, 11, 13, 7, 1, 5, 3, 2, 1, 2, 1),      # C = 3, the RGB first layer
    (2, 7, 6, 5, 6, 1, 3, 3, 1, 1, 1, 1),        # a full and a partial group
    (3, 12, 7, 7, 10, 2, 3, 3, 2, 2, 1, 1),      # groups with a partial channel group each
    (2, 8, 5, 5, 6, 2, 5, 5, 1, 1, 0, 0),        # a kernel covering the image: one position
    (2, 9, 4, 4, 3, 3, 1, 1, 1, 1, 0, 0),        # 1x1, three groups
]


@pytest.mark.parametrize("chunk", [0, 40, 1 << 20])
@pytest.mark.parametrize("shape", FAST_SHAPES)
def test_fast_path_pieces_equal_reference(shape, chunk, monkeypatch):
    """Pieces of positions that cut images anywhere (COL_CHUNK_FLOATS 0 gives one position per piece), VEC 4 and 8,
    ReLU on and off, and output shifts n from 1 to 32 (n >= 26 takes the conversion's zero branch)."""
    from caffe_unstable.accel.backends.numba import conv

    monkeypatch.setattr(conv, "COL_CHUNK_FLOATS", chunk)
    rng = np.random.default_rng(sum(shape) + chunk)
    for vec, n, relu in ((4, 1, False), (4, 9, True), (8, 5, False), (4, 25, False), (4, 26, True), (8, 32, False)):
        geom = ConvGeometry(*shape, vec=vec, lane=3)
        fmt = quant.LayerFormat(6, n - 6 + 4, 4)
        x, w, b, want = _random_conv(rng, geom, fmt, relu)
        got = run_conv(backend(vec_size=vec, lane_num=3), x, w, b, geom, fmt, relu, "fast")
        assert np.array_equal(got, want), (shape, vec, n)


@pytest.mark.parametrize("skinny_min", [1, 1 << 40])
def test_fast_path_k_chunks_skinny_and_rows_first(skinny_min, monkeypatch):
    """K > 2048 full-scale products (exact float32 chunks, combined in float64), FC layers through skinny_sums (few
    positions, int8 weights) and through BLAS, the W cols^T orientation of wide layers, and a ConvWeights reused
    for more positions than skinny_sums takes (its float32 matrices made on first use)."""
    from caffe_unstable.accel.backends.numba import gemm

    monkeypatch.setattr(gemm, "SKINNY_MIN_WEIGHTS", skinny_min)
    monkeypatch.setattr(gemm, "ROWS_FIRST_MIN_OG", 9)
    rng = np.random.default_rng(11)
    be = backend()
    fmt = quant.LayerFormat(4, 2, 0)
    cases = [(3, 2500, 1, 1, 9, 1, 1, 1, 1, 1, 0, 0),       # K = 2500, Og >= ROWS_FIRST_MIN_OG
             (5, 330, 3, 3, 7, 1, 3, 3, 3, 3, 0, 0),        # an FC over (C, H, W), K = 2970
             (2, 800, 4, 4, 6, 2, 3, 3, 1, 1, 1, 1),        # groups, K = 3600 per group, padding
             (17, 800, 2, 2, 5, 1, 2, 2, 2, 2, 0, 0)]       # 17 positions: past SKINNY_MAX_ROWS
    for shape in cases:
        geom = ConvGeometry(*shape)
        x, w, b, want = _random_conv(rng, geom, fmt, full_scale=True)
        assert np.array_equal(run_conv(be, x, w, b, geom, fmt, False, "fast"), want), shape
        cached = be.mem["t"]["_weights"]
        assert cached.bounds[0].size > 2                     # the sums were cut into K chunks
    geom = ConvGeometry(*cases[0])                           # the same weights, then more positions
    x, w, b, want = _random_conv(rng, geom, fmt, full_scale=True)
    assert np.array_equal(run_conv(be, x, w, b, geom, fmt, False, "fast"), want)
    big = ConvGeometry(40, *cases[0][1:])
    x40 = np.concatenate([x] * 14)[:40]
    be.data_to_fpga("t", input=be.data_layout_reorder(x40, "input", big))
    be.launch_accelerator(Launch("t", conv=ConvStage(big, fmt, False, True), path="fast"))
    got = be.data_layout_recover(be.data_from_fpga("t")["conv"], "activations", channels=big.O)
    assert np.array_equal(got, reference.conv_reference(x40, w, b, big, fmt))


def test_fused_layout_conversions_at_every_scale():
    """float -> fixed fused with the device layouts (float32 kernels where 2^F is a normal float32, float64
    beyond), and back: ties, values next to them, NaN, infinities and subnormals, FC-shaped (1x1) inputs with
    and without padded channels, VEC 4 and 8, groups."""
    rng = np.random.default_rng(12)
    for vec in (4, 8):
        be = backend(vec_size=vec)
        for frac in [-130, -127, -126, -60, -3, 0, 1, 7, 60, 125, 127]:
            for c, h, w in ((9, 5, 7), (9, 1, 1), (24, 1, 1)):
                shape = (2, c, h, w)
                with np.errstate(over="ignore"):
                    x = (rng.normal(0, 1, shape) * 2.0 ** (rng.integers(-2, 9, shape) - frac)).astype(np.float32)
                    half = ((rng.integers(-300, 300, 12) / 2) * 2.0 ** -frac).astype(np.float32)
                flat = x.reshape(-1)
                k = min(12, flat.size // 4)
                flat[:k] = half[:k]
                flat[k:2 * k] = np.nextafter(half[:k], np.float32(np.inf))
                flat[2 * k:3 * k] = np.nextafter(half[:k], np.float32(-np.inf))
                flat[-4:] = [np.nan, np.inf, -np.inf, 1e-45]
                for bits in (8, 4):
                    assert np.array_equal(be.float_to_fixed(x, frac, bits), quant.float_to_fixed(x, frac, bits))
                q = quant.float_to_fixed(x, frac)
                for group in (1, 3):
                    geom = ConvGeometry(N=2, C=c, H=h, W=w, O=3, group=group, Kh=1, Kw=1, stride_h=1, stride_w=1,
                                        pad_h=0, pad_w=0, vec=vec)
                    assert np.array_equal(be.input_from_float(x, frac, geom), layouts.conv_input_reorder(q, geom))
                dev = be.activations_from_float(x, frac)
                assert np.array_equal(dev, layouts.activations_reorder(q, vec))
                with np.errstate(over="ignore"):
                    want = quant.fixed_to_float(q, frac)
                assert np.array_equal(be.float_from_activations(dev, frac, np.empty_like(x)), want, equal_nan=True)


def test_weight_check_equals_requantising():
    """quantizes_to(x, q) == array_equal(float_to_fixed(x), q) for random values, ties, their neighbours,
    saturated values and one-step changes anywhere (the screened blocks and the exact re-check)."""
    be = backend()
    rng = np.random.default_rng(13)
    for trial in range(60):
        frac, bits = int(rng.integers(-10, 14)), int(rng.choice([8, 6, 4]))
        x = (rng.normal(0, 1, 9000) * 2.0 ** (rng.integers(-3, 9) - frac)).astype(np.float32)
        half = ((rng.integers(-260, 260, 500) / 2) * 2.0 ** -frac).astype(np.float32)
        x[:500], x[500:1000], x[1000:1500] = half, np.nextafter(half, np.float32(np.inf)), \
            np.nextafter(half, np.float32(-np.inf))
        rng.shuffle(x)
        q = quant.float_to_fixed(x, frac, bits)
        assert be.quantizes_to(x, q, frac, bits)
        for i in rng.integers(0, x.size, 5):
            other = q.copy()
            other[i] = np.int8(min(127, max(-128, int(other[i]) + int(rng.choice([-1, 1])))))
            assert be.quantizes_to(x, other, frac, bits) == np.array_equal(quant.float_to_fixed(x, frac, bits), other)


def test_max_pool_and_lrn_on_wide_rows():
    """Rows wider than the kernels' unrolled loops, VEC 8, padding, and ceil-mode windows past the input."""
    rng = np.random.default_rng(14)
    for vec in (4, 8):
        be = backend(vec_size=vec)
        q = rng.integers(-128, 128, (2, 13, 31, 29)).astype(np.int8)
        pool = PoolStage(2, 13, 31, 29, 3, 3, 2, 2, 1, 1)
        be.data_to_fpga("w", input=be.data_layout_reorder(q, "activations", vec))
        be.launch_accelerator(Launch("w", pool=pool, lrn=LrnStage(2, 13, pool.Ho, pool.Wo, -2)))
        out = be.data_from_fpga("w")
        pooled = reference.max_pool_reference(q, pool)
        assert np.array_equal(layouts.activations_recover(out["pool"], 13), pooled)
        assert np.array_equal(layouts.activations_recover(out["lrn"], 13), reference.lrn_reference(pooled, -2))
