"""The MAC-order conv path of the numba backend: faults.md §1.2's register loop, compiled (pipecnn.md §2.2-§2.4).

Per output (n, o, y, x): for t in [0, L) in PipeCNN's step order (channel-vector group, ky, kx; kx fastest) m_t =
the VEC-wide dot product formed as VEC/4 four-product DSP results added in order; A_(t mod P) += m_t (int32,
wrapping); S = A_(L-1) + A_(L-2) + ... + A_(L-P); then the §1.5 conversion and fused ReLU. Every datapath fault of
a plan acts inline here: stuck multiplier bits, carry-horizon adds (adder tree, accumulate, final reduce; §5),
product flips and stuck product bits, rate errors, accumulator flips and stuck bits, final flips.

Why two passes per step: a step is first done for every output of a tile at once in vectorised loops (exact
float32 sums of the VEC products for the horizons K >= 16 of overclocking, int arithmetic otherwise), with a
cheap test that flags every add that can have a late carry at the smallest horizon any add of the image can get
(late bits at K are a subset of those at any K' < K, §5.2); only the flagged adds, the steps with fault records
and the lanes with stuck bits are then redone one by one with the full semantics (and the per-add SplitMix64
draw, §3.3). The first pass has two layouts (mac_run.layout): position-major, a tile of up to 128 output
positions in the vector lanes, one channel at a time (convolutions); or channel-major, the channels in the
lanes, one position of a tile of TILE at a time (an FC layer's few positions, the adder-tree site, horizons
below 16). The clean value of an output (for outputs_changed) is its faulty sum less the changes the second
pass and the final reduction made.
"""
import numpy as np
from numba import njit

M32 = 0xFFFFFFFF
GAMMA = np.uint64(0x9E3779B97F4A7C15)
MIX1 = np.uint64(0xBF58476D1CE4E5B9)
MIX2 = np.uint64(0x94D049BB133111EB)
TILE = 8                # output positions per tile
DEBRUIJN_MUL = np.uint64(0x03F79D71B4CB0A89)       # bit index of a power of two: DEBRUIJN[(b * MUL) >> 58]
DEBRUIJN = np.zeros(64, np.int64)
for _i in range(64):
    DEBRUIJN[((1 << _i) * 0x03F79D71B4CB0A89 & 0xFFFFFFFFFFFFFFFF) >> 58] = _i
NO_STEP = 1 << 30       # "no more fault records" for an output


@njit(cache=True, nogil=True, error_model="numpy")
def _wrap32(v):
    return ((v + 2147483648) & 4294967295) - 2147483648


@njit(cache=True, nogil=True, error_model="numpy")
def _flip(v, b, w):
    """faults.md §1.2 flip(v, b, w) on an int32 value held in an int64."""
    bit = (v >> b) & 1
    if b < w - 1:
        d = -(np.int64(1) << b) if bit else (np.int64(1) << b)
    else:
        d = (np.int64(1) << (w - 1)) if bit else -(np.int64(1) << (w - 1))
    return _wrap32(v + d)


@njit(cache=True, nogil=True, error_model="numpy")
def _force(v, b, val, w):
    return v if ((v >> b) & 1) == val else _flip(v, b, w)


@njit(cache=True, nogil=True, error_model="numpy")
def _convert(acc, rb, n, relu):
    # the §1.5 closed form; a copy of conv.py's (numba's cache does not see edits to other modules)
    r1 = (acc + (np.int64(1) << (n - 1))) >> n
    if r1 >= 128:
        y = 127
    elif r1 <= -129:
        y = -128
    else:
        y = ((r1 + rb + 128) & 255) - 128
    if relu and y < 0:
        y = 0
    return y


@njit(cache=True, nogil=True, error_model="numpy")
def _saturates(acc, n):
    r1 = (acc + (np.int64(1) << (n - 1))) >> n
    return r1 >= 128 or r1 <= -129


# -- the carry horizon (faults.md §5.1, §3.3) -------------------------------------------------------------------
@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _late_any_k(a, b, K):
    """Late-carry mask of the 32-bit add a + b under horizon K >= 0, without a branch (0 for K >= 31 by a
    multiply): the branch-free second pass draws a horizon for adds that may not be late at all."""
    au, bu = a & M32, b & M32
    p = au ^ bu
    c = ((au + bu) & M32) ^ p
    run = np.int64(M32)            # run_K by doubling (faults.md §5.2): R_2n = R_n & (R_n << n)
    rn = (p << 1) & M32
    off = 0
    for i in range(5):                 # branch-free: K's bits are data here (per-add jitter)
        bit = (K >> i) & 1
        run &= ((rn << off) & M32) | ((bit - 1) & M32)
        off += bit << i
        rn &= (rn << (1 << i)) & M32
    return c & (run * np.int64(K < 31))


@njit(cache=True, nogil=True, error_model="numpy")
def _late(a, b, K):
    """Late-carry mask of the 32-bit add a + b under horizon K (0 when K >= 31)."""
    if K >= 31:
        return np.int64(0)
    return _late_any_k(a, b, K)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _horizon_sorted(u, th, lane):
    """31 - #{j : u < th[lane, j]} for a non-decreasing row (the count of entries <= u) by a branch-free binary
    search: five loads instead of 31 compares."""
    pos = 0
    for step in (16, 8, 4, 2, 1):
        pos += step * np.int64(th[lane, pos + step - 1] <= u)
    return pos


@njit(cache=True, nogil=True, error_model="numpy")
def _ch_add(a, b, late, mode, prev):
    """The sampled result of a + b with late mask `late`: 0 carry_dropped, 1 stale (prev's bits), 2 drop."""
    s = (a + b) & M32
    if late == 0:
        return _wrap32(s)
    if mode == 0:
        return _wrap32(s ^ late)
    if mode == 1:
        return _wrap32((s & ~late & M32) | (prev & M32 & late))
    return _wrap32(a)


