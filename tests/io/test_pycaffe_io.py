"""pycaffe's caffe.io surface (python/caffe/io.py) as caffe_unstable.io provides it."""
import cv2
import numpy as np
import pytest

import caffe_unstable.io as cio
from caffe_unstable.proto import caffe_pb2


# -- BlobProto / Datum ---------------------------------------------------------------------------------------------

def test_blobproto_round_trip_with_diff():
    arr = np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 7
    diff = -arr
    blob = cio.array_to_blobproto(arr, diff)
    assert list(blob.shape.dim) == [2, 3, 4] and not blob.HasField("num")
    np.testing.assert_array_equal(cio.blobproto_to_array(blob), arr)
    np.testing.assert_array_equal(cio.blobproto_to_array(blob, return_diff=True), diff)


def test_blobproto_legacy_dims_win():
    blob = caffe_pb2.BlobProto(num=1, channels=2, height=1, width=3, data=[1, 2, 3, 4, 5, 6])
    assert cio.blobproto_to_array(blob).shape == (1, 2, 1, 3)


def test_blobprotovector_string_round_trip():
    arrays = [np.ones((2, 2), np.float32), np.arange(3, dtype=np.float32)]
    s = cio.arraylist_to_blobprotovector_str(arrays)
    assert isinstance(s, bytes)
    back = cio.blobprotovector_str_to_arraylist(s)
    assert [b.shape for b in back] == [(2, 2), (3,)]
    np.testing.assert_array_equal(back[1], [0, 1, 2])


def test_datum_uint8_and_float():
    img = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    d = cio.array_to_datum(img, label=7)
    assert (d.channels, d.height, d.width, d.label) == (2, 3, 4, 7) and d.data == img.tobytes()
    back = cio.datum_to_array(caffe_pb2.Datum.FromString(d.SerializeToString()))
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, img)
    back[0, 0, 0] = 9                                    # writable, like np.fromstring's copy
    f = cio.array_to_datum(img.astype(np.float32) / 2)
    assert not f.data and len(f.float_data) == 24 and not f.HasField("label")
    np.testing.assert_array_equal(cio.datum_to_array(f), img / 2)
    with pytest.raises(ValueError, match="Incorrect array shape."):
        cio.array_to_datum(np.zeros((2, 2)))


# -- images --------------------------------------------------------------------------------------------------------

def test_load_image_is_rgb_float_in_unit_range(tmp_path):
    bgr = np.random.default_rng(0).integers(0, 256, (5, 4, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), bgr)
    img = cio.load_image(str(tmp_path / "a.png"))
    assert img.dtype == np.float32 and img.shape == (5, 4, 3)
    np.testing.assert_array_equal(img, (bgr[:, :, ::-1] / 255.0).astype(np.float32))
    gray = cio.load_image(tmp_path / "a.png", color=False)
    assert gray.shape == (5, 4, 1)
    np.testing.assert_array_equal(gray[:, :, 0], cv2.imread(str(tmp_path / "a.png"), 0) / np.float32(255))


def test_load_image_16_bit_and_gray_to_color(tmp_path):
    deep = (np.arange(12, dtype=np.uint16) * 5000).reshape(3, 4)
    cv2.imwrite(str(tmp_path / "d.png"), deep)
    img = cio.load_image(str(tmp_path / "d.png"))
    assert img.shape == (3, 4, 3)
    np.testing.assert_array_equal(img[:, :, 1], (deep / 65535.0).astype(np.float32))


def test_load_image_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        cio.load_image(str(tmp_path / "none.jpg"))


def test_resize_image():
    im = np.random.default_rng(0).random((6, 8, 3)).astype(np.float32)
    out = cio.resize_image(im, (3, 4))
    assert out.dtype == np.float32 and out.shape == (3, 4, 3)
    # 2x bilinear downscale with half-pixel centres = the mean of each 2x2 block
    np.testing.assert_allclose(out, im.reshape(3, 2, 4, 2, 3).mean(axis=(1, 3)), rtol=1e-6)
    one = cio.resize_image(im[:, :, :1], (12, 16))
    assert one.shape == (12, 16, 1)
    many = cio.resize_image(np.random.default_rng(1).random((4, 4, 5)), (2, 2))
    assert many.shape == (2, 2, 5) and many.dtype == np.float32
    const = cio.resize_image(np.full((4, 4, 3), 0.25, np.float32), (7, 9))
    assert const.shape == (7, 9, 3) and (const == 0.25).all()


