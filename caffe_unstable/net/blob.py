"""Caffe's Blob (include/caffe/blob.hpp): an N-D float32 array `data` with its gradient `diff`."""
import numpy as np

MAX_BLOB_AXES = 32


class Blob:
    """Holds `data` and `diff`, both float32 and C-contiguous, of one shape.

    Two blobs may share memory (Split outputs, Flatten/Reshape tops, shared params): `share_data` /
    `share_diff` make this blob's arrays views of another's, as Caffe's ShareData/ShareDiff do.
    """

    __slots__ = ("_data", "_diff", "_shared_data", "_shared_diff", "_diff_zero", "_diff_viewed", "__weakref__")

    def __init__(self, shape=()):
        shape = tuple(int(d) for d in shape)
        self._data = np.zeros(shape, np.float32)
        self._diff = np.zeros(shape, np.float32)
        self._shared_data = None  # Blob whose data this one views
        self._shared_diff = None
        self._diff_zero = False   # clear_diff was called and the zeros are not written yet
        self._diff_viewed = False  # another Blob's diff is a view of this one's (clear_diff then writes at once)

    # -- shape -------------------------------------------------------------------------------------
    @property
    def shape(self):
        return self._data.shape

    @property
    def count(self):
        return int(self._data.size)

    @property
    def num_axes(self):
        return self._data.ndim

    # pycaffe's legacy 4-D accessors (Blob::LegacyShape: axes beyond num_axes count as 1)
    def _legacy(self, index):
        shape = self._data.shape
        if len(shape) > 4:
            raise ValueError("Cannot use legacy accessors on Blobs with > 4 axes.")
        return shape[index] if index < len(shape) else 1

    num = property(lambda self: self._legacy(0))
    channels = property(lambda self: self._legacy(1))
    height = property(lambda self: self._legacy(2))
    width = property(lambda self: self._legacy(3))

    def reshape(self, *shape):
        """Reshape; values are kept when the count is unchanged (Caffe keeps its buffer), else zeroed."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = shape[0]
        shape = tuple(int(d) for d in shape)
        if shape == self._data.shape:
            return
        if any(d < 0 for d in shape):
            raise ValueError(f"negative blob dimension in {shape}")
        count = int(np.prod(shape, dtype=np.int64))
        if self._shared_data is not None or self._shared_diff is not None:
            # a shared top is re-pointed by its layer on every reshape
            self._shared_data = self._shared_diff = None
        if count == self._data.size:
            self._data = self._data.reshape(shape)
            self._diff = self._diff.reshape(shape)
        else:
            self._data = np.zeros(shape, np.float32)
            self._diff = np.zeros(shape, np.float32)
            self._diff_zero = False

    def reshape_like(self, other):
        self.reshape(other.shape)

    def shape_at(self, axis):
        return self._data.shape[self.canonical_axis(axis)]

    def canonical_axis(self, axis):
        n = self._data.ndim
        if not -n <= axis < max(n, 1):
            raise ValueError(f"axis {axis} out of range for a {n}-D blob")
        return axis + n if axis < 0 else axis

    def count_range(self, start, end=None):
        shape = self._data.shape
        end = len(shape) if end is None else end
        return int(np.prod(shape[start:end], dtype=np.int64))

    # -- values ------------------------------------------------------------------------------------
    @property
    def data(self):
        return self._data

    @data.setter
    def data(self, value):
        self._data[...] = value

    @property
    def diff(self):
        if self._diff_zero:
            self._diff_zero = False
            self._diff.fill(0)
        return self._diff

    @diff.setter
    def diff(self, value):
        self._diff_zero = False
        self._diff[...] = value

    def clear_diff(self):
        """diff = 0 (Caffe's ClearParamDiffs). Where no other Blob views this diff, the zeros are written only
        when the diff is next read, and a layer that takes it through `diff_to_accumulate` writes its gradient
        instead of adding it to zeros: a large weight's diff then costs one pass per iteration, not three."""
        if self._diff_viewed or self._shared_diff is not None:
            self._diff.fill(0)
        else:
            self._diff_zero = True

    def diff_to_accumulate(self):
        """(diff, zero): the diff array a gradient is added into, and True when it is all zeros (the caller may
        then overwrite it, since 0 + g == g)."""
        zero = self._diff_zero
        self._diff_zero = False
        return self._diff, zero

    def set_data(self, array):
        """Replace the data buffer (same shape not required); used by layers that produce new arrays."""
        self._data = np.ascontiguousarray(array, np.float32)
        if self._diff.shape != self._data.shape:
            self._diff = np.zeros(self._data.shape, np.float32)
            self._diff_zero = False

    def share_data(self, other, shape=None):
        """Make `data` a view of `other.data` (optionally reshaped), as Caffe's Blob::ShareData."""
        self._data = other._data.reshape(self._data.shape if shape is None else shape)
        if self._diff.shape != self._data.shape:
            self._diff = np.zeros(self._data.shape, np.float32)
            self._diff_zero = False
        self._shared_data = other

    def share_diff(self, other, shape=None):
        other._diff_viewed = True
        self._diff = other.diff.reshape(self._data.shape if shape is None else shape)
        self._diff_zero = False
        self._shared_diff = other

    def __repr__(self):
        return f"<Blob {self.shape}>"
