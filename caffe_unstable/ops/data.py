"""Caffe's data layers: Input (layers/input_layer.cpp), Data, HDF5Data, MemoryData, ImageData, DummyData."""
import numpy as np

from ..data.sources import HDF5ListSource, open_datum_db, raw_datums_to_batch, read_image, read_image_list
from ..data.transform import DataTransformer, chw
from ..errors import CaffeUnstableError
from ..proto import caffe_pb2
from .base import Layer, register


@register
class Input(Layer):
    """Tops shaped from input_param.shape (one shape for all tops, one per top, or none); forward does nothing."""

    type = "Input"
    exact_num_bottom_blobs = 0
    min_top_blobs = 1

    def layer_setup(self, bottom, top):
        shapes = self.param.input_param.shape
        if len(shapes) not in (0, 1, len(top)):
            raise self.error("Must specify 'shape' once, once per top blob, or not at all: "
                             f"{len(top)} tops vs. {len(shapes)} shapes.")
        for i, t in enumerate(top):
            if shapes:
                t.reshape([int(d) for d in shapes[0 if len(shapes) == 1 else i].dim])

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        pass


# -- layers that read records (data_layer.cpp, hdf5_data_layer.cpp, memory_data_layer.cpp, image_data_layer.cpp) --
# Caffe prefetches in a background thread; here each forward reads its batch synchronously, in the same order.
# Data layers have no bottoms and nothing to do in backward; their Reshape is empty (tops are shaped by forward).

