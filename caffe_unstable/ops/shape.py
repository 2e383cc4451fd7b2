"""Caffe's structure layers: split_, concat_, slice_, flatten_, reshape_, crop_, tile_, silence_, parameter_ and
batch_reindex_layer.cpp (caffe.md §3.7). Layers that only re-view memory share data and diff with the bottom."""
import numpy as np

from ..proto import caffe_pb2
from .base import Layer, register


def _shape_string(shape):
    return " ".join(str(d) for d in shape) + f" ({int(np.prod(shape, dtype=np.int64))})"


def _count(shape):
    return int(np.prod(shape, dtype=np.int64))


@register
class Split(Layer):
    """Every top shares the bottom's data; backward sums the top diffs into the bottom diff (§2.4)."""

    type = "Split"
    exact_num_bottom_blobs = 1
    min_top_blobs = 1

    def reshape(self, bottom, top):
        for t in top:
            if t is bottom[0]:
                raise self.error("Split Layer does not allow in-place computation.")
            t.reshape(bottom[0].shape)
            t.share_data(bottom[0])

    def forward(self, bottom, top):
        for t in top:
            t.share_data(bottom[0])

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        total = top[0].diff.copy()
        for t in top[1:]:
            total += t.diff
        bottom[0].diff[...] = total


def _legacy_axis(layer, p, legacy_field, num_axes):
    """`axis` (negative allowed) or the legacy uint32 `concat_dim`/`slice_dim` (concat_layer.cpp:25-35)."""
    if p.HasField(legacy_field):
        axis = getattr(p, legacy_field)
        if axis >= num_axes:
            raise layer.error(f"{legacy_field} out of range.")
        return axis
    return layer.canonical_axis(p.axis, num_axes)


@register
class Concat(Layer):
    """y = concatenation of the bottoms along `axis` (= 1; legacy `concat_dim`); one bottom: y shares x."""

    type = "Concat"
    min_bottom_blobs = 1
    exact_num_top_blobs = 1

    def layer_setup(self, bottom, top):
        p = self.param.concat_param
        if p.HasField("axis") and p.HasField("concat_dim"):
            raise self.error("Either axis or concat_dim should be specified; not both.")

    def reshape(self, bottom, top):
        num_axes = bottom[0].num_axes
        self.axis = _legacy_axis(self, self.param.concat_param, "concat_dim", num_axes)
        shape = list(bottom[0].shape)
        for b in bottom[1:]:
            if b.num_axes != num_axes:
                raise self.error(f"All inputs must have the same #axes. ({num_axes} vs. {b.num_axes})")
            if any(b.shape[j] != shape[j] for j in range(num_axes) if j != self.axis):
                raise self.error(f"All inputs must have the same shape, except at concat_axis. "
                                 f"(bottom[0]: {_shape_string(bottom[0].shape)}, other: {_shape_string(b.shape)})")
            shape[self.axis] += b.shape[self.axis]
        top[0].reshape(shape)
        if len(bottom) == 1:
            top[0].share_data(bottom[0])
            top[0].share_diff(bottom[0])

    def forward(self, bottom, top):
        if len(bottom) > 1:
            np.concatenate([b.data for b in bottom], axis=self.axis, out=top[0].data)

    def backward(self, top, propagate_down, bottom):
        if len(bottom) == 1:
            return
        bounds = np.cumsum([b.shape[self.axis] for b in bottom])[:-1]
        for b, d, down in zip(bottom, np.split(top[0].diff, bounds, axis=self.axis), propagate_down):
            if down:
                b.diff[...] = d


@register
class Slice(Layer):
    """Splits the bottom along `axis` (= 1; legacy `slice_dim`) at `slice_point`s (one fewer than the tops;
    none = equal parts). One top: it shares the bottom."""

    type = "Slice"
    exact_num_bottom_blobs = 1
    min_top_blobs = 1

    def layer_setup(self, bottom, top):
        p = self.param.slice_param
        if p.HasField("axis") and p.HasField("slice_dim"):
            raise self.error("Either axis or slice_dim should be specified; not both.")
        self.slice_points = list(p.slice_point)

    def reshape(self, bottom, top):
        x_shape = bottom[0].shape
        self.axis = _legacy_axis(self, self.param.slice_param, "slice_dim", bottom[0].num_axes)
        dim = x_shape[self.axis]
        if self.slice_points:
            if len(self.slice_points) != len(top) - 1:
                raise self.error(f"Check failed: slice_point_.size() == top.size() - 1 "
                                 f"({len(self.slice_points)} vs. {len(top) - 1})")
            if len(top) > dim:
                raise self.error(f"slice axis: {self.axis}, bottom[0] shape: {_shape_string(x_shape)}")
            prev, sizes = 0, []
            for point in self.slice_points:
                if point <= prev:
                    raise self.error(f"Check failed: slice_point_[i] > prev ({point} vs. {prev})")
                sizes.append(point - prev)
                prev = point
            if dim - prev < 0:
                raise self.error(f"slice_point {prev} exceeds the slice axis dimension ({dim})")
            sizes.append(dim - prev)
        else:
            if dim % len(top):
                raise self.error(f"Number of top blobs ({len(top)}) should evenly divide input slice axis ({dim})")
            sizes = [dim // len(top)] * len(top)
        for t, size in zip(top, sizes):
            shape = list(x_shape)
            shape[self.axis] = size
            t.reshape(shape)
        self.bounds = np.cumsum(sizes)[:-1]
        if len(top) == 1:
            top[0].share_data(bottom[0])
            top[0].share_diff(bottom[0])

    def forward(self, bottom, top):
        if len(top) > 1:
            for t, part in zip(top, np.split(bottom[0].data, self.bounds, axis=self.axis)):
                t.data[...] = part

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0] and len(top) > 1:
            np.concatenate([t.diff for t in top], axis=self.axis, out=bottom[0].diff)


