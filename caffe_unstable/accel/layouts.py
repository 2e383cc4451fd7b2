"""PipeCNN's host-side layout transforms, dataLayoutReorder / dataLayoutRecover (pipecnn.md §4, §10.2).

  activations  NCHW -> [N][C/VEC][H][W][VEC]               idx = ((c div VEC) H + y) W VEC + x VEC + c % VEC  (§4.1)
  conv input   NCHW -> [N][group][Cp/VEC][H][W][VEC]      each group's Cg channels padded with zeros to Cp (§10.6)
  weights      OIHW -> [Op/LANE][Cp/VEC][Kh][Kw][LANE][VEC]  with po zero filters before the real ones (§4.2)
  bias         O    -> [Op]                                 bias_dev[o + po] = b[o]                        (§4.3)
  lane layout  NCHW -> [N][Op/LANE][H][W][LANE]             pre-pool conv maps of the Intel build           (§4.4)

Padding (channels beyond C or Cg, filters outside [po, po + O)) is zero. `*_recover` inverts `*_reorder` and drops
the padding. The batch axis N leads everywhere (PipeCNN keeps one buffer per batch item).
"""
import numpy as np


def _ceil_to(a, b):
    return -(-a // b) * b


def _pad_axis(x, axis, size):
    if x.shape[axis] == size:
        return x
    shape = list(x.shape)
    shape[axis] = size
    out = np.zeros(shape, x.dtype)
    out[(slice(None),) * axis + (slice(0, x.shape[axis]),)] = x
    return out


def activations_reorder(x, vec):
    """(N, C, H, W) -> (N, ceil(C/VEC), H, W, VEC), zero-padded channels."""
    n, c, h, w = x.shape
    cp = _ceil_to(c, vec)
    xp = _pad_axis(np.asarray(x), 1, cp)
    return np.ascontiguousarray(xp.reshape(n, cp // vec, vec, h, w).transpose(0, 1, 3, 4, 2))


def activations_recover(dev, channels):
    """(N, Cb, H, W, VEC) -> (N, channels, H, W)."""
    n, cb, h, w, vec = dev.shape
    return np.ascontiguousarray(dev.transpose(0, 1, 4, 2, 3).reshape(n, cb * vec, h, w)[:, :channels])


def conv_input_reorder(x, geom):
    """(N, C, H, W) -> (N, group, Cp/VEC, H, W, VEC): each group's channels padded to a multiple of VEC."""
    n, c, h, w = x.shape
    g = geom.group
    xg = np.asarray(x).reshape(n * g, geom.Cg, h, w)
    return activations_reorder(xg, geom.vec).reshape(n, g, geom.Cb, h, w, geom.vec)


def conv_input_recover(dev, geom):
    n, g, cb, h, w, vec = dev.shape
    return activations_recover(dev.reshape(n * g, cb, h, w, vec), geom.Cg).reshape(n, g * geom.Cg, h, w)


def weights_reorder(w, geom):
    """(O, Cg, Kh, Kw) -> (Op/LANE, Cp/VEC, Kh, Kw, LANE, VEC): reorderWeights (§4.2).

    Real filter o sits at padded channel o' = o + po; a group's filters read that group's channels, which
    PipeCNN addresses by the base c0 (§2.3), so the weight layout itself is the same for every group."""
    o, cg, kh, kw = w.shape
    lane, vec = geom.lane, geom.vec
    wp = np.zeros((geom.Op, geom.Cp, kh, kw), w.dtype)
    wp[geom.po:geom.po + o, :cg] = w
    return np.ascontiguousarray(
        wp.reshape(geom.Op // lane, lane, geom.Cp // vec, vec, kh, kw).transpose(0, 2, 4, 5, 1, 3))


def weights_recover(dev, geom):
    z, cb, kh, kw, lane, vec = dev.shape
    wp = dev.transpose(0, 4, 1, 5, 2, 3).reshape(z * lane, cb * vec, kh, kw)
    return np.ascontiguousarray(wp[geom.po:geom.po + geom.O, :geom.Cg])


def bias_reorder(b, geom):
    """(O,) -> (Op,): reorderBias (§4.3)."""
    out = np.zeros(geom.Op, np.asarray(b).dtype)
    out[geom.po:geom.po + geom.O] = b
    return out


def bias_recover(dev, geom):
    return np.ascontiguousarray(dev[geom.po:geom.po + geom.O])


def lane_reorder(x, lane, po=0):
    """(N, O, H, W) -> (N, Op/LANE, H, W, LANE) with o' = o + po: the LANE layout of pre-pool maps (§4.4)."""
    n, o, h, w = x.shape
    op = _ceil_to(o, lane)
    xp = np.zeros((n, op, h, w), np.asarray(x).dtype)
    xp[:, po:po + o] = x
    return np.ascontiguousarray(xp.reshape(n, op // lane, lane, h, w).transpose(0, 1, 3, 4, 2))


def lane_recover(dev, channels, po=0):
    n, z, h, w, lane = dev.shape
    return np.ascontiguousarray(dev.transpose(0, 1, 4, 2, 3).reshape(n, z * lane, h, w)[:, po:po + channels])


def vec_index(c, y, x, h, w, vec):
    """idx_vec(c, y, x) of §4.1 (one image)."""
    return ((c // vec) * h + y) * w * vec + x * vec + c % vec


def weight_index(o_pad, c, i, j, geom):
    """idx_w(o', c, i, j) of §4.2."""
    lane, vec = geom.lane, geom.vec
    return (((((o_pad // lane) * (geom.Cp // vec) + c // vec) * geom.Kh + i) * geom.Kw + j) * lane * vec
            + (o_pad % lane) * vec + c % vec)


# kind -> (reorder, recover) as the interface's data_layout_reorder / data_layout_recover take them
def reorder(q, kind, geom):
    if kind == "input":
        return conv_input_reorder(q, geom)
    if kind == "weights":
        return weights_reorder(q, geom)
    if kind == "bias":
        return bias_reorder(q, geom)
    if kind == "activations":
        return activations_reorder(q, geom.vec if hasattr(geom, "vec") else geom)
    raise ValueError(f"unknown layout kind {kind!r}")


def recover(dev, kind, geom, channels=None):
    if kind == "input":
        return conv_input_recover(dev, geom)
    if kind == "weights":
        return weights_recover(dev, geom)
    if kind == "bias":
        return bias_recover(dev, geom)
    if kind == "activations":
        return activations_recover(dev, channels if channels is not None else geom.O)
    raise ValueError(f"unknown layout kind {kind!r}")
