"""Element-wise neuron layers (caffe_unstable/ops/neuron.py) against golden Caffe data, hand-computed values and
numerical gradients. Also home of `run_golden_layers`, the direct (Net-free) golden runner the other ops tests use."""
import json

import numpy as np
import pytest
from google.protobuf import text_format

from caffe_unstable.errors import CaffeUnstableError
from caffe_unstable.net.blob import Blob
from caffe_unstable.ops import layer_class
from caffe_unstable.proto import caffe_pb2
from tests.ops.gradcheck import check_gradient, layer_from_text

RTOL, ATOL = 1e-4, 1e-5  # golden/README.md: single layers


def run_golden_layers(shared, case):
    """Run the layers of golden case `case` directly, without a Net: forward, then (if the case has one) backward
    from the given top diffs / loss weights. Returns {label: (ours, caffe's)} for every blob data, bottom diff
    (per consumer, Split's per-consumer diffs when a bottom feeds two layers) and param diff."""
    import h5py

    folder = shared / "golden" / "layers"
    net = text_format.Parse((folder / f"{case}.prototxt").read_text(), caffe_pb2.NetParameter())
    pairs = {}
    with h5py.File(folder / f"{case}.h5", "r") as h5:
        phase = caffe_pb2.TRAIN if h5.attrs["phase"] == "TRAIN" else caffe_pb2.TEST
        blobs, producer, layers = {}, {}, []
        for lp in net.layer:
            lp.phase = phase
            if lp.type == "Input":
                for j, name in enumerate(lp.top):
                    blobs[name] = Blob(h5[f"inputs/{name}"].shape)
                    blobs[name].data[...] = h5[f"inputs/{name}"][()]
                    producer[name] = (lp.name, j)
                continue
            layer = layer_class(lp.type)(lp, np.random.default_rng(0))
            bottom = [blobs[b] for b in lp.bottom]
            top = [blobs[t] if t in lp.bottom else Blob() for t in lp.top]
            layer.setup(bottom, top)
            for i, p in enumerate(layer.blobs):
                p.data[...] = h5[f"params/{lp.name}/{i}/data"][()]
            layer.reshape(bottom, top)
            layer.forward(bottom, top)
            for t, blob in zip(lp.top, top):
                blobs[t] = blob
            layers.append((lp, layer, bottom, top))
        for name, blob in blobs.items():
            pairs[f"{name} data"] = (blob.data.copy(), h5[f"blobs/{name}/data"][()])
        if not h5.attrs["backward"]:
            return pairs
        consumers = {}
        for lp, *_ in layers:
            for b in lp.bottom:
                consumers[b] = consumers.get(b, 0) + 1
        seen = {}
        for lp, layer, bottom, top in reversed(layers):
            for k, (t, blob) in enumerate(zip(lp.top, top)):
                if f"top_diffs_given/{t}" in h5:
                    blob.diff[...] = h5[f"top_diffs_given/{t}"][()]
                else:  # a loss top: its diff is its loss weight, as Caffe stores it
                    weight = lp.loss_weight[k] if lp.loss_weight else (1.0 if layer.is_loss and k == 0 else 0.0)
                    blob.diff[...] = weight
            for p in layer.blobs:
                p.diff[...] = 0
            layer.param_propagate_down = [True] * len(layer.blobs)
            propagate = [layer.allow_force_backward(i) for i in range(len(bottom))]
            layer.backward(top, propagate, bottom)
            for i, (b, blob) in enumerate(zip(lp.bottom, bottom)):
                if not propagate[i]:
                    continue
                ref = b
                if consumers[b] > 1:  # Caffe's Split: consumer k (in layer order) reads split top k
                    k = consumers[b] - 1 - seen.get(b, 0)
                    seen[b] = seen.get(b, 0) + 1
                    ref = f"{b}_{producer[b][0]}_{producer[b][1]}_split_{k}"
                pairs[f"{ref} diff ({lp.name})"] = (blob.diff.copy(), h5[f"blobs/{ref}/diff"][()])
            for j, p in enumerate(layer.blobs):
                pairs[f"{lp.name} param {j} diff"] = (p.diff.copy(), h5[f"params/{lp.name}/{j}/diff"][()])
    return pairs