@njit(cache=True, nogil=True, error_model="numpy")
def _u32(key, ctr):
    z = key + (ctr + np.uint64(1)) * GAMMA
    z = (z ^ (z >> np.uint64(30))) * MIX1
    z = (z ^ (z >> np.uint64(27))) * MIX2
    return (z ^ (z >> np.uint64(31))) >> np.uint64(32)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _horizon(jit, n, lane, ctr, slack, clamp, k_lane, th, keys):
    """K of one add: K_lane[n, lane], or 31 - #{j : u32(key_n, ctr) < thresholds[lane, j]}; plus the site's
    slack, clamped to [0, 31] (final_reduce and adder_tree)."""
    if jit:
        u = _u32(keys[n], np.uint64(ctr))
        cnt = 0
        for j in range(31):
            if u < th[lane, j]:
                cnt += 1
        K = np.int64(31 - cnt)
    else:
        K = k_lane[n, lane]
    if clamp:
        K = min(max(K + slack, 0), 31)
    return K


@njit(cache=True, nogil=True, error_model="numpy")
def run_masks(K):
    """(shift, fill) per power 16, 8, 4, 2, 1 so that run_K = AND_i ((R_(2^i) << shift_i) | fill_i): the doubling
    of faults.md §5.2 with loop-invariant terms (fill = all ones for an absent power)."""
    sh = np.zeros(5, np.int64)
    fill = np.full(5, M32, np.int64)
    off = 0
    for i in range(5):
        pw = 16 >> i
        if K & pw:
            sh[i] = off
            fill[i] = 0
            off += pw
    return sh, fill


@njit(cache=True, nogil=True, error_model="numpy")
def _late_fast(a, m, sh, fill):
    """Nonzero iff the add a + m has a late carry at the filter's horizon (run_masks); branch-free."""
    au, mu = a & M32, m & M32
    p = au ^ mu
    c = ((au + mu) & M32) ^ p
    r1 = (p << 1) & M32
    r2 = r1 & (r1 << 1)
    r4 = r2 & (r2 << 2)
    r8 = r4 & (r4 << 4)
    r16 = r8 & (r8 << 8)
    run = (((r16 << sh[0]) | fill[0]) & ((r8 << sh[1]) | fill[1]) & ((r4 << sh[2]) | fill[2])
           & ((r2 << sh[3]) | fill[3]) & ((r1 << sh[4]) | fill[4]))
    return c & run & M32


