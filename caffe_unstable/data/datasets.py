"""Readers for the raw dataset files Caffe's converters take: LeCun idx (MNIST, Fashion-MNIST) and the
CIFAR-10 binary version. Plain, gzip or xz files are accepted (detected by magic bytes)."""
import gzip
import lzma
import os

import numpy as np

from ..errors import CaffeUnstableError

IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC = 2051, 2049
CIFAR_RECORD = 1 + 3 * 32 * 32


def read_raw(path):
    """The bytes of `path`, decompressed when it is gzip (1f 8b) or xz (fd 37 7a 58 5a 00)."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            head = f.read(6)
        if head[:2] == b"\x1f\x8b":
            with gzip.open(path, "rb") as f:
                return f.read()
        if head == b"\xfd7zXZ\x00":
            with lzma.open(path, "rb") as f:
                return f.read()
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise CaffeUnstableError(path, "no such file") from None
    except (OSError, EOFError, lzma.LZMAError) as exc:
        raise CaffeUnstableError(path, f"cannot read: {exc}") from None


def read_idx(path):
    """An idx file as a uint8 array: images (n, rows, cols) for magic 2051, labels (n,) for magic 2049."""
    raw = read_raw(path)
    if len(raw) < 8:
        raise CaffeUnstableError(path, "too short for an idx file")
    magic = int.from_bytes(raw[0:4], "big")
    n = int.from_bytes(raw[4:8], "big")
    if magic == IDX_IMAGES_MAGIC:
        rows, cols = int.from_bytes(raw[8:12], "big"), int.from_bytes(raw[12:16], "big")
        need = 16 + n * rows * cols
        if len(raw) != need:
            raise CaffeUnstableError(path, f"idx image file holds {len(raw)} bytes, expected {need}")
        return np.frombuffer(raw, np.uint8, offset=16).reshape(n, rows, cols)
    if magic == IDX_LABELS_MAGIC:
        if len(raw) != 8 + n:
            raise CaffeUnstableError(path, f"idx label file holds {len(raw)} bytes, expected {8 + n}")
        return np.frombuffer(raw, np.uint8, offset=8)
    raise CaffeUnstableError(path, f"wrong idx magic number {magic} (expected 2051 images or 2049 labels)")


def read_cifar_bin(path):
    """(images uint8 (n, 3, 32, 32) in RGB, labels uint8 (n,)) from CIFAR-10 binary-version records."""
    raw = read_raw(path)
    if len(raw) % CIFAR_RECORD:
        raise CaffeUnstableError(path, f"size {len(raw)} is not a multiple of the {CIFAR_RECORD}-byte CIFAR-10 record")
    rec = np.frombuffer(raw, np.uint8).reshape(-1, CIFAR_RECORD)
    return rec[:, 1:].reshape(-1, 3, 32, 32), rec[:, 0].copy()