def assert_golden(shared, case, exact=False):
    """Every pair of run_golden_layers within the single-layer tolerance (or exactly); returns the max abs diff."""
    worst = 0.0
    for label, (ours, theirs) in run_golden_layers(shared, case).items():
        assert ours.shape == theirs.shape, f"{case}: {label}: shape {ours.shape} vs Caffe's {theirs.shape}"
        maxdiff = float(np.max(np.abs(ours - theirs), initial=0.0))
        worst = max(worst, maxdiff)
        if exact:
            assert np.array_equal(ours, theirs), f"{case}: {label}: maxdiff {maxdiff}"
        else:
            assert np.allclose(ours, theirs, rtol=RTOL, atol=ATOL), f"{case}: {label}: maxdiff {maxdiff:.3g}"
    return worst


def run(layer, *arrays, top_diff=None, in_place=False, propagate_down=None):
    """Setup + forward (+ backward when top_diff is given) on float32 arrays; returns (top, bottom)."""
    bottom = []
    for a in arrays:
        b = Blob(np.shape(a))
        b.data[...] = a
        bottom.append(b)
    top = [bottom[0]] if in_place else [Blob()]
    layer.setup(bottom, top)
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    if top_diff is not None:
        top[0].diff[...] = top_diff
        layer.param_propagate_down = [True] * len(layer.blobs)
        layer.backward(top, propagate_down or [True] * len(bottom), bottom)
    return top, bottom


@pytest.mark.parametrize("case", ["relu_slope", "prelu", "elu", "sigmoid", "tanh", "absval", "power", "dropout_test"])
def test_golden(shared, case):
    assert_golden(shared, case)


def test_manifest_lists_these_cases(shared):
    manifest = json.loads((shared / "golden" / "layers" / "manifest.json").read_text())
    types = {m["case"]: m["layer_type"] for m in manifest}
    assert types["relu_slope"] == "ReLU" and types["dropout_test"] == "Dropout" and types["power"] == "Power"


# -- known answers -------------------------------------------------------------------------------------------------

X = np.array([[-2.0, -0.5, 0.0, 0.5, 3.0]], np.float32)


def test_relu_known_values_and_gradient_at_zero():
    top, bottom = run(layer_from_text('type: "ReLU" relu_param { negative_slope: 0.1 }'), X, top_diff=np.ones_like(X))
    np.testing.assert_allclose(top[0].data, [[-0.2, -0.05, 0.0, 0.5, 3.0]], rtol=1e-6)
    np.testing.assert_allclose(bottom[0].diff, [[0.1, 0.1, 0.1, 1.0, 1.0]], rtol=1e-6)  # slope at exactly 0


@pytest.mark.parametrize("slope", [0.0, 0.3, 1.0, 2.0, -0.5])
def test_relu_matches_caffe_formula_for_any_slope(slope):
    x = np.random.default_rng(0).normal(size=(3, 7)).astype(np.float32)
    x[0, :3] = 0
    dy = np.random.default_rng(1).normal(size=x.shape).astype(np.float32)
    top, bottom = run(layer_from_text(f'type: "ReLU" relu_param {{ negative_slope: {slope} }}'), x, top_diff=dy)
    ns = np.float32(slope)
    np.testing.assert_array_equal(top[0].data, np.maximum(x, 0) + ns * np.minimum(x, 0))
    np.testing.assert_array_equal(bottom[0].diff, dy * ((x > 0) + ns * (x <= 0)))


def test_prelu_default_slope_and_param_diff_accumulates():
    x = np.array([[[-4.0], [2.0]], [[-2.0], [-1.0]]], np.float32)  # (N=2, C=2, 1)
    layer = layer_from_text('type: "PReLU"')
    top, bottom = run(layer, x, top_diff=np.ones_like(x))
    np.testing.assert_allclose(layer.blobs[0].data, [0.25, 0.25])
    np.testing.assert_allclose(top[0].data.ravel(), [-1.0, 2.0, -0.5, -0.25])
    np.testing.assert_allclose(layer.blobs[0].diff, [-6.0, -1.0])  # sum of dy * x over x <= 0, per channel
    layer.backward(top, [True], bottom)
    np.testing.assert_allclose(layer.blobs[0].diff, [-12.0, -2.0])  # += : Caffe accumulates param diffs


def test_prelu_channel_shared_is_a_scalar():
    layer = layer_from_text('type: "PReLU" prelu_param { channel_shared: true filler { type: "constant" value: 0.5 } }')
    top, _ = run(layer, np.full((2, 3, 2), -2.0, np.float32), top_diff=np.ones((2, 3, 2), np.float32))
    assert layer.blobs[0].shape == ()
    np.testing.assert_allclose(top[0].data, -1.0)
    np.testing.assert_allclose(layer.blobs[0].diff, -24.0)


