"""pycaffe-style scripts, unchanged but for `import caffe_unstable as caffe`: net surgery, NetSpec nets trained by
hand, Python layers inside a Net."""
import gzip
import sys

import numpy as np
import pytest

import caffe_unstable as caffe
from caffe_unstable import layers as L, params as P

# pycaffe's examples/pycaffe/layers/pyloss.py, as users write it.
PYLOSS = """
import caffe_unstable as caffe
import numpy as np


class EuclideanLossLayer(caffe.Layer):
    def setup(self, bottom, top):
        if len(bottom) != 2:
            raise Exception("Need two inputs to compute distance.")

    def reshape(self, bottom, top):
        if bottom[0].count != bottom[1].count:
            raise Exception("Inputs must have the same dimension.")
        self.diff = np.zeros_like(bottom[0].data, dtype=np.float32)
        top[0].reshape(1)

    def forward(self, bottom, top):
        self.diff[...] = bottom[0].data - bottom[1].data
        top[0].data[...] = np.sum(self.diff**2) / bottom[0].num / 2.

    def backward(self, top, propagate_down, bottom):
        for i in range(2):
            if not propagate_down[i]:
                continue
            if i == 0:
                sign = 1
            else:
                sign = -1
            bottom[i].diff[...] = sign * self.diff / bottom[i].num


class WeightedProduct(caffe.Layer):
    '''top = w * k * a * b; k from param_str, w a learnable blob made in setup.'''

    def setup(self, bottom, top):
        self.k = float(self.param_str)
        self.blobs.add_blob(1)
        self.blobs[0].data[...] = 2.0

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.blobs[0].data[0] * self.k * bottom[0].data * bottom[1].data

    def backward(self, top, propagate_down, bottom):
        c = self.blobs[0].data[0] * self.k
        if propagate_down[0]:
            bottom[0].diff[...] = c * bottom[1].data * top[0].diff
        if propagate_down[1]:
            bottom[1].diff[...] = c * bottom[0].data * top[0].diff
        self.blobs[0].diff[0] += self.k * np.sum(bottom[0].data * bottom[1].data * top[0].diff)


class PhaseLayer(caffe.Layer):
    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape(())

    def forward(self, bottom, top):
        top[0].data[()] = self.phase

    def backward(self, top, propagate_down, bottom):
        pass


class ExceptionLayer(caffe.Layer):
    def setup(self, bottom, top):
        raise RuntimeError("setup refused")
"""


@pytest.fixture
def pylayers(tmp_path, monkeypatch):
    (tmp_path / "pyloss_s.py").write_text(PYLOSS)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("pyloss_s", None)


def write(tmp_path, name, proto):
    path = tmp_path / name
    path.write_text(str(proto))
    return str(path)


