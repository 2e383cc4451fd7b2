"""data/convert.py: the records of Caffe's data tools, checked byte for byte against hand-assembled wire format."""
import cv2
import numpy as np
import pytest

from caffe_unstable.data import convert
from caffe_unstable.errors import CaffeUnstableError
from caffe_unstable.proto import caffe_pb2

F32 = np.float32


def varint(n):
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def test_mnist_record_is_caffes_datum_byte_for_byte():
    images = np.arange(2 * 2 * 3, dtype=np.uint8).reshape(2, 2, 3)
    labels = np.array([7, 0], np.uint8)
    records = list(convert.mnist_records(images, labels))
    assert [k for k, _ in records] == [b"00000000", b"00000001"]
    # convert_mnist_data.cpp sets channels, height, width once, then data and label per item; no `encoded` field
    # (field 7) and label 0 is still written because set_label() marks it present.
    expected = [b"\x08\x01\x10\x02\x18\x03\x22\x06" + images[i].tobytes() + b"\x28" + varint(int(labels[i]))
                for i in range(2)]
    assert [v for _, v in records] == expected
    cpp_order = caffe_pb2.Datum()
    cpp_order.channels, cpp_order.height, cpp_order.width = 1, 2, 3
    cpp_order.data, cpp_order.label = images[1].tobytes(), 0
    assert records[1][1] == cpp_order.SerializeToString()


def test_mnist_labels_pass_through_signed_char():
    (_, value), = convert.mnist_records(np.zeros((1, 1, 1), np.uint8), np.array([200], np.uint8))
    assert caffe_pb2.Datum.FromString(value).label == 200 - 256
    assert value.endswith(b"\x28" + varint(-56))          # a negative int32 is a 10-byte varint


def test_mnist_counts_must_agree():
    with pytest.raises(CaffeUnstableError, match=r"\(3 vs. 2\)"):
        list(convert.mnist_records(np.zeros((3, 2, 2), np.uint8), np.zeros(2, np.uint8)))


def test_cifar_records_number_globally_and_keep_rgb_planes():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (2, 3, 32, 32), dtype=np.uint8)
    b = rng.integers(0, 256, (1, 3, 32, 32), dtype=np.uint8)
    records = list(convert.cifar_records([(a, np.array([3, 9], np.uint8)), (b, np.array([1], np.uint8))]))
    assert [k for k, _ in records] == [b"00000", b"00001", b"00002"]
    head = b"\x08\x03\x10\x20\x18\x20"
    # field order of convert_cifar_data.cpp's Datum: channels, height, width, data (3072 bytes), label
    assert records[2][1] == head + b"\x22\x80\x18" + b[0].tobytes() + b"\x28\x01"
    assert records[1][1] == head + b"\x22\x80\x18" + a[1].tobytes() + b"\x28\x09"


def test_image_list_splits_at_the_last_space_with_atoi_labels():
    raw = b"a b.png 3\nno_label\nc.jpg 12abc\nwin.png 4\r\n"
    assert convert.parse_image_list(raw) == [(b"a b.png", 3), (b"no_label", 0), (b"c.jpg", 12), (b"win.png", 4)]
    assert convert.parse_image_list(b"") == []


def test_encoding_guess_and_extension_match():
    assert convert.guess_encoding(b"dir/x.JPEG") == "jpeg"
    assert convert.guess_encoding(b"noext") == "noext"      # C++ substr(npos + 1) keeps the whole name
    assert convert.match_ext(b"x.JPEG", "jpg") and convert.match_ext(b"x.png", "PNG")
    assert not convert.match_ext(b"x.png", "jpg")