def test_elu_sigmoid_tanh_known_values():
    x = np.array([-1.0, 0.0, 2.0], np.float32)
    top, bottom = run(layer_from_text('type: "ELU" elu_param { alpha: 0.5 }'), x, top_diff=np.ones_like(x))
    np.testing.assert_allclose(top[0].data, [0.5 * (np.exp(-1) - 1), 0.0, 2.0], rtol=1e-6)
    np.testing.assert_allclose(bottom[0].diff, [0.5 * np.exp(-1), 0.5, 1.0], rtol=1e-6)  # alpha * dy at 0
    top, bottom = run(layer_from_text('type: "Sigmoid"'), x, top_diff=np.ones_like(x))
    s = 1 / (1 + np.exp(-x.astype(np.float64)))
    np.testing.assert_allclose(top[0].data, s, rtol=1e-6)
    np.testing.assert_allclose(bottom[0].diff, s * (1 - s), rtol=1e-5)
    top, bottom = run(layer_from_text('type: "TanH"'), x, top_diff=np.ones_like(x))
    np.testing.assert_allclose(bottom[0].diff, 1 - np.tanh(x.astype(np.float64)) ** 2, rtol=1e-5)


def test_absval_sign_of_zero_is_zero():
    top, bottom = run(layer_from_text('type: "AbsVal"'), X, top_diff=np.full_like(X, 2.0))
    np.testing.assert_array_equal(top[0].data, np.abs(X))
    np.testing.assert_array_equal(bottom[0].diff, [[-2.0, -2.0, 0.0, 2.0, 2.0]])


@pytest.mark.parametrize("params, x, y, dx", [
    ("power: 2 scale: 0.5 shift: 1", [2.0, -4.0], [4.0, 1.0], [2.0, -1.0]),
    ("power: 1 scale: 3 shift: 1", [1.0, 2.0], [4.0, 7.0], [3.0, 3.0]),
    ("power: 0 scale: 3 shift: 5", [1.0, 2.0], [1.0, 1.0], [0.0, 0.0]),            # constant 1
    ("power: 3 scale: 0 shift: 2", [1.0, 2.0], [8.0, 8.0], [0.0, 0.0]),            # constant shift^power
    ("power: 3 scale: 2", [1.0, -1.0], [8.0, -8.0], [24.0, 24.0]),                 # shift 0: power * y / x
    ("power: 0.5 scale: 2 shift: 1", [1.5, 4.0], [2.0, 3.0], [0.5, 1.0 / 3.0]),    # general: ds * y / (shift + scale x)
])
def test_power_special_cases(params, x, y, dx):
    x = np.array(x, np.float32)
    top, bottom = run(layer_from_text(f'type: "Power" power_param {{ {params} }}'), x, top_diff=np.ones_like(x))
    np.testing.assert_allclose(top[0].data, y, rtol=1e-6)
    np.testing.assert_allclose(bottom[0].diff, dx, rtol=1e-6)


def test_power_shift_zero_at_zero_is_nan_like_caffe():
    x = np.array([0.0, 1.0], np.float32)
    _, bottom = run(layer_from_text('type: "Power" power_param { power: 3 }'), x, top_diff=np.ones_like(x))
    assert np.isnan(bottom[0].diff[0]) and bottom[0].diff[1] == 3.0


