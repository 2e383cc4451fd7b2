"""Soft errors: one-bit flips of MAC result registers, sampled per layer and image (faults.md §4).

`MacFlip` draws F ~ Binomial(N, rate) per layer and image (stream 1), then F distinct MAC positions and F bits,
and turns them into records (n, o, y, x, t, site, bit). `corrected_sums` is the exact fast path of §4.4: the
clean int32 sum S of an output plus the two's-complement delta of each flip, each read from the register's
current (faulty) value, wrapping modulo 2^32; saturation happens later, in the output conversion only.
"""
import numpy as np

from ...errors import CaffeUnstableError
from .indexing import decode_model_mac, model_mac_count, site_width
from .plan import MAC_EVENT_DTYPE, SITES, LayerPlan, mac_events
from .registers import flip, flip_delta, wrap32
from . import mac_records, streams
from .rng import PassKey, sample_distinct

MAX_RATE = 0.01
COUNTS = ("hardware", "model")


class MacFlip:
    """Transient flips of the `accumulator` (A_t, default) or `product` (m_t) register at a rate per MAC.

    rate: probability per MAC in [0, 0.01]; count: "hardware" (N_MAC, padding included) or "model" (the Caffe
    layer's MACs); flip_bits: (lo, hi), default the whole register [0, w−1].
    """

    name = "mac_flip"

    def __init__(self, rate, site="accumulator", count="hardware", flip_bits=None):
        if not 0.0 <= float(rate) <= MAX_RATE:
            raise CaffeUnstableError("soft_errors.mac_flip_rate", f"must be in [0, {MAX_RATE}], got {rate}")
        if site not in ("accumulator", "product"):
            raise CaffeUnstableError("soft_errors.site", f"must be accumulator or product, got {site!r}")
        if count not in COUNTS:
            raise CaffeUnstableError("soft_errors.count", f"must be hardware or model, got {count!r}")
        self.rate = float(rate)
        self.site = site
        self.count = count
        self.flip_bits = tuple(flip_bits) if flip_bits is not None else None

    def bit_range(self, geometry):
        w = site_width(geometry, SITES[self.site])
        lo, hi = self.flip_bits if self.flip_bits is not None else (0, w - 1)
        if not 0 <= lo <= hi <= w - 1:
            raise CaffeUnstableError("soft_errors.flip_bits", f"must satisfy 0 <= lo <= hi <= {w - 1} "
                                                              f"(the {self.site} register width), got [{lo}, {hi}]")
        return lo, hi

    def n_chances(self, geometry):
        return geometry["N_MAC"] if self.count == "hardware" else model_mac_count(geometry)

    def plan(self, op, geometry, rng):
        """LayerPlan with the MAC-flip records of every image of `op` (rng: a rng.PassKey or anything with its
        `generator` method).

        The draws are per image, in faults.md §4.3's order. With a PassKey and hardware counts they are made in
        numba (streams.py: the same draws as rng.generator's) and turned into sorted records image by image
        (mac_records: a counting sort by lane, the draws being sorted already) in one numba call; model counts,
        geometries too large for that and other generators go through NumPy and one sort of one int64 key."""
        lo, hi = self.bit_range(geometry)
        N = self.n_chances(geometry)
        if isinstance(rng, PassKey) and self.count == "hardware" and N <= mac_records.MAX_POSITION:
            return self._hardware_plan(op, geometry, rng, N, lo, hi)
        fast = isinstance(rng, PassKey)     # streams.py: the same generators as rng.generator's, seeded in numba
        if fast:
            words = np.array(streams.uint32_words(rng.seed), np.uint32)
            key = np.array(rng.key("mac_flip", op.layer_index, 0), np.int64)
        ks, bs, ns = [np.empty(0, np.int64)], [np.empty(0, np.int64)], [np.empty(0, np.int64)]
        for i in range(op.batch):
            if fast:
                key[5] = i
                stream = streams.reseeded(words, key)
            else:
                stream = rng.generator("mac_flip", op.layer_index, i)
            k, bits = sample_flips(stream, N, self.rate, lo, hi)
            ks.append(k)
            bs.append(bits)
            ns.append(np.full(len(k), i, np.int64))
        k, bits, n = np.concatenate(ks), np.concatenate(bs), np.concatenate(ns)
        if not len(k):
            return LayerPlan(op.layer_index, op.layer_name, geometry, mac_events=mac_events([], [], [], [], [], [], []))
        (o, y, x, t, bits), masked, valid = _records(k, bits, geometry, self.count)
        ev = sorted_mac_events(n[valid] if masked else n, o, y, x, t, SITES[self.site], bits, geometry)
        return LayerPlan(op.layer_index, op.layer_name, geometry, mac_events=ev, masked=masked)


    def _hardware_plan(self, op, geometry, key, N, lo, hi):
        g = geometry
        words = np.array(streams.uint32_words(key.seed), np.uint32)
        prefix = np.array(key.key("mac_flip", op.layer_index, 0), np.int64)
        gen = streams.reseedable()
        mean = op.batch * N * self.rate
        cap = int(mean + 8 * mean ** 0.5) + 64             # columns for all but a >8-sigma count; else again
        while True:
            ev = np.empty(cap, MAC_EVENT_DTYPE)
            fo_key, fo_rng = np.empty(cap, np.int64), np.empty((cap, 4), np.int64)
            starts = np.zeros(op.batch * g["O"] + 1, np.int64)
            kept, masked, m = mac_records.layer_records(gen.generator, gen.words, gen.flags, words, prefix, op.batch,
                                                        N, float(self.rate), lo, hi, g["VEC_SIZE"], g["L"],
                                                        g["LANE_NUM"], g["conv_x"], g["conv_y"], g["po"], g["O"],
                                                        SITES[self.site], *(ev[f] for f in MAC_EVENT_DTYPE.names),
                                                        fo_key, fo_rng, starts)
            if kept >= 0:
                lp = LayerPlan(op.layer_index, op.layer_name, geometry, mac_events=ev[:kept], masked=masked)
                lp.set_outputs(op.batch, fo_key[:m], fo_rng[:m], starts)
                return lp
            cap *= 2


