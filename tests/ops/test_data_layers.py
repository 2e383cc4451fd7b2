"""Data, HDF5Data, MemoryData, ImageData and DummyData layers over real files written in tmp_path."""
import gzip

import cv2
import h5py
import lmdb
import numpy as np
import pytest
from google.protobuf import text_format

from caffe_unstable.errors import CaffeUnstableError
from caffe_unstable.net.blob import Blob
from caffe_unstable.ops import layer_class
from caffe_unstable.proto import caffe_pb2

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


def make_layer(text, phase=TEST, seed=0):
    lp = text_format.Parse(text, caffe_pb2.LayerParameter())
    lp.phase = phase
    layer = layer_class(lp.type)(lp, np.random.default_rng(seed))
    top = [Blob() for _ in lp.top]
    layer.setup([], top)
    return layer, top


def write_lmdb(path, datums):
    env = lmdb.open(str(path), map_size=1 << 26)
    with env.begin(write=True) as txn:
        for i, d in enumerate(datums):
            txn.put(b"%08d" % i, d.SerializeToString())
    env.close()
    return str(path)


def images(n, c, h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, c, h, w), dtype=np.uint8)


def byte_datums(arrays, labels):
    return [caffe_pb2.Datum(channels=a.shape[0], height=a.shape[1], width=a.shape[2], data=a.tobytes(), label=int(l))
            for a, l in zip(arrays, labels)]


def data_layer(source, extra="", tops=("data", "label"), batch=4, phase=TEST, backend="LMDB"):
    top = " ".join(f'top: "{t}"' for t in tops)
    return make_layer(f'name: "data" type: "Data" {top} data_param {{ source: "{source}" batch_size: {batch} '
                      f'backend: {backend} }} {extra}', phase)


# -- Data ----------------------------------------------------------------------------------------------------------

def test_data_reads_in_key_order_wrapping_mid_batch(tmp_path):
    x = images(10, 3, 5, 6)
    path = write_lmdb(tmp_path / "db", byte_datums(x, range(10, 20)))
    layer, top = data_layer(path, "transform_param { crop_size: 3 mean_value: 10 mean_value: 20 mean_value: 30 "
                                  "scale: 0.5 }")
    assert top[0].shape == (4, 3, 3, 3) and top[1].shape == (4,)
    mean = np.float32([10, 20, 30]).reshape(1, 3, 1, 1)
    for k in range(4):
        layer.forward([], top)
        idx = np.arange(4 * k, 4 * k + 4) % 10            # batch 3 is records 8, 9, 0, 1
        want = (x[idx][:, :, 1:4, 1:4].astype(np.float32) - mean) * np.float32(0.5)
        np.testing.assert_array_equal(top[0].data, want)
        np.testing.assert_array_equal(top[1].data, idx + 10)
    layer.backward(top, [], [])                           # nothing to do


def test_data_mean_file_and_single_top(tmp_path):
    x = images(3, 1, 4, 4)
    path = write_lmdb(tmp_path / "db", byte_datums(x, range(3)))
    mean = np.arange(16, dtype=np.float32).reshape(1, 4, 4) / 4
    blob = caffe_pb2.BlobProto(num=1, channels=1, height=4, width=4, data=mean.ravel().tolist())
    (tmp_path / "mean.binaryproto").write_bytes(blob.SerializeToString())
    layer, top = data_layer(path, f'transform_param {{ mean_file: "{tmp_path / "mean.binaryproto"}" }}',
                            tops=("data",), batch=3)
    layer.forward([], top)
    np.testing.assert_array_equal(top[0].data, x.astype(np.float32) - mean)


def test_data_encoded_png_datums_decode_to_bgr(tmp_path):
    bgr = images(3, 3, 6, 5).transpose(0, 2, 3, 1)        # H x W x BGR as OpenCV holds images
    datums = [caffe_pb2.Datum(data=cv2.imencode(".png", im)[1].tobytes(), encoded=True, label=i)
              for i, im in enumerate(bgr)]
    path = write_lmdb(tmp_path / "db", datums)
    layer, top = data_layer(path, batch=3)
    assert top[0].shape == (3, 3, 6, 5)
    layer.forward([], top)
    np.testing.assert_array_equal(top[0].data, bgr.transpose(0, 3, 1, 2))
    gray, gtop = data_layer(path, "transform_param { force_gray: true }", batch=3)
    assert gtop[0].shape == (3, 1, 6, 5)