def mnist_test(shared, n):
    """The first n t10k digits scaled as lenet_train_test.prototxt does (1/256), and their labels."""
    with gzip.open(shared / "data/mnist/t10k-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(16 + n * 784), np.uint8, offset=16).reshape(n, 1, 28, 28)
    with gzip.open(shared / "data/mnist/t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(8 + n), np.uint8, offset=8)
    return images * np.float32(0.00390625), labels


# -- (a) net surgery on the trained LeNet ------------------------------------------------------------
def test_net_surgery_edit_save_reload(shared, tmp_path):
    model = str(shared / "models/lenet_mnist/lenet.prototxt")
    weights = str(shared / "models/lenet_mnist/lenet_iter_10000.caffemodel")
    net = caffe.Net(model, weights, caffe.TEST)
    assert list(net.params) == ["conv1", "conv2", "ip1", "ip2"]
    assert [b.data.shape for b in net.params["conv1"]] == [(20, 1, 5, 5), (20,)]
    images, labels = mnist_test(shared, 64)
    before = net.forward(data=images)["prob"].copy()
    assert (before.argmax(1) == labels).sum() >= 62  # the trained LeNet: ~99% on t10k

    original = {name: [b.data.copy() for b in blobs] for name, blobs in net.params.items()}
    net.params["conv1"][0].data[...] *= -1          # flip every conv1 filter
    net.params["conv1"][0].data[3, 0, 2, 2] = 0.75
    net.params["ip2"][1].data[7] += 5.0             # favour class 7
    out = str(tmp_path / "surgery.caffemodel")
    net.save(out)

    reloaded = caffe.Net(model, caffe.TEST, weights=out)
    expected_w = -original["conv1"][0]
    expected_w[3, 0, 2, 2] = 0.75
    np.testing.assert_array_equal(reloaded.params["conv1"][0].data, expected_w)
    expected_b = original["ip2"][1].copy()
    expected_b[7] += np.float32(5.0)
    np.testing.assert_array_equal(reloaded.params["ip2"][1].data, expected_b)
    for name in ("conv2", "ip1"):
        for got, want in zip(reloaded.params[name], original[name]):
            np.testing.assert_array_equal(got.data, want)
    np.testing.assert_array_equal(reloaded.params["conv1"][1].data, original["conv1"][1])
    np.testing.assert_array_equal(reloaded.params["ip2"][0].data, original["ip2"][0])
    after = reloaded.forward(data=images)["prob"]
    np.testing.assert_allclose(after, net.forward(data=images)["prob"], rtol=1e-6, atol=1e-7)
    assert not np.allclose(after, before, atol=1e-3)


def test_net_surgery_fully_convolutional_transplant(shared, tmp_path):
    """examples/net_surgery.ipynb: cast the inner products as convolutions, copy their params with `.flat`."""
    model = str(shared / "models/lenet_mnist/lenet.prototxt")
    weights = str(shared / "models/lenet_mnist/lenet_iter_10000.caffemodel")
    net = caffe.Net(model, weights, caffe.TEST)

    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[2, 1, 28, 28]))
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20)
    n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.conv2 = L.Convolution(n.pool1, kernel_size=5, num_output=50)
    n.pool2 = L.Pooling(n.conv2, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n["ip1-conv"] = L.Convolution(n.pool2, kernel_size=4, num_output=500)
    n.relu1 = L.ReLU(n["ip1-conv"], in_place=True)
    n["ip2-conv"] = L.Convolution(n.relu1, kernel_size=1, num_output=10)
    n.prob = L.Softmax(n["ip2-conv"])
    full_conv = caffe.Net(write(tmp_path, "lenet_full_conv.prototxt", n.to_proto()), weights, caffe.TEST)
    # conv1/conv2 come from the caffemodel by name; ip1/ip2 are ignored and transplanted by hand
    np.testing.assert_array_equal(full_conv.params["conv2"][0].data, net.params["conv2"][0].data)
    for pr, pr_conv in (("ip1", "ip1-conv"), ("ip2", "ip2-conv")):
        full_conv.params[pr_conv][0].data.flat = net.params[pr][0].data.flat
        full_conv.params[pr_conv][1].data[...] = net.params[pr][1].data
    images, _ = mnist_test(shared, 2)
    probs = net.forward(data=np.concatenate([images] * 32))["prob"][:2]
    conv_probs = full_conv.forward(data=images)["prob"]
    assert conv_probs.shape == (2, 10, 1, 1)
    np.testing.assert_allclose(conv_probs[:, :, 0, 0], probs, rtol=1e-4, atol=1e-6)


# -- (b) a NetSpec LeNet, forward and backward with a finite-difference check ---------------------------
def lenet_input(batch_size):
    n = caffe.NetSpec()
    n.data, n.label = L.Input(shape=[dict(dim=[batch_size, 1, 28, 28]), dict(dim=[batch_size])], ntop=2)
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=4, weight_filler=dict(type='xavier'))
    n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.conv2 = L.Convolution(n.pool1, kernel_size=5, num_output=6, weight_filler=dict(type='xavier'),
                            bias_filler=dict(type='constant', value=0.1))
    n.pool2 = L.Pooling(n.conv2, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.fc1 = L.InnerProduct(n.pool2, num_output=20, weight_filler=dict(type='xavier'))
    n.relu1 = L.ReLU(n.fc1, in_place=True)
    n.score = L.InnerProduct(n.relu1, num_output=10, weight_filler=dict(type='xavier'))
    n.loss = L.SoftmaxWithLoss(n.score, n.label)
    proto = n.to_proto()
    proto.force_backward = True
    return proto


def loss_at(net, data, label):
    return float(net.forward(data=data, label=label)["loss"])


def test_netspec_lenet_forward_backward_gradient(tmp_path):
    caffe.set_random_seed(5)
    net = caffe.Net(write(tmp_path, "lenet.prototxt", lenet_input(2)), caffe.TRAIN)
    assert list(net.blobs) == ["data", "label", "conv1", "pool1", "conv2", "pool2", "fc1", "score", "loss"]
    assert net.inputs == ["data", "label"] and net.outputs == ["loss"]
    rng = np.random.default_rng(0)
    data = rng.uniform(0, 1, (2, 1, 28, 28)).astype(np.float32)
    label = np.array([3, 8], np.float32)

    loss = loss_at(net, data, label)
    assert 0.5 < loss < 10
    net.clear_param_diffs()
    diffs = net.backward()
    assert set(diffs) == {"data", "label"}

    # the loss is float32: central differences with a step that keeps max-pool and ReLU switches fixed
    eps = 2e-3
    for layer in ("conv1", "conv2", "fc1", "score"):
        w, grad = net.params[layer][0].data, net.params[layer][0].diff
        index = np.unravel_index(np.argmax(np.abs(grad)), grad.shape)  # the weight that matters most
        analytic = float(grad[index])
        assert abs(analytic) > 1e-2
        w0 = w[index]
        w[index] = w0 + eps
        plus = loss_at(net, data, label)
        w[index] = w0 - eps
        minus = loss_at(net, data, label)
        w[index] = w0
        numeric = (plus - minus) / (2 * eps)
        assert analytic == pytest.approx(numeric, rel=1e-2, abs=1e-4), (layer, index, analytic, numeric)
    bias = net.params["score"][1]
    analytic = float(bias.diff[8])
    loss_at(net, data, label)
    score = net.blobs["score"].data.astype(np.float64)
    prob = np.exp(score - score.max(1, keepdims=True))
    prob /= prob.sum(1, keepdims=True)
    assert analytic == pytest.approx(np.mean(prob[:, 8] - (label == 8)), rel=1e-4)  # (softmax - onehot) / batch
    bias.data[8] += eps
    plus = loss_at(net, data, label)
    bias.data[8] -= 2 * eps
    minus = loss_at(net, data, label)
    assert analytic == pytest.approx((plus - minus) / (2 * eps), rel=1e-2, abs=1e-4)
    # force_backward: the data gradient too, for one pixel under conv1's receptive fields
    loss_at(net, data, label)
    net.backward()
    analytic = float(net.blobs["data"].diff[1, 0, 14, 14])
    d = data.copy()
    d[1, 0, 14, 14] += eps
    plus = loss_at(net, d, label)
    d[1, 0, 14, 14] -= 2 * eps
    minus = loss_at(net, d, label)
    assert analytic == pytest.approx((plus - minus) / (2 * eps), rel=2e-2, abs=2e-4)


def test_netspec_lenet_sgd_by_hand_lowers_loss(tmp_path):
    """The tutorial's manual loop: forward, backward, data -= lr * diff."""
    caffe.set_random_seed(1)
    net = caffe.Net(write(tmp_path, "lenet.prototxt", lenet_input(4)), caffe.TRAIN)
    rng = np.random.default_rng(1)
    data = rng.uniform(0, 1, (4, 1, 28, 28)).astype(np.float32)
    label = np.array([0, 1, 2, 3], np.float32)
    first = loss_at(net, data, label)
    for _ in range(15):
        net.clear_param_diffs()
        net.forward(data=data, label=label)
        net.backward()
        for blobs in net.params.values():
            for b in blobs:
                b.data[...] -= 0.1 * b.diff
    assert loss_at(net, data, label) < 0.5 * first


# -- (c) Python layers inside a Net -------------------------------------------------------------------
EUCLIDEAN_NET = """
force_backward: true
layer {{ name: "x" type: "Input" top: "x" input_param {{ shape {{ dim: 3 dim: 2 dim: 4 }} }} }}
layer {{ name: "y" type: "Input" top: "y" input_param {{ shape {{ dim: 3 dim: 2 dim: 4 }} }} }}
layer {{ name: "loss" bottom: "x" bottom: "y" top: "loss" {body} }}
"""


def test_python_euclidean_loss_matches_native(pylayers):
    py_net = caffe.Net(write(pylayers, "py.prototxt", EUCLIDEAN_NET.format(
        body='type: "Python" python_param { module: "pyloss_s" layer: "EuclideanLossLayer" } loss_weight: 1')),
        caffe.TRAIN)
    native = caffe.Net(write(pylayers, "native.prototxt", EUCLIDEAN_NET.format(body='type: "EuclideanLoss"')),
                       caffe.TRAIN)
    assert py_net.blob_loss_weights["loss"] == 1.0 and native.blob_loss_weights["loss"] == 1.0
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 2, 4)).astype(np.float32)
    y = rng.normal(size=(3, 2, 4)).astype(np.float32)
    py_loss = py_net.forward(x=x, y=y)["loss"]
    native_loss = native.forward(x=x, y=y)["loss"]
    assert float(np.squeeze(py_loss)) == pytest.approx(float(native_loss), rel=1e-6)
    assert float(native_loss) == pytest.approx(np.sum((x.astype(np.float64) - y) ** 2) / 6, rel=1e-6)
    py_diffs = py_net.backward()
    native_diffs = native.backward()
    for name in ("x", "y"):
        np.testing.assert_allclose(py_diffs[name], native_diffs[name], rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(py_diffs["x"], (x - y) / 3, rtol=1e-5)


PRODUCT_NET = """
layer { name: "a" type: "Input" top: "a" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "b" type: "Input" top: "b" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "ip" type: "InnerProduct" bottom: "a" top: "ip"
        inner_product_param { num_output: 3 weight_filler { type: "constant" value: 0.5 } } }
layer { name: "prod" type: "Python" bottom: "ip" bottom: "b" top: "prod" propagate_down: true propagate_down: false
        python_param { module: "pyloss_s" layer: "WeightedProduct" param_str: "1.5" } loss_weight: 2 }
"""


def test_python_layer_param_str_propagate_down_and_blobs(pylayers):
    path = write(pylayers, "prod.prototxt", PRODUCT_NET)
    net = caffe.Net(path, caffe.TRAIN)
    assert list(net.params) == ["ip", "prod"] and net.params["prod"][0].data.tolist() == [2.0]
    assert net.layer_dict["prod"].type == "Python"
    a = np.arange(6, dtype=np.float32).reshape(2, 3) / 10
    b = np.array([[1, -1, 2], [0.5, 3, -2]], np.float32)
    out = net.forward(a=a, b=b)
    ip = np.full((2, 3), 0.5 * a.sum(1, keepdims=True), np.float32)
    np.testing.assert_allclose(out["prod"], 2.0 * 1.5 * ip * b, rtol=1e-6)
    net.clear_param_diffs()
    net.blobs["b"].diff[...] = 9.0
    net.backward()
    # loss weight 2 sits in prod's diff; ip gets 2 * 3 * b, b (propagate_down false) is left alone
    np.testing.assert_allclose(net.blobs["ip"].diff, 2 * 3.0 * b, rtol=1e-6)
    np.testing.assert_array_equal(net.blobs["b"].diff, 9.0)
    assert float(net.params["prod"][0].diff[0]) == pytest.approx(2 * 1.5 * float(np.sum(ip * b)), rel=1e-5)
    np.testing.assert_allclose(net.params["ip"][0].diff, (2 * 3.0 * b).T @ a, rtol=1e-5)
    # the Python layer's blob is saved and restored like any param
    net.params["prod"][0].data[0] = -4.0
    saved = str(pylayers / "prod.caffemodel")
    net.save(saved)
    again = caffe.Net(path, saved, caffe.TEST)
    assert again.params["prod"][0].data.tolist() == [-4.0]


PHASE_NET = """
layer { name: "phase" type: "Python" top: "phase" python_param { module: "pyloss_s" layer: "PhaseLayer" } }
"""


def test_python_layer_phase_and_exceptions(pylayers):
    path = write(pylayers, "phase.prototxt", PHASE_NET)
    assert float(caffe.Net(path, caffe.TRAIN).forward()["phase"]) == caffe.TRAIN
    assert float(caffe.Net(path, caffe.TEST).forward()["phase"]) == caffe.TEST
    bad = write(pylayers, "bad.prototxt", PHASE_NET.replace("PhaseLayer", "ExceptionLayer"))
    with pytest.raises(RuntimeError, match="setup refused"):
        caffe.Net(bad, caffe.TEST)
    missing = write(pylayers, "missing.prototxt", PHASE_NET.replace("PhaseLayer", "NoSuchLayer"))
    with pytest.raises(caffe.errors.CaffeUnstableError, match="layer 'phase': .* has no attribute 'NoSuchLayer'"):
        caffe.Net(missing, caffe.TEST)


def test_netspec_python_layer_in_net(pylayers):
    n = caffe.NetSpec()
    n.x, n.y = L.Input(shape=[dict(dim=[2, 5]), dict(dim=[2, 5])], ntop=2)
    n.loss = L.Python(n.x, n.y, module="pyloss_s", layer="EuclideanLossLayer", loss_weight=1)
    proto = n.to_proto()
    proto.force_backward = True  # a Python layer is no LossLayer: force_backward reaches both bottoms
    net = caffe.Net(write(pylayers, "spec.prototxt", proto), caffe.TEST)
    x = np.ones((2, 5), np.float32)
    y = np.zeros((2, 5), np.float32)
    assert float(np.squeeze(net.forward(x=x, y=y)["loss"])) == pytest.approx(10 / 2 / 2)
    diffs = net.backward()
    np.testing.assert_allclose(diffs["x"], np.full((2, 5), 0.5), rtol=1e-6)
    np.testing.assert_allclose(diffs["y"], np.full((2, 5), -0.5), rtol=1e-6)
