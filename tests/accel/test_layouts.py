"""accel/layouts.py: PipeCNN's layouts (pipecnn.md §4). reorder -> recover is the identity for every shape, the
padding (channels past C or Cg, filters outside [po, po + O)) is zero, and the positions follow §4's formulas."""
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from caffe_unstable.accel import layouts
from caffe_unstable.accel.geometry import ConvGeometry

from .conftest import CI


def _int8(rng, shape):
    return rng.integers(1, 128, shape).astype(np.int8)        # nonzero, so a zero can only be padding


@st.composite
def conv_geometries(draw):
    group = draw(st.integers(1, 3))
    return ConvGeometry(N=draw(st.integers(1, 2)), C=group * draw(st.integers(1, 9)), H=draw(st.integers(1, 5)),
                        W=draw(st.integers(1, 5)), O=group * draw(st.integers(1, 7)), group=group,
                        Kh=draw(st.integers(1, 3)), Kw=draw(st.integers(1, 3)), stride_h=1, stride_w=1,
                        pad_h=1, pad_w=1, vec=draw(st.sampled_from([4, 8, 16])), lane=draw(st.integers(1, 9)))


@CI
@given(g=conv_geometries(), seed=st.integers(0, 2 ** 16))
def test_conv_layouts_round_trip_and_zero_padding(g, seed):
    rng = np.random.default_rng(seed)
    x = _int8(rng, (g.N, g.C, g.H, g.W))
    w = _int8(rng, (g.O, g.Cg, g.Kh, g.Kw))
    b = _int8(rng, (g.O,))
    xd = layouts.conv_input_reorder(x, g)
    wd = layouts.weights_reorder(w, g)
    bd = layouts.bias_reorder(b, g)
    assert xd.shape == (g.N, g.group, g.Cp // g.vec, g.H, g.W, g.vec)
    assert wd.shape == (g.Op // g.lane, g.Cp // g.vec, g.Kh, g.Kw, g.lane, g.vec)
    assert bd.shape == (g.Op,)
    assert np.array_equal(layouts.conv_input_recover(xd, g), x)
    assert np.array_equal(layouts.weights_recover(wd, g), w)
    assert np.array_equal(layouts.bias_recover(bd, g), b)
    # zeros exactly at the padding
    assert int((xd == 0).sum()) == g.N * g.group * (g.Cp - g.Cg) * g.H * g.W
    assert int((wd == 0).sum()) == g.Op * g.Cp * g.Kh * g.Kw - w.size
    assert int((bd == 0).sum()) == g.Op - g.O
    assert not bd[:g.po].any() and not bd[g.po + g.O:].any()


@CI
@given(n=st.integers(1, 2), c=st.integers(1, 20), h=st.integers(1, 6), w=st.integers(1, 6),
       vec=st.sampled_from([4, 8, 16]), lane=st.integers(1, 9), po=st.integers(0, 3), seed=st.integers(0, 999))
def test_activation_and_lane_layouts_round_trip(n, c, h, w, vec, lane, po, seed):
    rng = np.random.default_rng(seed)
    x = _int8(rng, (n, c, h, w))
    d = layouts.activations_reorder(x, vec)
    assert d.shape == (n, -(-c // vec), h, w, vec)
    assert np.array_equal(layouts.activations_recover(d, c), x)
    assert int((d == 0).sum()) == n * (d.shape[1] * vec - c) * h * w
    po = min(po, (-(-c // lane) * lane - c))
    ld = layouts.lane_reorder(x, lane, po)
    assert np.array_equal(layouts.lane_recover(ld, c, po), x)
    assert int((ld == 0).sum()) == ld.size - x.size


def test_positions_follow_the_spec_formulas():
    rng = np.random.default_rng(1)
    g = ConvGeometry(N=1, C=6, H=3, W=4, O=5, group=1, Kh=2, Kw=3, stride_h=1, stride_w=1, pad_h=0, pad_w=0,
                     vec=4, lane=4)
    x = _int8(rng, (1, 6, 3, 4))
    flat = layouts.activations_reorder(x, 4).ravel()
    for c in range(6):
        for y in range(3):
            for xx in range(4):
                assert flat[layouts.vec_index(c, y, xx, 3, 4, 4)] == x[0, c, y, xx]
    w = _int8(rng, (5, 6, 2, 3))
    wflat = layouts.weights_reorder(w, g).ravel()
    assert g.Op == 8 and g.po == 1
    for o in range(5):
        for c in range(6):
            for i in range(2):
                for j in range(3):
                    assert wflat[layouts.weight_index(o + g.po, c, i, j, g)] == w[o, c, i, j]
