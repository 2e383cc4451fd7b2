"""Reading Caffe's text and binary protos (util/io.cpp) and UpgradeNetAsNeeded (util/upgrade_proto.cpp).

Errors name the file and, for text, the line: `<file>:<line>: <what>`.
"""
import os

from google.protobuf import text_format
from google.protobuf.message import DecodeError

from ..errors import CaffeUnstableError
from ..proto import caffe_pb2
from . import upgrade

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
MAX_PROTO_BYTES = 2**31 - 1  # Caffe's kProtoReadBytesLimit (INT_MAX)


def is_hdf5(path):
    """HDF5 signature at offset 0 or at 512 * 2^k (H5Fis_hdf5), never judged by the suffix."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            offset = 0
            while offset + 8 <= size:
                f.seek(offset)
                if f.read(8) == HDF5_MAGIC:
                    return True
                offset = 512 if offset == 0 else offset * 2
    except OSError:
        return False
    return False


def _read_bytes(path, what):
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CaffeUnstableError(path, f"no such file ({what})")
    if os.path.isdir(path):
        raise CaffeUnstableError(path, f"is a directory, expected a {what}")
    size = os.path.getsize(path)
    if size > MAX_PROTO_BYTES:
        raise CaffeUnstableError(path, f"is {size} bytes; a protobuf message is limited to 2 GiB - 1 "
                                       "(store a model this large as HDF5 .caffemodel.h5)")
    with open(path, "rb") as f:
        return f.read()


def parse_text(text, message, where):
    """text_format.Parse with Caffe's strictness (duplicates, unknown fields, required fields)."""
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        line = exc.GetLine() if hasattr(exc, "GetLine") else None
        msg = str(exc)
        # protobuf prefixes "<line>:<col> : "; keep only the message since we print the line ourselves
        if line is not None and msg.startswith(f"{line}:"):
            msg = msg.split(" : ", 1)[-1]
        raise CaffeUnstableError(f"{where}:{line}" if line else where, msg) from None
    if not message.IsInitialized():
        missing = ", ".join(message.FindInitializationErrors())
        raise CaffeUnstableError(where, f"missing required field(s): {missing}")
    return message


def read_text_proto(path, message, what):
    data = _read_bytes(path, what)
    if data.startswith(HDF5_MAGIC):
        raise CaffeUnstableError(path, f"is an HDF5 file, expected a text {what}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise CaffeUnstableError(path, f"is not a text {what} (binary content)") from None
    return parse_text(text, message, os.fspath(path))


def read_binary_proto(path, message, what):
    data = _read_bytes(path, what)
    if data.startswith(HDF5_MAGIC):
        raise CaffeUnstableError(path, f"is an HDF5 file, expected a binary {what}")
    try:
        message.ParseFromString(data)
    except DecodeError as exc:
        raise CaffeUnstableError(path, f"cannot parse as a binary {what}: truncated or corrupt ({exc})") from None
    return message


def read_net_text(path, log=None):
    """A NetParameter from a .prototxt, upgraded to the current format."""
    net = read_text_proto(path, caffe_pb2.NetParameter(), "NetParameter prototxt")
    return upgrade.upgrade_net_as_needed(net, os.fspath(path), log)


def read_net_binary(path, log=None):
    """A NetParameter from a binary .caffemodel, upgraded to the current format."""
    net = read_binary_proto(path, caffe_pb2.NetParameter(), "caffemodel (NetParameter)")
    return upgrade.upgrade_net_as_needed(net, os.fspath(path), log)


def read_solver_text(path, log=None):
    solver = read_text_proto(path, caffe_pb2.SolverParameter(), "SolverParameter prototxt")
    return upgrade.upgrade_solver_as_needed(solver, os.fspath(path), log)


def read_blob_proto(path):
    """A BlobProto file such as mean.binaryproto."""
    return read_binary_proto(path, caffe_pb2.BlobProto(), "BlobProto (binaryproto)")


def write_text(message):
    return text_format.MessageToString(message)


def debug_string(message, indent=0):
    """C++ Message::DebugString(): text format with floats as SimpleFtoa (`1`, not `1.0`), as Caffe logs them."""
    from google.protobuf import descriptor
    from google.protobuf.text_encoding import CEscape

    fd = descriptor.FieldDescriptor
    pad = " " * indent
    out = []
    for f, value in message.ListFields():
        repeated = f.is_repeated if hasattr(type(f), "is_repeated") else f.label == fd.LABEL_REPEATED
        values = value if repeated else [value]
        for v in values:
            if f.cpp_type == fd.CPPTYPE_MESSAGE:
                out.append(f"{pad}{f.name} {{\n{debug_string(v, indent + 2)}{pad}}}\n")
                continue
            if f.cpp_type == fd.CPPTYPE_FLOAT:
                text = _simple_ftoa(v)
            elif f.cpp_type == fd.CPPTYPE_DOUBLE:
                text = _shortest("%.15g", "%.17g", v, float)
            elif f.cpp_type == fd.CPPTYPE_ENUM:
                named = f.enum_type.values_by_number.get(v)
                text = named.name if named is not None else str(v)
            elif f.cpp_type == fd.CPPTYPE_BOOL:
                text = "true" if v else "false"
            elif f.cpp_type == fd.CPPTYPE_STRING:
                raw = v if isinstance(v, bytes) else v.encode("utf-8")
                text = '"' + CEscape(raw, as_utf8=f.type == fd.TYPE_STRING) + '"'
            else:
                text = str(v)
            out.append(f"{pad}{f.name}: {text}\n")
    return "".join(out)


def _simple_ftoa(value):
    import numpy as np

    return _shortest("%.6g", "%.9g", value, lambda s: float(np.float32(float(s))))


def _shortest(short, full, value, parse):
    """protobuf's SimpleFtoa/SimpleDtoa: the short form when it reads back to the same value, else the full one."""
    import math

    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    text = short % value
    return text if parse(text) == value else full % value
