"""Caffe's solver state files (sgd_solver.cpp:257-370): binary `.solverstate` and HDF5 `.solverstate.h5`.

Binary (caffe.md §1.8): a SolverState message {iter, learned_net, history (BlobProto with shape + packed data),
current_step}, serialized in field-number order exactly as C++ protobuf writes it.
HDF5 (caffe.md §1.7): `iter` and `current_step` int32 datasets of shape (1,), `learned_net` a scalar
fixed-length NUL-terminated string (H5LTmake_dataset_string), group `history` with datasets "0".."K-1".
Every write goes through io/atomic.py.
"""
import os
from dataclasses import dataclass, field

import numpy as np

from ..errors import CaffeUnstableError
from ..proto import caffe_pb2
from .atomic import atomic_path
from .caffemodel import blob_array, blob_proto_bytes
from .prototxt import is_hdf5, read_binary_proto


@dataclass
class SolverStateData:
    iter: int
    learned_net: str                     # "" when the file has none
    current_step: int
    history: list = field(default_factory=list)   # float32 arrays, in the file's shapes
    hdf5: bool = False


# ----------------------------------------------------------------------------------------------- write
def state_bytes(iteration, learned_net, current_step, history):
    """The serialized SolverState, byte for byte what Caffe's WriteProtoToBinaryFile produces."""
    state = caffe_pb2.SolverState()
    state.iter = int(iteration)
    state.learned_net = learned_net
    for h in history:
        state.history.add().MergeFromString(blob_proto_bytes(h))
    state.current_step = int(current_step)   # always written, also when 0 (set_current_step)
    return state.SerializeToString()


def write_binary_state(path, iteration, learned_net, current_step, history):
    payload = state_bytes(iteration, learned_net, current_step, history)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(payload)


def write_hdf5_state(path, iteration, learned_net, current_step, history):
    import h5py

    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("iter", data=np.array([iteration], np.int32))
            _make_dataset_string(f, "learned_net", learned_net)
            f.create_dataset("current_step", data=np.array([current_step], np.int32))
            group = f.create_group("history")
            for i, h in enumerate(history):
                group.create_dataset(str(i), data=np.asarray(h, np.float32))


def _make_dataset_string(f, name, text):
    """H5LTmake_dataset_string: a scalar dataset of a fixed-length C string type of size len+1, NUL-terminated."""
    import h5py

    raw = text.encode("utf-8") + b"\0"
    tid = h5py.h5t.C_S1.copy()
    tid.set_size(len(raw))
    tid.set_strpad(h5py.h5t.STR_NULLTERM)
    space = h5py.h5s.create(h5py.h5s.SCALAR)
    dset = h5py.h5d.create(f.id, name.encode(), tid, space)
    dset.write(h5py.h5s.ALL, h5py.h5s.ALL, np.array(raw, dtype=f"S{len(raw)}"), mtype=tid)


# ------------------------------------------------------------------------------------------------ read
def read_state(path):
    """A SolverStateData from a binary or HDF5 solver state (told apart by content, not by the name)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CaffeUnstableError(path, "no such solver state file")
    return _read_hdf5(path) if is_hdf5(path) else _read_binary(path)


def _read_binary(path):
    state = read_binary_proto(path, caffe_pb2.SolverState(), "solver state (SolverState)")
    history = []
    for i, bp in enumerate(state.history):
        try:
            history.append(blob_array(bp)[0])
        except ValueError as exc:
            raise CaffeUnstableError(path, f"history blob {i}: {exc}") from None
    return SolverStateData(state.iter, state.learned_net, state.current_step, history)


def _read_hdf5(path):
    import h5py

    try:
        with h5py.File(path, "r") as f:
            for name in ("iter", "current_step", "history"):
                if name not in f:
                    raise CaffeUnstableError(path, f"HDF5 solver state has no '{name}'")
            iteration = int(np.asarray(f["iter"]).reshape(-1)[0])
            current_step = int(np.asarray(f["current_step"]).reshape(-1)[0])
            learned_net = ""
            if "learned_net" in f:
                raw = f["learned_net"][()]
                raw = raw.tobytes() if isinstance(raw, np.ndarray) else raw
                learned_net = (raw.split(b"\0", 1)[0] if isinstance(raw, bytes) else str(raw).encode()).decode()
            group = f["history"]
            history = []
            for i in range(len(group)):
                if str(i) not in group:
                    raise CaffeUnstableError(path, f"HDF5 solver state has no history/{i} "
                                                   f"(history holds {len(group)} entries)")
                history.append(np.asarray(group[str(i)], np.float32))
    except OSError as exc:
        raise CaffeUnstableError(path, f"cannot read HDF5 solver state: {exc}") from None
    return SolverStateData(iteration, learned_net, current_step, history, hdf5=True)
