"""Fashion-MNIST LMDBs for the tests that compare with ../shared/golden/training (Caffe's LeNet run).

The images come from the Debian package dataset-fashion-mnist (`make test` installs it), converted with cu-data's
convert_mnist exactly as Caffe's convert_mnist_data made the LMDBs of the golden run.
"""
import os
import re
from pathlib import Path

import pytest

from caffe_unstable.log import NullLogger

FMNIST = Path(os.environ.get("CU_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
GLOG = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ ((\S+):\d+)\] (.*)$")


def fashion_mnist_dir():
    """The package's folder; skips (fails under CU_REQUIRE_SHARED=1) when it is not installed."""
    if not all((FMNIST / f).is_file() for pair in FILES.values() for f in pair):
        reason = f"{FMNIST}: Fashion-MNIST not installed (apt-get install dataset-fashion-mnist; make test does it)"
        if os.environ.get("CU_REQUIRE_SHARED") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return FMNIST


def build_lmdb(split, out):
    """cu-data mnist of the train or test split into `out`; returns `out` as a str."""
    from caffe_unstable.cli.data import convert_mnist

    images, labels = FILES[split]
    folder = fashion_mnist_dir()
    convert_mnist(folder / images, folder / labels, out, NullLogger())
    return str(out)


def lenet_train_test(shared, train_lmdb, test_lmdb):
    """The golden lenet_train_test.prototxt with its two LMDB sources pointed at ours."""
    text = (shared / "golden/training/lenet_train_test.prototxt").read_text()
    text = text.replace("/tmp/fmnist/fmnist_train_lmdb", str(train_lmdb))
    return text.replace("/tmp/fmnist/fmnist_test_lmdb", str(test_lmdb))


def glog_messages(text, files=("caffe.cpp", "net.cpp")):
    """(file:line, message) of the glog lines printed from `files` (the prefix's time and thread id dropped)."""
    out = []
    for line in text.splitlines():
        m = GLOG.match(line)
        if m and m.group(2) in files:
            out.append((m.group(1), m.group(3)))
    return out