@register
class Flatten(Layer):
    """Collapses axes `axis` (= 1) .. `end_axis` (= -1) into one; the top shares data and diff."""

    type = "Flatten"
    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def reshape(self, bottom, top):
        if top[0] is bottom[0]:
            raise self.error("Flatten Layer does not allow in-place computation.")
        p = self.param.flatten_param
        x_shape = bottom[0].shape
        start = self.canonical_axis(p.axis, len(x_shape))
        end = self.canonical_axis(p.end_axis, len(x_shape))
        shape = list(x_shape[:start]) + [_count(x_shape[start:end + 1])] + list(x_shape[end + 1:])
        top[0].reshape(shape)
        top[0].share_data(bottom[0])
        top[0].share_diff(bottom[0])

    def forward(self, bottom, top):
        top[0].share_data(bottom[0], top[0].shape)

    def backward(self, top, propagate_down, bottom):
        pass  # the diffs are one buffer


@register
class Reshape(Layer):
    """Replaces bottom axes [axis, axis + num_axes) (axis = 0, num_axes = -1: all) by `shape`; a 0 copies the
    bottom dim, one -1 is inferred. The top shares data and diff."""

    type = "Reshape"
    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def layer_setup(self, bottom, top):
        if top[0] is bottom[0]:
            raise self.error("Reshape Layer does not allow in-place computation.")
        dims = list(self.param.reshape_param.shape.dim)
        self.copy_axes = [i for i, d in enumerate(dims) if d == 0]
        inferred = [i for i, d in enumerate(dims) if d == -1]
        if len(inferred) > 1:
            raise self.error("new shape contains multiple -1 dims; at most a single (1) value of -1 may be specified")
        self.inferred_axis = inferred[0] if inferred else -1
        self.constant_count = _count([d for d in dims if d not in (0, -1)])

    def reshape(self, bottom, top):
        p = self.param.reshape_param
        x_shape = bottom[0].shape
        n = len(x_shape)
        start = p.axis if p.axis >= 0 else n + p.axis + 1
        if start < 0:
            raise self.error(f"axis {p.axis} out of range")
        if start > n:
            raise self.error(f"axis {p.axis} out of range for {n}-D input blob")
        if p.num_axes < -1:
            raise self.error("num_axes must be >= 0, or -1 for all")
        end = n if p.num_axes == -1 else start + p.num_axes
        if end > n:
            raise self.error("end_axis = axis + num_axes is out of range")
        shape = list(x_shape[:start]) + list(p.shape.dim) + list(x_shape[end:])
        for i in self.copy_axes:
            if start + i >= n:
                raise self.error("new shape contains a 0, but there was no corresponding bottom axis to copy")
            shape[start + i] = x_shape[start + i]
        count = bottom[0].count
        if self.inferred_axis >= 0:
            explicit = self.constant_count * _count(x_shape[:start]) * _count(x_shape[end:])
            explicit *= _count([shape[start + i] for i in self.copy_axes])
            if explicit == 0 or count % explicit:
                raise self.error(f"bottom count ({count}) must be divisible by the product of the "
                                 f"specified dimensions ({explicit})")
            shape[start + self.inferred_axis] = count // explicit
        if _count(shape) != count or any(d < 0 for d in shape):
            raise self.error(f"output count must match input count ({_count(shape)} vs. {count}; "
                             f"top shape {_shape_string(shape)})")
        top[0].reshape(shape)
        top[0].share_data(bottom[0])
        top[0].share_diff(bottom[0])

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        pass


