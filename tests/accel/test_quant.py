"""accel/quant.py: float -> fixed, fixed -> float and the output conversion (pipecnn.md §1.5, §10.4, §10.6).

The closed form is checked against a direct transcription of the kernel's shift-and-mask lines
(reference.conversion_kernel_lines) over every precision setting with 1 <= n, m <= 32, negative fractions
included, with accumulators concentrated on ties at -0.5 LSB, saturation boundaries and bias wraps: 0 mismatches.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from caffe_unstable.accel import quant
from caffe_unstable.accel.reference import conversion_kernel_lines

from .conftest import CI

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1


@st.composite
def precisions(draw):
    """(frac_w, frac_din, frac_dout) with 1 <= n <= 32 and 1 <= m <= 32, fractions in [-40, 40]."""
    frac_w = draw(st.integers(-20, 40))
    m = draw(st.integers(1, 32))
    frac_dout = frac_w - m
    n = draw(st.integers(1, 32))
    frac_din = n - frac_w + frac_dout
    return frac_w, frac_din, frac_dout


@st.composite
def accumulators(draw, n):
    """An int32 sum: anywhere, at a tie (k 2^n - 2^(n-1)), or near r1 in {-129, -128, 127, 128}."""
    kind = draw(st.sampled_from(["any", "tie", "saturation", "small"]))
    if kind == "any":
        return draw(st.integers(INT32_MIN, INT32_MAX))
    if kind == "small":
        return draw(st.integers(-4096, 4096))
    k = draw(st.sampled_from([-130, -129, -128, -127, -1, 0, 1, 126, 127, 128, 129]) | st.integers(-300, 300))
    base = k * (1 << n) - (1 << (n - 1)) if kind == "tie" else k * (1 << n)
    acc = base + draw(st.integers(-2, 2))
    return max(INT32_MIN, min(INT32_MAX, acc))


@CI
@given(data=st.data(), prec=precisions(), b=st.integers(-128, 127), relu=st.booleans())
def test_closed_form_equals_kernel_lines(data, prec, b, relu):
    frac_w, frac_din, frac_dout = prec
    fmt = quant.LayerFormat(frac_w, frac_din, frac_dout)
    accs = np.array([data.draw(accumulators(fmt.n)) for _ in range(16)], np.int64)
    if fmt.n == 1:
        accs = accs[accs != INT32_MAX]        # the one documented point (test_int32_overflow_point)
    got = quant.output_conversion(accs, b, fmt.n, fmt.m, relu)
    want = conversion_kernel_lines(accs, b, frac_w, frac_din, frac_dout, relu)
    assert np.array_equal(got, want), (accs[got != want], got[got != want], want[got != want])


def test_closed_form_bulk_random_cases():
    """2 M random cases over 64 random precision settings, plus every tie and boundary of each: 0 mismatches."""
    rng = np.random.default_rng(5)
    for _ in range(64):
        n, m = int(rng.integers(1, 33)), int(rng.integers(1, 33))
        frac_w = int(rng.integers(-16, 24))
        frac_dout = frac_w - m
        frac_din = n - frac_w + frac_dout
        acc = np.concatenate([rng.integers(INT32_MIN, INT32_MAX, 30000, endpoint=True),
                              rng.integers(-(1 << min(n + 9, 31)), 1 << min(n + 9, 31), 1000)])
        k = np.arange(-260, 260, dtype=np.int64)
        edges = np.concatenate([k * (1 << n) - (1 << (n - 1)) + d for d in (-1, 0, 1)]
                               + [k * (1 << n) + d for d in (-1, 0, 1)])
        acc = np.clip(np.concatenate([acc, edges]), INT32_MIN, INT32_MAX)
        if n == 1:
            acc = acc[acc != INT32_MAX]
        b = rng.integers(-128, 128, acc.size)
        for relu in (False, True):
            got = quant.output_conversion(acc, b, n, m, relu)
            want = conversion_kernel_lines(acc, b, frac_w, frac_din, frac_dout, relu)
            assert int((got != want).sum()) == 0, (n, m)


def test_int32_overflow_point():
    """acc = 2^31 - 1 with n = 1: a wrapping 32-bit `+1` gives -128 (0 with ReLU); caffe_unstable defines 127,
    what PoCL compiles the kernel lines to and what int64 arithmetic gives (§1.5, §10.6)."""
    assert conversion_kernel_lines(np.array([INT32_MAX]), 0, 1, 0, 0)[0] == -128
    assert quant.output_conversion(np.array([INT32_MAX]), 0, 1, 1)[0] == 127
    assert quant.output_conversion(np.array([INT32_MAX]), 0, 1, 1, relu=True)[0] == 127


@pytest.mark.parametrize("acc,b,prec,relu,want", [
    (4064, 127, (7, 0, 2), False, -125),    # VGG fc7: r1 = 127, rb = 4 -> the bias add wraps (§1.5)
    (4064, 127, (7, 0, 2), True, 0),        # ReLU after the wrap
    (4096, 127, (7, 0, 2), False, 127),     # r1 = 128 saturates and the bias is ignored
    (-16, 0, (5, 0, 0), False, 0),          # n = 5: -0.5 LSB rounds half up to 0
    (-17, 0, (5, 0, 0), False, -1),
    (-129 * 32, 127, (5, 0, 0), False, -128),   # r1 = -129 saturates, bias ignored
    (-128 * 32, -128, (5, 0, 0), False, 124),   # r1 = -128, rb = -4: wraps to +124
])
def test_worked_examples(acc, b, prec, relu, want):
    fmt = quant.LayerFormat(*prec)
    assert quant.output_conversion(np.array([acc]), b, fmt.n, fmt.m, relu)[0] == want
    assert conversion_kernel_lines(np.array([acc]), b, *prec, relu)[0] == want


def test_bias_has_no_effect_when_m_is_at_least_8():
    b = np.arange(-128, 128)
    for m in range(8, 33):
        assert not quant.bias_term(b, m).any()
    assert quant.bias_term(b, 5).min() == -4 and quant.bias_term(b, 5).max() == 4


@CI
@given(x=st.floats(-1e6, 1e6, width=32), frac=st.integers(-20, 30), bits=st.sampled_from([4, 8]))
def test_float_to_fixed_is_round_half_away_and_saturates(x, frac, bits):
    q = int(quant.float_to_fixed(np.float32(x), frac, bits))
    v = float(np.float32(x)) * 2.0 ** frac          # exact in float64
    lo, hi = quant.fixed_range(bits)
    r = int(np.sign(v) * np.floor(abs(v) + 0.5))
    assert q == max(lo, min(hi, r))


def test_float_to_fixed_ties_and_specials():
    x = np.array([0.5, -0.5, 1.5, -1.5, 2.5, 127.5, -128.5, 126.49999, np.inf, -np.inf, np.nan], np.float32)
    assert quant.float_to_fixed(x, 0).tolist() == [1, -1, 2, -2, 3, 127, -128, 126, 127, -128, 0]
    assert quant.float_to_fixed(np.float32(1.0), 7).item() == 127          # 128 saturates
    assert quant.float_to_fixed(np.float32(-1.0), 7).item() == -128
    assert quant.float_to_fixed(np.float32(100.0), -4).item() == 6         # negative fraction: LSB 16
    assert quant.float_to_fixed(np.float32(7.9), 4, bits=4).item() == 7    # 4-bit weights (§10.4)


@CI
@given(q=st.integers(-128, 127), frac=st.integers(-60, 60))
def test_fixed_to_float_is_exact_and_round_trips(q, frac):
    x = quant.fixed_to_float(np.int8(q), frac)
    assert x.dtype == np.float32 and float(x) == q * 2.0 ** -frac
    assert int(quant.float_to_fixed(x, frac)) == q


def test_layer_format_preconditions():
    assert quant.LayerFormat(8, 0, -4).problem() is None
    assert "n = " in quant.LayerFormat(8, 0, 8).problem()
    assert "m = " in quant.LayerFormat(8, 3, 8).problem(has_bias=True)
    assert quant.LayerFormat(8, 3, 8).problem(has_bias=False) is None          # m is free without a bias
    assert "frac_w" in quant.LayerFormat(200, 0, 0).problem()


def test_largest_frac():
    assert quant.largest_frac(127) == 0 and quant.largest_frac(128) == -1 and quant.largest_frac(0.996) == 6
    assert quant.largest_frac(1.0) == 6 and quant.largest_frac(0.0) == 0 and quant.largest_frac(3000) == -5
