"""Property tests (hypothesis, derandomized, bounded) of the register helpers, ch_add and the correction."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from caffe_unstable.accel.faults.carry_horizon import ch_add
from caffe_unstable.accel.faults.plan import FaultPlan, mac_events
from caffe_unstable.accel.faults.registers import flip, wrap32

from .brute import flip_ref, register_loop, ripple_add
from .test_mac_flip import fast_path, loop_faults

CI = settings(derandomize=True, deadline=None, max_examples=150)
int32 = st.integers(-2 ** 31, 2 ** 31 - 1)


@CI
@given(int32, st.integers(16, 32).flatmap(lambda w: st.tuples(st.just(w), st.integers(0, w - 1))))
def test_flip_is_an_involution_and_matches_the_spec(v, wb):
    w, b = wb
    once = flip(v, b, w)
    assert flip(once, b, w) == v and once == flip_ref(v, b, w)
    assert once != v and wrap32(once - v) in (wrap32(1 << b), wrap32(-(1 << b)))


@CI
@given(st.sampled_from([8, 16, 20, 32]).flatmap(lambda W: st.tuples(
    st.just(W), st.integers(0, 2 ** W - 1), st.integers(0, 2 ** W - 1), st.integers(0, W + 1))))
def test_ch_add_equals_bit_serial_adder(case):
    W, a, b, K = case
    r, late = ch_add(a, b, K, W)
    assert (r & (2 ** W - 1), late) == ripple_add(a, b, K, W)
    if K >= W - 1:
        assert late == 0 and (r - a - b) % 2 ** W == 0


@CI
@given(st.data())
def test_correction_equals_loop_on_one_output(data):
    VEC = data.draw(st.sampled_from([4, 8, 16]))
    L = data.draw(st.integers(1, 40))
    w = data.draw(st.sampled_from([20, 24, 29, 32]))
    seed = data.draw(st.integers(0, 2 ** 32 - 1))
    rng = np.random.default_rng(seed)
    x = rng.integers(-128, 128, (1, L, VEC))
    wt = rng.integers(-128, 128, (1, L, VEC))
    recs = data.draw(st.lists(st.tuples(st.integers(0, L - 1), st.integers(0, 2), st.integers(0, w - 1)),
                              min_size=1, max_size=12))
    events = mac_events(0, 0, 0, 0, [0 if s == 2 else t for t, s, _ in recs], [s for _, s, _ in recs],
                        [b for _, _, b in recs])
    S_loop, _ = register_loop(x, wt, 6, (w, w, w), faults=loop_faults(events))
    assert fast_path(x, wt, events, 6, (w, w, w))[0] == S_loop[0]


@CI
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 9), st.integers(0, 5), st.integers(0, 5),
                          st.integers(0, 17), st.integers(0, 2), st.integers(0, 31)), min_size=1, max_size=30))
def test_plan_save_load_identity(tmp_path_factory, rows):
    cols = list(zip(*rows))
    plan = FaultPlan.from_records("conv", *cols, layer_index=3)
    path = tmp_path_factory.mktemp("plans") / "p.faultplan.npz"
    plan.save(path)
    back = FaultPlan.load(path)
    assert back.equals(plan) and back.layers[0].mac_events.tolist() == sorted(rows)