@register
class Crop(Layer):
    """y = bottom0 cropped to bottom1's size on axes >= `axis` (= 2), starting at `offset` (none: 0, one: all
    axes, else one per cropped axis). dx is dy in the cropped window, 0 elsewhere; bottom1 gets nothing."""

    type = "Crop"
    exact_num_bottom_blobs = 2
    exact_num_top_blobs = 1

    def layer_setup(self, bottom, top):
        p = self.param.crop_param
        start = self.canonical_axis(p.axis, bottom[0].num_axes)
        if len(p.offset) > 1 and start + len(p.offset) != bottom[0].num_axes:
            raise self.error("number of offset values specified must be equal to the number of "
                             "dimensions following axis.")

    def reshape(self, bottom, top):
        p = self.param.crop_param
        x_shape = bottom[0].shape
        start = self.canonical_axis(p.axis, len(x_shape))
        shape, self.window = list(x_shape), []
        for i, size in enumerate(x_shape):
            offset = 0
            if i >= start:
                size = bottom[1].shape[i]
                if len(p.offset) == 1:
                    offset = p.offset[0]
                elif len(p.offset) > 1:
                    offset = p.offset[i - start]
                if x_shape[i] - offset < size:
                    raise self.error(f"the crop for dimension {i} is out-of-bounds with size {size} "
                                     f"and offset {offset}")
            shape[i] = size
            self.window.append(slice(offset, offset + size))
        self.window = tuple(self.window)
        top[0].reshape(shape)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data[self.window]

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = 0
            bottom[0].diff[self.window] = top[0].diff


@register
class Tile(Layer):
    """Repeats the block of axes [axis, end) `tiles` times along `axis` (= 1); dx sums the copies."""

    type = "Tile"
    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def reshape(self, bottom, top):
        p = self.param.tile_param
        self.axis = self.canonical_axis(p.axis, bottom[0].num_axes)
        if not p.HasField("tiles"):
            raise self.error("Number of tiles must be specified")
        if p.tiles <= 0:
            raise self.error("Number of tiles must be positive.")
        shape = list(bottom[0].shape)
        shape[self.axis] *= p.tiles
        top[0].reshape(shape)
        self.dims = (bottom[0].count_range(0, self.axis), p.tiles, bottom[0].count_range(self.axis))

    def forward(self, bottom, top):
        outer, tiles, inner = self.dims
        x = bottom[0].data.reshape(outer, 1, inner)
        top[0].data.reshape(outer, tiles, inner)[...] = x

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = top[0].diff.reshape(self.dims).sum(axis=1).reshape(bottom[0].shape)


@register
class Silence(Layer):
    """Consumes its bottoms (no tops); backward zeroes the bottom diffs."""

    type = "Silence"
    min_bottom_blobs = 1
    exact_num_top_blobs = 0

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        for b, down in zip(bottom, propagate_down):
            if down:
                b.diff[...] = 0


@register
class Parameter(Layer):
    """One learned blob of `parameter_param.shape` (zero-initialised), output as the top (shared data/diff)."""

    type = "Parameter"
    exact_num_bottom_blobs = 0
    exact_num_top_blobs = 1

    def layer_setup(self, bottom, top):
        shape = tuple(self.param.parameter_param.shape.dim)
        if not self.blobs:  # a fresh Blob: zeros, no filler (parameter_layer.hpp)
            self.blobs = [self.fill_param(shape, caffe_pb2.FillerParameter(type="constant", value=0.0))]
        top[0].reshape(shape)

    def reshape(self, bottom, top):
        top[0].reshape(self.blobs[0].shape)
        top[0].share_data(self.blobs[0])
        top[0].share_diff(self.blobs[0])

    def forward(self, bottom, top):
        top[0].share_data(self.blobs[0])
        top[0].share_diff(self.blobs[0])

    def backward(self, top, propagate_down, bottom):
        pass  # consumers write the param diff directly through the shared top


@register
class BatchReindex(Layer):
    """y[i] = x[index[i]] along axis 0, index a 1-D bottom; dx scatters dy back (repeats add up)."""

    type = "BatchReindex"
    exact_num_bottom_blobs = 2
    exact_num_top_blobs = 1

    def reshape(self, bottom, top):
        if bottom[1].num_axes != 1:
            raise self.error(f"Check failed: 1 == bottom[1]->num_axes() (1 vs. {bottom[1].num_axes})")
        top[0].reshape((bottom[1].shape[0],) + tuple(bottom[0].shape[1:]))

    def _index(self, bottom):
        index = bottom[1].data
        if np.any(index < 0):
            raise self.error("Index specified for reindex layer was negative.")
        if np.any(index >= bottom[0].shape[0]):
            raise self.error("Index specified for reindex layer was greater than batch size.")
        return index.astype(np.int64)  # static_cast<int> truncates

    def forward(self, bottom, top):
        index = self._index(bottom)
        if top[0].count:
            np.take(bottom[0].data, index, axis=0, out=top[0].data)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[1]:
            raise self.error("Cannot backprop to index.")
        if not propagate_down[0]:
            return
        index = bottom[1].data.astype(np.int64)
        n = bottom[0].shape[0]
        # one-hot (n, len(index)) @ dy: the scatter-add as one BLAS call
        onehot = (np.arange(n)[:, None] == index[None, :]).astype(np.float32)
        dx = onehot @ top[0].diff.reshape(len(index), -1)
        bottom[0].diff[...] = dx.reshape(bottom[0].shape)