@pytest.fixture
def bgr_png(tmp_path):
    image = np.zeros((2, 3, 3), np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 10, 20, 30        # B, G, R
    image[1, 2] = (1, 2, 3)
    path = tmp_path / "im.png"
    cv2.imwrite(str(path), image)
    return path, image


def test_raw_image_datum_is_chw_bgr_with_explicit_encoded_false(bgr_png):
    path, image = bgr_png
    value, size = convert.image_datum(bytes(path), 5)
    chw = image.transpose(2, 0, 1).tobytes()
    # CVMatToDatum: channels, height, width, data, then label; it calls set_encoded(false), so field 7 is present
    assert value == b"\x08\x03\x10\x02\x18\x03\x22\x12" + chw + b"\x28\x05" + b"\x38\x00"
    assert size == 18


def test_gray_and_resized_images(bgr_png):
    path, image = bgr_png
    datum = caffe_pb2.Datum.FromString(convert.image_datum(bytes(path), 1, is_color=False)[0])
    assert (datum.channels, datum.height, datum.width) == (1, 2, 3)
    # OpenCV's gray imread (as Caffe's CV_LOAD_IMAGE_GRAYSCALE), which for PNG is libpng's own conversion
    assert datum.data == cv2.imread(str(path), cv2.IMREAD_GRAYSCALE).tobytes() == bytes([21] * 5 + [2])
    datum = caffe_pb2.Datum.FromString(convert.image_datum(bytes(path), 1, height=4, width=5)[0])
    assert (datum.channels, datum.height, datum.width) == (3, 4, 5)
    expected = cv2.resize(image, (5, 4), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)
    assert datum.data == expected.tobytes()


def test_encoded_datum_keeps_the_file_bytes_when_it_can(bgr_png):
    path, image = bgr_png
    value, _ = convert.image_datum(bytes(path), 2, encoding="png")
    assert value == b"\x22" + varint(path.stat().st_size) + path.read_bytes() + b"\x28\x02\x38\x01"
    # resized: re-encoded with imencode; still encoded, no channels/height/width
    datum = caffe_pb2.Datum.FromString(convert.image_datum(bytes(path), 2, height=4, width=4, encoding="png")[0])
    assert datum.encoded and not datum.HasField("channels") and datum.data != path.read_bytes()
    assert cv2.imdecode(np.frombuffer(datum.data, np.uint8), cv2.IMREAD_UNCHANGED).shape == (4, 4, 3)
    # the extension names another format: re-encoded as asked
    jpg = caffe_pb2.Datum.FromString(convert.image_datum(bytes(path), 2, encoding="jpg")[0])
    assert jpg.data[:2] == b"\xff\xd8"


def test_unreadable_images_are_skipped_but_keep_their_line_number(tmp_path, bgr_png):
    path, _ = bgr_png
    lines = [(b"missing.png", 0), (path.name.encode(), 1)]
    out = list(convert.imageset_records(str(tmp_path) + "/", lines))
    assert [(i, k, v is None) for i, k, v, _ in out] == [(0, b"00000000_missing.png", True),
                                                          (1, b"00000001_im.png", False)]


def test_mean_accumulates_in_float32_record_by_record():
    acc = convert.MeanAccumulator()
    acc.add(np.array([2.0 ** 24, 1], F32), (2, 1, 1))
    for _ in range(2):
        acc.add(np.array([1, 2], np.uint8), (2, 1, 1))
    # 2^24 + 1 rounds back to 2^24 in float32 each time (a float64 sum would give 2^24 + 2)
    assert acc.sum.tolist() == [2.0 ** 24, 5.0]
    mean = acc.mean()
    assert mean.dtype == F32 and mean.shape == (2, 1, 1)
    assert mean.reshape(-1).tolist() == [F32(2.0 ** 24) / F32(3), F32(5) / F32(3)]
    with pytest.raises(CaffeUnstableError, match=r"\(3 vs. 2\) Incorrect data field size 3"):
        acc.add(np.zeros(3, np.uint8), (3, 1, 1))


def test_mean_of_encoded_float_and_raw_datums(bgr_png):
    path, image = bgr_png
    acc = convert.MeanAccumulator()
    convert.add_datum(acc, convert.image_datum(bytes(path), 0, encoding="png")[0])
    convert.add_datum(acc, convert.image_datum(bytes(path), 0)[0])
    floats = caffe_pb2.Datum(channels=3, height=2, width=3, float_data=[1.5] * 18).SerializeToString()
    convert.add_datum(acc, floats)
    expected = (2 * image.transpose(2, 0, 1).astype(F32) + F32(1.5)) / F32(3)
    np.testing.assert_array_equal(acc.mean(), expected)


def test_mean_blob_proto_and_channel_means():
    mean = np.array([[[1, 2], [3, 4]], [[0.5, 0.5], [0.5, 1.5]]], F32)
    blob = convert.mean_blob_proto(mean)
    packed = mean.reshape(-1).tobytes()
    assert blob.SerializeToString() == b"\x08\x01\x10\x02\x18\x02\x20\x02\x2a\x20" + packed
    assert convert.channel_means(mean) == [F32(2.5), F32(0.75)]
