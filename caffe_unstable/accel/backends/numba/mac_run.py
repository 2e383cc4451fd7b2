"""Running the register loop (mac.loop_tiles) from Python: its weights, its fault arguments and its threads.

mac.py holds the numba kernel and the helpers it calls (one module, for numba's cache); this module prepares what
it reads: the weights as (L, VEC, channels) matrices, empty record and stuck arrays where a launch has none, and
the split of (group, tile) items over the ops' threads.
"""
import numpy as np
from numba import njit

from .mac import TILE, loop_tiles
from .threads import split


def loop_weight_matrix(wdev, ch, g):
    """Device weights (Z, Cb, Kh, Kw, LANE, VEC) -> the loop's (L, VEC, len(ch)) int8 for real channels ch."""
    w_all = wdev.transpose(1, 2, 3, 5, 0, 4).reshape(g.L, g.vec, g.Op)
    return np.ascontiguousarray(w_all[:, :, np.asarray(ch, np.int64) + g.po])


FLOAT_WEIGHTS_MAX = 1 << 24        # float32 copies of the loop's weights up to this many (64 MB)


def float_weights(wc):
    """The first pass's weights (mac._scan_pass): float32, or the int8 matrix itself above FLOAT_WEIGHTS_MAX
    (the pass converts as it reads: slower, but an FC layer's float copy would take four times its bytes)."""
    return wc.astype(np.float32) if wc.size <= FLOAT_WEIGHTS_MAX else wc


POS_TILE = 128                     # positions per tile of the position-major first pass
POS_MIN = 64                       # ... used from this many positions per launch
MIN_ITEMS = 4                      # chunks of channels so that a launch has this many items ...
MIN_CHUNK = 1024                   # ... of at least this many channels each, channel-major (shorter: slower)
POS_MIN_CHUNK = 32                 # ... position-major (each chunk gathers the tile's inputs once more)


