"""net/accel_bridge.py on the golden nets (LeNet, cifar10_quick, AlexNet-shaped): where every layer runs, the blob
contract (data == q 2^-F), fast path == MAC-order path on every layer, host state for backward, and the one-line
errors for bad tables (pipecnn.md §10.3-§10.5)."""
import io

import h5py
import numpy as np
import pytest

import caffe_unstable as caffe
from caffe_unstable.accel.quant_table import QuantTable
from caffe_unstable.convert import quantize
from caffe_unstable.errors import CaffeUnstableError
from caffe_unstable.log import GlogLogger
from caffe_unstable.net import accel_bridge

NETS = {"lenet": ("lenet.prototxt", "lenet_fmnist_iter_500.caffemodel", "lenet_test.h5"),
        "cifar10_quick": ("cifar10_quick.prototxt", "cifar10_quick.caffemodel", "cifar10_quick_test.h5"),
        "alexnet_small": ("alexnet_small.prototxt", "alexnet_small.caffemodel", "alexnet_small_test.h5")}


class Golden:
    def __init__(self, shared, name):
        folder = shared / "golden/nets" / name
        proto, weights, h5 = NETS[name]
        self.model, self.weights = str(folder / proto), str(folder / weights)
        with h5py.File(folder / h5, "r") as f:
            self.inputs = {k: f["inputs"][k][()] for k in f["inputs"]}

    def net(self, accel=None, log=None):
        net = caffe.Net(self.model, self.weights, caffe.TEST, accel=accel, log=log)
        for k, v in self.inputs.items():
            net.blobs[k].data[...] = v
        return net

    def table(self):
        fnet = self.net()
        probe = self.net(accel=caffe.accel.open("numba"))
        score, label = quantize.score_and_label(fnet)
        calib = quantize.Calibration([self.inputs], self.inputs[label].reshape(-1).astype(np.int64), score,
                                     quantize.first_compute_layer(fnet))
        return quantize.start_table(fnet, probe, calib)


@pytest.fixture(scope="module", params=sorted(NETS))
def golden(request, shared):
    g = Golden(shared, request.param)
    g.name = request.param
    g.quant = g.table()
    return g


def blobs_of(net):
    return {name: blob.data.copy() for name, blob in net.blobs.items()}


def test_every_conv_and_max_pool_runs_on_the_accelerator(golden):
    log = io.StringIO()
    net = golden.net(caffe.accel.open("numba", quant=golden.quant), GlogLogger(stream=log, min_level=0))
    net.forward()
    where = accel_bridge.where_layers_run(net)
    for layer in net.layers:
        if layer.type in ("Convolution", "InnerProduct") or (
                layer.type == "Pooling" and layer.param.pooling_param.pool == 0):
            assert where[layer.name] == "accelerator", layer.name
        if layer.type in ("Softmax", "SoftmaxWithLoss", "Accuracy", "Dropout", "Input"):
            assert where[layer.name] == "host"
    text = log.getvalue()
    for layer in net.layers:
        if where[layer.name] == "host" and layer.type != "Split":
            assert text.count(f"layer '{layer.name}' ({layer.type}) runs on the host in float:") == 1
    if golden.name == "alexnet_small":      # alpha 0.001: not the table's LRN (pipecnn.md §10.3)
        assert where["norm1"] == "host" and "PipeCNN's table implements only local_size 5, alpha 0.0001" in text
    net.forward()
    assert text.count("runs on the host in float") == log.getvalue().count("runs on the host in float")


def test_blobs_hold_exactly_q_times_2_to_minus_f(golden):
    net = golden.net(caffe.accel.open("numba", quant=golden.quant))
    net.forward()
    fracs = accel_bridge.blob_fracs(net)
    assert fracs
    for name, f in fracs.items():
        q = net.blobs[name].data.astype(np.float64) * 2.0 ** f
        assert np.array_equal(q, np.round(q)) and q.min() >= -128 and q.max() <= 127, name
        assert q.any(), name


def test_fast_path_equals_mac_order_path_on_every_layer(golden):
    acc = caffe.accel.open("numba", quant=golden.quant)
    net = golden.net(acc)
    net.forward()
    fast = blobs_of(net)
    assert {s["path"] for s in acc.last_stats.values()} == {"fast"}
    acc.path = "mac"
    net = golden.net(acc)
    net.forward()
    assert {s["path"] for s in acc.last_stats.values()} == {"mac"}
    mac = blobs_of(net)
    for name in fast:
        assert int((fast[name] != mac[name]).sum()) == 0, name


def test_fixed_point_tracks_float_and_backward_runs(golden):
    fnet = golden.net()
    fnet.forward()
    acc = caffe.accel.open("numba", quant=golden.quant)
    net = golden.net(acc)
    net.forward()
    last = [n for n in net.blobs if n in accel_bridge.blob_fracs(net)][-1]
    a, b = net.blobs[last].data, fnet.blobs[last].data
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.9, last
    net.backward()            # host state (argmax, LRN scale) was recomputed from the read-back values
    for name, blobs in net.params.items():
        assert np.isfinite(blobs[0].diff).all(), name


