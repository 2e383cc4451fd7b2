"""make demo: classify all 10,000 MNIST t10k images with Caffe's LeNet (../shared/models/lenet_mnist) through the
pycaffe API of caffe_unstable, and print the accuracy (BVLC Caffe's model; the float peer is 99.11 %)."""
import os
import sys
import time
from pathlib import Path

import numpy as np

import caffe_unstable as caffe
from caffe_unstable.cli import run
from caffe_unstable.data.datasets import read_idx

SHARED = Path(os.environ.get("CU_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def main():
    models, data = SHARED / "models/lenet_mnist", SHARED / "data/mnist"
    if not models.is_dir():
        print(f"error: {models}: shared models not found (set CU_SHARED to the shared folder)", file=sys.stderr)
        raise SystemExit(1)
    images = read_idx(data / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(data / "t10k-labels-idx1-ubyte.gz")
    net = caffe.Net(str(models / "lenet.prototxt"), str(models / "lenet_iter_10000.caffemodel"), caffe.TEST)
    batch = net.blobs["data"].shape[0]
    t0 = time.perf_counter()
    correct = 0
    for i in range(0, len(images), batch):
        x = images[i:i + batch].astype(np.float32)[:, None] * np.float32(0.00390625)   # the Data layer's scale
        net.blobs["data"].reshape(*x.shape)
        net.blobs["data"].data[...] = x
        prob = net.forward()["prob"]
        correct += int((prob.argmax(axis=1) == labels[i:i + batch]).sum())
    seconds = time.perf_counter() - t0
    print(f"LeNet (BVLC, lenet_iter_10000) on MNIST t10k: {correct}/{len(images)} correct, "
          f"accuracy = {correct / len(images):.4f}  ({len(images) / seconds:.0f} images/s)")


if __name__ == "__main__":
    run(main)
