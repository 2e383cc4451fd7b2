"""Caffe's DataTransformer (data_transformer.cpp; caffe.md §3.9): crop/mean/scale/mirror order, exact values."""
import cv2
import numpy as np
import pytest
from google.protobuf import text_format

from caffe_unstable.data.transform import DataTransformer, transform_batch
from caffe_unstable.errors import CaffeUnstableError
from caffe_unstable.proto import caffe_pb2

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


def make(text="", phase=TEST, seed=0):
    param = text_format.Parse(text, caffe_pb2.TransformationParameter())
    return DataTransformer(param, phase, np.random.default_rng(seed), "layer 'data'")


def write_mean(path, mean, legacy=True):
    blob = caffe_pb2.BlobProto()
    if legacy:
        blob.num, (blob.channels, blob.height, blob.width) = 1, mean.shape
    else:
        blob.shape.dim.extend((1,) + mean.shape)
    blob.data.extend(mean.astype(np.float32).ravel().tolist())
    path.write_bytes(blob.SerializeToString())
    return str(path)


def source(n=2, c=2, h=5, w=6):
    """uint8 batch whose every value is unique, so a crop window can be recognised."""
    return (np.arange(n * c * h * w) % 251).astype(np.uint8).reshape(n, c, h, w)


def test_uint8_batch_becomes_float32_scaled_exactly():
    src = source()
    out = make("scale: 0.00390625").transform(src)
    assert out.dtype == np.float32 and out.shape == src.shape
    np.testing.assert_array_equal(out, src.astype(np.float32) * np.float32(0.00390625))


def test_test_phase_crop_is_centred_with_integer_division():
    src = source(h=6, w=7)                       # (6-3)/2 = 1, (7-3)/2 = 2
    out = make("crop_size: 3").transform(src)
    np.testing.assert_array_equal(out, src[:, :, 1:4, 2:5].astype(np.float32))


def test_mean_file_is_subtracted_at_source_coordinates_then_scaled(tmp_path):
    src = source(h=6, w=7)
    mean = np.random.default_rng(1).uniform(0, 50, (2, 6, 7)).astype(np.float32)
    path = write_mean(tmp_path / "mean.binaryproto", mean)
    out = make(f'crop_size: 3 scale: 0.5 mean_file: "{path}"').transform(src)
    want = (src[:, :, 1:4, 2:5].astype(np.float32) - mean[:, 1:4, 2:5]) * np.float32(0.5)
    np.testing.assert_array_equal(out, want)


def test_scale_applies_after_the_mean():
    src = np.full((1, 1, 2, 2), 10, np.uint8)
    out = make("scale: 0.5 mean_value: 4").transform(src)
    np.testing.assert_array_equal(out, np.full((1, 1, 2, 2), 3.0, np.float32))   # (10 - 4) * 0.5, not 10*0.5 - 4


def test_mean_file_in_shape_dim_encoding_is_accepted(tmp_path):
    src = source(n=1, c=3, h=4, w=4)
    mean = np.arange(48, dtype=np.float32).reshape(3, 4, 4)
    path = write_mean(tmp_path / "m.binaryproto", mean, legacy=False)
    out = make(f'mean_file: "{path}"').transform(src)
    np.testing.assert_array_equal(out, src.astype(np.float32) - mean)


def test_mirror_permutes_only_the_destination_and_never_the_mean(tmp_path):
    src = source(n=16, h=5, w=6)
    mean = np.random.default_rng(2).uniform(0, 9, (2, 5, 6)).astype(np.float32)
    path = write_mean(tmp_path / "mean.binaryproto", mean)
    out = make(f'mirror: true crop_size: 3 scale: 2 mean_file: "{path}"', phase=TEST, seed=3).transform(src)
    plain = (src[:, :, 1:4, 1:4].astype(np.float32) - mean[:, 1:4, 1:4]) * np.float32(2)
    mirrored = plain[:, :, :, ::-1]
    is_plain = [np.array_equal(o, p) for o, p in zip(out, plain)]
    is_mirrored = [np.array_equal(o, m) for o, m in zip(out, mirrored)]
    assert all(a or b for a, b in zip(is_plain, is_mirrored))
    assert any(is_plain) and any(is_mirrored)    # mirror is drawn per item, in TEST too
    # mirroring the mean as well would give a different answer
    wrong = (src[:, :, 1:4, 1:4][..., ::-1].astype(np.float32) - mean[:, 1:4, 1:4]) * 2
    assert not any(np.array_equal(o, x) for o, x, m in zip(out, wrong, is_mirrored) if m)


def test_train_crop_draws_per_item_offsets_and_subtracts_mean_there(tmp_path):
    n, h, w, c = 64, 7, 8, 3
    src = source(n=n, c=2, h=h, w=w)
    mean = np.random.default_rng(4).uniform(0, 9, (2, h, w)).astype(np.float32)
    path = write_mean(tmp_path / "mean.binaryproto", mean)
    out = make(f'crop_size: {c} mean_file: "{path}"', phase=TRAIN, seed=5).transform(src)
    offsets = set()
    for i in range(n):
        hits = [(y, x) for y in range(h - c + 1) for x in range(w - c + 1)
                if np.array_equal(out[i], src[i, :, y:y + c, x:x + c].astype(np.float32) - mean[:, y:y + c, x:x + c])]
        assert len(hits) == 1
        offsets.add(hits[0])
    assert len(offsets) > 8                       # random, covering the (5 x 6) possible offsets