def sample_flips(rng, N, rate, lo, hi):
    """The draws of stream 1 for one layer and image, in order: F, then F sorted distinct positions, then bits."""
    F = int(rng.binomial(N, rate))
    if not F:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    k = sample_distinct(rng, N, F)
    return k, rng.integers(lo, hi + 1, size=F, dtype=np.int64)


def positions_to_records(k, bits, geometry, count="hardware"):
    """MAC indices -> ((o, y, x, t, bit), masked): positions on padded lanes are dropped and counted."""
    rec, masked, _ = _records(k, bits, geometry, count)
    return tuple(np.asarray(c, np.int64) for c in rec[:4]) + rec[4:], masked


def _records(k, bits, geometry, count):
    if count == "hardware":
        o, y, x, t, valid = _decode_hardware(k, geometry)
    else:
        o, y, x, t, _ = decode_model_mac(k, geometry)
        valid = None
    bits = np.asarray(bits)
    masked = 0 if valid is None else len(valid) - int(np.count_nonzero(valid))
    if not masked:
        return (o, y, x, t, bits), 0, valid
    return (o[valid], y[valid], x[valid], t[valid], bits[valid]), masked, valid


def sorted_mac_events(n, o, y, x, t, site, bit, geometry):
    """MAC_EVENT_DTYPE records of one layer sorted by (n, o, y, x, t, site, bit): one np.sort of an int64 key
    that holds every field (the fields are then read back from it; no argsort, no lexsort), or mac_events when
    the key would not fit in 63 bits."""
    g = geometry
    n = np.asarray(n, np.int64)
    inner = g["L"] * 96                              # (t, site, bit) with site < 3, bit < 32
    outer = (int(n.max()) + 1 if len(n) else 1) * g["O"] * g["conv_y"] * g["conv_x"]
    if outer * inner >= 1 << 62 or outer >= 1 << 31 or inner >= 1 << 31:
        return mac_events(n, o, y, x, t, np.full(len(n), site), bit)
    key = ((n * g["O"] + o) * g["conv_y"] + y) * g["conv_x"] + x
    key *= inner
    key += (np.asarray(t, np.int64) * 3 + site) * 32 + bit
    return _events_from_keys(np.sort(key), g)


def _events_from_keys(key, g):
    """Read the fields back from sorted keys of sorted_mac_events: one int64 division, the rest in int32 (NumPy's
    int32 // is several times faster than int64's, and % slower than // and a multiply)."""
    inner = g["L"] * 96
    ev = np.empty(len(key), MAC_EVENT_DTYPE)
    hi = key // inner
    lo = (key - hi * inner).astype(np.int32)
    hi = hi.astype(np.int32)
    for col, name, s_ in ((lo, "bit", 32), (lo, "site", 3), (lo, "t", g["L"]), (hi, "x", g["conv_x"]),
                          (hi, "y", g["conv_y"]), (hi, "o", g["O"])):
        q = col // s_
        col -= q * s_
        ev[name] = col
        col[...] = q
    ev["n"] = hi
    return ev


