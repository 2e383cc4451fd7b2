"""Every model in ../shared/models loads and reproduces its float accuracy on the real test data, to the image
(../shared/models/README.md: OpenCV float peer)."""
import cv2
import numpy as np
import pytest

import caffe_unstable as caffe
from caffe_unstable.data.datasets import read_cifar_bin, read_idx
from caffe_unstable.io.blobproto import blobproto_to_array
from caffe_unstable.io.prototxt import read_blob_proto, read_net_text


def classify(net, images, batch, top_k=1):
    """Predictions (n, top_k), best first, of the net's last output over float32 NCHW `images`."""
    name = net.inputs[0]
    out = net.outputs[-1]
    preds = []
    for i in range(0, len(images), batch):
        x = images[i:i + batch]
        net.blobs[name].reshape(*x.shape)
        net.reshape()
        net.blobs[name].data[...] = x
        scores = net.forward()[out].reshape(len(x), -1)
        preds.append(np.argsort(-scores, axis=1, kind="stable")[:, :top_k])
    return np.concatenate(preds)


@pytest.fixture(scope="module")
def mnist(shared):
    images = read_idx(shared / "data/mnist/t10k-images-idx3-ubyte.gz")
    labels = read_idx(shared / "data/mnist/t10k-labels-idx1-ubyte.gz")
    return (images.astype(np.float32) * np.float32(0.00390625))[:, None], labels


@pytest.fixture(scope="module")
def cifar(shared):
    images, labels = read_cifar_bin(shared / "data/cifar10/test_batch.bin.xz")
    mean = blobproto_to_array(read_blob_proto(shared / "models/cifar10_quick/mean.binaryproto"))[0]
    return images.astype(np.float32) - mean, labels


@pytest.mark.parametrize("folder,weights,correct", [
    ("lenet_mnist", "lenet_iter_10000.caffemodel", 9911),            # new format, binary
    ("lenet_mnist_v1format", "lenet_iter_10000.caffemodel", 9905),   # V1 prototxt (input_dim) and V1 caffemodel
])
def test_lenet_mnist(shared, mnist, folder, weights, correct):
    images, labels = mnist
    net = caffe.Net(str(shared / "models" / folder / "lenet.prototxt"), str(shared / "models" / folder / weights),
                    caffe.TEST)
    preds = classify(net, images, 1000)[:, 0]
    assert int((preds == labels).sum()) == correct


@pytest.mark.parametrize("prototxt,weights,correct", [
    ("cifar10_quick/cifar10_quick.prototxt", "cifar10_quick/cifar10_quick_iter_4000.caffemodel", 7212),
    ("cifar10_quick/cifar10_quick.prototxt", "cifar10_quick/cifar10_quick_iter_5000.caffemodel.h5", 7543),
    ("cifar10_full/cifar10_full.prototxt", "cifar10_full/cifar10_full_iter_70000.caffemodel.h5", 8151),
])
def test_cifar10(shared, cifar, prototxt, weights, correct):
    images, labels = cifar
    net = caffe.Net(str(shared / "models" / prototxt), caffe.TEST, weights=str(shared / "models" / weights))
    preds = classify(net, images, 500)[:, 0]
    assert int((preds == labels).sum()) == correct


def test_squeezenet_imagenet_sample(shared):
    """1,000 images, 227 centre crop (offset 14) of the 256x256 JPEGs, BGR - [104, 117, 123]."""
    root = shared / "data/imagenet_sample"
    lines = (root / "sample_val.txt").read_text().split("\n")
    entries = [ln.rsplit(" ", 1) for ln in lines if ln.strip()]
    mean = np.array([104, 117, 123], np.float32)
    images = np.empty((len(entries), 3, 227, 227), np.float32)
    for i, (name, _) in enumerate(entries):
        img = cv2.imread(str(root / "images" / name), cv2.IMREAD_COLOR)
        images[i] = (img[14:241, 14:241].astype(np.float32) - mean).transpose(2, 0, 1)
    labels = np.array([int(label) for _, label in entries])
    folder = shared / "models/squeezenet_v1.0_deepcompression"
    net = caffe.Net(str(folder / "SqueezeNet_deploy.prototxt"),
                    str(folder / "squeezenet_v1.0_deepcompression.caffemodel"), caffe.TEST)
    preds = classify(net, images, 50, top_k=5)
    assert int((preds[:, 0] == labels).sum()) == 647
    assert int((preds == labels[:, None]).any(axis=1).sum()) == 857


@pytest.mark.parametrize("prototxt", [
    "bvlc_alexnet/deploy.prototxt",
    "bvlc_reference_caffenet/deploy.prototxt",
    "vgg16/VGG_ILSVRC_16_layers_deploy.prototxt",
    "vgg19/VGG_ILSVRC_19_layers_deploy.prototxt",
])
def test_imagenet_prototxts_run_forward_backward(shared, prototxt):
    """No weights are available for these: build with filler weights, batch 1, forward and backward."""
    param = read_net_text(shared / "models" / prototxt)
    param.force_backward = True     # deploy nets have no loss: ask for every gradient, as pycaffe users do
    net = caffe.Net(param, caffe.TEST, rng=0)
    rng = np.random.default_rng(0)
    for blobs in net.params.values():   # deploy nets carry no fillers (all zero): He-scaled gaussians instead
        w = blobs[0]
        w.data[...] = rng.normal(0, np.sqrt(2.0 / (w.count // w.shape[0])), w.shape)
    name = net.inputs[0]
    shape = (1,) + net.blobs[name].shape[1:]
    net.blobs[name].reshape(*shape)
    net.reshape()
    net.blobs[name].data[...] = rng.normal(0, 50, shape)
    out = net.outputs[0]
    probs = net.forward()[out]
    if net.layers[-1].type == "Softmax":     # BVLC deploys end in "prob"; the VGG copies stop at pool5
        assert probs.shape == (1, 1000)
        np.testing.assert_allclose(probs.sum(), 1.0, rtol=1e-5)
    else:
        assert probs.shape == (1, 512, 7, 7)
    grads = net.backward(**{out: rng.normal(0, 1, probs.shape).astype(np.float32)})
    assert grads[name].shape == shape and np.isfinite(grads[name]).all() and np.abs(grads[name]).sum() > 0
    first = next(iter(net.params))
    assert np.abs(net.params[first][0].diff).sum() > 0