def test_draw_order_mirror_then_h_then_w():
    src = source(n=5, h=7, w=9)
    t = make("mirror: true crop_size: 4", phase=TRAIN, seed=11)
    out = t.transform(src)
    raw = np.random.default_rng(11).integers(0, 1 << 32, size=(5, 3), dtype=np.uint64)
    for i in range(5):
        y, x = int(raw[i, 1] % 4), int(raw[i, 2] % 6)
        want = src[i, :, y:y + 4, x:x + 4].astype(np.float32)
        np.testing.assert_array_equal(out[i], want[..., ::-1] if raw[i, 0] % 2 else want)


def test_no_draws_without_mirror_or_train_crop():
    rng = np.random.default_rng(0)
    t = DataTransformer(text_format.Parse("crop_size: 2", caffe_pb2.TransformationParameter()), TEST, rng)
    before = rng.bit_generator.state
    t.transform(source())
    assert rng.bit_generator.state == before


def test_mean_value_one_or_per_channel():
    src = source(n=1, c=3, h=2, w=2)
    one = make("mean_value: 7").transform(src)
    np.testing.assert_array_equal(one, src.astype(np.float32) - 7)
    three = make("mean_value: 1 mean_value: 2 mean_value: 3").transform(src)
    np.testing.assert_array_equal(three, src.astype(np.float32) - np.float32([1, 2, 3]).reshape(1, 3, 1, 1))


def test_float_source_uses_the_same_formula():
    src = np.random.default_rng(0).normal(size=(2, 1, 4, 4)).astype(np.float32)
    out = make("scale: 3 mean_value: 0.25 crop_size: 2").transform(src)
    np.testing.assert_array_equal(out, (src[:, :, 1:3, 1:3] - np.float32(0.25)) * np.float32(3))


def test_items_of_different_sizes_are_each_centre_cropped():
    a = source(n=1, c=1, h=5, w=5)[0]
    b = source(n=1, c=1, h=7, w=6)[0]
    out = make("crop_size: 3").transform([a, b])
    np.testing.assert_array_equal(out[0], a[:, 1:4, 1:4])
    np.testing.assert_array_equal(out[1], b[:, 2:5, 1:4])


def test_errors_worded_as_caffe(tmp_path):
    with pytest.raises(CaffeUnstableError, match=r"Check failed: datum_height >= crop_size \(4 vs. 5\)"):
        make("crop_size: 5").transform(source(h=4, w=6))
    with pytest.raises(CaffeUnstableError, match="Specify either 1 mean_value or as many as channels: 2"):
        make("mean_value: 1 mean_value: 2 mean_value: 3").transform(source())
    path = write_mean(tmp_path / "m.binaryproto", np.zeros((2, 5, 6), np.float32))
    with pytest.raises(CaffeUnstableError, match="Cannot specify mean_file and mean_value at the same time"):
        make(f'mean_file: "{path}" mean_value: 1')
    with pytest.raises(CaffeUnstableError, match=r"datum_width == data_mean_.width\(\) \(7 vs. 6\)"):
        make(f'mean_file: "{path}"').transform(source(h=5, w=7))
    missing = tmp_path / "nope.binaryproto"
    with pytest.raises(CaffeUnstableError, match=f"layer 'data': File not found: {missing}"):
        make(f'mean_file: "{missing}"')
    with pytest.raises(CaffeUnstableError, match=r"x: Check failed: channels == datum_channels \(2 vs. 1\)"):
        make().transform([source(n=1)[0], source(n=1, c=1)[0]], names=["a", "x"])


def test_transform_batch_into_given_output():
    src = source()
    out = np.empty((2, 2, 5, 6), np.float32)
    got = transform_batch(src, None, 1.0, 0, 0, 0, None, out)
    assert got is out
    np.testing.assert_array_equal(out, src)


def test_decode_encoded_datums_with_opencv():
    img = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)   # BGR, as OpenCV stores it
    ok, png = cv2.imencode(".png", img)
    native = make().decode(png.tobytes())
    np.testing.assert_array_equal(native, img.transpose(2, 0, 1))
    gray = make("force_gray: true").decode(png.tobytes())
    np.testing.assert_array_equal(gray[0], cv2.imdecode(png, cv2.IMREAD_GRAYSCALE))
    # libpng's own RGB->gray conversion: within 1 of OpenCV's luma weights
    assert np.abs(gray[0].astype(int) - cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)).max() <= 1
    ok, gpng = cv2.imencode(".png", img[:, :, 0])
    assert make().decode(gpng.tobytes()).shape == (1, 5, 7)
    assert make("force_color: true").decode(gpng.tobytes()).shape == (3, 5, 7)
    with pytest.raises(CaffeUnstableError, match="cannot set both force_color and force_gray"):
        make("force_color: true force_gray: true").decode(png.tobytes())
    with pytest.raises(CaffeUnstableError, match="Could not decode datum"):
        make().decode(b"not an image")