def lenet(shared, quant, **hw):
    g = Golden(shared, "lenet")
    return g.net(caffe.accel.open("numba", quant=quant, **hw))


GOOD = {"conv1": (7, 7, 4), "conv2": (8, 4, 3), "ip1": (9, 3, 3), "ip2": (8, 3, 2)}


def table_text(rows, net="LeNet"):
    body = "\n".join(f"  {k}: {{frac_w: {v[0]}, frac_din: {v[1]}, frac_dout: {v[2]}}}" for k, v in rows.items())
    return f"format: caffe_unstable.quant/1\nnet: {net}\nlayers:\n{body}\n"


def forward_error(shared, tmp_path, rows, net="LeNet"):
    path = tmp_path / "t.quant.yaml"
    path.write_text(table_text(rows, net))
    with pytest.raises(CaffeUnstableError) as info:
        lenet(shared, str(path)).forward()
    return str(info.value)


def test_good_table_runs(shared, tmp_path):
    path = tmp_path / "t.quant.yaml"
    path.write_text(table_text(GOOD))
    net = lenet(shared, str(path))
    net.forward()
    assert accel_bridge.plan(net).relu_fused == {net._layer_names.index("ip1")}


def test_table_missing_a_layer(shared, tmp_path):
    rows = {k: v for k, v in GOOD.items() if k != "conv2"}
    msg = forward_error(shared, tmp_path, rows)
    assert msg.endswith("t.quant.yaml: layer 'conv2' (Convolution) has no entry: every accelerated "
                        "Convolution/InnerProduct needs {frac_w, frac_din, frac_dout}")


def test_table_with_n_below_1(shared, tmp_path):
    path = tmp_path / "t.quant.yaml"
    path.write_text(table_text(dict(GOOD, conv2=(8, 4, 12))))
    with pytest.raises(CaffeUnstableError, match=r"t.quant.yaml:5: layer 'conv2': n = frac_w \+ frac_din - "
                                                 r"frac_dout = 8 \+ 4 - 12 = 0, the kernel needs 1 <= n <= 32"):
        QuantTable.load(path)


def test_table_with_m_below_1_for_a_biased_layer(shared, tmp_path):
    msg = forward_error(shared, tmp_path, dict(GOOD, ip1=(3, 3, 3), ip2=(8, 3, 2)))
    assert msg.endswith("t.quant.yaml:6: layer 'ip1': m = frac_w - frac_dout = 3 - 3 = 0, the kernel needs "
                        "1 <= m <= 32 for a layer with a bias (it shifts the bias right by m - 1)")


def test_table_for_another_net(shared, tmp_path):
    rows = {"conv1_1": (7, 0, -2), "conv1_2": (8, -2, -5)}
    msg = forward_error(shared, tmp_path, rows, net="VGG_ILSVRC_16_layers")
    assert msg.endswith("t.quant.yaml: this table is for another net 'VGG_ILSVRC_16_layers': no entry names an "
                        "accelerated layer of net 'LeNet' (expected conv1, conv2, ip1, ip2)")


def test_table_with_an_extra_layer(shared, tmp_path):
    msg = forward_error(shared, tmp_path, dict(GOOD, fc9=(8, 2, 2)))
    assert msg.endswith("t.quant.yaml:8: layer 'fc9': names no accelerated Convolution/InnerProduct layer of "
                        "net 'LeNet'")


def test_table_breaking_the_frac_din_chain(shared, tmp_path):
    msg = forward_error(shared, tmp_path, dict(GOOD, conv2=(8, 5, 3)))
    assert msg.endswith("t.quant.yaml:5: layer 'conv2': frac_din = 5, but its input 'pool1' holds values with "
                        "F = 4 (the producing layer's frac_dout through ReLU and pooling, 0 after LRN); "
                        "set frac_din: 4")


def test_layer_the_accelerator_cannot_take(shared, tmp_path):
    """A dilated conv cannot run on PipeCNN: on the host (logged), and a table entry for it is an error."""
    from caffe_unstable.io.prototxt import read_net_text

    param = read_net_text(Golden(shared, "lenet").model)
    for layer in param.layer:
        if layer.name == "conv2":
            layer.convolution_param.dilation.append(2)
            layer.convolution_param.pad.append(2)
    path = tmp_path / "t.quant.yaml"
    path.write_text(table_text(GOOD))
    net = caffe.Net(param, caffe.TEST, accel=caffe.accel.open("numba", quant=str(path)))
    with pytest.raises(CaffeUnstableError) as info:
        net.forward()
    assert str(info.value).endswith("t.quant.yaml:5: layer 'conv2' (Convolution) cannot run on the accelerator: "
                                    "dilation [2, 2] (PipeCNN has none); remove its entry from the table")
    log = io.StringIO()
    rows = {k: v for k, v in GOOD.items() if k != "conv2"}
    rows["ip1"] = (9, 0, 3)
    path.write_text(table_text(rows))
    net = caffe.Net(param, caffe.TEST, accel=caffe.accel.open("numba", quant=str(path)),
                    log=GlogLogger(stream=log, min_level=0))
    net.forward()
    assert "layer 'conv2' (Convolution) runs on the host in float: dilation [2, 2] (PipeCNN has none)" \
        in log.getvalue()