def test_oversample_ten_crops_in_pycaffe_order():
    im = np.arange(5 * 6, dtype=np.float32).reshape(5, 6, 1)
    crops = cio.oversample([im, im + 100], (3, 4))
    assert crops.shape == (20, 3, 4, 1) and crops.dtype == np.float32
    corners = [im[0:3, 0:4], im[0:3, 2:6], im[2:5, 0:4], im[2:5, 2:6]]
    centre = im[1:4, 1:5]                                # centre 2.5,3 -> rows int(1.0)..int(4.0), cols 1..5
    for i, want in enumerate(corners + [centre]):
        np.testing.assert_array_equal(crops[i], want)
        np.testing.assert_array_equal(crops[i + 5], want[:, ::-1])
    np.testing.assert_array_equal(crops[10], corners[0] + 100)


# -- Transformer ---------------------------------------------------------------------------------------------------

def make_transformer():
    t = cio.Transformer({"data": (1, 3, 4, 5)})
    t.set_transpose("data", (2, 0, 1))
    t.set_channel_swap("data", (2, 1, 0))
    t.set_raw_scale("data", 255)
    t.set_mean("data", np.array([10.0, 20.0, 30.0]))
    t.set_input_scale("data", 0.5)
    return t


def test_preprocess_order_and_deprocess_inverse():
    img = np.random.default_rng(0).random((4, 5, 3)).astype(np.float32)
    keep = img.copy()
    t = make_transformer()
    out = t.preprocess("data", img)
    np.testing.assert_array_equal(img, keep)             # the caller's image is not scaled in place
    want = img.transpose(2, 0, 1)[[2, 1, 0]]
    want = want * np.float32(255)
    want = want - np.float32([10, 20, 30]).reshape(3, 1, 1)
    want = want * np.float32(0.5)
    assert out.dtype == np.float32 and out.shape == (3, 4, 5)
    np.testing.assert_allclose(out, want, rtol=1e-6)
    np.testing.assert_allclose(t.deprocess("data", out[None]), img, rtol=1e-5, atol=1e-6)


def test_preprocess_resizes_to_the_input_size():
    t = cio.Transformer({"data": (1, 3, 4, 5)})
    t.set_transpose("data", (2, 0, 1))
    out = t.preprocess("data", np.full((8, 10, 3), 0.5, np.float32))
    assert out.shape == (3, 4, 5)


def test_transformer_errors():
    t = cio.Transformer({"data": (1, 3, 4, 5)})
    with pytest.raises(Exception, match="is not one of the net inputs"):
        t.preprocess("other", np.zeros((4, 5, 3)))
    with pytest.raises(Exception, match="Transpose order needs to have the same number of dimensions"):
        t.set_transpose("data", (1, 0))
    with pytest.raises(Exception, match="Channel swap needs to have the same number of dimensions"):
        t.set_channel_swap("data", (1, 0))
    with pytest.raises(ValueError, match="Mean channels incompatible with input."):
        t.set_mean("data", np.zeros(2))
    with pytest.raises(ValueError, match="Mean shape incompatible with input shape."):
        t.set_mean("data", np.zeros((3, 5, 4)))
    t.set_mean("data", np.zeros((3, 4, 5)))              # an elementwise mean of the blob's shape is fine


def test_load_image_caffe_example_jpegs(shared):
    folder = shared / "data" / "caffe_examples_images"
    cat = cio.load_image(str(folder / "cat.jpg"))
    bgr = cv2.imread(str(folder / "cat.jpg"))
    assert cat.shape == bgr.shape and cat.dtype == np.float32
    np.testing.assert_array_equal(cat, (bgr[:, :, ::-1] / 255.0).astype(np.float32))
    gray = cio.load_image(str(folder / "cat_gray.jpg"), color=False)
    assert gray.ndim == 3 and gray.shape[2] == 1 and 0 <= gray.min() and gray.max() <= 1
    assert cio.load_image(str(folder / "cat_gray.jpg")).shape[2] == 3       # gray files load as 3 channels
