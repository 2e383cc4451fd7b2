"""cu-data: the converters end to end (CliRunner), their LMDBs read back by py-lmdb and by our Data layer."""
import gzip
import lzma
import os
import re

import cv2
import lmdb
import numpy as np
import pytest
from click.testing import CliRunner

import caffe_unstable as caffe
from caffe_unstable.cli.data import main
from caffe_unstable.proto import caffe_pb2

F32 = np.float32
PREFIX = re.compile(r"^([IWEF])\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ (\S+:\d+)\] (.*)$")


def cu_data(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.stderr


def messages(stderr):
    """(severity, file:line, message) of every glog line."""
    return [PREFIX.match(line).groups() for line in stderr.splitlines() if PREFIX.match(line)]


def read_lmdb(path):
    env = lmdb.open(str(path), readonly=True, lock=False)
    with env.begin() as txn:
        items = list(txn.cursor())
    env.close()
    return items


def idx_images(images):
    n, rows, cols = images.shape
    return b"".join(int(v).to_bytes(4, "big") for v in (2051, n, rows, cols)) + images.tobytes()


def idx_labels(labels):
    return (2049).to_bytes(4, "big") + len(labels).to_bytes(4, "big") + labels.tobytes()


@pytest.fixture
def mnist_files(tmp_path):
    """4 images of 3x2 pixels: images gzip-compressed, labels xz-compressed (both accepted directly)."""
    images = np.random.default_rng(1).integers(0, 256, (4, 3, 2), dtype=np.uint8)
    labels = np.array([3, 0, 9, 1], np.uint8)
    (tmp_path / "images.gz").write_bytes(gzip.compress(idx_images(images)))
    (tmp_path / "labels.xz").write_bytes(lzma.compress(idx_labels(labels)))
    return tmp_path / "images.gz", tmp_path / "labels.xz", images, labels


def test_mnist_writes_caffes_records_and_log(tmp_path, mnist_files):
    images_path, labels_path, images, labels = mnist_files
    out = tmp_path / "mnist_lmdb"
    code, err = cu_data("mnist", images_path, labels_path, out)
    assert code == 0, err
    assert [m[1:] for m in messages(err)] == [
        ("db_lmdb.cpp:35", f"Opened lmdb {out}"),
        ("convert_mnist_data.cpp:88", "A total of 4 items."),
        ("convert_mnist_data.cpp:89", "Rows: 3 Cols: 2"),
        ("convert_mnist_data.cpp:108", "Processed 4 files.")]
    records = read_lmdb(out)
    assert [k for k, _ in records] == [b"00000000", b"00000001", b"00000002", b"00000003"]
    assert records[2][1] == b"\x08\x01\x10\x03\x18\x02\x22\x06" + images[2].tobytes() + b"\x28\x09"


def test_a_data_layer_reads_the_mnist_lmdb(tmp_path, mnist_files):
    images_path, labels_path, images, labels = mnist_files
    out = tmp_path / "mnist_lmdb"
    assert cu_data("mnist", images_path, labels_path, out)[0] == 0
    model = tmp_path / "net.prototxt"
    model.write_text(f'layer {{ name: "d" type: "Data" top: "data" top: "label" transform_param {{ scale: 0.5 }} '
                     f'data_param {{ source: "{out}" batch_size: 4 backend: LMDB }} }}')
    net = caffe.Net(str(model), caffe.TEST)
    net.forward()
    np.testing.assert_array_equal(net.blobs["data"].data, images[:, None].astype(F32) * F32(0.5))
    np.testing.assert_array_equal(net.blobs["label"].data, labels.astype(F32))


def test_existing_output_is_refused_and_left_alone(tmp_path, mnist_files):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_text("mine")
    code, err = cu_data("mnist", mnist_files[0], mnist_files[1], out)
    assert code == 1
    assert err == (f"error: {out}: already exists; Caffe's converters never write into an existing database "
                   "(remove it or choose another name)\n")
    assert os.listdir(out) == ["keep"]


def test_swapped_mnist_files_are_one_line_errors(tmp_path, mnist_files):
    code, err = cu_data("mnist", mnist_files[1], mnist_files[0], tmp_path / "out")
    assert code == 1
    assert err == (f"error: {mnist_files[1]}: Incorrect image file magic: this is an idx label file (magic 2049); "
                   "give the images file first, then the labels\n")
    code, err = cu_data("mnist", tmp_path / "nothing.gz", mnist_files[1], tmp_path / "out")
    assert (code, err) == (1, f"error: {tmp_path / 'nothing.gz'}: no such file\n")
    assert not (tmp_path / "out").exists()


def test_cifar10_numbers_records_across_files(tmp_path):
    rng = np.random.default_rng(2)
    files, expected = [], []
    for f, n in enumerate((3, 2)):
        rec = rng.integers(0, 256, (n, 3073), dtype=np.uint8)
        rec[:, 0] = rng.integers(0, 10, n)
        path = tmp_path / f"batch_{f}.bin.xz"
        path.write_bytes(lzma.compress(rec.tobytes()))
        files.append(path)
        expected += [(int(r[0]), r[1:].tobytes()) for r in rec]
    out = tmp_path / "cifar_lmdb"
    code, err = cu_data("cifar10", *files, out)
    assert code == 0, err
    assert messages(err)[-1][2] == "Processed 5 files."
    records = read_lmdb(out)
    assert [k for k, _ in records] == [b"%05d" % i for i in range(5)]
    for (_, value), (label, data) in zip(records, expected):
        assert value == b"\x08\x03\x10\x20\x18\x20\x22\x80\x18" + data + b"\x28" + bytes([label])


def test_cifar10_rejects_a_wrong_sized_file(tmp_path):
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"\0" * 3074)
    code, err = cu_data("cifar10", bad, tmp_path / "out")
    assert (code, err) == (1, f"error: {bad}: size 3074 is not a multiple of the 3073-byte CIFAR-10 record\n")


