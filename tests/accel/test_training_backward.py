"""The training backward through the accelerator (faults.md §10.2): Caffe's float backward evaluated at the
accelerator's values, the clipped straight-through cut, and backward_weights.

The expected gradients come from the plain float net of the same prototxt, fed the int8 input the accelerator
consumed and the top diff with the cut applied by hand; the cut itself is checked against exact integer sums."""
import numpy as np
import pytest

import caffe_unstable as caffe
from caffe_unstable.accel.quant import LayerFormat, float_to_fixed, fixed_to_float, round_shift
from caffe_unstable.accel.quant_table import QuantTable
from caffe_unstable.accel.geometry import ConvGeometry
from caffe_unstable.accel.reference import conv_sums
from caffe_unstable.errors import CaffeUnstableError

NET = """
name: "tiny"
force_backward: true
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 3 dim: 5 dim: 9 dim: 9 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 6 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.6 }
                            bias_filler { type: "constant" value: 0.2 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "ip1" type: "InnerProduct" bottom: "conv1" top: "ip1"
        inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.05 } } }
"""
# conv1 outputs on a 2^-4 grid saturate at |y| ~ 8: a good share of them does, so the cut has work to do
TABLE = {"conv1": LayerFormat(5, 3, 4), "ip1": LayerFormat(7, 4, 5)}
SETTINGS = {"clean": {}, "clean_mac": {"path": "mac"}, "soft_errors": {"ser": 3e-3, "seed": 5},
            "carry_horizon": {"horizon_k": 12, "seed": 5}}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "tiny.prototxt"
    path.write_text(NET)
    base = caffe.Net(str(path), caffe.TRAIN)
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1.5, base.blobs["data"].data.shape).astype(np.float32)
    params = {name: [b.data.copy() for b in blobs] for name, blobs in base.params.items()}
    return str(path), params, x


def accel_net(model, settings=None, **options):
    path, params, x = model
    settings = dict(settings or {})
    route = settings.pop("path", "auto")
    acc = caffe.accel.open("numba", quant=None, **settings, **options)
    acc.quant = QuantTable(dict(TABLE))
    acc.path = route
    net = caffe.Net(path, caffe.TRAIN, accel=acc)
    load(net, params, x)
    return net, acc


def load(net, params, x):
    for name, values in params.items():
        for blob, v in zip(net.params[name], values):
            blob.data[...] = v
    net.blobs["data"].data[...] = x


def clean_saturation(params, x):
    fmt = TABLE["conv1"]
    xq = float_to_fixed(x, fmt.frac_din)
    wq = float_to_fixed(params["conv1"][0], fmt.frac_w)
    geom = ConvGeometry(N=x.shape[0], C=5, H=9, W=9, O=6, group=1, Kh=3, Kw=3, stride_h=1, stride_w=1, pad_h=1,
                        pad_w=1)
    r1 = round_shift(conv_sums(xq, wq, geom), fmt.n)
    return (r1 >= 128) | (r1 <= -129)


@pytest.mark.parametrize("name", list(SETTINGS))
def test_clean_saturation_mask_is_the_fault_free_one(model, name):
    """Every path reports the same cut: where the exact fault-free r1 leaves [-128, 127]."""
    net, acc = accel_net(model, SETTINGS[name])
    net.forward()
    expected = clean_saturation(model[1], model[2])
    assert 0.1 < expected.mean() < 0.9                     # the case has both kinds of outputs
    state = acc.backward_state["conv1"]
    np.testing.assert_array_equal(state.clean_saturated, expected)
    if name == "carry_horizon":
        assert acc.last_stats["conv1"]["outputs_hit"] > 0    # the faulty outputs differ from the clean ones


def float_gradients(model, top_diff, consumed, weights=None):
    """conv1's param diffs and bottom diff from the float net fed `consumed`, with conv1's top diff given."""
    path, params, _ = model
    net = caffe.Net(path, caffe.TRAIN)
    load(net, params, consumed)
    if weights is not None:
        net.params["conv1"][0].data[...] = weights
    net.forward()
    net.blobs["conv1"].diff[...] = top_diff
    i = net._layer_names.index("conv1")
    net.layers[i].backward(net._tops(i), [True], net._bottoms(i))
    return [b.diff.copy() for b in net.params["conv1"]], net.blobs["data"].diff.copy()