def layout(npos, kf, group, og):
    """(positions per tile, position-major, channels per item) of mac.loop_tiles for npos positions of `group`
    groups of og channels, and filter horizons kf (N, 3).

    Position-major (the tile's positions in the vector lanes, one channel at a time) keeps the lanes full for
    any channel count; it needs the window test (every filter horizon >= 16) and no adder-tree adds. Layers with
    few positions (an FC layer's batch) run position by position with the channels in the lanes, in tiles of
    about equal size. Either way, a launch with fewer tiles than threads has its channels cut into chunks so
    that every thread gets items (an FC layer at batch 10 was two tiles of 8 and 2 positions, LeNet's ip1 at
    batch 64 one tile: one thread did most of the work)."""
    if npos >= POS_MIN and (kf[:, 0] >= 16).all() and (kf[:, 2] >= 31).all():
        chunks = max(1, -(-MIN_ITEMS // (group * -(-npos // POS_TILE))))
        return POS_TILE, True, max(-(-og // chunks), min(og, POS_MIN_CHUNK), 1)
    tiles = -(-npos // (2 * TILE))                # up to 2 TILE positions read each weight once
    tile = -(-npos // tiles) if npos else TILE
    chunks = max(1, -(-MIN_ITEMS // (group * tiles)))
    kch = max(-(-og // chunks), MIN_CHUNK, 1)
    return tile, False, kch


@njit(cache=True, nogil=True, inline="always")
def _byte_sum(v):
    """The sum of the eight bytes of uint64 v."""
    m = np.uint64(0x00FF00FF00FF00FF)
    v = (v & m) + ((v >> np.uint64(8)) & m)            # four 16-bit sums, each <= 510
    return np.int64((v * np.uint64(0x0001000100010001)) >> np.uint64(48))


@njit(cache=True, nogil=True)
def flag_counts(flags):
    """(outputs hit, changed, changed and saturated) of the loop's per-output flags (1 a late add, 2 the int8
    output changed, 4 it saturated), eight flags per word, counted in per-byte counters that are summed every
    255 words (a shift, a mask and an add per word and count; three NumPy reductions over a layer's outputs
    cost more than the rest of the launch's bookkeeping)."""
    f = flags.reshape(-1)
    words = f[:f.size // 8 * 8].view(np.uint64)
    ones, one, two = np.uint64(0x0101010101010101), np.uint64(1), np.uint64(2)
    hit = changed = saturated = 0
    for b0 in range(0, words.size, 255):
        a = c = s = np.uint64(0)
        for i in range(b0, min(b0 + 255, words.size)):
            w = words[i]
            a += w & ones
            c += (w >> one) & ones
            s += (w >> one) & (w >> two) & ones
        hit += _byte_sum(a)
        changed += _byte_sum(c)
        saturated += _byte_sum(s)
    for i in range(words.size * 8, f.size):
        v = np.int64(f[i])
        hit += v & 1
        changed += (v >> 1) & 1
        saturated += (v >> 1) & (v >> 2) & 1
    return hit, changed, saturated


def _no_records():
    z = np.zeros(0, np.int64)
    return {"key": z, "t": z, "site": z, "bit": z}


def run_loop(x, wc, ch, imgs, rb, stage, hw, out, flags=None, timing=None, mac_rec=None, rate_rec=None,
             stuck=None, spec=None, wf=None):
    """The register loop over outputs (imgs × ch) of a conv stage into device activations `out`; returns the
    number of late adds. timing: (jit, k_lane, thresholds, keys, mode, kf, final_slack, tree_slack) or None;
    mac_rec / rate_rec: record columns with output keys; stuck: (multiplier, product, accumulator) columns
    ((lane, vec, bit, value), (lane, bit, value), (lane, bit, value)); spec: per channel, 1 where its lane has
    stuck bits; wf: float_weights(wc), when the caller keeps it."""
    g = stage.geom
    wf = float_weights(wc) if wf is None else wf
    ch = np.asarray(ch, np.int64)
    imgs = np.asarray(imgs, np.int64)
    if timing is None:
        timing = (False, np.zeros((g.N, hw.lane_num), np.int64), np.zeros((hw.lane_num, 31), np.uint64),
                  np.zeros(g.N, np.uint64), 0, np.full((g.N, 3), 31, np.int64), 0, 0)
    mac_rec = mac_rec or _no_records()
    rate_rec = rate_rec or _no_records()
    if stuck is None:
        z = np.zeros(0, np.int64)
        stuck = ((z, z, z, z), (z, z, z), (z, z, z))
    spec = np.zeros(len(ch), np.uint8) if spec is None else spec
    flags = np.zeros((g.N, g.O, g.Ho, g.Wo), np.uint8) if flags is None else flags
    gseg = np.searchsorted(ch, np.arange(g.group + 1) * g.Og).astype(np.int64)
    npos = len(imgs) * g.Ho * g.Wo
    tile, posmajor, kch = layout(npos, timing[5], g.group, g.Og)
    chunks = max(1, int((-(-np.diff(gseg) // kch)).max(initial=1)))     # as loop_tiles counts them
    items = g.group * (-(-npos // tile)) * chunks
    late = np.zeros(items, np.int64)
    widths = np.array([hw.width_product, hw.width_accumulator, hw.width_final], np.int64)
    split(loop_tiles, items, npos * len(ch) * g.L * g.vec, x, wc, wf, ch, gseg, imgs, rb, g.O, g.po, hw.lane_num,
          g.pipe, g.Kh, g.Kw, g.stride_h, g.stride_w, g.pad_h, g.pad_w, g.Ho, g.Wo, stage.fmt.n, stage.relu, widths,
          *timing, mac_rec["key"], mac_rec["t"], mac_rec["site"], mac_rec["bit"], rate_rec["key"], rate_rec["t"],
          rate_rec["bit"], *stuck[0], *stuck[1], *stuck[2], spec, tile, posmajor, kch, out, flags, late,
          guided=True)
    return int(late.sum())


def conv_mac_order(xdev, wdev, rb, stage, hw, out):
    """The clean register-level conv of `stage` into device activations out (equal to the GEMM path)."""
    g = stage.geom
    ch = np.arange(g.O)
    run_loop(xdev, loop_weight_matrix(wdev, ch, g), ch, np.arange(g.N), rb, stage, hw, out)