# -- the loop ---------------------------------------------------------------------------------------------------
@njit(cache=True, nogil=True, error_model="numpy")
def _exact_m(xq, wc, t, k, vec, lane, sm_lane, sm_vec, sm_bit, sm_val, tree, kf_tree, jit, n, ctr_step,
             slack_tree, k_lane, th, keys):
    """m_t of one output with stuck multiplier bits and the adder-tree horizon; -> (m, late adds)."""
    m = np.int64(0)
    lates = 0
    for i in range(vec // 4):
        d = np.int64(0)
        for r in range(4):
            v = 4 * i + r
            p = xq[v] * np.int64(wc[t, v, k])
            for e in range(len(sm_lane)):
                if sm_lane[e] == lane and sm_vec[e] == v:
                    p = _force(p, sm_bit[e], sm_val[e], 16)
            d += p
        if i == 0:
            m = d
        elif tree and _late(m, d, kf_tree) != 0:
            K = _horizon(jit, n, lane, (ctr_step * (vec // 4) + i) * 4 + 2, slack_tree, True, k_lane, th, keys)
            late = _late(m, d, K)
            m = _ch_add(m, d, late, 0, 0)
            lates += late != 0
        else:
            m = _wrap32(m + d)
    return m, lates


@njit(cache=True, nogil=True, error_model="numpy")
def _next_step(pm, pm1, ev_t, ev_site, pr, pr1, rt_t):
    """Step of an output's next product/accumulator or rate record (final records are applied at the end)."""
    t = NO_STEP
    while pm < pm1 and ev_site[pm] == 2:
        pm += 1
    if pm < pm1:
        t = ev_t[pm]
    if pr < pr1 and rt_t[pr] < t:
        t = rt_t[pr]
    return t


@njit(cache=True, nogil=True, error_model="numpy")
def _maybe_late(a, m, K):
    """Whether the accumulate add a + m (int32 values) can have a late carry at horizon K: exact when both
    operands lie in [-2^K, 2^K), True otherwise (faults.md §5.1-§5.2).

    Why values suffice: in that range bits K..31 of each operand are copies of its sign, so no chain below bit
    K is longer than K stages, and a longer one must run through the sign bits to bit 31: the signs differ
    (p_31 = 1), the carry reaches bit 31 (the sum is >= 0) and bits 31-K..30 all propagate (p >> (31-K) == -1
    in int32). Conversely those three make bit 31 late."""
    if K >= 31:
        return False
    if K == 0:
        return True
    return ((((a >> K) + 1) >> 1) != 0 or (((m >> K) + 1) >> 1) != 0
            or ((_wrap32(a ^ m) >> (31 - K)) == -1 and _wrap32(a + m) >= 0))


@njit(cache=True, nogil=True, error_model="numpy")
def _dot_pass(xrow, wt, k0, kc, mv):
    """mv[:kc] = m_t of every channel: input vector xrow times weights wt[:, k0:k0+kc] (zero inputs skipped)."""
    first = True
    for v in range(len(xrow)):
        xv = np.int32(xrow[v])
        if xv == 0:
            continue
        wv = wt[v, k0:k0 + kc]
        if first:
            for k in range(kc):
                mv[k] = np.int32(xv * np.int32(wv[k]))
            first = False
        else:
            for k in range(kc):
                mv[k] = np.int32(mv[k] + np.int32(xv * np.int32(wv[k])))


@njit(cache=True, nogil=True, error_model="numpy")
def _tree_pass(xrow, wt, k0, kc, mv, flk, sh, fill):
    """mv[:kc] = m_t of every channel formed as the DSP sums D_0 + D_1 + ... in order; flk = whether any of
    those adds can be late at the filter horizon (run_masks sh, fill). Returns whether any can."""
    anyf = np.uint8(0)
    for i in range(len(xrow) // 4):
        x0, x1 = np.int32(xrow[4 * i]), np.int32(xrow[4 * i + 1])
        x2, x3 = np.int32(xrow[4 * i + 2]), np.int32(xrow[4 * i + 3])
        w0, w1, w2, w3 = wt[4 * i, k0:k0 + kc], wt[4 * i + 1, k0:k0 + kc], wt[4 * i + 2, k0:k0 + kc], \
            wt[4 * i + 3, k0:k0 + kc]
        for k in range(kc):
            d = np.int32(x0 * np.int32(w0[k]) + x1 * np.int32(w1[k]) + x2 * np.int32(w2[k]) + x3 * np.int32(w3[k]))
            if i == 0:
                mv[k] = d
                flk[k] = 0
            else:
                fl = np.uint8(_late_fast(np.int64(mv[k]), np.int64(d), sh, fill) != 0)
                flk[k] |= fl
                anyf |= fl
                mv[k] = np.int32(mv[k] + d)
    return anyf != 0


@njit(cache=True, nogil=True, error_model="numpy")
def _acc_pass(arow, mv, flk, kc, K, keep):
    """arow[:kc] += mv[:kc] (int32, wrapping); flk = (flk & keep) | whether the add can be late at horizon K.
    Returns whether any can. K >= 31: none can; K < 16: the exact late mask; 16 <= K <= 30, the window test:
    every run of K propagate bits inside bits 0..30 (which a late carry needs, faults.md §5.1) covers bits
    31-K..K-1, so an add with a zero bit of p = a XOR m there has no late bit. The few adds it flags (crossings
    that land near zero, operands near 2^31) are then decided exactly, one by one."""
    f = np.int32(0)
    if K >= 31:
        for k in range(kc):
            arow[k] = np.int32(arow[k] + mv[k])
            flk[k] &= keep
    elif K >= 16:
        top, wmask = 31 - K, np.int32((1 << (2 * K - 31)) - 1)
        for k in range(kc):
            a = arow[k]
            m = mv[k]
            fl = np.int32((np.int32(np.int32(a ^ m) >> top) & wmask) == wmask)
            flk[k] = (flk[k] & keep) | np.uint8(fl)
            f |= fl
            arow[k] = np.int32(a + m)
    else:
        sh, fill = run_masks(K)
        for k in range(kc):
            a = arow[k]
            m = mv[k]
            fl = np.int32(_late_fast(np.int64(a), np.int64(m), sh, fill) != 0)
            flk[k] = (flk[k] & keep) | np.uint8(fl)
            f |= fl
            arow[k] = np.int32(a + m)
    return f != 0


@njit(cache=True, nogil=True, error_model="numpy")
def window_masks(K):
    """wm_or of the float first passes' test at horizon K (16 <= K <= 30): an add a + m = s is flagged iff
    ((p & ~s) | wm_or) == -1, p = a XOR m; for K >= 31, 0, a test that never fires (p = -1 makes s = -1).

    A late bit j of a + m (K + 1 <= j <= 31) needs a carry into j that rippled through the K propagate bits
    j-K .. j-1 (faults.md §5.1), so the carry also arrives at every bit of that run: bits 31-K .. K of p (inside
    every such run when K >= 16) are all ones and carries arrive at all of them, so those bits of s = p XOR
    carries are all zeros. wm_or sets every bit outside that window. (With p's window all ones, a carry into
    bit K, which the window test used to check on its own, is the same thing as s's window all zeros.)"""
    if K >= 31:
        return np.int32(0)
    outside = ~(((np.int64(1) << (2 * K - 30)) - 1) << (31 - K)) & M32
    return np.int32(outside - (np.int64(1) << 32) if outside >= (np.int64(1) << 31) else outside)


@njit(cache=True, nogil=True, fastmath={"contract"}, error_model="numpy", inline="always")
def _quad_sums(s0, s1, s2, s3, R, base, stride, n, out, first):
    """out[:n] (+)= s0 R0 + s1 R1 + s2 R2 + s3 R3 in float32, where Ri[j] = R[base + i stride + j]: the products of
    four vec slots, exact (integers below 2^24). Channel-major: the scalars are a position's inputs and the rows
    the channels' weights (int8 or float32); position-major, the other way round. Flat unsigned indices: LLVM
    gathers rows picked by run-time indices, and signed ones carry numpy's wraparound."""
    b0 = np.uint64(base)
    b1, b2, b3 = b0 + np.uint64(stride), b0 + np.uint64(2 * stride), b0 + np.uint64(3 * stride)
    if first:
        for j in range(np.uint64(n)):
            out[j] = s0 * np.float32(R[b0 + j]) + s1 * np.float32(R[b1 + j]) + s2 * np.float32(R[b2 + j]) \
                + s3 * np.float32(R[b3 + j])
    else:
        for j in range(np.uint64(n)):
            out[j] += s0 * np.float32(R[b0 + j]) + s1 * np.float32(R[b1 + j]) + s2 * np.float32(R[b2 + j]) \
                + s3 * np.float32(R[b3 + j])


@njit(cache=True, nogil=True, fastmath={"contract"}, error_model="numpy", inline="always")
def _quad_add_test(s0, s1, s2, s3, R, base, stride, n, A, ba, F, bf, part, more, wm_or):
    """The last quad of m_t (as _quad_sums, plus part[j] when `more`), the int32 add into A[ba + j] and the
    window test (window_masks) into F[bf + j], for j < n in one loop; returns whether any add is flagged."""
    b0 = np.uint64(base)
    b1, b2, b3 = b0 + np.uint64(stride), b0 + np.uint64(2 * stride), b0 + np.uint64(3 * stride)
    ba, bf = np.uint64(ba), np.uint64(bf)
    anyf = np.uint8(0)
    for j in range(np.uint64(n)):
        mf = s0 * np.float32(R[b0 + j]) + s1 * np.float32(R[b1 + j]) + s2 * np.float32(R[b2 + j]) \
            + s3 * np.float32(R[b3 + j])
        if more:
            mf += part[j]
        m = np.int32(mf)
        a = A[ba + j]
        s = np.int32(a + m)
        fl = np.uint8((((a ^ m) & ~s) | wm_or) == np.int32(-1))
        F[bf + j] = fl
        anyf = np.uint8(anyf | fl)
        A[ba + j] = s
    return anyf != 0


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _scan_pass(xq, q, wflat, vec, kw, t, k0, kc, abuf, ba, flk, mvf, wm_or):
    """First pass of output position q at step t, K >= 16, channels in the vector lanes (wflat: the (L, vec, kw)
    weights, flat): m_t of every channel
    in float32 (exact: every partial sum is an integer below 2^24, whatever the order), the int32 add into
    abuf[ba + k], and the window test of window_masks into flk (one flag per channel, a superset of the late
    adds). Returns whether any add is flagged.

    Why this shape (measured on 2-core AVX-512, where LLVM uses 256-bit vectors): float FMAs rather than int32
    multiplies (vpmulld is two uops on one port); inlined helpers and flat unsigned indices (numba refcounts
    the arrays of every call and every slice, and LLVM gathers rows picked by run-time indices); the "any" as a
    uint8 reduction (an int32 one is promoted to int64 and halves the vector width; reading the flags back as
    words stalls on store forwarding)."""
    for v in range(0, vec - 4, 4):
        _quad_sums(np.float32(xq[q, v]), np.float32(xq[q, v + 1]), np.float32(xq[q, v + 2]),
                   np.float32(xq[q, v + 3]), wflat, (t * vec + v) * kw + k0, kw, kc, mvf, v == 0)
    v = vec - 4
    return _quad_add_test(np.float32(xq[q, v]), np.float32(xq[q, v + 1]), np.float32(xq[q, v + 2]),
                          np.float32(xq[q, v + 3]), wflat, (t * vec + v) * kw + k0, kw, kc, abuf, ba, flk, 0, mvf,
                          vec > 4, wm_or)


@njit(cache=True, nogil=True, fastmath={"contract"}, error_model="numpy")
def _pos_pass(xf, vec, tile, wt, kc, abuf, r, kmax, F, mq, nq, wm_or, fks):
    """The first pass of every position of a tile at one step, channel by channel (positions in the vector
    lanes): the adds into abuf as (pipe, kmax, tile) and the flags into F as (kmax, tile); wt (VEC, channels) the
    step's weights. Writes the flagged channels into fks; returns their count.

    Called, not inlined: in its own function LLVM keeps the loop's values in registers (inlined into the big
    kernel it reloaded them from the stack, measured 7 % slower). The call's refcounts stay cheap because every
    array it gets belongs to the calling thread (wt is a per-step copy of the shared weights)."""
    nf = 0
    for k in range(kc):
        for v in range(0, vec - 4, 4):
            _quad_sums(wt[v, k], wt[v + 1, k], wt[v + 2, k], wt[v + 3, k], xf, v * tile, tile, nq, mq, v == 0)
        v = vec - 4
        flagged = _quad_add_test(wt[v, k], wt[v + 1, k], wt[v + 2, k], wt[v + 3, k], xf, v * tile, tile, nq,
                                 abuf, (r * kmax + k) * tile, F, k * tile, mq, vec > 4, wm_or)
        fks[nf] = k                     # kept only when flagged: no branch (one channel in seven is)
        nf += np.int64(flagged)
    return nf


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _final_pass(abuf, regs, nreg, kmax, tile, k, dl, rb, nsh, relu, nq, ybuf, fbuf):
    """Steps 8 and 9 of §1.2 for channel k of every position of a position-major tile when no final add can be
    late and no final record applies: S = the sum of the accumulators (wrapping, one pass per register), then
    the §1.5 conversion of S and of the clean S - dl (dl flat, (kmax, tile)) into ybuf (the output) and fbuf
    (2 changed, 4 saturated). The rounding shift is (S >> n) + bit n-1 of S: no int32 overflow, so the loops
    stay in 32-bit lanes."""
    nq = np.uint64(nq)
    b0 = np.uint64((regs[0] * kmax + k) * tile)
    for q in range(nq):
        ybuf[q] = abuf[b0 + q]
    for i in range(1, nreg):
        bi = np.uint64((regs[i] * kmax + k) * tile)
        for q in range(nq):
            ybuf[q] = np.int32(ybuf[q] + abuf[bi + q])
    bd = np.uint64(k * tile)
    rb32 = np.int32(rb)
    n1 = nsh - 1
    for q in range(nq):
        S = ybuf[q]
        r1 = np.int32((S >> nsh) + ((S >> n1) & 1))
        y = np.int32(((r1 + rb32 + 128) & 255) - 128)
        y = np.int32(127) if r1 >= 128 else y
        y = np.int32(-128) if r1 <= -129 else y
        Sc = np.int32(S - dl[bd + q])
        rc = np.int32((Sc >> nsh) + ((Sc >> n1) & 1))
        yc = np.int32(((rc + rb32 + 128) & 255) - 128)
        yc = np.int32(127) if rc >= 128 else yc
        yc = np.int32(-128) if rc <= -129 else yc
        if relu:
            y = max(y, np.int32(0))
            yc = max(yc, np.int32(0))
        ybuf[q] = y
        fbuf[q] = np.uint8((y != yc) * 2 + ((r1 >= 128) | (r1 <= -129)) * 4)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _gather_words(xw, xbase, iy0, ix0, ky, kx, h, w, wofs, xf, bx, tile, nq):
    """Four vec slots of every position of a tile at one step (zero outside the image) into xf[bx + v tile + q]
    as floats: one int32 word per position (the slots are contiguous), split by shifts, so that the loop
    vectorises (a gather of words) instead of loading bytes one by one."""
    bx = np.uint64(bx)
    t1, t2, t3 = np.uint64(tile), np.uint64(2 * tile), np.uint64(3 * tile)
    for q in range(np.uint64(nq)):
        iy = iy0[q] + ky
        ix = ix0[q] + kx
        inside = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
        idx = ((xbase[q] >> 2) + wofs) if inside else 0
        wd = np.int32(xw[idx]) if inside else np.int32(0)
        xf[bx + q] = np.float32(np.int32(wd << 24) >> 24)
        xf[bx + t1 + q] = np.float32(np.int32(wd << 16) >> 24)
        xf[bx + t2 + q] = np.float32(np.int32(wd << 8) >> 24)
        xf[bx + t3 + q] = np.float32(wd >> 24)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _site_faults(v, site, t, e, e1, ev_t, ev_site, ev_bit, width, st_lane, st_bit, st_val, lane):
    """Steps 3 and 6-7 of §1.2 on register value v of one output at step t: the transient flips of `site`
    (0 product, 1 accumulator) among its records [e, e1) (final records, site 2, are passed over: applied at
    the end), then the lane's stuck bits of that register. Returns (v, the next record)."""
    while e < e1 and (ev_site[e] == 2 or (ev_t[e] == t and ev_site[e] == site)):
        if ev_site[e] == site:
            v = _flip(v, np.int64(ev_bit[e]), width)
        e += 1
    for i in range(len(st_lane)):
        if st_lane[i] == lane:
            v = _force(v, np.int64(st_bit[i]), np.int64(st_val[i]), width)
    return v, e


@njit(cache=True, nogil=True, fastmath={"contract"}, error_model="numpy")
def loop_tiles(x, wc, wfl, ch, gseg, imgs, rb, o_total, po, lane_num, pipe, kh, kw, sh, sw, ph, pw, ho, wo, nsh, relu,
               widths, jit, k_lane, th, keys, mode, kf, slack_fin, slack_tree, ev_key, ev_t, ev_site, ev_bit,
               rt_key, rt_t, rt_bit, sm_lane, sm_vec, sm_bit, sm_val, sp_lane, sp_bit, sp_val, sa_lane, sa_bit,
               sa_val, spec, tile, posmajor, kch, out, flags, late_count, i0, i1):
    """Items [i0, i1) of (group, tile, channel chunk): every output (n, ch[k], y, x) of the tile's positions and
    the chunk's channels through the §1.2 loop.

    x (N, group, Cb, H, W, VEC) int8; wc (L, VEC, Kc) int8 the weights of channels ch (global o, sorted; group j
    holds ch[gseg[j]:gseg[j+1]]), wfl the same as float32 (or wc itself for big layers, mac_run.float_weights);
    imgs: the images; kf (N, 3) the filter horizon of sites accumulate, final_reduce, adder_tree (>= 31: the
    site never has a late add); ev_*/rt_*: MAC-flip and rate records keyed ((n O + o) Ho + y) Wo + x, sorted;
    sm_/sp_/sa_: stuck multiplier, product, accumulator entries; spec[k]: the lane of ch[k] has stuck bits;
    tile: positions per tile; posmajor: the first pass runs channel by channel with the tile's positions in the
    vector lanes (only without adder-tree adds and with filter horizons >= 16), else position by position with
    the channels in the lanes; kch: channels per chunk (mac_run.layout chooses the three). Writes out
    (N, Ob, Ho, Wo, VECo) int8, flags (N, O, Ho, Wo) (1 hit, 2 changed from the clean value of these operands,
    4 saturated) and late_count[item].

    The clean value needs no second sum: every register is the sum of its inputs plus the changes faults made
    on the way (modular adds pass them on unchanged), so clean S = faulty S - the changes, which only the second
    pass and the final reduction make (dl).
    """
    cb, h, w, vec = x.shape[2], x.shape[3], x.shape[4], x.shape[5]
    steps = wc.shape[0]
    vec_out = out.shape[4]
    wp, wa, wf = widths[0], widths[1], widths[2]
    npos = len(imgs) * ho * wo
    tiles = (npos + tile - 1) // tile
    kmax = 0
    for j in range(len(gseg) - 1):
        kmax = max(kmax, gseg[j + 1] - gseg[j])
    kmax = min(kmax, kch)
    chunks = 1
    for j in range(len(gseg) - 1):
        chunks = max(chunks, (gseg[j + 1] - gseg[j] + kch - 1) // kch)
    # the accumulators: (pipe, channels, positions) when position-major, else (positions, pipe, channels)
    abuf = np.zeros(tile * pipe * kmax, np.int32)
    Ap = abuf.reshape((pipe, kmax, tile))
    Ac = abuf.reshape((tile, pipe, kmax))
    F = np.zeros(kmax * tile if posmajor else 8, np.uint8)     # position-major first-pass flags (kmax, tile)
    xf = np.zeros(vec * tile if posmajor else 1, np.float32)   # position-major inputs of a step (vec, tile)
    mq = np.zeros(tile, np.float32)
    wstep = np.zeros((vec, kmax) if posmajor else (1, 1), np.float32)   # a step's weights, this thread's
    fks = np.zeros(kmax, np.int64)                                     # channels with a flagged add
    qflag = np.zeros(tile, np.uint8)
    nzq = np.zeros(tile, np.bool_)
    dl = np.zeros((kmax, tile), np.int32)          # per output: the changes faults made (mod 2^32)
    dlf = dl.reshape(-1)
    mv = np.zeros(kmax, np.int32)
    mvf = np.zeros(kmax, np.float32)
    sorted_th = True                               # every lane's table non-decreasing (the profiles' always are)
    for i in range(th.shape[0]):
        for jj in range(th.shape[1] - 1):
            sorted_th &= th[i, jj] <= th[i, jj + 1]
    wm_or = np.zeros(len(kf), np.int32)          # per image: the first pass's window test at the filter horizon
    for n in range(len(kf)):
        wm_or[n] = window_masks(min(kf[n, 0], 31))
    flk = np.zeros(-(-kmax // 8) * 8, np.uint8)   # per channel: the first pass flagged its add (1), records or
    fw = flk.view(np.uint64)                       # stuck bits (2); scanned 8 at a time
    spec_k = np.zeros(kmax, np.int64)
    has_ev = len(ev_key) + len(rt_key) > 0
    nxt = np.zeros((tile, kmax) if has_ev else (1, 1), np.int64)
    pm = np.zeros((tile, kmax, 4) if has_ev else (1, 1, 4), np.int64)   # mac records [pos, end), rate [pos, end)
    xq = np.zeros((tile, vec), np.int64)
    pn = np.zeros(tile, np.int64)
    py = np.zeros(tile, np.int64)
    px = np.zeros(tile, np.int64)
    qmin = np.zeros(tile, np.int64)
    iy0 = np.zeros(tile, np.int64)
    ix0 = np.zeros(tile, np.int64)
    xbase = np.zeros(tile, np.int64)                # flat offset of x[n, j, 0, iy0, ix0, 0]
    xflat = x.reshape(-1)
    xw = xflat.view(np.int32)                       # 4 vec slots per word (VEC is a multiple of 4)
    wflf = wfl.reshape(-1)
    ng = x.shape[1]
    regs = np.zeros(pipe, np.int64)                 # the accumulators of the final reduction, in its order
    lane_ch = (ch + po) % lane_num
    ybuf = np.zeros(tile, np.int32)                 # a channel's outputs and flags (final pass)
    fbuf = np.zeros(tile, np.uint8)
    Fw = F.view(np.uint64)
    pq = np.zeros(tile * kmax, np.int64)            # the adds of a step the second pass redoes
    pk = np.zeros(tile * kmax, np.int64)
    evq = np.zeros(tile, np.int64)                  # positions with fault records at the step
    for item in range(i0, i1):
        j = item // (tiles * chunks)
        p0 = (item // chunks % tiles) * tile
        nq = min(tile, npos - p0)
        k0 = gseg[j] + (item % chunks) * kch
        k1 = min(gseg[j + 1], k0 + kch)
        kc = k1 - k0
        if kc <= 0:
            continue
        lates = 0
        nspec = 0
        for k in range(kc):
            if spec[k0 + k] != 0:
                spec_k[nspec] = k
                nspec += 1
        kt = 31                                    # the smallest filter horizon of the tile's images
        kf_final = 31                              # ... and of the final reduction
        for q in range(nq):
            p = p0 + q
            pn[q] = imgs[p // (ho * wo)]
            py[q] = (p // wo) % ho
            px[q] = p % wo
            kt = min(kt, kf[pn[q], 0])
            kf_final = min(kf_final, kf[pn[q], 1])
            iy0[q] = py[q] * sh - ph
            ix0[q] = px[q] * sw - pw
            xbase[q] = ((pn[q] * ng + j) * cb * h + iy0[q]) * w * vec + ix0[q] * vec
            qmin[q] = NO_STEP
            qflag[q] = 0
            for k in range(kc if has_ev else 0):
                key = ((pn[q] * o_total + ch[k0 + k]) * ho + py[q]) * wo + px[q]
                a0 = np.searchsorted(ev_key, key)
                a1 = np.searchsorted(ev_key, key, side="right")
                b0 = np.searchsorted(rt_key, key)
                b1 = np.searchsorted(rt_key, key, side="right")
                pm[q, k, 0], pm[q, k, 1], pm[q, k, 2], pm[q, k, 3] = a0, a1, b0, b1
                nxt[q, k] = _next_step(a0, a1, ev_t, ev_site, b0, b1, rt_t)
                qmin[q] = min(qmin[q], nxt[q, k])
        abuf[:] = 0
        dl[:] = 0
        wm_t = window_masks(kt)
        tmin = NO_STEP                             # the tile's next step with fault records
        for q in range(nq):
            tmin = min(tmin, qmin[q])
        for t in range(steps):
            gb = t // (kh * kw)
            ky = (t % (kh * kw)) // kw
            kx = t % kw
            r = t % pipe
            rp = (t - 1) % pipe
            xoff = (gb * h + ky) * w * vec + kx * vec
            if posmajor:                           # the inputs as (vec, positions) floats only
                for i in range(vec >> 2):
                    _gather_words(xw, xbase, iy0, ix0, ky, kx, h, w, (xoff >> 2) + i, xf, 4 * i * tile, tile, nq)
            else:
                for q in range(nq):
                    nz = False
                    inside = 0 <= iy0[q] + ky < h and 0 <= ix0[q] + kx < w
                    for v in range(vec):
                        xv = xflat[xbase[q] + xoff + v] if inside else 0
                        xq[q, v] = xv
                        nz |= xv != 0
                    nzq[q] = nz
            # the first pass (m_t, the add and a superset of the late adds), then the list of adds the second
            # pass redoes: (q, k) pairs, flagged or with fault records or stuck bits at this step
            npair = 0
            nevq = 0
            nfk = 0
            if posmajor:
                for v in range(vec):
                    for k in range(kc):
                        wstep[v, k] = wfl[t, v, k0 + k]
                nfk = _pos_pass(xf, vec, tile, wstep, kc, abuf, r, kmax, F, mq, nq, wm_t, fks)
            rare = not posmajor or nspec > 0 or (has_ev and tmin == t)     # xq and nzq hold this step's inputs
            if not rare:
                nw8 = np.uint64((nq + 7) >> 3)
                for i in range(nfk):               # the common case: the flagged adds only
                    k = fks[i]
                    wb = np.uint64((k * tile) >> 3)
                    summ = np.uint64(0)            # which of its flag words are nonzero, without a branch each
                    for wi in range(nw8):
                        summ |= np.uint64(Fw[wb + wi] != 0) << wi
                    while summ != 0:
                        lw = summ & (~summ + np.uint64(1))
                        wi = DEBRUIJN[(lw * DEBRUIJN_MUL) >> np.uint64(58)]
                        summ ^= lw
                        fwd = Fw[wb + np.uint64(wi)]   # 8 flags (bytes 0 or 1); their set bits one by one
                        if wi * 8 + 8 > nq:
                            fwd &= (np.uint64(1) << np.uint64(8 * (nq - wi * 8))) - np.uint64(1)
                        while fwd != 0:
                            low = fwd & (~fwd + np.uint64(1))
                            pq[npair] = wi * 8 + (DEBRUIJN[(low * DEBRUIJN_MUL) >> np.uint64(58)] >> 3)
                            pk[npair] = k
                            npair += 1
                            fwd ^= low
            else:
                if posmajor:                       # the per-position inputs the rest reads
                    for q in range(nq):
                        nz = False
                        for v in range(vec):
                            xq[q, v] = np.int64(xf[v * tile + q])
                            nz |= xq[q, v] != 0
                        nzq[q] = nz
                for i in range(nfk):
                    bf = fks[i] * tile
                    for q in range(nq):
                        qflag[q] |= F[bf + q]
                for q in range(nq):
                    n = pn[q]
                    nz = nzq[q]
                    K = kf[n, 0]
                    events = has_ev and qmin[q] == t
                    if posmajor:
                        if not (qflag[q] or nspec or events):
                            continue
                        for k in range(kc):
                            flk[k] = 0
                        for i in range(nfk):
                            flk[fks[i]] = F[fks[i] * tile + q]
                        qflag[q] = 0
                    else:
                        flagged = False
                        if nz:
                            # all channels of one position at once (small helpers whose loops LLVM vectorises)
                            if kf[n, 2] < 31:
                                tsh, tfill = run_masks(kf[n, 2])
                                flagged = _tree_pass(xq[q], wc[t], k0, kc, mv, flk, tsh, tfill)
                                flagged = _acc_pass(Ac[q, r], mv, flk, kc, K, np.uint8(255)) or flagged
                            elif K >= 16:
                                flagged = _scan_pass(xq, q, wflf, vec, wfl.shape[2], t, k0, kc, abuf,
                                                     (q * pipe + r) * kmax, flk, mvf, wm_or[n])
                            else:
                                _dot_pass(xq[q], wc[t], k0, kc, mv)
                                flagged = _acc_pass(Ac[q, r], mv, flk, kc, K, np.uint8(0))
                        if not (flagged or nspec or events):
                            continue
                        if not nz:
                            for k in range(kc):
                                flk[k] = 0             # the flags of an earlier step
                    for i in range(nspec):
                        flk[spec_k[i]] |= 2
                    if events:
                        evq[nevq] = q
                        nevq += 1
                        for k in range(kc):
                            if nxt[q, k] == t:
                                flk[k] |= 2
                    for wi in range((kc + 7) // 8):
                        if fw[wi] == 0:
                            continue
                        for k in range(wi * 8, min(kc, wi * 8 + 8)):
                            if flk[k] != 0:
                                pq[npair], pk[npair] = q, k
                                npair += 1
            # the second pass: the exact §1.2 step of each listed add, with its own horizon, fault records and
            # stuck bits, in place of the first pass's plain add (written out here, not in a helper: numba
            # refcounts every array a call or a tuple hands over, which cost more than the work).
            # The common case first (position-major, no records or stuck bits, carry_dropped), without a
            # branch per add: the horizon is drawn for every listed add, not only for those _maybe_late lets
            # through, which changes nothing (the draw is a pure function of the add's counter, and an add that
            # cannot be late at the filter horizon is not late at the larger one it draws).
            if not rare and mode == 0 and (sorted_th or not jit):
                for ip in range(npair):
                    q, k = pq[ip], pk[ip]
                    mf = np.float32(0)
                    for v in range(vec):
                        mf += xf[v * tile + q] * wstep[v, k]
                    mk = np.int64(mf)
                    acc = np.int64(Ap[r, k, q])
                    a = _wrap32(acc - mk)
                    n = pn[q]
                    o = ch[k0 + k]
                    lane = lane_ch[k0 + k]
                    if jit:
                        ctr = np.uint64(((((o * ho + py[q]) * wo + px[q]) * steps + t) * 4))
                        K = _horizon_sorted(_u32(keys[n], ctr), th, lane)
                    else:
                        K = k_lane[n, lane]
                    late = _late_any_k(a, mk, K)
                    sv = _wrap32(((a + mk) & M32) ^ late)
                    Ap[r, k, q] = sv
                    dl[k, q] = np.int32(dl[k, q] + (sv - acc))
                    hit = np.int64(late != 0)
                    lates += hit
                    flags[n, o, py[q], px[q]] |= np.uint8(hit)
                npair = 0
            for ip in range(npair):
                q, k = pq[ip], pk[ip]
                n = pn[q]
                K = kf[n, 0]
                mk = np.int64(0)
                tree = False
                if not rare:                       # position-major, no records or stuck bits: xf holds x
                    for v in range(vec):
                        mk += np.int64(xf[v * tile + q]) * np.int64(wc[t, v, k0 + k])
                elif nzq[q]:
                    tree = kf[n, 2] < 31
                    for v in range(vec):
                        mk += xq[q, v] * np.int64(wc[t, v, k0 + k])
                a = _wrap32(np.int64(Ap[r, k, q] if posmajor else Ac[q, r, k]) - mk)
                o = ch[k0 + k]
                lane = lane_ch[k0 + k]
                ctr_step = ((o * ho + py[q]) * wo + px[q]) * steps + t
                prev = np.int64(0)
                if mode == 1 and t > 0:            # stale reads the lane's previous result
                    prev = a if pipe == 1 else np.int64(Ap[rp, k, q] if posmajor else Ac[q, rp, k])
                m = mk
                if spec[k0 + k] != 0 or tree:
                    m, lt = _exact_m(xq[q], wc, t, k0 + k, vec, lane, sm_lane, sm_vec, sm_bit, sm_val, tree,
                                     kf[n, 2], jit, n, ctr_step, slack_tree, k_lane, th, keys)
                    lates += lt
                    if lt:
                        flags[n, o, py[q], px[q]] |= 1
                e = e1 = f = f1 = 0
                if has_ev:
                    e, e1, f, f1 = pm[q, k, 0], pm[q, k, 1], pm[q, k, 2], pm[q, k, 3]
                m, e = _site_faults(m, 0, t, e, e1, ev_t, ev_site, ev_bit, wp, sp_lane, sp_bit, sp_val, lane)
                late = np.int64(0)
                if _maybe_late(a, m, K):
                    late = _late(a, m, _horizon(jit, n, lane, ctr_step * 4, 0, False, k_lane, th, keys))
                s = _ch_add(a, m, late, mode, prev)
                if late != 0:
                    lates += 1
                    flags[n, o, py[q], px[q]] |= 1
                while f < f1 and rt_t[f] == t:
                    s = _wrap32(s - (np.int64(1) << rt_bit[f]))
                    f += 1
                s, e = _site_faults(s, 1, t, e, e1, ev_t, ev_site, ev_bit, wa, sa_lane, sa_bit, sa_val, lane)
                if posmajor:
                    Ap[r, k, q] = s
                else:
                    Ac[q, r, k] = s
                dl[k, q] = np.int32(dl[k, q] + (s - (a + mk)))
                if has_ev:
                    pm[q, k, 0], pm[q, k, 2] = e, f
                    nxt[q, k] = _next_step(e, e1, ev_t, ev_site, f, f1, rt_t)
            for i in range(nevq):
                q = evq[i]
                qmin[q] = NO_STEP
                for k in range(kc):
                    qmin[q] = min(qmin[q], nxt[q, k])
            if has_ev and tmin == t:
                tmin = NO_STEP
                for q in range(nq):
                    tmin = min(tmin, qmin[q])
        # 8. final reduction, 9. final flips, then the output conversion (no divisions in the inner loop)
        for i in range(pipe):
            regs[i] = (steps - 1 - i) % pipe
        plain = posmajor and not has_ev and nsh >= 1 and kf_final >= 31
        for k in range(kc):
            o = ch[k0 + k]
            lane = (o + po) % lane_num
            ob, oi = o // vec_out, o % vec_out
            if plain:
                # no late final adds and no final flips: the sums and conversions of all positions at once
                _final_pass(abuf, regs, min(pipe, steps), kmax, tile, k, dlf, rb[o], nsh, relu, nq, ybuf, fbuf)
                for q in range(nq):
                    out[pn[q], ob, py[q], px[q], oi] = ybuf[q]
                    if fbuf[q] != 0:
                        flags[pn[q], o, py[q], px[q]] |= fbuf[q]
                continue
            for q in range(nq):
                n = pn[q]
                S = np.int64(Ap[regs[0], k, q] if posmajor else Ac[q, regs[0], k])
                delta = np.int64(dl[k, q])
                for i in range(1, pipe):
                    u = np.int64(0)
                    if steps - 1 - i >= 0:
                        u = np.int64(Ap[regs[i], k, q] if posmajor else Ac[q, regs[i], k])
                    late = np.int64(0)
                    if kf[n, 1] < 31 and _maybe_late(S, u, kf[n, 1]):
                        oidx = (o * ho + py[q]) * wo + px[q]
                        K = _horizon(jit, n, lane, (oidx * pipe + i) * 4 + 1, slack_fin, True, k_lane, th, keys)
                        late = _late(S, u, K)
                    S2 = _ch_add(S, u, late, 0, 0)
                    if late != 0:
                        lates += 1
                        flags[n, o, py[q], px[q]] |= 1
                        delta += S2 - (S + u)
                    S = S2
                if has_ev:
                    key = ((n * o_total + o) * ho + py[q]) * wo + px[q]
                    for e in range(np.searchsorted(ev_key, key), np.searchsorted(ev_key, key, side="right")):
                        if ev_site[e] == 2:
                            S2 = _flip(S, np.int64(ev_bit[e]), wf)
                            delta += S2 - S
                            S = S2
                yv = _convert(S, rb[o], nsh, relu)
                out[n, ob, py[q], px[q], oi] = yv
                if delta != 0 and yv != _convert(_wrap32(S - delta), rb[o], nsh, relu):
                    flags[n, o, py[q], px[q]] |= 2
                if _saturates(S, nsh):
                    flags[n, o, py[q], px[q]] |= 4
        late_count[item] += lates
