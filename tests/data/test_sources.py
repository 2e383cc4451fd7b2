"""Record sources (data/sources.py): real LMDBs (py-lmdb) and HDF5 lists (h5py) written in tmp_path."""
import h5py
import lmdb
import numpy as np
import pytest

from caffe_unstable.data.sources import (HDF5ListSource, LMDBReader, atoi, datums_to_batch, open_datum_db,
                                         parse_datums, read_image_list)
from caffe_unstable.errors import CaffeUnstableError
from caffe_unstable.proto import caffe_pb2

LMDB, LEVELDB = caffe_pb2.DataParameter.LMDB, caffe_pb2.DataParameter.LEVELDB


def datum(c, h, w, label, fill=None, floats=False):
    d = caffe_pb2.Datum(channels=c, height=h, width=w, label=label)
    values = np.full(c * h * w, label if fill is None else fill)
    if floats:
        d.float_data.extend(values.astype(np.float32).tolist())
    else:
        d.data = values.astype(np.uint8).tobytes()
    return d


def write_lmdb(path, records):
    """records: {key (str): Datum}; written in the given order (LMDB sorts the keys)."""
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for key, d in records.items():
            txn.put(key.encode(), d.SerializeToString())
    env.close()
    return str(path)


def test_lmdb_reads_in_key_byte_order_and_wraps(tmp_path):
    order = [3, 0, 4, 1, 2]
    path = write_lmdb(tmp_path / "db", {"%08d" % i: datum(1, 1, 1, i) for i in order})
    reader = LMDBReader(path)
    keys, values = reader.read(7)
    assert keys == [b"%08d" % i for i in (0, 1, 2, 3, 4, 0, 1)]
    assert [d.label for d in parse_datums(values)] == [0, 1, 2, 3, 4, 0, 1]
    assert reader.wraps == 1
    assert reader.peek()[0] == b"00000002"
    reader.close()


def test_two_readers_of_one_lmdb_are_independent(tmp_path):
    path = write_lmdb(tmp_path / "db", {"%08d" % i: datum(1, 1, 1, i) for i in range(4)})
    a, b = LMDBReader(path), LMDBReader(path)
    assert a.read(3)[0] == [b"00000000", b"00000001", b"00000002"]
    assert b.read(2)[0] == [b"00000000", b"00000001"]
    a.close()
    assert b.read(2)[0] == [b"00000002", b"00000003"]    # closing one leaves the other open
    b.close()


def test_missing_lmdb_names_its_path(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(CaffeUnstableError, match=f"{missing}: Check failed: mdb_status == 0 .*No such file"):
        open_datum_db(missing, LMDB)


def test_leveldb_backend_reads_an_lmdb_directory_but_refuses_leveldb(tmp_path):
    path = write_lmdb(tmp_path / "db", {"00000000": datum(1, 1, 1, 5)})
    assert parse_datums(open_datum_db(path, LEVELDB).read(1)[1])[0].label == 5
    leveldb = tmp_path / "ldb"
    leveldb.mkdir()
    (leveldb / "CURRENT").write_text("MANIFEST-000001\n")
    with pytest.raises(CaffeUnstableError, match="LevelDB is not supported.*backend: LMDB"):
        open_datum_db(str(leveldb), LEVELDB)


def test_empty_lmdb_is_an_error(tmp_path):
    path = write_lmdb(tmp_path / "db", {})
    with pytest.raises(CaffeUnstableError, match="empty"):
        LMDBReader(path)


def no_decode(data, name):
    raise AssertionError("nothing here is encoded")


def test_datum_batch_fast_path_is_uint8():
    datums = [datum(2, 3, 4, i) for i in range(3)]
    batch, labels, names = datums_to_batch(datums, [b"a", b"b", b"c"], no_decode)
    assert batch.dtype == np.uint8 and batch.shape == (3, 2, 3, 4)
    np.testing.assert_array_equal(batch, np.arange(3, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 3, 4)))
    assert labels.dtype == np.float32 and labels.tolist() == [0, 1, 2]
    assert names == ["record 'a'", "record 'b'", "record 'c'"]


def test_datum_batch_float_data_when_data_is_empty():
    datums = [datum(1, 2, 2, 1, fill=0.5, floats=True), datum(1, 2, 2, 2, fill=7)]
    batch, labels, _ = datums_to_batch(datums, [b"a", b"b"], no_decode)
    assert batch.dtype == np.float32
    np.testing.assert_array_equal(batch[:, 0, 0, 0], [0.5, 7.0])


def test_datum_batch_of_mixed_sizes_is_a_list_and_bad_sizes_fail():
    batch, _, _ = datums_to_batch([datum(1, 2, 2, 0), datum(1, 3, 3, 0)], [b"a", b"b"], no_decode)
    assert isinstance(batch, list) and [b.shape for b in batch] == [(1, 2, 2), (1, 3, 3)]
    bad = datum(1, 2, 2, 0)
    bad.data = b"\0" * 3
    with pytest.raises(CaffeUnstableError, match=r"src: record 'k': data has 3 bytes, but channels\*height\*width"):
        datums_to_batch([datum(1, 2, 2, 0), bad], [b"j", b"k"], no_decode, "src")