@pytest.mark.parametrize("ste", ["clipped", "plain"])
@pytest.mark.parametrize("backward_weights", ["master", "quantized"])
def test_conv_backward_at_the_accelerators_values(model, ste, backward_weights):
    net, acc = accel_net(model, SETTINGS["soft_errors"], ste=ste, backward_weights=backward_weights)
    net.forward()
    i = net._layer_names.index("conv1")
    rng = np.random.default_rng(9)
    g = rng.normal(0, 1, net.blobs["conv1"].diff.shape).astype(np.float32)
    net.blobs["conv1"].diff[...] = g
    for blob in net.params["conv1"]:
        blob.diff[...] = 0
    net._bottom_need_backward[i] = [True]
    net.backward_from_to(i, i)
    fmt = TABLE["conv1"]
    x = model[2]
    consumed = fixed_to_float(float_to_fixed(x, fmt.frac_din), fmt.frac_din)
    assert not np.array_equal(consumed, x)                 # the data layer's floats are not what conv1 read
    np.testing.assert_array_equal(net.blobs["data"].data, x)   # ... and the blob is left as it was
    cut = g.copy()
    if ste == "clipped":
        cut[clean_saturation(model[1], x)] = 0
    weights = None
    if backward_weights == "quantized":
        weights = fixed_to_float(float_to_fixed(model[1]["conv1"][0], fmt.frac_w), fmt.frac_w)
    (dw, db), dx = float_gradients(model, cut, consumed, weights)
    np.testing.assert_allclose(net.params["conv1"][0].diff, dw, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net.params["conv1"][1].diff, db, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net.blobs["data"].diff, dx, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(net.params["conv1"][0].data, model[1]["conv1"][0])   # master weights kept
    if ste == "plain" or backward_weights == "master":
        return
    # the two options change the result: the cut removes gradient, the int8 weights differ from the master ones
    (dw_plain, _), dx_plain = float_gradients(model, g, consumed)
    assert not np.allclose(dw, dw_plain) and not np.allclose(dx, dx_plain)


def test_chained_layer_reads_its_bottom_blob(model):
    """ip1's input is conv1's read-back q 2^-4 already: nothing is copied for it."""
    net, acc = accel_net(model, SETTINGS["soft_errors"])
    net.forward()
    assert acc.backward_state["ip1"].input is None
    assert acc.backward_state["conv1"].input is not None


def test_bad_training_options():
    with pytest.raises(CaffeUnstableError, match="--ste"):
        caffe.accel.open("numba", ste="rounded")


def memory_profile(tmp_path, text):
    path = tmp_path / "mem.devprofile.yaml"
    path.write_text("format: caffe_unstable.device_profile/1\nsoft_errors:\n  mac_flip_rate: 0\n" + text)
    return str(path)


def test_backward_sees_the_activation_memory_flips(model, tmp_path):
    """§6.2: the flipped input is what the layer computes with and what its backward sees."""
    net, acc = accel_net(model, {"profile": memory_profile(tmp_path, "  act_bit_flip_prob: 0.01\n"), "seed": 3})
    net.forward()
    lp = next(lp for lp in acc.last_plan.layers if lp.layer_name == "conv1")
    assert len(lp.act_events) > 10
    fmt = TABLE["conv1"]
    xq = float_to_fixed(model[2], fmt.frac_din)
    flipped = xq.copy()
    for n, addr, bit in zip(lp.act_events["n"], lp.act_events["addr"], lp.act_events["bit"]):
        c, rest = divmod(int(addr), 9 * 9)             # the image [Cip][H][W]; flips in padded channels vanish
        if c < 5:
            flipped[n, c].reshape(-1)[rest] ^= np.int8(-128) if bit == 7 else np.int8(1 << int(bit))
    np.testing.assert_array_equal(acc.backward_state["conv1"].input, fixed_to_float(flipped, fmt.frac_din))
    # the cut stays the fault-free one: the clean pass reads the unflipped memory
    np.testing.assert_array_equal(acc.backward_state["conv1"].clean_saturated, clean_saturation(model[1], model[2]))


def test_ddr_weight_upsets_last_until_a_train_iteration_uploads_again(model, tmp_path):
    """§6.1 weight_scope ddr: TEST forwards accumulate upsets; each TRAIN iteration re-sends the weights."""
    net, acc = accel_net(model, {"profile": memory_profile(
        tmp_path, "  weight_bit_flip_prob: 0.004\n  weight_scope: ddr\n"), "seed": 3})

    def upsets(key):
        net.fault_key = key
        net.forward()
        lp = next(lp for lp in acc.last_plan.layers if lp.layer_name == "conv1")
        return set(zip(lp.weight_events["addr"].tolist(), lp.weight_events["bit"].tolist()))

    first, second = upsets((1, 0, 0)), upsets((1, 0, 1))
    # cumulative: the second pass lists the first one's upsets too (a bit hit twice is clean again)
    assert len(first) > 30 and len(second) > 1.3 * len(first) and len(first - second) <= 2
    fresh = upsets((0, 5, 0))
    assert len(first & fresh) < 5 and len(fresh) < 1.3 * len(first)   # cleared: only this iteration's upsets
    later = upsets((0, 5, 1))                                # iter_size passes of one iteration share the upload
    assert len(later) > 1.3 * len(fresh) and len(fresh - later) <= 2


def test_a_test_net_keeps_nothing_for_a_backward(model, tmp_path):
    """cu-test's TEST nets pay nothing for the training backward (no mask, no input copy)."""
    path, params, x = model
    plain = tmp_path / "test_phase.prototxt"
    plain.write_text(open(path).read().replace("force_backward: true\n", "") +
                     'layer { name: "loss" type: "Reduction" bottom: "ip1" top: "loss" loss_weight: 1 }\n')
    for phase, kept in ((caffe.TEST, set()), (caffe.TRAIN, {"conv1", "ip1"})):
        acc = caffe.accel.open("numba", ser=3e-3, seed=5)
        acc.quant = QuantTable(dict(TABLE))
        net = caffe.Net(str(plain), phase, accel=acc)
        assert net._layer_need_backward[net._layer_names.index("conv1")]      # the loss needs it in both phases
        load(net, params, x)
        net.forward()
        assert set(acc.backward_state) == kept and acc.last_stats["conv1"]["mac_flips"] > 0
