"""Caffe's fillers (include/caffe/filler.hpp), drawn from a seeded numpy Generator (caffe.md §2.8).

Caffe's Boost mt19937 streams are not reproduced; the distributions are.
"""
import math

import numpy as np

from ..errors import CaffeUnstableError

FILLER_TYPES = ("constant", "uniform", "gaussian", "positive_unitball", "xavier", "msra", "bilinear")


def _fans(shape):
    count = int(np.prod(shape, dtype=np.int64))
    fan_in = count // shape[0] if len(shape) >= 1 and shape[0] else count
    fan_out = count // shape[1] if len(shape) >= 2 and shape[1] else count
    return fan_in, fan_out


def _variance_n(filler, shape):
    fan_in, fan_out = _fans(shape)
    norm = filler.variance_norm  # FAN_IN=0, FAN_OUT=1, AVERAGE=2
    if norm == 1:
        return fan_out
    if norm == 2:
        return (fan_in + fan_out) / 2.0
    return fan_in


def fill(filler, shape, rng, where=""):
    """Return a float32 array of `shape` filled as `filler` (a caffe_pb2.FillerParameter) says."""
    shape = tuple(int(d) for d in shape)
    kind = filler.type
    if filler.sparse >= 0 and kind != "gaussian":
        raise CaffeUnstableError(where, f"sparsity (sparse: {filler.sparse}) is only supported by the gaussian filler, not '{kind}'")
    if kind == "constant":
        return np.full(shape, filler.value, np.float32)
    if kind == "uniform":
        return rng.uniform(filler.min, filler.max, shape).astype(np.float32)
    if kind == "gaussian":
        out = rng.normal(filler.mean, filler.std, shape).astype(np.float32)
        if filler.sparse >= 0:
            if len(shape) < 1 or shape[0] == 0:
                return out
            keep = filler.sparse / shape[0]
            out *= (rng.random(shape) < keep).astype(np.float32)
        return out
    if kind == "positive_unitball":
        out = rng.uniform(0.0, 1.0, shape).astype(np.float32)
        rows = out.reshape(shape[0], -1) if shape and shape[0] else out.reshape(1, -1)
        rows /= rows.sum(axis=1, keepdims=True)
        return out
    if kind == "xavier":
        a = math.sqrt(3.0 / _variance_n(filler, shape))
        return rng.uniform(-a, a, shape).astype(np.float32)
    if kind == "msra":
        std = math.sqrt(2.0 / _variance_n(filler, shape))
        return rng.normal(0.0, std, shape).astype(np.float32)
    if kind == "bilinear":
        if len(shape) != 4 or shape[2] != shape[3]:
            raise CaffeUnstableError(where, f"the bilinear filler needs a 4-D blob with a square kernel, got {shape}")
        k = shape[3]
        f = math.ceil(k / 2.0)
        c = (k - 1) / (2.0 * f)
        ax = 1.0 - np.abs(np.arange(k) / f - c)
        kernel = np.outer(ax, ax).astype(np.float32)
        return np.broadcast_to(kernel, shape).astype(np.float32)
    raise CaffeUnstableError(where, f"Unknown filler name: {kind} (known: {', '.join(FILLER_TYPES)})")
