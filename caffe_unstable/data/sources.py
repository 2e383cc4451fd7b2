"""Record sources of Caffe's data layers: LMDB (util/db_lmdb.cpp, layers/data_layer.cpp), Datum batches,
HDF5 file lists (layers/hdf5_data_layer.cpp) and image lists (layers/image_data_layer.cpp); caffe.md §1.11, §3.9.

Errors are CaffeUnstableError whose message names the file; the layers re-raise them under their own name.
"""
import os
import re

import numpy as np
from numba import njit

from ..errors import CaffeUnstableError
from ..proto import caffe_pb2

F32 = np.float32

# -- LMDB ----------------------------------------------------------------------------------------------------------

_ENVS = {}   # realpath -> [env, users]: LMDB forbids opening one environment twice in a process (lmdb.h, "Caveats")


def _open_env(path):
    import lmdb

    key = os.path.realpath(path)
    if key in _ENVS:
        _ENVS[key][1] += 1
        return _ENVS[key][0]
    if not os.path.isdir(path):
        # Caffe: MDB_CHECK(mdb_env_open(...)) with errno 2
        raise CaffeUnstableError(path, "Check failed: mdb_status == 0 (2 vs. 0) No such file or directory")
    try:
        env = lmdb.open(path, readonly=True, lock=True)
    except lmdb.Error as first:
        try:   # a read-only copy without a writable lock.mdb: Caffe's ALLOW_LMDB_NOLOCK retries with MDB_NOLOCK
            env = lmdb.open(path, readonly=True, lock=False)
        except lmdb.Error:
            raise CaffeUnstableError(path, f"cannot open LMDB: {first}") from None
    _ENVS[key] = [env, 1]
    return env


def _release_env(path):
    key = os.path.realpath(path)
    entry = _ENVS.get(key)
    if entry is not None:
        entry[1] -= 1
        if entry[1] <= 0:
            del _ENVS[key]
            entry[0].close()


class LMDBReader:
    """A read-only cursor over an LMDB's main database in key byte order, wrapping to the first key at the end.

    `wraps` counts the wraps (the layer may log Caffe's "Restarting data prefetching from start."; nothing here logs).
    Keys and values are bytes; read(n, copy=False) gives memoryviews into the memory map instead (no copy:
    measured 7x faster for 196 KB records), which are valid only while this reader is open.
    """

    def __init__(self, path):
        self.path = path
        self.wraps = 0
        self._env = None
        self._env = _open_env(path)
        self._txn = self._env.begin(buffers=True)   # one read snapshot for the reader's life, as Caffe's cursor
        self._cursor = self._txn.cursor()
        if not self._cursor.first():
            self.close()
            raise CaffeUnstableError(path, "the database is empty (no records)")

    def peek(self):
        """(key, value) at the cursor, without moving it."""
        return bytes(self._cursor.key()), bytes(self._cursor.value())

    def read(self, n, copy=True):
        """The next n (keys, values), wrapping to the first record after the last."""
        cursor = self._cursor
        keys, values = [], []
        for _ in range(n):
            key, value = cursor.item()
            keys.append(bytes(key))
            values.append(bytes(value) if copy else value)
            if not cursor.next():
                cursor.first()
                self.wraps += 1
        return keys, values

    def close(self):
        if self._env is not None:
            self._txn.abort()
            self._env = None
            _release_env(self.path)

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def open_datum_db(source, backend):
    """Caffe's db::GetDB(backend)->Open(source, READ). LevelDB is not supported; a LEVELDB backend (the proto's
    default) pointing at an LMDB directory reads it as LMDB."""
    if backend == caffe_pb2.DataParameter.LMDB or os.path.isfile(os.path.join(source, "data.mdb")):
        return LMDBReader(source)
    missing = "" if os.path.exists(source) else " (and there is no such directory)"
    raise CaffeUnstableError(source, "LevelDB is not supported (backend: LEVELDB is data_param's default)"
                                     f"{missing}; convert the data to LMDB (cu-data) and set `backend: LMDB` in "
                                     "data_param")


# -- Datums --------------------------------------------------------------------------------------------------------

def parse_datums(values):
    return [caffe_pb2.Datum.FromString(v) for v in values]


def _name(key):
    return "record '" + (key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)) + "'"


