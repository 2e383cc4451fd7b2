"""Writing an LMDB as Caffe's converters do (util/db_lmdb.cpp, db::NEW): keys and serialized Datums in the unnamed
main database, committed every 1000 puts, the map size doubled on MDB_MAP_FULL; caffe.md §1.11.

Two things differ on purpose: the database is built in a hidden temporary folder beside the target and renamed
onto it when complete (an interrupted run leaves no half-written database that a Data layer would read), and an
existing target is refused with a message instead of Caffe's `mkdir ... failed` abort.
"""
import os
import shutil
import tempfile

from ..errors import CaffeUnstableError

COMMIT_EVERY = 1000            # every Caffe converter commits its transaction every 1000 puts
INITIAL_MAP_SIZE = 1 << 20     # LMDB's own default map size (mdb.c DEFAULT_MAPSIZE); Caffe never sets one


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


class LMDBWriter:
    """A new LMDB at `path`; use as a context manager: the folder appears at `path` only after a clean exit.

    put(key, value) buffers a record (bytes); every `commit_every` puts the buffer is written in one transaction
    (Caffe's LMDBTransaction::Commit), retried with a doubled map size while LMDB reports MDB_MAP_FULL.
    """

    def __init__(self, path, commit_every=COMMIT_EVERY, map_size=INITIAL_MAP_SIZE):
        import lmdb

        self.path = os.fspath(path)
        if os.path.lexists(self.path):
            raise CaffeUnstableError(self.path, "already exists; Caffe's converters never write into an existing "
                                                "database (remove it or choose another name)")
        parent = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(parent):
            raise CaffeUnstableError(self.path, f"cannot create the database: folder {parent} does not exist")
        self.commit_every = commit_every
        self.count = 0                     # records committed so far
        self._keys, self._values = [], []
        self._tmp = tempfile.mkdtemp(prefix="." + os.path.basename(self.path) + ".", suffix=".tmp", dir=parent)
        os.chmod(self._tmp, 0o777 & ~_umask())     # mkdtemp makes it 0700; a database folder is a plain mkdir
        try:
            self._env = lmdb.open(self._tmp, map_size=map_size, subdir=True, metasync=False, sync=False)
        except lmdb.Error as exc:
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise CaffeUnstableError(self.path, f"cannot create LMDB: {exc}") from None

    def put(self, key, value):
        """Buffer one record; returns True when this put completed a commit of `commit_every` records."""
        self._keys.append(key)
        self._values.append(value)
        if len(self._keys) >= self.commit_every:
            self.commit()
            return True
        return False

    @property
    def pending(self):
        """Records put but not yet committed."""
        return len(self._keys)

    def commit(self):
        """Write the buffered records in one transaction; on MDB_MAP_FULL double the map size and start over."""
        import lmdb

        if not self._keys:
            return
        while True:
            try:
                with self._env.begin(write=True) as txn:
                    for key, value in zip(self._keys, self._values):
                        txn.put(key, value)
                break
            except lmdb.MapFullError:     # the transaction was aborted by the with-block
                self._env.set_mapsize(self._env.info()["map_size"] * 2)
        self.count += len(self._keys)
        self._keys, self._values = [], []

    def close(self):
        """Commit the rest, flush, and move the finished database to `path`."""
        self.commit()
        self._env.sync(True)
        self._env.close()
        try:
            os.rename(self._tmp, self.path)
        except OSError as exc:
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise CaffeUnstableError(self.path, f"cannot move the finished database into place: "
                                                f"{exc.strerror or exc}") from None

    def abort(self):
        """Drop everything written so far; nothing appears at `path`."""
        self._env.close()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False