def test_data_float_datums(tmp_path):
    values = np.random.default_rng(0).normal(size=(2, 2, 3, 3)).astype(np.float32)
    datums = [caffe_pb2.Datum(channels=2, height=3, width=3, float_data=v.ravel().tolist(), label=1) for v in values]
    layer, top = data_layer(write_lmdb(tmp_path / "db", datums), "transform_param { scale: 2 }", batch=2)
    layer.forward([], top)
    np.testing.assert_array_equal(top[0].data, values * np.float32(2))


def test_data_reshapes_each_batch_from_its_first_datum(tmp_path):
    small, big = images(2, 1, 3, 3), images(2, 1, 4, 5, seed=1)
    path = write_lmdb(tmp_path / "db", byte_datums(list(small) + list(big), range(4)))
    layer, top = data_layer(path, batch=2)
    layer.forward([], top)
    assert top[0].shape == (2, 1, 3, 3)
    layer.forward([], top)
    assert top[0].shape == (2, 1, 4, 5)
    np.testing.assert_array_equal(top[0].data, big)


def test_data_record_of_the_wrong_size_names_source_and_key(tmp_path):
    path = write_lmdb(tmp_path / "db", byte_datums([images(1, 1, 3, 3)[0], images(1, 1, 4, 4)[0]], [0, 1]))
    layer, top = data_layer(path, batch=2)
    with pytest.raises(CaffeUnstableError) as err:
        layer.forward([], top)
    assert str(err.value) == (f"layer 'data': {path}: record '00000001': Check failed: datum_height == height "
                              "(4 vs. 3)")


def test_data_missing_source_and_leveldb(tmp_path):
    missing = tmp_path / "none_lmdb"
    with pytest.raises(CaffeUnstableError) as err:
        data_layer(missing)
    assert str(err.value) == f"layer 'data': {missing}: Check failed: mdb_status == 0 (2 vs. 0) No such file or directory"
    with pytest.raises(CaffeUnstableError, match="LevelDB is not supported"):
        data_layer(missing, backend="LEVELDB")
    path = write_lmdb(tmp_path / "db", byte_datums(images(2, 1, 2, 2), [0, 1]))
    layer, top = data_layer(path, backend="LEVELDB", batch=2)       # an LMDB directory is read as LMDB
    layer.forward([], top)
    assert top[1].data.tolist() == [0, 1]


def test_train_and_test_data_layers_read_independently(tmp_path):
    path = write_lmdb(tmp_path / "db", byte_datums(images(5, 1, 2, 2), range(5)))
    train, ttop = data_layer(path, batch=3, phase=TRAIN)
    test, stop = data_layer(path, batch=2)
    train.forward([], ttop)
    test.forward([], stop)
    train.forward([], ttop)
    assert stop[1].data.tolist() == [0, 1] and ttop[1].data.tolist() == [3, 4, 0]


def read_idx_images(path, count):
    with gzip.open(path, "rb") as f:
        head = np.frombuffer(f.read(16), ">i4")
        assert head[0] == 2051
        rows, cols = int(head[2]), int(head[3])
        return np.frombuffer(f.read(count * rows * cols), np.uint8).reshape(count, 1, rows, cols)


def test_real_mnist_through_the_data_layer(tmp_path, shared):
    x = read_idx_images(shared / "data" / "mnist" / "t10k-images-idx3-ubyte.gz", 256)
    with gzip.open(shared / "data" / "mnist" / "t10k-labels-idx1-ubyte.gz", "rb") as f:
        labels = np.frombuffer(f.read(8 + 256), np.uint8)[8:]
    path = write_lmdb(tmp_path / "mnist_lmdb", byte_datums(x, labels))
    layer, top = data_layer(path, "transform_param { scale: 0.00390625 }", batch=64, phase=TRAIN)
    assert top[0].shape == (64, 1, 28, 28)
    for k in range(5):                                   # the fifth batch wraps to the start
        layer.forward([], top)
        i = (64 * k) % 256
        np.testing.assert_array_equal(top[0].data, x[i:i + 64].astype(np.float32) * np.float32(0.00390625))
        np.testing.assert_array_equal(top[1].data, labels[i:i + 64])


# -- HDF5Data ------------------------------------------------------------------------------------------------------

