"""Caffe's DataTransformer (src/caffe/data_transformer.cpp; caffe.md §3.9), applied to a whole batch at once.

For one item with C×H×W source values v (uint8 bytes, or float_data), Caffe computes, in float32:
  1. do_mirror = mirror && Rand(2)                  -- drawn first, in BOTH phases whenever mirror: true
  2. crop c > 0: TRAIN h_off = Rand(H-c+1), then w_off = Rand(W-c+1); TEST h_off = (H-c)/2, w_off = (W-c)/2
  3. out[ch, h, w'] = (v[ch, h_off+h, w_off+w] - mean[ch, h_off+h, w_off+w]) * scale, w' = c-1-w if mirrored
So the mean is subtracted at SOURCE coordinates (the mean image is never cropped differently or mirrored), then
scaled; mirroring only permutes the destination. Rand(n) is the next 32-bit draw mod n (here from the layer rng).
Encoded Datums are decoded with OpenCV (cv2.imdecode: BGR, or gray), exactly the decoder Caffe links against.
"""
import numpy as np

from ..errors import CaffeUnstableError
from ..proto import caffe_pb2

F32 = np.float32


# -- the math: pure functions on arrays ----------------------------------------------------------------------------

def transform_batch(src, mean, scale, crop, h_off, w_off, mirror, out=None):
    """Caffe's Transform for a batch. src (N,C,H,W) uint8 or float32; mean None, (C,1,1) or (C,H,W) float32;
    crop 0 or the crop size; h_off/w_off ints (same window for every item) or int arrays (N,);
    mirror None or a bool array (N,). Returns float32 (N,C,H',W') (written into `out` when given)."""
    n, c, h, w = src.shape
    oh, ow = (crop, crop) if crop else (h, w)
    if out is None:
        out = np.empty((n, c, oh, ow), F32)
    mirrored = mirror is not None and bool(mirror.any())
    if np.ndim(h_off) == 0 and not mirrored:
        # one window for the whole batch: a single broadcast operation
        _subtract_scale(src[:, :, h_off:h_off + oh, w_off:w_off + ow], _window(mean, h_off, w_off, oh, ow),
                        scale, out)
        return out
    # per-item windows or mirroring: one slice operation per item (measured faster than a fancy-index gather,
    # and a reversed-stride read; a mirrored item is computed in source order, then copied reversed)
    h_off = np.broadcast_to(h_off, (n,))
    w_off = np.broadcast_to(w_off, (n,))
    tmp = np.empty((c, oh, ow), F32) if mirrored else None
    for i in range(n):
        y, x = int(h_off[i]), int(w_off[i])
        flip = mirrored and mirror[i]
        _subtract_scale(src[i, :, y:y + oh, x:x + ow], _window(mean, y, x, oh, ow), scale, tmp if flip else out[i])
        if flip:
            out[i] = tmp[:, :, ::-1]
    return out


def _window(mean, y, x, oh, ow):
    """The mean at the source coordinates of a window: per-channel means broadcast, a mean image is cropped."""
    if mean is None or mean.shape[1:] == (1, 1):
        return mean
    return mean[:, y:y + oh, x:x + ow]


def _subtract_scale(v, m, scale, dst):
    """dst = (float32(v) - m) * scale, or float32(v) * scale without a mean (Caffe's Dtype arithmetic)."""
    if m is not None:
        np.subtract(v, m, out=dst, dtype=F32)
    else:
        dst[...] = v
    if scale != 1:
        np.multiply(dst, F32(scale), out=dst)


def chw(image):
    """OpenCV's HxW (gray) or HxWxC (BGR) uint8 image as C×H×W, the layout of a Datum."""
    return image[None] if image.ndim == 2 else image.transpose(2, 0, 1)


def legacy_chw(shape):
    """Blob::LegacyShape(1..3): (channels, height, width) of a blob shape (axes past its end count as 1)."""
    shape = tuple(shape)
    return tuple(shape[i] if i < len(shape) else 1 for i in (1, 2, 3))


