"""Writing weights as Caffe does: Net::ToProto bytes, HDF5 layout, round trips, atomic writes."""
import os

import h5py
import numpy as np

import caffe_unstable as caffe


def test_to_proto_reproduces_caffes_snapshot_bytes(shared, monkeypatch):
    """The TRAIN net with Caffe's iteration-5 weights serializes to exactly the bytes Caffe wrote."""
    monkeypatch.chdir(shared / "golden/solvers")
    snapshot = "snapshots/sgd_step_iter_5.caffemodel"
    net = caffe.Net("tiny_lenet.prototxt", caffe.TRAIN, weights=snapshot)
    assert net.to_proto().SerializeToString() == (shared / "golden/solvers" / snapshot).read_bytes()


def test_save_hdf5_has_caffes_layout(shared, monkeypatch, tmp_path):
    monkeypatch.chdir(shared / "golden/solvers")
    ref = "snapshots/sgd_step_h5_iter_5.caffemodel.h5"
    net = caffe.Net("tiny_lenet.prototxt", caffe.TRAIN, weights=ref)
    out = tmp_path / "x.caffemodel.h5"
    net.save_hdf5(str(out))
    with h5py.File(ref, "r") as a, h5py.File(out, "r") as b:
        names_a, names_b = [], []
        a.visit(names_a.append)
        b.visit(names_b.append)
        assert sorted(names_a) == sorted(names_b)
        for name in names_a:
            if isinstance(a[name], h5py.Dataset):
                assert b[name].dtype == np.float32 and b[name].shape == a[name].shape
                np.testing.assert_array_equal(b[name][()], a[name][()])
    assert os.listdir(tmp_path) == ["x.caffemodel.h5"]   # no temporary file left behind


def test_save_and_reload_binary(shared, tmp_path):
    models = shared / "models/cifar10_quick"
    net = caffe.Net(str(models / "cifar10_quick.prototxt"), str(models / "cifar10_quick_iter_5000.caffemodel.h5"),
                    caffe.TEST)
    out = tmp_path / "out.caffemodel"
    net.save(str(out))
    again = caffe.Net(str(models / "cifar10_quick.prototxt"), str(out), caffe.TEST)
    for name, blobs in net.params.items():
        for a, b in zip(blobs, again.params[name]):
            np.testing.assert_array_equal(a.data, b.data)
    from caffe_unstable.io.prototxt import read_net_binary
    saved = read_net_binary(out)
    assert all(layer.phase == caffe.TEST for layer in saved.layer)
    assert all(len(b.shape.dim) and not b.HasField("num") and len(b.diff) == 0
               for layer in saved.layer for b in layer.blobs)
