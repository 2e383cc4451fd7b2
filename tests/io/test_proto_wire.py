"""proto/caffe.proto is wire-compatible with BVLC Caffe's: real Caffe files round-trip byte for byte, parse with no
unknown fields, every .prototxt parses, and defaults, presence, enum values and packed flags match Caffe's."""
import re

import numpy as np
import pytest
from google.protobuf import text_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.unknown_fields import UnknownFieldSet

from caffe_unstable.proto import caffe_pb2

# Binary files written by real Caffe, with the message each holds.
CAFFE_FILES = [
    ("golden/solvers/snapshots/sgd_step_iter_5.caffemodel", "NetParameter"),
    ("golden/solvers/snapshots/sgd_step_iter_5.solverstate", "SolverState"),
    ("models/lenet_mnist_v1format/lenet_iter_10000.caffemodel", "NetParameter"),  # V1 `layers`
    ("models/cifar10_quick/mean.binaryproto", "BlobProto"),
    ("models/lenet_mnist/lenet_iter_10000.caffemodel", "NetParameter"),
    ("golden/solvers/init.caffemodel", "NetParameter"),
    ("models/squeezenet_v1.0_deepcompression/squeezenet_v1.0_deepcompression.caffemodel", "NetParameter"),
]


def unknown_fields(msg, path=""):
    """(path, [field numbers]) for every sub-message holding fields the schema does not know.

    upb has no msg.UnknownFields(); google.protobuf.unknown_fields.UnknownFieldSet reads one message level only, so
    walk the set sub-messages. Needed because unknown fields survive a round trip, so byte equality alone hides them.
    """
    path = path or msg.DESCRIPTOR.name
    found = []
    unknown = UnknownFieldSet(msg)
    if len(unknown):
        found.append((path, [f.field_number for f in unknown]))
    for fd, value in msg.ListFields():
        if fd.message_type is None:
            continue
        for i, sub in enumerate(value if fd.is_repeated else [value]):
            found += unknown_fields(sub, f"{path}.{fd.name}[{i}]")
    return found


@pytest.mark.parametrize("rel, message", CAFFE_FILES, ids=[r for r, _ in CAFFE_FILES])
def test_caffe_file_round_trips_byte_identical(shared, rel, message):
    data = (shared / rel).read_bytes()
    msg = getattr(caffe_pb2, message)()
    msg.ParseFromString(data)
    assert unknown_fields(msg) == []
    out = msg.SerializeToString()
    assert len(out) == len(data)
    assert out == data


def test_unknown_field_walk_finds_nested_unknowns():
    layer = caffe_pb2.LayerParameter(name="x").SerializeToString() + b"\xf8\xf0\x04\x01"  # field 9999, varint 1
    net = caffe_pb2.NetParameter()
    net.ParseFromString(b"\xa2\x06" + bytes([len(layer)]) + layer)  # NetParameter.layer (100), length-delimited
    assert unknown_fields(net) == [("NetParameter.layer[0]", [9999])]


def _prototxts(shared):
    return sorted(p for d in ("models", "golden") for p in (shared / d).rglob("*.prototxt"))


def test_every_shared_prototxt_parses(shared):
    paths = _prototxts(shared)
    assert len(paths) > 50
    failures = []
    for path in paths:
        msg = caffe_pb2.SolverParameter() if "solver" in path.name else caffe_pb2.NetParameter()
        try:
            text_format.Parse(path.read_text(), msg)
        except text_format.ParseError as err:
            failures.append(f"{path}: {err}")
    assert failures == []


def test_presence_and_defaults():
    conv = caffe_pb2.ConvolutionParameter()
    assert not conv.HasField("pad_h")
    assert conv.pad_h == 0
    conv.pad_h = 0
    assert conv.HasField("pad_h")  # proto2: set-to-default is distinguishable from unset

    solver = caffe_pb2.SolverParameter()
    assert solver.type == "SGD"
    assert not solver.HasField("type")
    assert solver.delta == np.float32(1e-8)
    assert solver.momentum2 == np.float32(0.999)
    assert solver.rms_decay == np.float32(0.99)
    assert solver.regularization_type == "L2"
    assert solver.random_seed == -1
    assert solver.snapshot_format == caffe_pb2.SolverParameter.BINARYPROTO == 1
    assert solver.solver_mode == caffe_pb2.SolverParameter.GPU == 1
    assert solver.solver_type == caffe_pb2.SolverParameter.SGD == 0

    assert (caffe_pb2.TRAIN, caffe_pb2.TEST) == (0, 1)
    assert caffe_pb2.NetState().phase == caffe_pb2.TEST
    assert caffe_pb2.V1LayerParameter.CONVOLUTION == 4
    assert caffe_pb2.V1LayerParameter.ABSVAL == 35
    assert caffe_pb2.ParamSpec().lr_mult == 1.0
    assert caffe_pb2.ParamSpec().decay_mult == 1.0
    assert caffe_pb2.PoolingParameter().round_mode == caffe_pb2.PoolingParameter.CEIL
    assert caffe_pb2.FillerParameter().type == "constant"
    assert caffe_pb2.LossParameter().normalization == caffe_pb2.LossParameter.VALID
    assert not caffe_pb2.LossParameter().HasField("normalize")
    assert not caffe_pb2.BatchNormParameter().HasField("use_global_stats")