@pytest.fixture
def image_folder(tmp_path):
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    rng = np.random.default_rng(3)
    pictures = {}
    for name, shape in (("a.png", (4, 5, 3)), ("sub/b.png", (4, 5, 3)), ("c.jpg", (6, 4, 3))):
        pictures[name] = rng.integers(0, 256, shape, dtype=np.uint8)
        cv2.imwrite(str(root / name), pictures[name])
    listfile = tmp_path / "list.txt"
    listfile.write_text("a.png 1\nmissing.png 7\nsub/b.png 2\nc.jpg 3\n")
    return root, listfile, pictures


def test_imageset_raw_keys_skips_and_log(tmp_path, image_folder):
    root, listfile, pictures = image_folder
    out = tmp_path / "set_lmdb"
    code, err = cu_data("imageset", f"{root}/", listfile, out)
    assert code == 0, err
    assert [m[1:] for m in messages(err)] == [
        ("convert_imageset.cpp:89", "A total of 4 images."),
        ("db_lmdb.cpp:35", f"Opened lmdb {out}"),
        ("io.cpp:79", f"Could not open or find file {root}/missing.png"),
        ("convert_imageset.cpp:153", "Processed 3 files.")]
    assert messages(err)[2][0] == "E"
    records = dict(read_lmdb(out))
    assert sorted(records) == [b"00000000_a.png", b"00000002_sub/b.png", b"00000003_c.jpg"]
    datum = caffe_pb2.Datum.FromString(records[b"00000002_sub/b.png"])
    assert (datum.channels, datum.height, datum.width, datum.label) == (3, 4, 5, 2)
    assert datum.data == pictures["sub/b.png"].transpose(2, 0, 1).tobytes()