def h5_list(tmp_path, sizes):
    paths, rows = [], []
    for f, n in enumerate(sizes):
        values = np.arange(n) + 100 * f
        with h5py.File(tmp_path / f"f{f}.h5", "w") as h:
            h["data"] = (values[:, None, None, None] * np.ones((1, 2, 2, 3))).astype(np.float64)
            h["label"] = values.astype(np.int64)
        paths.append(str(tmp_path / f"f{f}.h5"))
        rows.extend(values)
    (tmp_path / "list.txt").write_text("\n".join(paths) + "\n")
    return str(tmp_path / "list.txt"), np.array(rows)


def test_hdf5data_tops_named_like_datasets_wrap_mid_batch(tmp_path):
    listing, rows = h5_list(tmp_path, [3, 4])
    layer, top = make_layer(f'name: "h5" type: "HDF5Data" top: "data" top: "label" '
                            f'hdf5_data_param {{ source: "{listing}" batch_size: 5 }}')
    assert top[0].shape == (5, 2, 2, 3) and top[1].shape == (5,)
    for k in range(3):
        layer.forward([], top)
        want = rows[np.arange(5 * k, 5 * k + 5) % 7]
        np.testing.assert_array_equal(top[1].data, want)
        np.testing.assert_array_equal(top[0].data[:, 1, 1, 2], want)


def test_hdf5data_errors(tmp_path):
    listing, _ = h5_list(tmp_path, [2])
    with pytest.raises(CaffeUnstableError, match="layer 'h5': HDF5Data does not transform data."):
        make_layer(f'name: "h5" type: "HDF5Data" top: "data" hdf5_data_param {{ source: "{listing}" batch_size: 1 }}'
                   ' transform_param { scale: 1 }')
    with pytest.raises(CaffeUnstableError, match="f0.h5: Failed to find HDF5 dataset other"):
        make_layer(f'name: "h5" type: "HDF5Data" top: "other" hdf5_data_param {{ source: "{listing}" '
                   'batch_size: 1 }')
    (tmp_path / "bad.txt").write_text(str(tmp_path / "gone.h5"))
    with pytest.raises(CaffeUnstableError, match="Failed opening HDF5 file: .*gone.h5"):
        make_layer(f'name: "h5" type: "HDF5Data" top: "data" hdf5_data_param {{ source: "{tmp_path / "bad.txt"}" '
                   'batch_size: 1 }')


# -- MemoryData ----------------------------------------------------------------------------------------------------

def memory_layer(batch=2):
    return make_layer(f'name: "mem" type: "MemoryData" top: "data" top: "label" '
                      f'memory_data_param {{ batch_size: {batch} channels: 2 height: 3 width: 1 }}')


def test_memorydata_exposes_batches_and_wraps():
    layer, top = memory_layer()
    assert top[0].shape == (2, 2, 3, 1) and top[1].shape == (2,)
    data = np.arange(6 * 6, dtype=np.float32).reshape(6, 2, 3, 1)
    labels = np.arange(6, dtype=np.float32)
    layer.reset(data, labels)
    for k in (0, 1, 2, 0):
        layer.forward([], top)
        np.testing.assert_array_equal(top[0].data, data[2 * k:2 * k + 2])
        np.testing.assert_array_equal(top[1].data.ravel(), labels[2 * k:2 * k + 2])
    assert top[1].shape == (2, 1, 1, 1)


def test_memorydata_errors():
    layer, top = memory_layer()
    with pytest.raises(CaffeUnstableError, match="MemoryDataLayer needs to be initialized by calling Reset"):
        layer.forward([], top)
    good = np.zeros((4, 2, 3, 1), np.float32)
    with pytest.raises(CaffeUnstableError, match="multiple of batch size"):
        layer.reset(np.zeros((3, 2, 3, 1), np.float32), np.zeros(3, np.float32))
    with pytest.raises(CaffeUnstableError, match="data array must be float32"):
        layer.reset(good.astype(np.float64), np.zeros(4, np.float32))
    with pytest.raises(CaffeUnstableError, match="data array has wrong height"):
        layer.reset(np.zeros((4, 2, 2, 1), np.float32), np.zeros(4, np.float32))
    with pytest.raises(CaffeUnstableError, match="data and labels must have the same first dimension"):
        layer.reset(good, np.zeros(2, np.float32))
    with pytest.raises(CaffeUnstableError, match="must be specified and positive in memory_data_param"):
        make_layer('name: "m" type: "MemoryData" top: "a" top: "b" memory_data_param { batch_size: 2 }')