def write_h5_list(tmp_path, sizes, dtype=np.float32):
    """Files whose `data` row r of file f is (f*100 + r), `label` the same; returns (list path, all rows)."""
    paths, rows = [], []
    for f, n in enumerate(sizes):
        values = np.arange(n) + 100 * f
        path = tmp_path / f"part{f}.h5"
        with h5py.File(path, "w") as h:
            h["data"] = (values[:, None, None] * np.ones((1, 2, 3))).astype(dtype)
            h["label"] = values.astype(np.int32)
        paths.append(str(path))
        rows.extend(values)
    listing = tmp_path / "list.txt"
    listing.write_text("  ".join(paths[:1]) + "\n" + "\n".join(paths[1:]) + "\n")
    return str(listing), np.array(rows)


def test_hdf5_rows_wrap_across_files_in_the_middle_of_a_batch(tmp_path):
    listing, rows = write_h5_list(tmp_path, [5, 3])
    src = HDF5ListSource(listing, ["data", "label"], False, np.random.default_rng(0))
    assert [tuple(s) for s in src.row_shapes] == [(2, 3), ()]
    for k in range(5):
        data, label = np.empty((3, 2, 3), np.float32), np.empty(3, np.float32)
        src.read_into([data, label])
        want = rows[np.arange(3 * k, 3 * k + 3) % len(rows)]
        np.testing.assert_array_equal(label, want)
        np.testing.assert_array_equal(data[:, 1, 2], want)


def test_hdf5_integer_and_double_datasets_become_float32(tmp_path):
    listing, rows = write_h5_list(tmp_path, [4], dtype=np.float64)
    src = HDF5ListSource(listing, ["data", "label"], False, np.random.default_rng(0))
    assert src.arrays[0].dtype == np.float32 and src.arrays[1].dtype == np.float32


def test_hdf5_shuffle_visits_every_row_once_per_pass(tmp_path):
    listing, rows = write_h5_list(tmp_path, [6])
    src = HDF5ListSource(listing, ["label"], True, np.random.default_rng(1))
    seen = []
    for _ in range(3):
        out = np.empty(6, np.float32)
        src.read_into([out])
        assert sorted(out.tolist()) == sorted(rows.tolist())
        seen.append(out.tolist())
    assert len({tuple(s) for s in seen}) > 1


def test_hdf5_errors_name_the_file(tmp_path):
    listing, _ = write_h5_list(tmp_path, [2])
    with pytest.raises(CaffeUnstableError, match="part0.h5: Failed to find HDF5 dataset nope"):
        HDF5ListSource(listing, ["nope"], False, np.random.default_rng(0))
    bad = tmp_path / "bad.txt"
    bad.write_text(str(tmp_path / "missing.h5"))
    with pytest.raises(CaffeUnstableError, match=f"Failed opening HDF5 file: {tmp_path / 'missing.h5'}"):
        HDF5ListSource(str(bad), ["data"], False, np.random.default_rng(0))
    with pytest.raises(CaffeUnstableError, match=f"Failed to open source file: {tmp_path / 'x.txt'}"):
        HDF5ListSource(str(tmp_path / "x.txt"), ["data"], False, np.random.default_rng(0))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    with pytest.raises(CaffeUnstableError, match="Must have at least 1 HDF5 filename listed in"):
        HDF5ListSource(str(empty), ["data"], False, np.random.default_rng(0))


def test_image_list_splits_at_the_last_space(tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("a/b c.png 3\nplain.jpg 12abc\nnolabel.png\nx.png -2\n")
    assert read_image_list(str(listing)) == [("a/b c.png", 3), ("plain.jpg", 12), ("nolabel.png", 0),
                                              ("x.png", -2)]
    assert (atoi(" 7\r"), atoi("x1"), atoi("+4")) == (7, 0, 4)
    empty = tmp_path / "e.txt"
    empty.write_text("")
    with pytest.raises(CaffeUnstableError, match="File is empty"):
        read_image_list(str(empty))


def test_scan_datum_matches_protobuf():
    from caffe_unstable.data.sources import raw_datums_to_batch, scan_datum

    rng = np.random.default_rng(0)
    datums = [caffe_pb2.Datum(channels=3, height=4, width=5, label=int(l),
                              data=rng.integers(0, 256, 60, dtype=np.uint8).tobytes())
              for l in (-1, 0, 7, 2 ** 31 - 1, -2 ** 31)]
    raw = [d.SerializeToString() for d in datums]
    assert [scan_datum(r)[3] for r in raw] == [-1, 0, 7, 2 ** 31 - 1, -2 ** 31]
    keys = [b"%d" % i for i in range(5)]
    fast = raw_datums_to_batch([memoryview(r) for r in raw], keys, no_decode)
    slow = datums_to_batch(datums, keys, no_decode)
    np.testing.assert_array_equal(fast[0], slow[0])
    np.testing.assert_array_equal(fast[1], slow[1])
    assert fast[2] == slow[2]
    assert scan_datum(caffe_pb2.Datum(data=b"x", encoded=True).SerializeToString()) is None
    assert scan_datum(datum(1, 1, 2, 0, floats=True).SerializeToString()) is None
    assert scan_datum(b"\x0a\xff") is None                # truncated
