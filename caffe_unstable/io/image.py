"""pycaffe's image helpers (python/caffe/io.py): load_image, resize_image, oversample.

pycaffe reads and resizes with scikit-image; we decode and resize with OpenCV (cv2.imread / cv2.resize), the
library Caffe's C++ tools and ImageData layer use, so an image reads the same here as it does in Caffe's own
pipeline. Values follow pycaffe: float32, [0, 1] for 8- and 16-bit files, H×W×K with RGB channel order.
"""
import errno
import os

import numpy as np


def load_image(filename, color=True):
    """An image file as float32 H×W×3 RGB (color) or H×W×1 (gray), values in [0, 1].

    pycaffe uses skimage.io.imread + img_as_float; we decode with OpenCV (= the decoder Caffe's C++ uses) and swap
    OpenCV's BGR to RGB. Gray images come from OpenCV's own luma conversion (IMREAD_GRAYSCALE, as Caffe's
    `is_color: false`), which weighs R, G, B as 0.299/0.587/0.114 where skimage's rgb2gray uses 0.2125/0.7154/0.0721.
    """
    import cv2

    filename = os.fspath(filename)
    flags = (cv2.IMREAD_COLOR if color else cv2.IMREAD_GRAYSCALE) | cv2.IMREAD_ANYDEPTH
    img = cv2.imread(filename, flags)
    if img is None:
        if not os.path.exists(filename):
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", filename)
        raise ValueError(f"{filename}: OpenCV cannot decode this image")
    img = img[:, :, ::-1] if img.ndim == 3 else img[:, :, np.newaxis]
    if img.dtype.kind in "ui":
        # skimage.img_as_float: divide by the dtype's maximum in float64, then float32 as pycaffe casts
        img = img / float(np.iinfo(img.dtype).max)
    return np.ascontiguousarray(img, dtype=np.float32)


def _interpolation(interp_order):
    import cv2

    if interp_order == 0:
        return getattr(cv2, "INTER_NEAREST_EXACT", cv2.INTER_NEAREST)   # pixel-centre nearest, as skimage order 0
    if interp_order == 1:
        return cv2.INTER_LINEAR
    if interp_order in (2, 3):
        return cv2.INTER_CUBIC
    return cv2.INTER_LANCZOS4


def resize_image(im, new_dims, interp_order=1):
    """Resize an H×W×K image to new_dims = (height, width); float32 out. interp_order as in skimage
    (0 nearest, 1 bilinear, 3 bicubic); done with cv2.resize (half-pixel centres, any K, split by 512 channels)."""
    import cv2

    im = np.asarray(im)
    h, w = int(new_dims[0]), int(new_dims[1])
    if im.dtype not in (np.float32, np.float64):
        im = im.astype(np.float32)
    if im.size and im.max() == im.min():
        # a constant image (pycaffe's special case): skip the interpolation
        return np.full((h, w) + im.shape[2:], im.flat[0], np.float32)
    flag = _interpolation(interp_order)
    if im.ndim == 2:
        return cv2.resize(im, (w, h), interpolation=flag).astype(np.float32)
    parts = []
    for start in range(0, im.shape[2], 512):               # OpenCV takes at most 512 channels at once
        part = np.ascontiguousarray(im[:, :, start:start + 512])
        out = cv2.resize(part, (w, h), interpolation=flag)
        parts.append(out.reshape(h, w, part.shape[2]))      # cv2 drops a single channel axis
    return np.concatenate(parts, axis=2).astype(np.float32, copy=False)


def oversample(images, crop_dims):
    """Ten crops per H×W×K image: the four corners and the centre, then the same five mirrored (width flipped).
    Returns float32 (10·N, crop_h, crop_w, K), in pycaffe's order."""
    im_shape = np.array(images[0].shape)
    crop_dims = np.array(crop_dims)
    center = im_shape[:2] / 2.0
    crops_ix = np.empty((5, 4), dtype=int)
    i = 0
    for hs in (0, im_shape[0] - crop_dims[0]):
        for ws in (0, im_shape[1] - crop_dims[1]):
            crops_ix[i] = (hs, ws, hs + crop_dims[0], ws + crop_dims[1])
            i += 1
    # centre crop: float bounds truncated to int, as pycaffe's assignment into an int array does
    crops_ix[4] = np.tile(center, (1, 2)) + np.concatenate([-crop_dims / 2.0, crop_dims / 2.0])
    crops = np.empty((10 * len(images), crop_dims[0], crop_dims[1], im_shape[-1]), dtype=np.float32)
    ix = 0
    for im in images:
        for y0, x0, y1, x1 in crops_ix:
            crops[ix] = im[y0:y1, x0:x1, :]
            ix += 1
        crops[ix:ix + 5] = crops[ix - 5:ix, :, ::-1, :]
        ix += 5
    return crops
