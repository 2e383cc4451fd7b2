"""The real models on the accelerator with the cu-quantize'd tables in models/quant (pipecnn.md §10): every conv,
FC and max pool runs on it, the fast path equals the MAC-order path on every layer, and the fixed-point accuracy
tracks float on subsets of the real test sets (the full-set numbers are in docs/quantize.md)."""
from pathlib import Path

import cv2
import numpy as np

import caffe_unstable as caffe
from caffe_unstable.data.datasets import read_cifar_bin, read_idx
from caffe_unstable.io.blobproto import blobproto_to_array
from caffe_unstable.io.prototxt import read_blob_proto
from caffe_unstable.net import accel_bridge

TABLES = Path(__file__).resolve().parents[2] / "models/quant"


def top1(net, images, labels, batch):
    name, correct = net.inputs[0], 0
    out = net.outputs[-1]
    for i in range(0, len(images), batch):
        x = images[i:i + batch]
        net.blobs[name].reshape(*x.shape)
        net.blobs[name].data[...] = x
        scores = net.forward()[out].reshape(len(x), -1)
        true = scores[np.arange(len(x)), labels[i:i + batch]]
        correct += int(((scores >= true[:, None]).sum(axis=1) == 1).sum())     # Caffe's Accuracy: ties lose
    return correct


def check_runs_and_paths(net, x):
    where = accel_bridge.where_layers_run(net)
    for layer in net.layers:
        if layer.type in ("Convolution", "InnerProduct") or (
                layer.type == "Pooling" and layer.param.pooling_param.pool == 0):
            assert where[layer.name] == "accelerator", layer.name
    name = net.inputs[0]
    net.blobs[name].reshape(*x.shape)
    out = {}
    for path in ("fast", "mac"):
        net.accel.path = path
        net.blobs[name].data[...] = x
        net.forward()
        out[path] = {k: b.data.copy() for k, b in net.blobs.items()}
    net.accel.path = "auto"
    for k in out["fast"]:
        assert int((out["fast"][k] != out["mac"][k]).sum()) == 0, k
    for blob, f in accel_bridge.blob_fracs(net).items():
        q = out["fast"][blob].astype(np.float64) * 2.0 ** f
        assert np.array_equal(q, np.round(q)) and q.min() >= -128 and q.max() <= 127, blob


def test_lenet(shared):
    images = read_idx(shared / "data/mnist/t10k-images-idx3-ubyte.gz")[:2000]
    labels = read_idx(shared / "data/mnist/t10k-labels-idx1-ubyte.gz")[:2000]
    images = (images.astype(np.float32) * np.float32(0.00390625))[:, None]
    folder = shared / "models/lenet_mnist"
    model, weights = str(folder / "lenet.prototxt"), str(folder / "lenet_iter_10000.caffemodel")
    acc = caffe.accel.open("numba", quant=str(TABLES / "lenet.quant.yaml"))
    net = caffe.Net(model, weights, caffe.TEST, accel=acc)
    check_runs_and_paths(net, images[:8])
    fixed = top1(net, images, labels, 500)
    floating = top1(caffe.Net(model, weights, caffe.TEST), images, labels, 500)
    assert fixed >= floating - 4, (fixed, floating)        # full t10k: 99.13 % against 99.11 %


def test_cifar10_quick(shared):
    images, labels = read_cifar_bin(shared / "data/cifar10/test_batch.bin.xz")
    mean = blobproto_to_array(read_blob_proto(shared / "models/cifar10_quick/mean.binaryproto"))[0]
    images, labels = images[:1000].astype(np.float32) - mean, labels[:1000]
    model = str(shared / "models/cifar10_quick/cifar10_quick.prototxt")
    weights = str(shared / "models/cifar10_quick/cifar10_quick_iter_5000.caffemodel.h5")
    acc = caffe.accel.open("numba", quant=str(TABLES / "cifar10_quick.quant.yaml"))
    net = caffe.Net(model, caffe.TEST, weights=weights, accel=acc)
    check_runs_and_paths(net, images[:4])
    fixed = top1(net, images, labels, 250)
    floating = top1(caffe.Net(model, caffe.TEST, weights=weights), images, labels, 250)
    assert abs(fixed - floating) <= 15, (fixed, floating)        # within 1.5 points on the first 1,000


def test_squeezenet(shared):
    root = shared / "data/imagenet_sample"
    entries = [ln.rsplit(" ", 1) for ln in (root / "sample_val.txt").read_text().split("\n") if ln.strip()][::20]
    mean = np.array([104, 117, 123], np.float32)
    images = np.stack([(cv2.imread(str(root / "images" / n), cv2.IMREAD_COLOR)[14:241, 14:241].astype(np.float32)
                        - mean).transpose(2, 0, 1) for n, _ in entries])
    labels = np.array([int(label) for _, label in entries])
    folder = shared / "models/squeezenet_v1.0_deepcompression"
    model = str(folder / "SqueezeNet_deploy.prototxt")
    weights = str(folder / "squeezenet_v1.0_deepcompression.caffemodel")
    acc = caffe.accel.open("numba", quant=str(TABLES / "squeezenet.quant.yaml"))
    net = caffe.Net(model, weights, caffe.TEST, accel=acc)
    check_runs_and_paths(net, images[:1])
    assert accel_bridge.blob_fracs(net)["fire2/concat"] == acc.quant["fire2/conv1x1_2"].frac_dout
    fixed = top1(net, images, labels, 25)
    floating = top1(caffe.Net(model, weights, caffe.TEST), images, labels, 25)
    assert fixed >= floating - 4, (fixed, floating)             # 50 images: within 4 images of float
