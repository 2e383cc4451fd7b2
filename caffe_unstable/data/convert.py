"""What Caffe's data tools compute, without the database: convert_mnist_data, convert_cifar_data, convert_imageset
(util/io.cpp ReadImageToDatum) and compute_image_mean as pure conversions; caffe.md §6.

Records are (key bytes, serialized Datum bytes) exactly as the C++ tools write them: the same keys and the same
Datum fields set, which protobuf serializes in field-number order in both languages.
"""
import os

import numpy as np

from ..errors import CaffeUnstableError
from ..proto import caffe_pb2
from .sources import atoi

F32 = np.float32


def format_int(n, width):
    """caffe::format_int (util/format.hpp): decimal, zero-padded to `width`, as ASCII bytes."""
    return b"%0*d" % (width, n)


# -- convert_mnist_data, convert_cifar_data ------------------------------------------------------------------------

def mnist_records(images, labels, where=""):
    """convert_mnist_data: images (n, rows, cols) uint8 and labels (n,) uint8 -> (key '%08d', Datum) records.

    Datum = channels 1, height rows, width cols, data (raw bytes), label; labels pass through C's signed char.
    """
    if len(images) != len(labels):
        raise CaffeUnstableError(where, f"Check failed: num_items == num_labels ({len(images)} vs. {len(labels)}): "
                                        "the image and label files hold different numbers of items")
    _, rows, cols = images.shape
    datum = caffe_pb2.Datum(channels=1, height=rows, width=cols)
    signed = labels.view(np.int8)
    for i in range(len(images)):
        datum.data = images[i].tobytes()
        datum.label = int(signed[i])
        yield format_int(i, 8), datum.SerializeToString()


def cifar_records(batches):
    """convert_cifar_data: [(images (n, 3, 32, 32) RGB uint8, labels (n,) uint8), ...] -> (key '%05d', Datum)
    records numbered globally across the batches; Datum = channels 3, height 32, width 32, data, label."""
    datum = caffe_pb2.Datum(channels=3, height=32, width=32)
    index = 0
    for images, labels in batches:
        signed = labels.view(np.int8)
        for i in range(len(images)):
            datum.label = int(signed[i])
            datum.data = images[i].tobytes()
            yield format_int(index, 5), datum.SerializeToString()
            index += 1


# -- convert_imageset ----------------------------------------------------------------------------------------------

def parse_image_list(raw):
    """The list file's bytes -> [(path bytes, label)]: std::getline lines, each split at its LAST space, the label
    read with atoi (a line without a space is both the path and the label text)."""
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()              # getline yields no line after the final newline
    out = []
    for line in lines:
        pos = line.rfind(b" ")
        label_text = line if pos < 0 else line[pos + 1:]
        out.append((line if pos < 0 else line[:pos], atoi(label_text.decode("latin-1"))))
    return out


def guess_encoding(path):
    """convert_imageset's guess for --encoded without --encode_type: the extension after the last '.', lower case
    (the whole name when there is no '.', as C++'s substr(npos + 1) gives)."""
    name = os.fsdecode(path)
    return name[name.rfind(".") + 1:].lower()


def match_ext(filename, encoding):
    """util/io.cpp matchExt: does the file's extension name this encoding (jpeg counts as jpg)?"""
    name = os.fsdecode(filename)
    p = name.rfind(".")
    ext = (name[p + 1:] if p >= 0 else name).lower()
    enc = encoding.lower()
    return ext == enc or (enc == "jpg" and ext == "jpeg")


def read_image(filename, height=0, width=0, is_color=True):
    """ReadImageToCVMat: OpenCV imread as BGR (or gray), cv::resize (bilinear) to width x height only when both are
    > 0. HxWxC or HxW uint8, or None when OpenCV cannot read it."""
    import cv2

    image = cv2.imread(os.fsdecode(filename), cv2.IMREAD_COLOR if is_color else cv2.IMREAD_GRAYSCALE)
    if image is None:
        return None
    if height > 0 and width > 0:
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    return image


def image_to_chw(image):
    """OpenCV's HWC (or HW) uint8 -> C x H x W, as CVMatToDatum copies it."""
    return image[None] if image.ndim == 2 else np.ascontiguousarray(image.transpose(2, 0, 1))


