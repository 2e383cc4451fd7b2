"""faults.md §2 and §7.3: the FaultPlan container, explicit plans, validation and sampling from a profile."""
import numpy as np
import pytest

from caffe_unstable.accel import faults
from caffe_unstable.accel.faults.plan import MAC_EVENT_DTYPE, FaultPlan, output_offsets
from caffe_unstable.errors import CaffeUnstableError

G = faults.conv_geometry(8, 6, 6, 6, 3, 3, 1, 1, 1, 4, 4, 6, 24, 29, 30)
G32 = faults.conv_geometry(8, 6, 6, 6, 3, 3, 1, 1, 1, 4, 4, 6)     # the profile's widths


def test_from_records_sorts_and_takes_site_names():
    plan = FaultPlan.from_records("conv2", n=[1, 0, 0], o=[2, 5, 2], y=[0, 1, 0], x=[3, 3, 3], t=[4, 0, 4],
                                  site=["accumulator", "final", "product"], bit=[7, 29, 9])
    ev = plan.layer("conv2").mac_events
    assert ev.dtype == MAC_EVENT_DTYPE
    assert ev.tolist() == [(0, 2, 0, 3, 4, 0, 9), (0, 5, 1, 3, 0, 2, 29), (1, 2, 0, 3, 4, 1, 7)]
    assert plan.batch == 2 and plan.layer("conv1") is None
    plan.layers[0].validate(G, 2)
    single = FaultPlan.single("conv2", 0, 5, 1, 3, 17, 28)
    assert single.layers[0].mac_events.tolist() == [(0, 5, 1, 3, 17, 1, 28)]


@pytest.mark.parametrize("kwargs, message", [
    (dict(o=6), "mac_events.o = 6 out of range [0, 6) (record 0)"),
    (dict(t=18), "mac_events.t = 18 out of range [0, 18) (record 0)"),
    (dict(y=-1), "mac_events.y = -1 out of range [0, 6) (record 0)"),
    (dict(bit=29), "mac_events.bit = 29 out of range [0, 29) (record 0)"),
    (dict(site="product", bit=24), "mac_events.bit = 24 out of range [0, 24) (record 0)"),
    (dict(site="final", t=3), "mac_events.t = 3: must be 0 for site final"),
    (dict(n=2), "mac_events.n = 2 out of range [0, 2) (record 0)"),
])
def test_explicit_plans_are_validated(kwargs, message):
    rec = dict(n=0, o=1, y=2, x=3, t=4, site="accumulator", bit=5)
    rec.update(kwargs)
    plan = FaultPlan.single("conv2", rec["n"], rec["o"], rec["y"], rec["x"], rec["t"], rec["bit"], rec["site"])
    with pytest.raises(CaffeUnstableError) as info:
        plan.layers[0].validate(G, 2)
    assert info.value.line() == f"layer 'conv2': fault plan: {message}"
    with pytest.raises(CaffeUnstableError, match="unknown site 'sum'"):
        FaultPlan.single("conv2", 0, 0, 0, 0, 0, 1, "sum")


def test_save_load_round_trip(tmp_path):
    profile = faults.DeviceProfile.load("pipecnn_kcu1500")
    models = faults.models_for(profile, freq_mhz=270, ser=1e-3)
    layers = [(1, "conv1", G32), (4, "fc", faults.conv_geometry(96, 1, 1, 10, 1, 1, 1, 0, 1, 8, 4, 6))]
    plan = faults.sample_plan(models, layers, 3, faults.PassKey(7, 1, 0, 2), 270, 1e-3, profile.describe())
    assert [lp.layer_name for lp in plan.layers] == ["conv1", "fc"]
    path = tmp_path / "a.faultplan.npz"
    plan.save(path)
    with np.load(path, allow_pickle=False) as z:
        assert "header" in z and "L1/mac_events" in z and "L4/timing.thresholds" in z and "L1/timing.keys" in z
    back = FaultPlan.load(path)
    assert back.equals(plan) and back.profile.startswith("pipecnn_kcu1500 sha256:")
    assert back.layers[0].timing.sites == ("accumulate",) and back.pass_ == 2 and back.numpy == np.__version__
    back.layers[0].mac_events = back.layers[0].mac_events[1:]
    assert not back.equals(plan)
    twice = FaultPlan(layers=[FaultPlan.single("a", 0, 0, 0, 0, 0, 1).layers[0],
                              FaultPlan.single("b", 0, 0, 0, 0, 0, 1).layers[0]])
    with pytest.raises(CaffeUnstableError, match="layer indices are not unique"):
        twice.save(tmp_path / "b.faultplan.npz")


def test_same_key_same_plan_and_common_random_numbers():
    profile = faults.DeviceProfile.load("pipecnn_kcu1500")
    key = faults.PassKey(7, 0, 5, 0)
    a = faults.sample_plan(faults.models_for(profile, ser=1e-3), [(1, "c", G32)], 2, key)
    b = faults.sample_plan(faults.models_for(profile, ser=1e-3), [(1, "c", G32)], 2, key)
    c = faults.sample_plan(faults.models_for(profile, ser=1e-3), [(1, "c", G32)], 2, faults.PassKey(7, 0, 6, 0))
    assert a.equals(b) and not a.equals(c)
    t260 = faults.sample_plan(faults.models_for(profile, 260), [(1, "c", G32)], 2, key).layers[0].timing
    t280 = faults.sample_plan(faults.models_for(profile, 280), [(1, "c", G32)], 2, key).layers[0].timing
    assert np.array_equal(t260.keys, t280.keys)                 # frequency never enters a key
    assert (t260.thresholds <= t280.thresholds).all()


def test_models_for_precedence():
    profile = faults.DeviceProfile.load("pipecnn_kcu1500")
    names = lambda ms: [m.name for m in ms]  # noqa: E731
    assert names(faults.models_for(profile)) == []                            # profile, no flag: its soft errors (0)
    assert names(faults.models_for(profile, freq_mhz=210)) == []              # safe clock: no timing draws
    assert names(faults.models_for(profile, freq_mhz=260)) == ["carry_horizon"]
    assert names(faults.models_for(profile, ser=1e-5)) == ["mac_flip"]
    assert names(faults.models_for(profile, horizon_k=29)) == ["carry_horizon"]
    assert names(faults.models_for(None, ser=1e-5)) == ["mac_flip"] and faults.models_for(None) == []
    with pytest.raises(CaffeUnstableError, match="needs a device profile"):
        faults.models_for(None, freq_mhz=260)
    rate = faults.DeviceProfile(dict(profile.data, timing=dict(profile.timing, model="rate")))
    assert names(faults.models_for(rate, freq_mhz=260)) == ["rate"] and faults.models_for(rate, freq_mhz=200) == []
    assert set(faults.MODELS) == {"carry_horizon", "rate", "mac_flip", "memory", "stuck_at"}


def test_output_offsets_csr():
    plan = FaultPlan.from_records("c", n=[0, 0, 1], o=[0, 5, 0], y=[0, 5, 2], x=[1, 5, 0], t=[0, 1, 2],
                                  site=1, bit=3)
    off = output_offsets(plan.layers[0].mac_events, G, 2)
    assert off.size == 2 * 6 * 36 + 1 and off[-1] == 3
    i = ((1 * 6 + 0) * 6 + 2) * 6 + 0
    assert off[i + 1] - off[i] == 1 and off[1] - off[0] == 0 and off[2] - off[1] == 1
