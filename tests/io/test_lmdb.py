"""io/lmdb.py: Caffe's LMDB writer (commit every 1000, grow the map on MDB_MAP_FULL), built beside the target."""
import os

import lmdb
import pytest

from caffe_unstable.errors import CaffeUnstableError
from caffe_unstable.io.lmdb import LMDBWriter


def read_all(path):
    env = lmdb.open(str(path), readonly=True, lock=False)
    with env.begin() as txn:
        items = list(txn.cursor())
    env.close()
    return items


def test_commits_every_1000_and_grows_a_full_map(tmp_path):
    out = tmp_path / "db"
    records = [(b"%08d" % i, bytes([i % 256]) * 300) for i in range(2500)]
    with LMDBWriter(out, map_size=64 * 1024) as db:        # far too small: needs several doublings
        committed = [db.put(k, v) for k, v in records]
        assert db.count == 2000 and db.pending == 500
        assert not out.exists()                             # nothing at the target until complete
    assert [i + 1 for i, c in enumerate(committed) if c] == [1000, 2000]
    assert db.count == 2500
    assert sorted(os.listdir(out)) == ["data.mdb", "lock.mdb"]
    assert read_all(out) == records
    assert os.listdir(tmp_path) == ["db"]                   # no temporary folder left behind


def test_an_interrupted_write_leaves_nothing(tmp_path):
    out = tmp_path / "db"
    with pytest.raises(RuntimeError):
        with LMDBWriter(out, commit_every=2) as db:
            for i in range(5):
                db.put(b"%d" % i, b"x")
            raise RuntimeError("interrupted")
    assert os.listdir(tmp_path) == []


def test_refuses_an_existing_output(tmp_path):
    (tmp_path / "db").mkdir()
    with pytest.raises(CaffeUnstableError) as info:
        LMDBWriter(tmp_path / "db")
    assert info.value.line() == (f"{tmp_path / 'db'}: already exists; Caffe's converters never write into an "
                                 "existing database (remove it or choose another name)")
    with pytest.raises(CaffeUnstableError, match="does not exist"):
        LMDBWriter(tmp_path / "no" / "db")