def datum_array(datum, name="", where=""):
    """A non-encoded Datum's C×H×W values: uint8 from `data`, else float32 from `float_data` (caffe.md §1.11)."""
    shape = (datum.channels, datum.height, datum.width)
    count = shape[0] * shape[1] * shape[2]
    if len(datum.data):
        if len(datum.data) != count:
            raise CaffeUnstableError(where, f"{name}: data has {len(datum.data)} bytes, but channels*height*width "
                                            f"= {shape[0]}*{shape[1]}*{shape[2]} = {count}")
        return np.frombuffer(datum.data, np.uint8).reshape(shape)
    if len(datum.float_data) != count:
        raise CaffeUnstableError(where, f"{name}: float_data has {len(datum.float_data)} values, but "
                                        f"channels*height*width = {count}")
    return np.asarray(datum.float_data, F32).reshape(shape)


@njit(cache=True, nogil=True)
def _varint(buf, pos, end):
    """(value, next position) of the base-128 varint at buf[pos]; position -1 when it runs past `end`."""
    result = np.uint64(0)
    shift = np.uint64(0)
    while pos < end and shift < 64:
        b = buf[pos]
        pos += 1
        result |= np.uint64(b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += np.uint64(7)
    return result, -1


@njit(cache=True, nogil=True)
def _int32(value):
    """An int32 field's varint value (negatives are 10-byte varints): the low 32 bits, signed."""
    low = np.int64(value & np.uint64(0xFFFFFFFF))
    return low - (np.int64(1) << 32) if low >= (np.int64(1) << 31) else low


@njit(cache=True, nogil=True)
def _scan_records(buf, starts, out):
    """out[i] = (channels, height, width, label, data offset in buf, data length, ok) of the serialized Datum
    buf[starts[i]:starts[i + 1]], read off the wire format; ok 0 when the record needs the full parser
    (encoded, float_data, an unexpected wire type, malformed)."""
    for i in range(starts.size - 1):
        pos, end = starts[i], starts[i + 1]
        f = np.zeros(5, np.int64)                 # channels, height, width, label, encoded
        offset = length = 0
        ok = 1
        while pos < end:
            key, pos = _varint(buf, pos, end)
            if pos < 0:
                ok = 0
                break
            field, wire = np.int64(key >> np.uint64(3)), np.int64(key & np.uint64(7))
            if wire == 0:
                value, pos = _varint(buf, pos, end)
                if pos < 0:
                    ok = 0
                    break
                # Datum fields 1-3 channels/height/width, 5 label, 7 encoded
                slot = (0 if field == 1 else 1 if field == 2 else 2 if field == 3 else 3 if field == 5
                        else 4 if field == 7 else -1)
                if slot >= 0:
                    f[slot] = _int32(value)
            elif wire == 2:
                n, pos = _varint(buf, pos, end)
                if pos < 0 or field == 6:         # truncated, or packed float_data
                    ok = 0
                    break
                if field == 4:
                    offset, length = pos, np.int64(n)
                pos += np.int64(n)
            elif wire == 5 and field != 6:
                pos += 4
            elif wire == 1:
                pos += 8
            else:                                 # unpacked float_data, or a wire type we do not expect
                ok = 0
                break
        if pos != end or f[4]:
            ok = 0
        out[i, 0], out[i, 1], out[i, 2], out[i, 3] = f[0], f[1], f[2], f[3]
        out[i, 4], out[i, 5], out[i, 6] = offset, length, ok


@njit(cache=True, nogil=True)
def _gather_bytes(buf, offsets, flat):
    """flat[i, :] = buf[offsets[i]:offsets[i] + flat.shape[1]]."""
    width = flat.shape[1]
    for i in range(offsets.size):
        o = offsets[i]
        for j in range(width):
            flat[i, j] = buf[o + j]


def scan_datums(values):
    """Scan serialized Datums (bytes-like) at once: (the records joined into one uint8 array, an (n, 7) int64
    table of channels, height, width, label, data offset into the joined array, data length, ok)."""
    joined = np.frombuffer(b"".join(values), np.uint8)
    starts = np.zeros(len(values) + 1, np.int64)
    np.cumsum(np.fromiter(map(len, values), np.int64, len(values)), out=starts[1:])
    table = np.empty((len(values), 7), np.int64)
    _scan_records(joined, starts, table)
    return joined, table


def scan_datum(raw):
    """Read a serialized Datum's wire format without copying `data`: (channels, height, width, label, data offset,
    data length), or None when the record needs the full parser (encoded, float_data, malformed)."""
    _, table = scan_datums([raw])
    row = [int(v) for v in table[0]]
    return tuple(row[:6]) if row[6] else None


def raw_datums_to_batch(values, keys, decode, where=""):
    """Serialized Datums -> (batch, labels, names), as datums_to_batch. Byte Datums of one shape (the usual
    case) are scanned and copied by numba kernels, straight from the records into the (N,C,H,W) uint8 batch;
    others go through protobuf."""
    if values:
        joined, table = scan_datums(values)
        c, h, w = (int(v) for v in table[0, :3])
        if (table[:, 6].all() and (table[:, 0] == c).all() and (table[:, 1] == h).all()
                and (table[:, 2] == w).all() and (table[:, 5] == c * h * w).all()):
            batch = np.empty((len(values), c, h, w), np.uint8)
            _gather_bytes(joined, table[:, 4].copy(), batch.reshape(len(values), -1))
            return batch, table[:, 3].astype(F32), [_name(k) for k in keys]
    return datums_to_batch(parse_datums(values), keys, decode, where)


def datums_to_batch(datums, keys, decode, where=""):
    """Stack Datums for the transformer: (batch, labels, names). batch is one (N,C,H,W) array (uint8 when every Datum
    holds bytes) when all share the first's shape, else a list of C×H×W arrays (the transformer checks each).
    `decode(bytes, name)` turns an encoded Datum into C×H×W uint8. labels: float32 (N,) of Datum.label;
    names: "record '<key>'" for error messages."""
    labels = np.fromiter((d.label for d in datums), F32, len(datums))
    names = [_name(k) for k in keys]
    plain = not any(d.encoded for d in datums)
    if plain:
        first = datums[0]
        shape = (first.channels, first.height, first.width)
        same = all((d.channels, d.height, d.width) == shape for d in datums)
        count = shape[0] * shape[1] * shape[2]
        if same and all(len(d.data) == count for d in datums):
            # the fast path: one join, one frombuffer
            joined = b"".join(d.data for d in datums)
            return np.frombuffer(joined, np.uint8).reshape((len(datums),) + shape), labels, names
    items = [decode(d.data, names[i]) if d.encoded else datum_array(d, names[i], where)
             for i, d in enumerate(datums)]
    if all(item.shape == items[0].shape for item in items):
        return np.stack(items), labels, names
    return items, labels, names


# -- HDF5 file lists -----------------------------------------------------------------------------------------------

def read_hdf5_list(source):
    """The whitespace-separated HDF5 paths of a HDF5Data source file (relative to the working directory)."""
    try:
        with open(source) as f:
            names = f.read().split()
    except OSError:
        raise CaffeUnstableError("", f"Failed to open source file: {source}") from None
    if not names:
        raise CaffeUnstableError("", f"Must have at least 1 HDF5 filename listed in {source}")
    return names


def load_hdf5_rows(filename, names):
    """The datasets `names` of one HDF5 file as float32 arrays (≥ 1-D, float or integer; HDF5 converts)."""
    import h5py

    try:
        f = h5py.File(filename, "r")
    except OSError:
        raise CaffeUnstableError("", f"Failed opening HDF5 file: {filename}") from None
    arrays = []
    with f:
        for name in names:
            ds = f.get(name)
            if not isinstance(ds, h5py.Dataset):
                raise CaffeUnstableError("", f"{filename}: Failed to find HDF5 dataset {name}")
            if ds.ndim < 1:
                raise CaffeUnstableError("", f"{filename}: dataset {name}: Check failed: ndims >= min_dim "
                                             f"({ds.ndim} vs. 1)")
            if ds.dtype.kind not in "iuf":
                raise CaffeUnstableError("", f"{filename}: dataset {name}: Unsupported datatype ({ds.dtype}); "
                                             "expected float or integer")
            arrays.append(np.ascontiguousarray(ds.astype(F32)[()]))
    num = arrays[0].shape[0]
    for name, a in zip(names[1:], arrays[1:]):
        if a.shape[0] != num:
            raise CaffeUnstableError("", f"{filename}: Check failed: hdf_blobs_[i]->shape(0) == num "
                                         f"({a.shape[0]} vs. {num}) (datasets {name} and {names[0]})")
    if num == 0:
        raise CaffeUnstableError("", f"{filename}: dataset {names[0]} has no rows")
    return arrays


class HDF5ListSource:
    """HDF5Data's reader: rows one at a time across the listed files, wrapping (also mid-batch); with `shuffle`,
    file order and row order are permuted with `rng` at load and at every wrap, as Caffe's Next() does."""

    def __init__(self, source, names, shuffle, rng):
        self.names = list(names)
        self.files = read_hdf5_list(source)
        self.shuffle = shuffle
        self.rng = rng
        self.file_perm = np.arange(len(self.files))
        if shuffle:
            rng.shuffle(self.file_perm)
        self.current_file = 0
        self.row_shapes = None
        self._load()
        self.row_shapes = [a.shape[1:] for a in self.arrays]

    def _load(self):
        filename = self.files[self.file_perm[self.current_file]]
        self.arrays = load_hdf5_rows(filename, self.names)
        if self.row_shapes is not None:
            for name, a, shape in zip(self.names, self.arrays, self.row_shapes):
                if a.shape[1:] != shape:
                    raise CaffeUnstableError("", f"{filename}: dataset {name} has rows of shape {a.shape[1:]}, "
                                                 f"but the top was shaped {shape} from the first file")
        self.num_rows = self.arrays[0].shape[0]
        self.row_perm = np.arange(self.num_rows)
        if self.shuffle:
            self.rng.shuffle(self.row_perm)
        self.current_row = 0

    def _next_file(self):
        """Caffe's Next() after the last row of the current file."""
        if len(self.files) > 1:
            self.current_file += 1
            if self.current_file == len(self.files):
                self.current_file = 0
                if self.shuffle:
                    self.rng.shuffle(self.file_perm)
            self._load()
        self.current_row = 0
        if self.shuffle:
            self.rng.shuffle(self.row_perm)

    def read_into(self, outs):
        """Fill each out[j] (batch, *row_shape[j]) with the next rows, one contiguous run per file segment."""
        batch = outs[0].shape[0]
        filled = 0
        while filled < batch:
            k = min(batch - filled, self.num_rows - self.current_row)
            rows = self.row_perm[self.current_row:self.current_row + k]
            for out, a in zip(outs, self.arrays):
                out[filled:filled + k] = a[rows] if self.shuffle else a[self.current_row:self.current_row + k]
            filled += k
            self.current_row += k
            if self.current_row == self.num_rows:
                self._next_file()


# -- image lists ---------------------------------------------------------------------------------------------------

_ATOI = re.compile(r"\s*([+-]?\d+)")


def atoi(text):
    """C's atoi: leading whitespace, optional sign, digits; 0 when there are none."""
    m = _ATOI.match(text)
    return int(m.group(1)) if m else 0


def read_image_list(source):
    """ImageData's list: each line split at its LAST space into (path, atoi(label)), as std::getline reads it."""
    try:
        with open(source, newline="") as f:
            text = f.read()
    except OSError:
        raise CaffeUnstableError("", f"Failed to open image list {source}: No such file or directory") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()          # getline yields no line after a final newline
    out = []
    for line in lines:
        pos = line.rfind(" ")
        out.append((line, atoi(line)) if pos < 0 else (line[:pos], atoi(line[pos + 1:])))
    if not out:
        raise CaffeUnstableError("", f"{source}: File is empty")
    return out


def read_image(filename, new_height=0, new_width=0, is_color=True):
    """ReadImageToCVMat: cv2.imread as BGR (or gray), resized bilinearly to new_width×new_height when both > 0.
    Returns HxWxC / HxW uint8, or None when OpenCV cannot read the file."""
    import cv2

    image = cv2.imread(filename, cv2.IMREAD_COLOR if is_color else cv2.IMREAD_GRAYSCALE)
    if image is None:
        return None
    if new_height > 0 and new_width > 0:
        image = cv2.resize(image, (new_width, new_height), interpolation=cv2.INTER_LINEAR)
    return image