def _decode_hardware(k, geometry):
    """decode_mac without v, in int32 where N_MAC allows (faster divisions): (o, y, x, t, valid)."""
    g = geometry
    k = np.asarray(k, np.int64)
    q = (k // g["VEC_SIZE"]).astype(np.int32) if g["N_MAC"] < 1 << 31 else k // g["VEC_SIZE"]
    out = q // g["L"]
    t = q - out * g["L"]
    r = out // g["LANE_NUM"]
    lane = out - r * g["LANE_NUM"]
    r2 = r // g["conv_x"]
    x = r - r2 * g["conv_x"]
    z = r2 // g["conv_y"]
    y = r2 - z * g["conv_y"]
    o = z * g["LANE_NUM"] + lane - g["po"]
    valid = (o >= 0) & (o < g["O"])
    return o, y, x, t, valid


# -- the exact correction (faults.md §4.4) -----------------------------------------------------------------------
def output_groups(events):
    """Index of the first record of each faulted output (n, o, y, x) in sorted `events`, and each record's group."""
    key = np.stack([events[f].astype(np.int64) for f in ("n", "o", "y", "x")])
    new = np.ones(len(events), bool)
    new[1:] = (key[:, 1:] != key[:, :-1]).any(axis=0)
    return np.flatnonzero(new), np.cumsum(new) - 1


def _ranks(group):
    """Position of each element within its group, for `group` ids sorted or not (order within kept)."""
    order = np.argsort(group, kind="stable")
    g = group[order]
    start = np.ones(len(g), bool)
    start[1:] = g[1:] != g[:-1]
    first = np.maximum.accumulate(np.where(start, np.arange(len(g)), 0))
    rank = np.empty(len(g), np.int64)
    rank[order] = np.arange(len(g)) - first
    return rank


def corrected_sums(events, cur_clean, S_clean, geometry):
    """S of every faulted output with its MAC-flip records applied exactly (faults.md §4.4).

    events:    MAC_EVENT_DTYPE records, sorted (one layer; any images).
    cur_clean: int64 per record, the register's value without any of these records: for `accumulator` the clean
               chain prefix A_t = Σ m_t' over t' ≡ t (mod PIPE_DEPTH), t' ≤ t; for `product` the step's dot
               product m_t; ignored for `final`.
    S_clean:   int64 per faulted output (in `output_groups` order), the clean int32 sum S.
    Returns (first, S) with first = output_groups(events)[0] and S int64 holding int32 values.
    "Clean" means after memory faults and multiplier stuck bits; outputs whose lane has carry-horizon timing or a
    stuck product/accumulator bit need the §1.2 loop instead (those ops are not modular adds of the delta).
    """
    first, group = output_groups(events)
    site = events["site"].astype(np.int64)
    bit = events["bit"].astype(np.int64)
    t = events["t"].astype(np.int64)
    widths = np.array([site_width(geometry, s) for s in range(3)])
    cur_clean = np.asarray(cur_clean, dtype=np.int64)
    total = np.zeros(len(first), np.int64)

    inner = np.flatnonzero(site != SITES["final"])
    if len(inner):
        chain = group[inner] * geometry["PIPE_DEPTH"] + t[inner] % geometry["PIPE_DEPTH"]
        _, chain_id = np.unique(chain, return_inverse=True)
        rank = _ranks(chain_id)
        D = np.zeros(chain_id.max() + 1, np.int64)       # delta so far on the chain
        Dm = np.zeros_like(D)                            # delta so far on the product register of step Dm_t
        Dm_t = np.full_like(D, -1)
        for j in range(rank.max() + 1):
            sel = rank == j
            idx, c = inner[sel], chain_id[sel]
            same_step = Dm_t[c] == t[idx]
            is_product = site[idx] == SITES["product"]
            Dm[c] = np.where(same_step, Dm[c], 0)
            Dm_t[c] = t[idx]
            cur = wrap32(cur_clean[idx] + np.where(is_product, Dm[c], D[c]))
            d = flip_delta(cur, bit[idx], widths[site[idx]])
            D[c] += d
            Dm[c] += np.where(is_product, d, 0)
        chain_out = np.zeros_like(D)
        chain_out[chain_id] = group[inner]
        np.add.at(total, chain_out, D)

    S = wrap32(np.asarray(S_clean, dtype=np.int64) + total)
    fin = np.flatnonzero(site == SITES["final"])
    if len(fin):
        rank = _ranks(group[fin])
        for j in range(rank.max() + 1):
            idx = fin[rank == j]
            S[group[idx]] = flip(S[group[idx]], bit[idx], widths[2])
    return first, S