def test_exp_log_bnll_known_values():
    x = np.array([0.0, 1.0, 2.0], np.float32)
    top, bottom = run(layer_from_text('type: "Exp" exp_param { base: 2 scale: 1 shift: 1 }'), x,
                      top_diff=np.ones_like(x))
    np.testing.assert_allclose(top[0].data, [2.0, 4.0, 8.0], rtol=1e-6)
    np.testing.assert_allclose(bottom[0].diff, np.array([2.0, 4.0, 8.0]) * np.log(2), rtol=1e-6)
    top, bottom = run(layer_from_text('type: "Log" log_param { base: 10 scale: 2 shift: 1 }'), x,
                      top_diff=np.ones_like(x))
    np.testing.assert_allclose(top[0].data, np.log10([1.0, 3.0, 5.0]), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(bottom[0].diff, 2 / (np.log(10) * np.array([1.0, 3.0, 5.0])), rtol=1e-6)
    xb = np.array([-100.0, 0.0, 100.0], np.float32)
    top, bottom = run(layer_from_text('type: "BNLL"'), xb, top_diff=np.ones_like(xb))
    np.testing.assert_allclose(top[0].data, [0.0, np.log(2), 100.0], rtol=1e-6, atol=1e-30)
    np.testing.assert_allclose(bottom[0].diff, [0.0, 0.5, 1.0], atol=1e-30)


def test_threshold_clip_swish_known_values():
    top, _ = run(layer_from_text('type: "Threshold" threshold_param { threshold: 0.5 }'), X)
    np.testing.assert_array_equal(top[0].data, [[0, 0, 0, 0, 1]])  # strictly greater
    top, bottom = run(layer_from_text('type: "Clip" clip_param { min: -0.5 max: 0.5 }'), X, top_diff=np.ones_like(X))
    np.testing.assert_array_equal(top[0].data, [[-0.5, -0.5, 0.0, 0.5, 0.5]])
    np.testing.assert_array_equal(bottom[0].diff, [[0, 1, 1, 1, 0]])  # bounds included
    x = np.array([-1.0, 0.0, 2.0], np.float32)
    top, bottom = run(layer_from_text('type: "Swish" swish_param { beta: 2 }'), x, top_diff=np.ones_like(x))
    s = 1 / (1 + np.exp(-2 * x.astype(np.float64)))
    np.testing.assert_allclose(top[0].data, x * s, rtol=1e-6)
    np.testing.assert_allclose(bottom[0].diff, s + 2 * x * s * (1 - s), rtol=1e-5, atol=1e-7)


# -- in place: backward must see the pre-forward x --------------------------------------------------------------

@pytest.mark.parametrize("text", [
    'type: "ReLU"', 'type: "ReLU" relu_param { negative_slope: -0.5 }', 'type: "PReLU"', 'type: "ELU"',
    'type: "ELU" elu_param { alpha: -0.5 }', 'type: "Sigmoid"', 'type: "TanH"', 'type: "AbsVal"',
    'type: "Power" power_param { power: 2 scale: 0.5 shift: 1 }', 'type: "Power" power_param { power: 3 scale: -2 }',
    'type: "Power" power_param { power: 1.5 shift: 5 }', 'type: "Exp"', 'type: "Log" log_param { shift: 5 }',
    'type: "BNLL"', 'type: "Clip" clip_param { min: -0.5 max: 0.5 }', 'type: "Swish"', 'type: "Dropout"',
])
@pytest.mark.parametrize("phase", [caffe_pb2.TRAIN, caffe_pb2.TEST])
def test_in_place_matches_out_of_place(text, phase):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 3, 4)).astype(np.float32)
    dy = rng.normal(size=x.shape).astype(np.float32)
    ref_layer, in_layer = layer_from_text(text, phase=phase, seed=5), layer_from_text(text, phase=phase, seed=5)
    ref_top, ref_bottom = run(ref_layer, x, top_diff=dy)
    top, bottom = run(in_layer, x, top_diff=dy, in_place=True)
    assert top[0] is bottom[0]
    np.testing.assert_array_equal(top[0].data, ref_top[0].data)
    np.testing.assert_array_equal(bottom[0].diff, ref_bottom[0].diff)
    for p, q in zip(in_layer.blobs, ref_layer.blobs):
        np.testing.assert_array_equal(p.diff, q.diff)


# -- Dropout ---------------------------------------------------------------------------------------------------

def test_dropout_train_statistics_scaling_and_mask_reuse():
    p = 0.3
    layer = layer_from_text(f'type: "Dropout" dropout_param {{ dropout_ratio: {p} }}', phase=caffe_pb2.TRAIN, seed=7)
    x = np.random.default_rng(0).uniform(0.5, 1.5, size=(40, 50, 50)).astype(np.float32)  # never 0
    dy = np.random.default_rng(1).uniform(0.5, 1.5, size=x.shape).astype(np.float32)
    top, bottom = run(layer, x, top_diff=dy)
    y = top[0].data
    kept = y != 0
    n = x.size
    assert abs(kept.mean() - (1 - p)) < 4 * np.sqrt(p * (1 - p) / n)
    scale = np.float32(1.0 / (1.0 - np.float32(p)))
    np.testing.assert_array_equal(y[kept], x[kept] * scale)
    np.testing.assert_allclose(y[kept], x[kept] / (1 - p), rtol=1e-6)
    np.testing.assert_array_equal(bottom[0].diff, np.where(kept, dy * scale, 0))  # the same mask in backward
    layer.forward(bottom, top)  # a fresh mask every forward
    assert not np.array_equal(top[0].data != 0, kept)


def test_dropout_test_phase_is_identity():
    layer = layer_from_text('type: "Dropout" dropout_param { dropout_ratio: 0.7 }', phase=caffe_pb2.TEST)
    x = np.random.default_rng(2).normal(size=(3, 4)).astype(np.float32)
    top, bottom = run(layer, x, top_diff=2 * x)
    np.testing.assert_array_equal(top[0].data, x)
    np.testing.assert_array_equal(bottom[0].diff, 2 * x)