# -- ImageData -----------------------------------------------------------------------------------------------------

def image_files(tmp_path, count=3, h=6, w=8):
    root = tmp_path / "imgs"
    root.mkdir()
    rng = np.random.default_rng(0)
    pics, lines = [], []
    for i in range(count):
        im = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        name = f"pic {i}.png"                            # a space in the name: split at the LAST space
        cv2.imwrite(str(root / name), im)
        pics.append(im)
        lines.append(f"{name} {i + 5}")
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    return str(root) + "/", str(tmp_path / "list.txt"), pics


def image_layer(root, listing, params="", extra="", batch=2, phase=TEST, seed=0):
    return make_layer(f'name: "img" type: "ImageData" top: "data" top: "label" image_data_param {{ '
                      f'source: "{listing}" root_folder: "{root}" batch_size: {batch} {params} }} {extra}',
                      phase, seed)


def test_imagedata_reads_bgr_pngs_in_list_order_and_wraps(tmp_path):
    root, listing, pics = image_files(tmp_path)
    layer, top = image_layer(root, listing)
    assert top[0].shape == (2, 3, 6, 8) and top[1].shape == (2,)
    seen = []
    for _ in range(3):
        layer.forward([], top)
        seen.extend(top[1].data.tolist())
        for im, label in zip(top[0].data, top[1].data):
            np.testing.assert_array_equal(im, pics[int(label) - 5].transpose(2, 0, 1))
    assert seen == [5, 6, 7, 5, 6, 7]