def test_imageset_encoded_gray_resize_and_shuffle(tmp_path, image_folder):
    root, listfile, pictures = image_folder
    code, err = cu_data("imageset", f"{root}/", listfile, tmp_path / "enc", "--encoded")
    assert code == 0, err
    records = dict(read_lmdb(tmp_path / "enc"))
    assert caffe_pb2.Datum.FromString(records[b"00000000_a.png"]).data == (root / "a.png").read_bytes()
    code, err = cu_data("imageset", f"{root}/", listfile, tmp_path / "gray", "--gray", "--resize", 3, 2)
    assert code == 0, err
    datum = caffe_pb2.Datum.FromString(dict(read_lmdb(tmp_path / "gray"))[b"00000003_c.jpg"])
    assert (datum.channels, datum.height, datum.width) == (1, 3, 2)
    expected = cv2.resize(cv2.imread(str(root / "c.jpg"), cv2.IMREAD_GRAYSCALE), (2, 3), interpolation=cv2.INTER_LINEAR)
    assert datum.data == expected.tobytes()
    for name, seed in (("s1", 5), ("s2", 5)):
        code, err = cu_data("imageset", f"{root}/", listfile, tmp_path / name, "--shuffle", "--seed", seed)
        assert code == 0 and messages(err)[0][2] == "Shuffling data"
    keys = [k for k, _ in read_lmdb(tmp_path / "s1")]
    assert keys == [k for k, _ in read_lmdb(tmp_path / "s2")]          # a seed repeats the order
    assert sorted(k[9:] for k in keys) == [b"a.png", b"c.jpg", b"sub/b.png"]


def test_imageset_check_size_failure_leaves_no_database(tmp_path, image_folder):
    root, listfile, _ = image_folder
    out = tmp_path / "sized"
    code, err = cu_data("imageset", f"{root}/", listfile, out, "--check-size")
    assert code == 1
    assert err.splitlines()[-1] == (f"error: {root}/c.jpg: Check failed: data.size() == data_size (72 vs. 60) "
                                    "Incorrect data field size 72 (--check-size: every image must have the size "
                                    "of the first; add --resize H W)")
    assert sorted(os.listdir(tmp_path)) == ["images", "list.txt"]     # neither the db nor its temporary folder


def test_mean_of_an_lmdb(tmp_path, mnist_files):
    images_path, labels_path, images, _ = mnist_files
    assert cu_data("mnist", images_path, labels_path, tmp_path / "db")[0] == 0
    out = tmp_path / "mean.binaryproto"
    code, err = cu_data("mean", tmp_path / "db", out)
    assert code == 0, err
    mean = images.astype(F32).sum(axis=0) / F32(4)              # exact: small integer sums
    channel = F32(np.cumsum(mean.reshape(-1), dtype=F32)[-1]) / F32(6)
    assert [m[1:] for m in messages(err)] == [
        ("db_lmdb.cpp:35", f"Opened lmdb {tmp_path / 'db'}"),
        ("compute_image_mean.cpp:70", "Starting iteration"),
        ("compute_image_mean.cpp:101", "Processed 4 files."),
        ("compute_image_mean.cpp:108", f"Write to {out}"),
        ("compute_image_mean.cpp:114", "Number of channels: 1"),
        ("compute_image_mean.cpp:119", "mean_value channel [0]: " + "%g" % channel)]
    blob = caffe_pb2.BlobProto.FromString(out.read_bytes())
    assert (blob.num, blob.channels, blob.height, blob.width) == (1, 1, 3, 2)
    np.testing.assert_array_equal(np.array(blob.data, F32), mean.reshape(-1))
    # the mean file is what a Data layer's transform_param mean_file reads
    from caffe_unstable.data.transform import read_mean_file
    values, chw = read_mean_file(str(out))
    assert chw == (1, 3, 2)
    np.testing.assert_array_equal(values.reshape(-1), mean.reshape(-1))


def test_mean_of_a_missing_lmdb_is_one_line(tmp_path):
    code, err = cu_data("mean", tmp_path / "none")
    assert (code, err) == (1, f"error: {tmp_path / 'none'}: Check failed: mdb_status == 0 (2 vs. 0) "
                              "No such file or directory\n")