def test_packed_only_where_caffe_packs():
    assert caffe_pb2.BlobShape(dim=[2, 3]).SerializeToString() == b"\x0a\x02\x02\x03"
    assert caffe_pb2.ConvolutionParameter(pad=[1, 2]).SerializeToString() == b"\x18\x01\x18\x02"
    # Datum.float_data (6, fixed32) unpacked: one tag 0x35 per element.
    assert caffe_pb2.Datum(float_data=[1.0, 2.0]).SerializeToString() == (
        b"\x35" + np.float32(1).tobytes() + b"\x35" + np.float32(2).tobytes())
    # BlobProto.data (5) packed: tag 0x2a, byte length, little-endian float32 payload.
    payload = np.array([1.0, -2.5, 3.0], "<f4").tobytes()
    assert caffe_pb2.BlobProto(data=[1.0, -2.5, 3.0]).SerializeToString() == b"\x2a\x0c" + payload
    assert caffe_pb2.BlobProto(diff=[1.0]).SerializeToString()[:2] == b"\x32\x04"
    assert caffe_pb2.BlobProto(double_data=[1.0]).SerializeToString()[:2] == b"\x42\x08"
    assert caffe_pb2.BlobProto(double_diff=[1.0]).SerializeToString()[:2] == b"\x4a\x08"
    # Readers accept both encodings: an unpacked BlobProto.data parses, a packed Datum.float_data parses.
    assert list(caffe_pb2.BlobProto.FromString(b"\x2d" + np.float32(4).tobytes()).data) == [4.0]
    assert list(caffe_pb2.Datum.FromString(b"\x32\x04" + np.float32(4).tobytes()).float_data) == [4.0]


# ---- the schema against specs/caffe.md, Appendix A ------------------------------------------------------------------

_SCALARS = {
    "int64": FieldDescriptor.TYPE_INT64, "int32": FieldDescriptor.TYPE_INT32, "uint32": FieldDescriptor.TYPE_UINT32,
    "float": FieldDescriptor.TYPE_FLOAT, "double": FieldDescriptor.TYPE_DOUBLE, "bool": FieldDescriptor.TYPE_BOOL,
    "string": FieldDescriptor.TYPE_STRING, "bytes": FieldDescriptor.TYPE_BYTES,
}
_ENUM = re.compile(r"enum (\w+) \{([^}]*)\}")


def _appendix(shared):
    text = (shared / "specs" / "caffe.md").read_text()
    tables = dict(re.findall(r"^\*\*(\w+)\*\*: (.*)$", text[text.index("## Appendix A"):], re.M))
    assert len(tables) > 60
    return tables


def _field_mismatches(md, spec):
    """Differences between one message descriptor and its Appendix A line (fields and nested enums)."""
    bad = []
    enums = {name: {k.strip(): int(v) for k, v in (kv.split("=") for kv in vals.split(","))}
             for name, vals in _ENUM.findall(spec)}
    got_enums = {e.name: {v.name: v.number for v in e.values} for e in md.enum_types}
    if got_enums != enums:
        bad.append(f"enums {got_enums} != {enums}")
    fields = [f.split() for f in _ENUM.sub("", spec).split(";") if f.strip()]
    if sorted(f.name for f in md.fields) != sorted(f[0] for f in fields):
        bad.append(f"field names {sorted(f.name for f in md.fields)}")
    for name, number, *rest in fields:
        fd = md.fields_by_name.get(name)
        if fd is None:
            continue
        label = rest.pop(0) if rest[0] in ("rep", "req") else "opt"
        typ, _, default = rest[0].partition("=")
        got_label = "rep" if fd.is_repeated else "req" if fd.is_required else "opt"
        if typ in _SCALARS:
            type_ok = fd.type == _SCALARS[typ]
        else:
            type_ok = (fd.message_type or fd.enum_type).name == typ
        if (fd.number, got_label, fd.is_repeated and fd.is_packed) != (int(number), label, "packed" in rest):
            bad.append(f"{name}: number/label/packed {fd.number} {got_label} {fd.is_packed}")
        if not type_ok:
            bad.append(f"{name}: type {fd.type} != {typ}")
        if label == "opt" and fd.has_default_value != bool(default):
            bad.append(f"{name}: has_default {fd.has_default_value}")
        if default:
            want, got = default.strip("'\""), fd.default_value
            if fd.type == FieldDescriptor.TYPE_ENUM:
                ok = fd.enum_type.values_by_number[got].name == want
            elif fd.type == FieldDescriptor.TYPE_FLOAT:
                ok = np.float32(want) == np.float32(got)
            elif fd.type == FieldDescriptor.TYPE_BOOL:
                ok = str(got).lower() == want
            elif fd.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
                ok = got == want
            else:
                ok = got == int(want)
            if not ok:
                bad.append(f"{name}: default {got!r} != {default}")
    return bad


def test_schema_matches_appendix_a(shared):
    tables = _appendix(shared)  # message lines only; the top-level Phase line is checked directly below
    assert set(caffe_pb2.DESCRIPTOR.message_types_by_name) == set(tables)
    assert {v.name: v.number for v in caffe_pb2.Phase.DESCRIPTOR.values} == {"TRAIN": 0, "TEST": 1}
    assert list(caffe_pb2.DESCRIPTOR.enum_types_by_name) == ["Phase"]
    mismatches = {name: bad for name, spec in tables.items()
                  if (bad := _field_mismatches(caffe_pb2.DESCRIPTOR.message_types_by_name[name], spec))}
    assert mismatches == {}