def read_mean_file(path, where=""):
    """A mean.binaryproto as float32 plus Caffe's legacy (channels, height, width) of it (caffe.md §1.9)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError:
        raise CaffeUnstableError(where, f"File not found: {path}") from None
    proto = caffe_pb2.BlobProto()
    try:
        proto.ParseFromString(raw)
    except Exception:
        raise CaffeUnstableError(where, f"Failed to parse file {path}") from None
    if any(proto.HasField(f) for f in ("num", "channels", "height", "width")):
        shape = (proto.num, proto.channels, proto.height, proto.width)
    else:
        shape = tuple(proto.shape.dim)
    if len(shape) > 4:
        raise CaffeUnstableError(where, f"{path}: Cannot use legacy accessors on Blobs with > 4 axes.")
    values = proto.double_data if len(proto.double_data) else proto.data
    count = int(np.prod(shape, dtype=np.int64))
    if len(values) != count:
        raise CaffeUnstableError(where, f"{path}: Check failed: count_ == proto.data_size() ({count} vs. {len(values)})")
    return np.asarray(values, F32), legacy_chw(shape)


class DataTransformer:
    """One layer's transformer: its TransformationParameter, phase and the layer rng (caffe.md §3.9)."""

    def __init__(self, param, phase, rng, where=""):
        self.where = where
        self.crop = int(param.crop_size)
        self.scale = float(param.scale)
        self.mirror = bool(param.mirror)
        self.force_color = bool(param.force_color)
        self.force_gray = bool(param.force_gray)
        self.train = phase == caffe_pb2.TRAIN
        self.rng = rng
        self.mean_chw = None                 # the mean file's legacy (C, H, W)
        self.mean_flat = None
        self.mean_values = list(param.mean_value)
        if param.HasField("mean_file"):
            if self.mean_values:
                raise self._fail("Cannot specify mean_file and mean_value at the same time")
            self.mean_flat, self.mean_chw = read_mean_file(param.mean_file, where)

    def _fail(self, what, name=None):
        return CaffeUnstableError(self.where, f"{name}: {what}" if name else what)

    # -- shapes and checks ---------------------------------------------------------------------------------------
    def infer_shape(self, c, h, w):
        """InferBlobShape: the (C, H', W') of one transformed item."""
        if c <= 0:
            raise self._fail(f"Check failed: datum_channels > 0 ({c} vs. 0)")
        if h < self.crop:
            raise self._fail(f"Check failed: datum_height >= crop_size ({h} vs. {self.crop})")
        if w < self.crop:
            raise self._fail(f"Check failed: datum_width >= crop_size ({w} vs. {self.crop})")
        return (c, self.crop, self.crop) if self.crop else (c, h, w)

    def mean_for(self, c, h, w, name=None):
        """The mean to subtract from a C×H×W source: None, (C,1,1) mean_values, or the (C,H,W) mean file."""
        if self.mean_flat is not None:
            mc, mh, mw = self.mean_chw
            for what, got, want in (("channels", c, mc), ("height", h, mh), ("width", w, mw)):
                if got != want:
                    raise self._fail(f"Check failed: datum_{what} == data_mean_.{what}() ({got} vs. {want}) "
                                     f"(the mean file must match the uncropped input, {c}x{h}x{w})", name)
            return self.mean_flat.reshape(c, h, w)
        if self.mean_values:
            if len(self.mean_values) not in (1, c):
                raise self._fail(f"Specify either 1 mean_value or as many as channels: {c}", name)
            return np.array(self.mean_values * (c if len(self.mean_values) == 1 else 1), F32).reshape(c, 1, 1)
        return None

    def draws(self, n, h, w):
        """Per item, in Caffe's order: mirror (if mirror), then h_off, w_off (TRAIN with crop). Rand(k) = u32 % k."""
        crop = self.crop
        random_crop = bool(crop) and self.train
        k = int(self.mirror) + 2 * int(random_crop)
        raw = self.rng.integers(0, 1 << 32, size=(n, k), dtype=np.uint64) if k else None
        mirror = (raw[:, 0] % 2).astype(bool) if self.mirror else None
        if random_crop:
            j = int(self.mirror)
            return mirror, (raw[:, j] % (h - crop + 1)).astype(np.intp), (raw[:, j + 1] % (w - crop + 1)).astype(np.intp)
        if crop:
            return mirror, (h - crop) // 2, (w - crop) // 2
        return mirror, 0, 0

    # -- transform -----------------------------------------------------------------------------------------------
    def transform(self, batch, names=None, out=None):
        """Transform a batch: an (N,C,H,W) uint8/float32 array, or a list of C×H×W arrays whose sizes may differ
        (Caffe checks each against the batch's first item). `names` label items in errors."""
        if isinstance(batch, np.ndarray):
            n, c, h, w = batch.shape
            self.infer_shape(c, h, w)
            mean = self.mean_for(c, h, w, names[0] if names else None)
            mirror, h_off, w_off = self.draws(n, h, w)
            return transform_batch(batch, mean, self.scale, self.crop, h_off, w_off, mirror, out)
        c0, h0, w0 = self.infer_shape(*batch[0].shape)
        if out is None:
            out = np.empty((len(batch), c0, h0, w0), F32)
        for i, item in enumerate(batch):
            self._check_item(item.shape, (c0, h0, w0), names[i] if names else f"item {i}")
            self.transform(item[None], names[i:i + 1] if names else None, out[i:i + 1])
        return out

    def _check_item(self, shape, target, name):
        """Transform(datum, blob)'s checks of one item against the batch's (first item's) transformed shape."""
        c, h, w = shape
        tc, th, tw = target
        if c != tc:
            raise self._fail(f"Check failed: channels == datum_channels ({tc} vs. {c})", name)
        if not self.crop:
            if h != th:
                raise self._fail(f"Check failed: datum_height == height ({h} vs. {th})", name)
            if w != tw:
                raise self._fail(f"Check failed: datum_width == width ({w} vs. {tw})", name)
        elif h < th:
            raise self._fail(f"Check failed: height <= datum_height ({th} vs. {h})", name)
        elif w < tw:
            raise self._fail(f"Check failed: width <= datum_width ({tw} vs. {w})", name)

    # -- encoded Datums ------------------------------------------------------------------------------------------
    def decode(self, data, name=None):
        """An encoded Datum's bytes as C×H×W uint8: force_color -> 3 BGR channels, force_gray -> 1, else native."""
        import cv2

        if self.force_color and self.force_gray:
            raise self._fail("cannot set both force_color and force_gray")
        flag = (cv2.IMREAD_COLOR if self.force_color else
                cv2.IMREAD_GRAYSCALE if self.force_gray else cv2.IMREAD_ANYCOLOR)
        image = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
        if image is None:
            raise self._fail("Could not decode datum", name)
        if image.dtype != np.uint8:
            raise self._fail("Image data type must be unsigned byte", name)
        return chw(image)
