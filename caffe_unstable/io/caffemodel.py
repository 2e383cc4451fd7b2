"""Weights files: binary .caffemodel (util/io.cpp) and HDF5 .caffemodel.h5 (Net::ToHDF5), told apart by content.

Reading yields `SourceLayer`s (name, blob arrays, legacy shapes) in file order for Net.copy_from to match by name;
writing emits Caffe's current format. Large blobs are encoded as packed bytes directly (caffe.md §1.1).
"""
import os
from dataclasses import dataclass, field

import numpy as np

from ..errors import CaffeUnstableError
from ..proto import caffe_pb2
from .atomic import atomic_path
from .prototxt import is_hdf5, read_net_binary


@dataclass
class SourceBlob:
    array: np.ndarray                     # float32, in the file's shape
    legacy: bool = False                  # shape came from num/channels/height/width
    diff: np.ndarray = None


@dataclass
class SourceLayer:
    name: str
    blobs: list = field(default_factory=list)   # SourceBlob, or None for a dataset absent from an HDF5 group
    hdf5: bool = False


def blob_array(proto):
    """(array, legacy) of a BlobProto; double_data wins over data when non-empty (Blob::FromProto)."""
    legacy = any(proto.HasField(f) for f in ("num", "channels", "height", "width"))
    shape = (proto.num, proto.channels, proto.height, proto.width) if legacy else tuple(proto.shape.dim)
    values = proto.double_data if len(proto.double_data) else proto.data
    arr = np.asarray(values, np.float32)
    count = int(np.prod(shape, dtype=np.int64))
    if arr.size != count:
        raise ValueError(f"blob holds {arr.size} values for shape {' '.join(map(str, shape))} ({count})")
    diff = None
    diffs = proto.double_diff if len(proto.double_diff) else proto.diff
    if len(diffs) == count:
        diff = np.asarray(diffs, np.float32).reshape(shape)
    return arr.reshape(shape), legacy, diff


def read_weights(path, log=None):
    """The layers of a weights file, binary or HDF5 (chosen by magic bytes, as H5Fis_hdf5)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CaffeUnstableError(path, "no such weights file")
    if is_hdf5(path):
        return read_hdf5_weights(path)
    net = read_net_binary(path, log)
    layers = []
    for lp in net.layer:
        blobs = []
        for j, bp in enumerate(lp.blobs):
            try:
                arr, legacy, diff = blob_array(bp)
            except ValueError as exc:
                raise CaffeUnstableError(path, f"layer '{lp.name}' param {j}: {exc}") from None
            blobs.append(SourceBlob(arr, legacy, diff))
        layers.append(SourceLayer(lp.name, blobs))
    return layers


def read_hdf5_weights(path):
    import h5py

    path = os.fspath(path)
    if not is_hdf5(path):
        raise CaffeUnstableError(path, "is not an HDF5 file (expected a .caffemodel.h5 written by Caffe)")
    try:
        with h5py.File(path, "r") as f:
            if "data" not in f:
                raise CaffeUnstableError(path, "HDF5 weights file has no /data group")
            layers = []
            data = f["data"]
            # Caffe walks the groups in HDF5 link order (creation order when tracked, else name order)
            for name in data:
                group = data[name]
                n = len(group)
                blobs = []
                for j in range(n):
                    ds = group.get(str(j))
                    blobs.append(None if ds is None else SourceBlob(np.asarray(ds, np.float32)))
                layers.append(SourceLayer(name, blobs, hdf5=True))
            return layers
    except OSError as exc:
        raise CaffeUnstableError(path, f"cannot read HDF5 weights: {exc}") from None


# ------------------------------------------------------------------------------------------ writing
def _varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def blob_proto_bytes(data, diff=None):
    """Serialized BlobProto {data: packed float (5), diff (6), shape (7)} in field-number order."""
    data = np.ascontiguousarray(data, "<f4")
    out = bytearray()
    payload = data.tobytes()
    if payload:
        out += b"\x2a" + _varint(len(payload)) + payload
    if diff is not None:
        d = np.ascontiguousarray(diff, "<f4").tobytes()
        if d:
            out += b"\x32" + _varint(len(d)) + d
    dims = b"".join(_varint(int(x)) for x in data.shape)
    shape = (b"\x0a" + _varint(len(dims)) + dims) if data.shape else b""
    out += b"\x3a" + _varint(len(shape)) + shape
    return bytes(out)


def to_blob_proto(data, diff=None):
    proto = caffe_pb2.BlobProto()
    proto.MergeFromString(blob_proto_bytes(data, diff))
    return proto


def write_binary_proto(path, message):
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(message.SerializeToString())


def write_hdf5_weights(path, layers, write_diff=False):
    """Caffe's Net::ToHDF5: /data/<layer>/<i> for owned params, a group for every layer; /diff on request.

    `layers` is a list of (name, [(index, data, diff, owned)]).
    """
    import h5py

    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            data = f.create_group("data")
            diff = f.create_group("diff") if write_diff else None
            for name, blobs in layers:
                g = data.create_group(name) if name not in data else data[name]
                gd = None
                if diff is not None:
                    gd = diff.create_group(name) if name not in diff else diff[name]
                for index, arr, darr, owned in blobs:
                    if owned:
                        g.create_dataset(str(index), data=np.asarray(arr, np.float32))
                    if gd is not None:
                        gd.create_dataset(str(index), data=np.asarray(darr, np.float32))


def shape_string(shape):
    count = int(np.prod(shape, dtype=np.int64)) if len(shape) else 1
    return " ".join(str(int(d)) for d in shape) + (" " if len(shape) else "") + f"({count})"