def test_imagedata_gray_resize_and_crop(tmp_path):
    root, listing, pics = image_files(tmp_path)
    layer, top = image_layer(root, listing, "is_color: false new_height: 5 new_width: 4",
                             "transform_param { crop_size: 3 }", batch=1)
    assert top[0].shape == (1, 1, 3, 3)
    layer.forward([], top)
    gray = cv2.imread(root + "pic 0.png", cv2.IMREAD_GRAYSCALE)
    resized = cv2.resize(gray, (4, 5), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(top[0].data[0, 0], resized[1:4, 0:3])   # (5-3)/2 = 1, (4-3)/2 = 0


def test_imagedata_jpeg_decodes_like_opencv(tmp_path):
    yy, xx = np.mgrid[0:16, 0:12]
    im = np.stack([yy * 15, xx * 20, 128 + 0 * xx], axis=2).astype(np.uint8)   # smooth: JPEG keeps it close
    cv2.imwrite(str(tmp_path / "a.jpg"), im, [cv2.IMWRITE_JPEG_QUALITY, 90])
    (tmp_path / "l.txt").write_text("a.jpg 1\n")
    layer, top = image_layer(str(tmp_path) + "/", str(tmp_path / "l.txt"), batch=1)
    layer.forward([], top)
    np.testing.assert_array_equal(top[0].data[0], cv2.imread(str(tmp_path / "a.jpg")).transpose(2, 0, 1))
    assert np.abs(top[0].data[0] - im.transpose(2, 0, 1)).mean() < 4   # lossy, but close to the source


def test_imagedata_shuffle_and_rand_skip(tmp_path):
    root, listing, _ = image_files(tmp_path, count=5)
    layer, top = image_layer(root, listing, "shuffle: true", batch=5, seed=3)
    orders = []
    for _ in range(3):
        layer.forward([], top)
        assert sorted(top[1].data.tolist()) == [5, 6, 7, 8, 9]
        orders.append(tuple(top[1].data.tolist()))
    assert len(set(orders)) > 1
    skipped, stop = image_layer(root, listing, "rand_skip: 4", batch=1, seed=0)
    assert 0 <= skipped.lines_id < 4


def test_imagedata_errors(tmp_path):
    root, listing, _ = image_files(tmp_path)
    with pytest.raises(CaffeUnstableError, match="requires new_height and new_width to be set at the same time"):
        image_layer(root, listing, "new_height: 4")
    (tmp_path / "bad.txt").write_text("missing.png 0\n")
    with pytest.raises(CaffeUnstableError, match="layer 'img': Could not load missing.png"):
        image_layer(root, str(tmp_path / "bad.txt"))


# -- DummyData -----------------------------------------------------------------------------------------------------

def test_dummydata_constant_once_others_every_forward():
    layer, top = make_layer('name: "d" type: "DummyData" top: "a" top: "b" dummy_data_param { '
                            'data_filler { type: "constant" value: 3 } data_filler { type: "gaussian" std: 2 } '
                            'shape { dim: 2 dim: 3 } shape { dim: 4 } }')
    assert top[0].shape == (2, 3) and top[1].shape == (4,)
    np.testing.assert_array_equal(top[0].data, np.full((2, 3), 3, np.float32))
    top[0].data[0, 0] = -1                               # constant tops are never refilled
    layer.forward([], top)
    first = top[1].data.copy()
    layer.forward([], top)
    assert top[0].data[0, 0] == -1 and not np.array_equal(first, top[1].data)


def test_dummydata_legacy_dims_and_default_zero():
    layer, top = make_layer('name: "d" type: "DummyData" top: "a" top: "b" dummy_data_param { '
                            'num: 2 channels: 3 height: 4 height: 5 width: 1 }')
    assert top[0].shape == (2, 3, 4, 1) and top[1].shape == (2, 3, 5, 1)
    layer.forward([], top)
    assert not top[0].data.any()


def test_dummydata_errors():
    with pytest.raises(CaffeUnstableError, match=r"Must specify 'shape' once, or once per top blob \(3\); "
                                                 "specified 2."):
        make_layer('name: "d" type: "DummyData" top: "a" top: "b" top: "c" dummy_data_param { '
                   'shape { dim: 1 } shape { dim: 2 } }')
    with pytest.raises(CaffeUnstableError, match="Number of data fillers must be 0, 1 or equal to the number"):
        make_layer('name: "d" type: "DummyData" top: "a" top: "b" top: "c" dummy_data_param { shape { dim: 1 } '
                   'data_filler { type: "constant" } data_filler { type: "constant" } }')
    with pytest.raises(CaffeUnstableError, match="Both shape and legacy fields were specified"):
        make_layer('name: "d" type: "DummyData" top: "a" dummy_data_param { shape { dim: 1 } num: 1 channels: 1 '
                   'height: 1 width: 1 }')


# -- real shared data ----------------------------------------------------------------------------------------------

def test_hdf5data_on_the_golden_solver_list_wraps_mid_batch(shared, monkeypatch):
    folder = shared / "golden" / "solvers"
    monkeypatch.chdir(folder)                            # the list names its files relative to this folder
    with h5py.File(folder / "test.h5", "r") as f:
        data, label = f["data"][()], f["label"][()]
    n = len(label)
    layer, top = make_layer('name: "h5" type: "HDF5Data" top: "data" top: "label" '
                            'hdf5_data_param { source: "test_h5_list.txt" batch_size: 8 }')
    for k in range(5):                                   # 30 rows: batch 3 is rows 24..29, 0, 1
        layer.forward([], top)
        rows = np.arange(8 * k, 8 * k + 8) % n
        np.testing.assert_array_equal(top[0].data, data[rows])
        np.testing.assert_array_equal(top[1].data, label[rows])


def test_imagedata_imagenet_sample_with_mean_file_and_centre_crop(shared, tmp_path):
    lines = (shared / "data" / "imagenet_sample" / "sample_val.txt").read_text().splitlines()[:3]
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    root = str(shared / "data" / "imagenet_sample" / "images") + "/"
    mean_file = shared / "data" / "ilsvrc12" / "imagenet_mean.binaryproto"
    layer, top = image_layer(root, str(tmp_path / "list.txt"), batch=3,
                             extra=f'transform_param {{ crop_size: 227 mean_file: "{mean_file}" }}')
    assert top[0].shape == (3, 3, 227, 227)
    layer.forward([], top)
    blob = caffe_pb2.BlobProto.FromString(mean_file.read_bytes())
    mean = np.array(blob.data, np.float32).reshape(3, 256, 256)
    for i, line in enumerate(lines):
        path, label = line.rsplit(" ", 1)
        bgr = cv2.imread(root + path).transpose(2, 0, 1).astype(np.float32)   # 256x256: offsets (256-227)/2 = 14
        np.testing.assert_array_equal(top[0].data[i], bgr[:, 14:241, 14:241] - mean[:, 14:241, 14:241])
        assert top[1].data[i] == int(label)