def test_dropout_masks_are_reproducible_from_the_seed():
    def mask(seed):
        layer = layer_from_text('type: "Dropout"', phase=caffe_pb2.TRAIN, seed=seed)
        return run(layer, np.ones((10, 10), np.float32))[0][0].data.copy()
    np.testing.assert_array_equal(mask(11), mask(11))
    assert not np.array_equal(mask(11), mask(12))


# -- numerical gradients -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, kink, scale", [
    ('type: "ReLU" relu_param { negative_slope: 0.1 }', 0.0, 1.0),
    ('type: "PReLU"', 0.0, 1.0),
    ('type: "PReLU" prelu_param { channel_shared: true }', 0.0, 1.0),
    ('type: "ELU" elu_param { alpha: 0.7 }', 0.0, 1.0),
    ('type: "Sigmoid"', None, 2.0),
    ('type: "TanH"', None, 1.0),
    ('type: "AbsVal"', 0.0, 1.0),
    ('type: "Power" power_param { power: 2 scale: 0.5 shift: 1 }', None, 1.0),
    ('type: "Power" power_param { power: 3 scale: 0.7 }', None, 1.0),
    ('type: "Exp" exp_param { base: 3 scale: 0.5 shift: 0.2 }', None, 1.0),
    ('type: "BNLL"', None, 2.0),
    ('type: "Swish" swish_param { beta: 1.5 }', None, 1.0),
    ('type: "Dropout"', None, 1.0),  # TEST phase: identity
])
def test_gradient(text, kink, scale):
    check_gradient(lambda: layer_from_text(text), [(2, 3, 3, 2)], kink=kink, kink_range=0.02, scale=scale)


def test_gradient_of_functions_with_restricted_domains():
    rng = np.random.default_rng(4)
    positive = rng.uniform(0.5, 2.0, size=(2, 3, 4))
    check_gradient(lambda: layer_from_text('type: "Log" log_param { base: 2 scale: 1.5 shift: 0.5 }'), [(2, 3, 4)],
                   bottom_data=[positive])
    check_gradient(lambda: layer_from_text('type: "Power" power_param { power: 0.5 scale: 2 shift: 1 }'), [(2, 3, 4)],
                   bottom_data=[positive])
    away_from_bounds = rng.choice([-2.0, -0.2, 0.1, 0.3, 2.0], size=(2, 3, 4)) + rng.uniform(-0.05, 0.05, (2, 3, 4))
    check_gradient(lambda: layer_from_text('type: "Clip" clip_param { min: -0.5 max: 1 }'), [(2, 3, 4)],
                   bottom_data=[away_from_bounds])


# -- errors --------------------------------------------------------------------------------------------------------

def _error(text, *arrays, phase=caffe_pb2.TEST, backward=False):
    with pytest.raises(CaffeUnstableError) as info:
        run(layer_from_text(text, phase=phase), *arrays, top_diff=np.zeros_like(arrays[0]) if backward else None)
    return info.value.what


def test_parameter_errors():
    x = np.ones((2, 3), np.float32)
    assert _error('type: "PReLU"', np.ones(3, np.float32)) == "Number of axes of bottom blob must be >=2."
    assert _error('type: "Exp" exp_param { base: -2 }', x) == "base must be strictly positive."
    assert _error('type: "Log" log_param { base: 0 }', x) == "base must be strictly positive."
    assert _error('type: "Log" log_param { base: 1 }', x) == "Inf result: 1/log(base) = 1/log(1) = inf"
    assert _error('type: "Clip" clip_param { min: 0 }', x).startswith(
        "Message missing required fields: clip_param.max")
    assert _error('type: "Dropout" dropout_param { dropout_ratio: 1 }', x) == "dropout_ratio must be in [0, 1), got 1"
    assert _error('type: "Threshold"', x, backward=True) == \
        "Threshold Layer cannot backpropagate (Not Implemented Yet)"
    assert _error('type: "ReLU"', x, x) == "ReLU Layer takes 1 bottom blob(s) as input."


def test_prelu_rejects_a_slope_blob_of_the_wrong_size():
    lp = text_format.Parse('name: "p" type: "PReLU"', caffe_pb2.LayerParameter())
    lp.blobs.add().shape.dim.append(2)
    lp.blobs[0].data.extend([0.1, 0.2])
    with pytest.raises(CaffeUnstableError, match="Negative slope size is inconsistent with prototxt config"):
        run(layer_class("PReLU")(lp), np.ones((2, 3, 2), np.float32))