def test_open_errors(shared):
    with pytest.raises(CaffeUnstableError, match="needs a quantization table"):
        lenet(shared, None).forward()
    with pytest.raises(CaffeUnstableError, match="unknown hardware parameter 'vec'"):
        caffe.accel.open("numba", vec=8)
    with pytest.raises(CaffeUnstableError, match=r"unknown accelerator backend 'fpga' \(known: float, numba\)"):
        caffe.accel.open("fpga")
    with pytest.raises(CaffeUnstableError, match="fault injection needs the simulated accelerator"):
        caffe.accel.open("float", ser=1e-5)
    assert caffe.accel.open("float") is None


def test_hardware_parameters_do_not_change_clean_outputs(shared):
    outs = []
    for hw in ({}, {"vec_size": 8, "lane_num": 5, "pipe_depth": 3}, {"vec_size": 16, "lane_num": 1}):
        net = lenet(shared, GOOD, **hw)
        net.accel.path = "mac"
        net.forward()
        outs.append(blobs_of(net))
    for other in outs[1:]:
        for name in outs[0]:
            assert np.array_equal(outs[0][name], other[name]), name


def test_weights_are_requantised_after_an_update(shared):
    net = lenet(shared, GOOD)
    net.forward()
    before = net.blobs["ip2"].data.copy()
    net.params["ip2"][0].data[...] *= -1
    net.forward()
    assert not np.array_equal(before, net.blobs["ip2"].data)
    net.params["ip2"][0].data[...] *= -1
    net.forward()
    assert np.array_equal(before, net.blobs["ip2"].data)


def test_fixed_events_reach_the_mac_order_loop(shared):
    """acc.fixed_events: MAC-register fault records per layer, replayed on every forward (the fast path with the
    exact faults.md §4.4 corrections under "auto", the register loop under "mac"); the faulty output equals the
    reference register loop either way."""
    from caffe_unstable.accel import reference
    from caffe_unstable.accel.geometry import mac_events

    net = lenet(shared, GOOD)
    net.forward()
    clean = net.blobs["conv2"].data.copy()
    x = net.blobs["pool1"].data.copy()
    acc = net.accel
    acc.fixed_events["conv2"] = mac_events([(0, 3, 1, 2, 40, "accumulator", 30), (1, 7, 0, 0, 5, "product", 12),
                                            (2, 0, 7, 7, 0, "final", 31)])
    net.forward()
    assert (acc.last_stats["conv2"]["path"], acc.last_stats["conv2"]["mac_flips"]) == ("fast", 3)
    assert (acc.last_stats["conv1"]["path"], acc.last_stats["conv1"]["mac_flips"]) == ("fast", 0)
    faulty = net.blobs["conv2"].data.copy()
    acc.path = "mac"
    net.forward()
    assert acc.last_stats["conv2"]["path"] == "mac" and np.array_equal(net.blobs["conv2"].data, faulty)
    acc.path = "auto"
    assert acc.last_stats["conv2"]["outputs_changed"] == int((faulty != clean).sum())
    changed = np.argwhere(faulty != clean)
    assert {tuple(c) for c in changed} <= {(0, 3, 1, 2), (1, 7, 0, 0), (2, 0, 7, 7)} and len(changed) >= 2
    layer = net.layer_dict["conv2"]
    geom = accel_bridge.conv_geometry(layer, x.shape, acc.hw)
    fmt = acc.quant["conv2"]
    from caffe_unstable.accel.quant import float_to_fixed

    xq = float_to_fixed(x[:3], fmt.frac_din)
    wq = float_to_fixed(layer.blobs[0].data, fmt.frac_w)
    bq = float_to_fixed(layer.blobs[1].data, fmt.frac_w)
    small = type(geom)(**{**geom.__dict__, "N": 3})
    ev = acc.fixed_events["conv2"]
    want = reference.conv_mac_reference(xq, wq, bq, small, fmt, False, ev)
    assert np.array_equal(faulty[:3] * 2.0 ** fmt.frac_dout, want)
    del acc.fixed_events["conv2"]
    net.forward()
    assert np.array_equal(net.blobs["conv2"].data, clean)
