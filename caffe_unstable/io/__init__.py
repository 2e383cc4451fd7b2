"""pycaffe's `caffe.io` surface (python/caffe/io.py); the project's file formats live in the modules beside it."""
from ..proto import caffe_pb2  # noqa: F401  (pycaffe's io module exposes it too)
from .blobproto import (  # noqa: F401
    array_to_blobproto,
    array_to_datum,
    arraylist_to_blobprotovector_str,
    blobproto_to_array,
    blobprotovector_str_to_arraylist,
    datum_to_array,
)
from .image import load_image, oversample, resize_image  # noqa: F401
from .transformer import Transformer  # noqa: F401