def image_datum(filename, label, height=0, width=0, is_color=True, encoding=""):
    """ReadImageToDatum (util/io.cpp:120-140): serialized Datum bytes and the image's C*H*W, or None when OpenCV
    cannot read the file.

    Raw: channels, height, width, data (CHW uint8), label, encoded: false (CVMatToDatum sets it explicitly).
    Encoded: the file's own bytes when the image needs no resize, its channel count agrees with is_color and the
    extension names the encoding; otherwise the image re-encoded with imencode('.' + encoding); then label and
    encoded: true, and no channels/height/width.
    """
    import cv2

    image = read_image(filename, height, width, is_color)
    if image is None:
        return None
    chw = image_to_chw(image)
    size = chw.size
    if encoding:
        channels = 1 if image.ndim == 2 else image.shape[2]
        if (channels == 3) == is_color and not height and not width and match_ext(filename, encoding):
            try:
                with open(filename, "rb") as f:
                    data = f.read()
            except OSError:
                return None      # ReadFileToDatum failed: the line is skipped
        else:
            try:
                ok, buf = cv2.imencode("." + encoding, image)
            except cv2.error:
                ok = False
            if not ok:
                raise CaffeUnstableError(os.fsdecode(filename), f"OpenCV cannot encode an image as '.{encoding}' "
                                                                "(give --encode-type jpg or png)")
            data = buf.tobytes()
        return caffe_pb2.Datum(data=data, label=label, encoded=True).SerializeToString(), size
    datum = caffe_pb2.Datum(channels=chw.shape[0], height=chw.shape[1], width=chw.shape[2], data=chw.tobytes(),
                            label=label, encoded=False)
    return datum.SerializeToString(), size


def imageset_records(root, lines, height=0, width=0, is_color=True, encoded=False, encode_type=""):
    """convert_imageset's loop: for every (path, label) line, (line_id, key '%08d_<path>', Datum bytes or None when
    the image is unreadable, C*H*W of the image read). Unreadable lines keep their number (the key counts lines)."""
    root = os.fsencode(root)
    for line_id, (path, label) in enumerate(lines):
        enc = encode_type
        if encoded and not enc:
            enc = guess_encoding(path)
        result = image_datum(root + path, label, height, width, is_color, enc)
        key = format_int(line_id, 8) + b"_" + path
        yield (line_id, key) + (result if result is not None else (None, 0))


# -- compute_image_mean --------------------------------------------------------------------------------------------

def datum_values(value, where=""):
    """A serialized Datum's (flat values, (C, H, W)) for the mean: uint8 `data`, float32 `float_data`, or the decoded
    image (DecodeDatumNative: imdecode with the file's own channel count) when encoded."""
    import cv2

    datum = caffe_pb2.Datum.FromString(value)
    if datum.encoded:
        image = cv2.imdecode(np.frombuffer(datum.data, np.uint8), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise CaffeUnstableError(where, "Could not decode datum")
        chw = image_to_chw(image)
        return chw.reshape(-1), chw.shape
    shape = (datum.channels, datum.height, datum.width)
    if len(datum.data):
        return np.frombuffer(datum.data, np.uint8).reshape(-1), shape
    return np.asarray(datum.float_data, F32), shape


class MeanAccumulator:
    """compute_image_mean's float32 running sum: every Datum's values added in record order, as Caffe adds them to
    the BlobProto's float data one record at a time (sums above 2^24 round exactly as Caffe's do)."""

    def __init__(self):
        self.sum = None
        self.shape = None
        self.count = 0

    def add(self, values, shape, where=""):
        values = values.reshape(-1)
        if self.sum is None:
            self.shape = tuple(int(d) for d in shape)
            self.sum = np.zeros(int(np.prod(self.shape)), F32)
        if values.size != self.sum.size:
            raise CaffeUnstableError(where, f"Check failed: size_in_datum == data_size ({values.size} vs. "
                                            f"{self.sum.size}) Incorrect data field size {values.size}: every "
                                            "record must have the size of the first")
        np.add(self.sum, values, out=self.sum, casting="unsafe")
        self.count += 1

    def mean(self):
        """The mean image (C, H, W) float32: sum / count in float32."""
        return (self.sum / F32(self.count)).astype(F32).reshape(self.shape)


def add_datum(acc, value, where=""):
    """Add one serialized Datum (raw, float or encoded) to a MeanAccumulator."""
    values, shape = datum_values(value, where)
    acc.add(values, shape, where)


def mean_blob_proto(mean):
    """The mean.binaryproto message: BlobProto num 1, channels, height, width (legacy dims) + float data (§1.9)."""
    c, h, w = mean.shape
    blob = caffe_pb2.BlobProto(num=1, channels=c, height=h, width=w)
    blob.data.extend(mean.reshape(-1).tolist())
    return blob


def channel_means(mean):
    """The `mean_value channel [c]` numbers: each channel's float32 sequential sum over its pixels / H*W."""
    c = mean.shape[0]
    flat = mean.reshape(c, -1)
    return [F32(np.cumsum(flat[i], dtype=F32)[-1]) / F32(flat.shape[1]) for i in range(c)]
