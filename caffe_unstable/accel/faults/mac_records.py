"""Hardware MAC positions -> sorted MAC-flip records in one numba pass (faults.md §1.1, §2.3).

The draws give each image's positions k sorted, which is PipeCNN's order (z, y, x, lane, t, v); a plan wants
(o, y, x, t, site, bit) with o = z·LANE + lane − po. So no general sort is needed: within each image and lane
group z, a stable counting sort by lane gives (o, y, x, t), and the few records of one step (at most VEC) are
put in bit order. The decode splits k through float reciprocals (a 64-bit division by a run-time value costs
tens of cycles here), exact below MAX_POSITION = 2^50.

`layer_records` draws a layer's flips image by image (streams.py) and writes each image's records while its
positions are still in cache.
"""
import numpy as np
from numba import njit

from . import streams

MAX_POSITION = 1 << 50


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _divmod(q, d, inv):
    """(q // d, q % d) for 0 <= q < 2^50 and 1 <= d, through the float reciprocal inv = 1 / d, without a branch:
    (q + 1/2) / d is at least 1/(2d) away from an integer, more than the rounding errors of inv and of the
    product ((q + 1/2) / d times 2^-52 at most) below 2^50, so truncating it gives q // d exactly."""
    est = np.int64((np.float64(q) + 0.5) * inv)
    return est, q - est * d


@njit(cache=True, nogil=True, error_model="numpy")
def hardware_records(k, bits, n, vec, L, lanes, conv_x, conv_y, po, O, site, ev_n, ev_o, ev_y, ev_x, ev_t,
                     ev_site, ev_bit):
    """Records of positions k (sorted within each image; n non-decreasing) written sorted into the ev_* columns
    (room for len(k)); positions on padded lanes (o outside [0, O)) are dropped. Returns the number written, or
    -1 when k is not in that order (the caller then sorts)."""
    m = len(k)
    z_of = np.empty(m, np.int64)
    lane_of = np.empty(m, np.int64)
    y_of = np.empty(m, np.int32)
    x_of = np.empty(m, np.int32)
    t_of = np.empty(m, np.int32)
    b_of = np.empty(m, np.int8)
    i_vec, i_l, i_lanes, i_cx, i_cy = 1.0 / vec, 1.0 / L, 1.0 / lanes, 1.0 / conv_x, 1.0 / conv_y
    prev = np.int64(-1)
    for i in range(m):
        if i and (n[i] < n[i - 1] or (n[i] == n[i - 1] and k[i] <= k[i - 1])):
            return -1
        q, _ = _divmod(k[i], vec, i_vec)
        b_of[i] = bits[i]
        if q == prev and n[i] == n[i - 1]:
            # flips of one step (other vec slots) are adjacent here: bit order among them (at most VEC)
            j = i
            while j > 0 and b_of[j - 1] > b_of[j] and k[j - 1] // vec == q and n[j - 1] == n[i]:
                b_of[j - 1], b_of[j] = b_of[j], b_of[j - 1]
                j -= 1
        prev = q
        q, t = _divmod(q, L, i_l)
        q, lane = _divmod(q, lanes, i_lanes)
        q, x = _divmod(q, conv_x, i_cx)
        z, y = _divmod(q, conv_y, i_cy)
        z_of[i], lane_of[i], y_of[i], x_of[i], t_of[i] = z, lane, y, x, t
    count = np.zeros(lanes + 1, np.int64)
    w = 0
    b0 = 0
    while b0 < m:                           # one block per (image, lane group): a stable counting sort by lane
        b1 = b0 + 1
        while b1 < m and n[b1] == n[b0] and z_of[b1] == z_of[b0]:
            b1 += 1
        count[:] = 0
        base = z_of[b0] * lanes - po
        for i in range(b0, b1):
            o = base + lane_of[i]
            if 0 <= o < O:
                count[lane_of[i] + 1] += 1
        for c in range(lanes):
            count[c + 1] += count[c]
        total = count[lanes]
        for i in range(b0, b1):
            lane = lane_of[i]
            o = base + lane
            if 0 <= o < O:
                j = w + count[lane]
                count[lane] += 1
                ev_n[j], ev_o[j], ev_y[j], ev_x[j], ev_t[j] = n[i], o, y_of[i], x_of[i], t_of[i]
                ev_site[j], ev_bit[j] = site, b_of[i]
        w += total
        b0 = b1
    return w



@njit(cache=True, nogil=True)
def layer_records(gen, words, flags, entropy_words, key, batch, N, rate, lo, hi, vec, L, lanes, conv_x, conv_y, po,
                  O, site, ev_n, ev_o, ev_y, ev_x, ev_t, ev_site, ev_bit, fo_key, fo_rng, starts):
    """Stream 1's draws for images 0 .. batch-1 of one layer (key[5] = image; streams.py's reseedable generator
    gen over words and flags) turned into sorted records in the ev_* columns, and their faulted outputs: keys
    ((n O + o) conv_y + y) conv_x + x in fo_key and each one's record range in fo_rng[:, :2] (columns 2 and 3,
    the rate records' range, 0), as corrections.faulted_outputs gives them; starts (batch O + 1, zeros) becomes
    corrections.channel_starts of fo_key. Returns (records written, positions on padded lanes dropped, outputs),
    or (-1, 0, 0) when the columns are too short."""
    scratch = np.empty(32, np.uint32)
    w = masked = m = 0
    prev = np.int64(-1)
    for n in range(batch):
        key[5] = n
        s_lo, s_hi, i_lo, i_hi = streams.pcg64_state(entropy_words, key, scratch)
        words[0], words[1], words[2], words[3] = s_lo, s_hi, i_lo, i_hi
        flags[0], flags[1] = 0, 0
        F = gen.binomial(N, rate)
        if F == 0:
            continue
        k = streams.distinct(gen, N, F)
        bits = gen.integers(lo, hi + 1, F)
        if w + F > len(ev_n) or w + F > len(fo_key):
            return -1, 0, 0
        kept = hardware_records(k, bits, np.full(F, n, np.int64), vec, L, lanes, conv_x, conv_y, po, O, site,
                                ev_n[w:], ev_o[w:], ev_y[w:], ev_x[w:], ev_t[w:], ev_site[w:], ev_bit[w:])
        for i in range(w, w + kept):        # the image's records are in output order: new keys start outputs
            out = ((np.int64(n) * O + ev_o[i]) * conv_y + ev_y[i]) * conv_x + ev_x[i]
            if out != prev:
                if m:
                    fo_rng[m - 1, 1] = i
                fo_key[m] = out
                fo_rng[m, 0], fo_rng[m, 2], fo_rng[m, 3] = i, 0, 0
                starts[n * O + ev_o[i] + 1] += 1
                m += 1
                prev = out
        masked += F - kept
        w += kept
    if m:
        fo_rng[m - 1, 1] = w
    for c in range(batch * O):
        starts[c + 1] += starts[c]
    return w, masked, m