class _DataLayer(Layer):
    exact_num_bottom_blobs = 0

    def reshape(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        pass

    def _source(self, call, *args):
        """Run a data/sources.py call, re-raising its errors under this layer's name."""
        try:
            return call(*args)
        except CaffeUnstableError as e:
            if e.where == self.where:
                raise
            raise self.error(e.line()) from None

    def _positive_batch_size(self, batch_size, param_name):
        if batch_size <= 0:
            raise self.error(f"{param_name}.batch_size must be positive (got {batch_size})")
        return int(batch_size)


@register
class Data(_DataLayer):
    """Datums from an LMDB in key order, wrapping at the end; tops data (batch, C, H', W') and optional label."""

    type = "Data"
    min_top_blobs = 1
    max_top_blobs = 2

    def layer_setup(self, bottom, top):
        p = self.param.data_param
        self.batch_size = self._positive_batch_size(p.batch_size, "data_param")
        self.source = p.source
        self.transformer = self._source(DataTransformer, self.param.transform_param, self.phase, self.rng, self.where)
        self.db = self._source(open_datum_db, p.source, p.backend)
        self.log.info(f"Opened lmdb {p.source}", "db_lmdb.cpp:35")
        key, value = self.db.peek()
        datum = caffe_pb2.Datum.FromString(value)
        shape = self._item_shape(datum, key)
        top[0].reshape((self.batch_size,) + shape)
        self.log.info("output data size: " + ",".join(str(d) for d in top[0].shape), "data_layer.cpp:45")
        if len(top) > 1:
            top[1].reshape((self.batch_size,))

    def _item_shape(self, datum, key):
        if datum.encoded:
            c, h, w = self._decode(datum.data, f"record '{key.decode('utf-8', 'replace')}'").shape
        else:
            c, h, w = datum.channels, datum.height, datum.width
        return self._source(self.transformer.infer_shape, c, h, w)

    def _decode(self, data, name):
        return self._source(self.transformer.decode, data, f"{self.source}: {name}")

    def forward(self, bottom, top):
        wraps = getattr(self.db, "wraps", 0)
        keys, values = self.db.read(self.batch_size, copy=False)   # views into the map, used before returning
        if getattr(self.db, "wraps", 0) != wraps:
            self.log.info("Restarting data prefetching from start.", "data_layer.cpp:73")
        batch, labels, names = self._source(raw_datums_to_batch, values, keys, self._decode, self.source)
        names = [f"{self.source}: {n}" for n in names]
        first = batch[0].shape
        shape = (self.batch_size,) + self._source(self.transformer.infer_shape, *first)
        top[0].reshape(shape)
        self._source(self.transformer.transform, batch, names, top[0].data)
        if len(top) > 1:
            top[1].reshape((self.batch_size,))
            top[1].data[...] = labels


@register
class HDF5Data(_DataLayer):
    """Rows of the HDF5 datasets named like the tops, from the files listed in `source` (no transformation)."""

    type = "HDF5Data"
    min_top_blobs = 1

    def layer_setup(self, bottom, top):
        if self.param.HasField("transform_param"):
            raise self.error(f"{self.type} does not transform data.")
        p = self.param.hdf5_data_param
        self.batch_size = self._positive_batch_size(p.batch_size, "hdf5_data_param")
        self.log.info(f"Loading list of HDF5 filenames from: {p.source}", "hdf5_data_layer.cpp:81")
        self.reader = self._source(HDF5ListSource, p.source, list(self.param.top), p.shuffle, self.rng)
        self.log.info(f"Number of HDF5 files: {len(self.reader.files)}", "hdf5_data_layer.cpp:95")
        for t, row_shape in zip(top, self.reader.row_shapes):
            t.reshape((self.batch_size,) + tuple(row_shape))

    def forward(self, bottom, top):
        for t, row_shape in zip(top, self.reader.row_shapes):
            t.reshape((self.batch_size,) + tuple(row_shape))
        self._source(self.reader.read_into, [t.data for t in top])


@register
class MemoryData(_DataLayer):
    """Batches of arrays attached with reset(data, labels) (pycaffe's net.set_input_arrays); not transformed."""

    type = "MemoryData"
    exact_num_top_blobs = 2

    def layer_setup(self, bottom, top):
        p = self.param.memory_data_param
        self.batch_size, self.channels, self.height, self.width = p.batch_size, p.channels, p.height, p.width
        if self.batch_size * self.channels * self.height * self.width <= 0:
            raise self.error("batch_size, channels, height, and width must be specified and positive in "
                             "memory_data_param")
        top[0].reshape((self.batch_size, self.channels, self.height, self.width))
        top[1].reshape((self.batch_size,))
        self._data = self._labels = None
        self.pos = 0

    def reset(self, data, labels):
        """Attach float32 C-contiguous data (n, C, H, W) and labels (n,) or (n, 1, 1, 1); n a multiple of the batch
        size. The arrays are kept by reference, as Caffe keeps the pointers (pycaffe's _caffe.cpp checks)."""
        if isinstance(labels, np.ndarray) and labels.ndim == 1:
            labels = np.ascontiguousarray(labels[:, None, None, None])
        self._check_array(data, "data array", self.channels, self.height, self.width)
        self._check_array(labels, "labels array", 1, 1, 1)
        if data.shape[0] != labels.shape[0]:
            raise self.error("data and labels must have the same first dimension")
        if data.shape[0] == 0 or data.shape[0] % self.batch_size:
            raise self.error("first dimensions of input arrays must be a multiple of batch size")
        self._data, self._labels, self.n, self.pos = data, labels.reshape(-1), data.shape[0], 0

    def _check_array(self, arr, name, channels, height, width):
        if not isinstance(arr, np.ndarray) or not arr.flags.c_contiguous:
            raise self.error(f"{name} must be C contiguous")
        if arr.ndim != 4:
            raise self.error(f"{name} must be 4-d")
        if arr.dtype != np.float32:
            raise self.error(f"{name} must be float32")
        for what, got, want in (("number of channels", arr.shape[1], channels), ("height", arr.shape[2], height),
                                ("width", arr.shape[3], width)):
            if got != want:
                raise self.error(f"{name} has wrong {what}")

    def forward(self, bottom, top):
        if self._data is None:
            raise self.error("MemoryDataLayer needs to be initialized by calling Reset")
        bs = self.batch_size
        top[0].reshape((bs, self.channels, self.height, self.width))
        top[1].reshape((bs, 1, 1, 1))
        top[0].data[...] = self._data[self.pos:self.pos + bs]
        top[1].data[...] = self._labels[self.pos:self.pos + bs].reshape(bs, 1, 1, 1)
        self.pos = (self.pos + bs) % self.n


@register
class ImageData(_DataLayer):
    """Images listed in `source` ("<path> <label>" lines), read with OpenCV, optionally resized, then transformed."""

    type = "ImageData"
    exact_num_top_blobs = 2

    def layer_setup(self, bottom, top):
        p = self.param.image_data_param
        if not ((p.new_height == 0 and p.new_width == 0) or (p.new_height > 0 and p.new_width > 0)):
            raise self.error("Current implementation requires new_height and new_width to be set at the same time.")
        self.transformer = self._source(DataTransformer, self.param.transform_param, self.phase, self.rng, self.where)
        self.lines = self._source(read_image_list, p.source)
        if p.shuffle:
            self._shuffle()
        self.lines_id = 0
        if p.rand_skip:
            skip = int(self.rng.integers(0, 1 << 32)) % p.rand_skip
            if len(self.lines) <= skip:
                raise self.error(f"Check failed: lines_.size() > skip ({len(self.lines)} vs. {skip}) "
                                 "Not enough points to skip")
            self.lines_id = skip
        self.batch_size = p.batch_size
        if self.batch_size <= 0:
            raise self.error("Check failed: batch_size > 0 (0 vs. 0) Positive batch size required")
        image = self._read(self.lines_id)
        shape = self._source(self.transformer.infer_shape, *image.shape)
        top[0].reshape((self.batch_size,) + shape)
        top[1].reshape((self.batch_size,))

    def _shuffle(self):
        order = self.rng.permutation(len(self.lines))
        self.lines = [self.lines[i] for i in order]

    def _read(self, index):
        p = self.param.image_data_param
        path = self.lines[index][0]
        image = read_image(p.root_folder + path, p.new_height, p.new_width, p.is_color)
        if image is None:
            raise self.error(f"Could not load {path} (Could not open or find file {p.root_folder + path})")
        return chw(image)

    def forward(self, bottom, top):
        images, labels, names = [], [], []
        for _ in range(self.batch_size):
            images.append(self._read(self.lines_id))
            path, label = self.lines[self.lines_id]
            labels.append(label)
            names.append(path)
            self.lines_id += 1
            if self.lines_id >= len(self.lines):
                self.lines_id = 0
                if self.param.image_data_param.shuffle:
                    self._shuffle()
        same = all(im.shape == images[0].shape for im in images)
        batch = np.stack(images) if same else images
        shape = (self.batch_size,) + self._source(self.transformer.infer_shape, *images[0].shape)
        top[0].reshape(shape)
        self._source(self.transformer.transform, batch, names, top[0].data)
        top[1].reshape((self.batch_size,))
        top[1].data[...] = labels


@register
class DummyData(_DataLayer):
    """Tops from dummy_data_param.shape (or legacy num/channels/height/width) filled by data_filler; constant
    fillers fill once at setup, the others refill on every forward (dummy_data_layer.cpp)."""

    type = "DummyData"
    min_top_blobs = 1

    def layer_setup(self, bottom, top):
        p = self.param.dummy_data_param
        n_top, n_fill = len(top), len(p.data_filler)
        if n_fill not in (0, 1, n_top):
            raise self.error(f"Number of data fillers must be 0, 1 or equal to the number of tops: {n_top}; "
                             f"you specified {n_fill} data fillers.")
        legacy = len(p.num) or len(p.channels) or len(p.height) or len(p.width)
        if legacy:
            if len(p.shape):
                raise self.error("Both shape and legacy fields were specified")
            dims = []
            for field in ("num", "channels", "height", "width"):
                values = getattr(p, field)
                if len(values) not in (1, n_top):
                    raise self.error(f"Must specify '{field}' once, or once per top blob ({n_top}); "
                                     f"specified {len(values)}.")
                dims.append([values[0 if len(values) == 1 else i] for i in range(n_top)])
            shapes = [tuple(int(d[i]) for d in dims) for i in range(n_top)]
        else:
            if len(p.shape) not in (1, n_top):
                raise self.error(f"Must specify 'shape' once, or once per top blob ({n_top}); "
                                 f"specified {len(p.shape)}.")
            shapes = [tuple(int(d) for d in p.shape[0 if len(p.shape) == 1 else i].dim) for i in range(n_top)]
        if n_fill == 0:
            self.fillers = [caffe_pb2.FillerParameter(type="constant", value=0)]
        else:
            self.fillers = list(p.data_filler)
        from ..net.filler import FILLER_TYPES   # lazily: ops sit below net in the import order

        for f in self.fillers:
            if f.type not in FILLER_TYPES:
                raise self.error(f"Unknown filler name: {f.type}")
        self.shapes = shapes
        for t, shape in zip(top, shapes):
            t.reshape(shape)
        # constant tops are filled once, now; the others on every forward
        self.refill = [f.type != "constant" for f in self.fillers]
        self._fill(top, constant=True)

    def _fill(self, top, constant):
        from ..net.filler import fill

        for i, t in enumerate(top):
            j = i if len(self.fillers) > 1 else 0
            if self.refill[j] != constant:
                t.data[...] = self._source(fill, self.fillers[j], t.shape, self.rng, self.where)

    def forward(self, bottom, top):
        self._fill(top, constant=False)
