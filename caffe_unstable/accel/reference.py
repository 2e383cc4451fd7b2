"""The accelerator's arithmetic in plain NumPy: the living spec and the oracle every backend is tested against
(pipecnn.md §1.5, §2-§3, §10; faults.md §1.2). Slow by design; tiny shapes only for the register loop.

All arrays are Caffe-ordered: activations (N, C, H, W) int8, weights (O, C/group, Kh, Kw) int8, bias (O,) int8.
"""
import numpy as np

from . import lrn_table
from .geometry import SITE_ACCUMULATOR, SITE_FINAL, SITE_PRODUCT
from .quant import output_conversion

MASK32 = 0xFFFFFFFF


# -- conv / FC ---------------------------------------------------------------------------------------------
def conv_sums(xq, wq, geom):
    """The exact int64 sums S[n, o, y, x] = sum over (c, ky, kx) of w x, zero padding (Caffe's grouping)."""
    n, c, h, w = xq.shape
    g = geom
    hp = max(h + 2 * g.pad_h, (g.Ho - 1) * g.stride_h + g.Kh)
    wp = max(w + 2 * g.pad_w, (g.Wo - 1) * g.stride_w + g.Kw)
    xp = np.zeros((n, c, hp, wp), np.int64)
    xp[:, :, g.pad_h:g.pad_h + h, g.pad_w:g.pad_w + w] = xq
    out = np.zeros((n, g.O, g.Ho, g.Wo), np.int64)
    w64 = np.asarray(wq, np.int64)
    for j in range(g.group):
        xs = xp[:, j * g.Cg:(j + 1) * g.Cg]
        ws = w64[j * g.Og:(j + 1) * g.Og]
        for ky in range(g.Kh):
            for kx in range(g.Kw):
                tap = xs[:, :, ky:ky + (g.Ho - 1) * g.stride_h + 1:g.stride_h,
                         kx:kx + (g.Wo - 1) * g.stride_w + 1:g.stride_w]
                out[:, j * g.Og:(j + 1) * g.Og] += np.einsum("nchw,oc->nohw", tap, ws[:, :, ky, kx])
    return out


def conv_reference(xq, wq, bq, geom, fmt, relu=False):
    """Clean conv/FC output, int8 (N, O, Ho, Wo): exact sums (wrapped to int32 like the hardware's registers,
    reachable only past 131072 full-scale products), then the §1.5 conversion with fused ReLU."""
    s = ((conv_sums(xq, wq, geom) + (1 << 31)) & MASK32) - (1 << 31)
    b = np.zeros(geom.O, np.int64) if bq is None else np.asarray(bq, np.int64)
    return output_conversion(s, b[None, :, None, None], fmt.n, fmt.m if bq is not None else 0, relu)


def sext32(v):
    """The signed value of a 32-bit pattern."""
    v &= MASK32
    return v - (1 << 32) if v >= 1 << 31 else v


def flip(v, b, w):
    """faults.md §1.2: a flip of bit b of a w-bit register holding int32 v; the sign bit b = w - 1 changes v by
    -2^(w-1) when it was 0 and +2^(w-1) when it was 1; arithmetic stays modulo 2^32."""
    bit = (v >> b) & 1
    if b < w - 1:
        d = -(1 << b) if bit else (1 << b)
    else:
        d = (1 << (w - 1)) if bit else -(1 << (w - 1))
    return sext32(v + d)


def mac_output(x_steps, w_steps, events, vec, pipe, widths):
    """One output's register loop (faults.md §1.2, steps 1-4, 6, 8, 9): x_steps, w_steps (L, VEC) int8 operands
    in MAC order, events [(t, site, bit)] in record order; returns the faulty int32 sum S."""
    wp, wa, wf = widths
    steps = len(x_steps)
    acc = [0] * pipe
    for t in range(steps):
        m = 0
        for i in range(vec // 4):          # one mult_add_fix8bx4 DSP result per 4 products, added in order
            d = sum(int(x_steps[t][4 * i + r]) * int(w_steps[t][4 * i + r]) for r in range(4))
            m = sext32(m + d)
        for (te, site, bit) in events:
            if te == t and site == SITE_PRODUCT:
                m = flip(m, bit, wp)
        r = t % pipe
        s = sext32(acc[r] + m)
        for (te, site, bit) in events:
            if te == t and site == SITE_ACCUMULATOR:
                s = flip(s, bit, wa)
        acc[r] = s
    total = acc[(steps - 1) % pipe]     # A_(L-1) + A_(L-2) + ... + A_(L-P): registers never written hold 0
    for i in range(1, pipe):
        total = sext32(total + (acc[(steps - 1 - i) % pipe] if steps - 1 - i >= 0 else 0))
    for (_, site, bit) in events:
        if site == SITE_FINAL:
            total = flip(total, bit, wf)
    return total


def mac_operands(xq, wq, geom, n, o, y, x):
    """The (L, VEC) input and weight operands of output (n, o, y, x) in PipeCNN's step order (§2.3): t = (channel-
    vector group, ky, kx), kx fastest; padded channels and out-of-image taps are 0."""
    g = geom
    j = o // g.Og
    xs = np.zeros((g.L, g.vec), np.int64)
    ws = np.zeros((g.L, g.vec), np.int64)
    for t in range(g.L):
        gb, ky, kx = g.step(t)
        iy, ix = y * g.stride_h - g.pad_h + ky, x * g.stride_w - g.pad_w + kx
        for v in range(g.vec):
            c = gb * g.vec + v
            if c >= g.Cg:
                continue
            ws[t, v] = wq[o, c, ky, kx]
            if 0 <= iy < g.H and 0 <= ix < g.W:
                xs[t, v] = xq[n, j * g.Cg + c, iy, ix]
    return xs, ws


def conv_mac_reference(xq, wq, bq, geom, fmt, relu=False, events=None, widths=(32, 32, 32)):
    """The conv output through the register-level MAC-order loop, with optional MAC fault records (a
    geometry.MAC_EVENT_DTYPE array). Pure Python: tiny layers only."""
    g = geom
    by_out = {}
    for e in (events if events is not None else ()):
        by_out.setdefault((int(e["n"]), int(e["o"]), int(e["y"]), int(e["x"])), []).append(
            (int(e["t"]), int(e["site"]), int(e["bit"])))
    s = np.zeros((g.N, g.O, g.Ho, g.Wo), np.int64)
    for n in range(g.N):
        for o in range(g.O):
            for y in range(g.Ho):
                for x in range(g.Wo):
                    xs, ws = mac_operands(xq, wq, g, n, o, y, x)
                    s[n, o, y, x] = mac_output(xs, ws, by_out.get((n, o, y, x), ()), g.vec, g.pipe, widths)
    b = np.zeros(g.O, np.int64) if bq is None else np.asarray(bq, np.int64)
    return output_conversion(s, b[None, :, None, None], fmt.n, fmt.m if bq is not None else 0, relu)


def conversion_kernel_lines(acc, b, frac_w, frac_din, frac_dout, relu=False):
    """A direct transcription of coreConv's shift-and-mask lines (conv_pipe.cl:524-563, pipecnn.md §1.5) with
    OpenCL C semantics: shift counts modulo 32, arithmetic >> on int, 0xFFFFFFFF unsigned, a wrapping 32-bit `+1`,
    char stores keep the low 8 bits. Vectorised over int64 arrays holding int32 values."""
    acc = np.asarray(acc, np.int64)
    b = np.asarray(b, np.int64)
    s = (frac_w + frac_din - frac_dout - 1) & 31
    sign_mask = (~(MASK32 >> s)) & MASK32                      # (int)~(0xFFFFFFFFu >> s)
    shifted = (acc >> s) & MASK32                              # acc >> s, as a 32-bit pattern
    pattern = np.where(acc < 0, sign_mask | shifted, shifted)
    c = ((pattern + 1) & MASK32).astype(np.int64)              # the int add wraps on a 32-bit adder
    c = np.where(c >= 1 << 31, c - (1 << 32), c)
    bias_shift = (frac_w - frac_dout - 1) & 31
    t = np.where(c >= 256, 0x1FE & 0xFF,
                 np.where(c < -256, 0x1FE & 0x100, (c & 0x1FE) + (b >> bias_shift) + 1))
    y = (t >> 1) & 0xFF
    y = np.where(y >= 128, y - 256, y)
    if relu:
        y = np.where(y < 0, 0, y)
    return y.astype(np.int8)


# -- max pooling -----------------------------------------------------------------------------------------------
def max_pool_reference(q, stage):
    """Exact int8 max over each window clipped to the input (Caffe's output size; pipecnn.md §10.8)."""
    n, c = q.shape[:2]
    out = np.empty((n, c, stage.Ho, stage.Wo), np.int8)
    for y in range(stage.Ho):
        h0 = y * stage.stride_h - stage.pad_h
        h1, h0 = min(h0 + stage.kernel_h, stage.H), max(h0, 0)
        for x in range(stage.Wo):
            w0 = x * stage.stride_w - stage.pad_w
            w1, w0 = min(w0 + stage.kernel_w, stage.W), max(w0, 0)
            out[:, :, y, x] = q[:, :, h0:h1, w0:w1].max(axis=(2, 3))
    return out


# -- LRN -------------------------------------------------------------------------------------------------------
def lrn_reference(q, frac_in, overflow="clamp"):
    """PipeCNN's LRN, steps 1-5 of pipecnn.md §3.5 in float32, one rounding per operation, no FMA (§10.7).

    a = q << -F (exact for F in [-8, 0]); s = ((((0 + a_{c-2}^2) + a_{c-1}^2) + a_c^2) + a_{c+1}^2) + a_{c+2}^2;
    f = ((s - xs[addr]) hinv[addr]) c1[addr] + c0[addr]; o = f a; clamp o > 127 to 127 ("clamp"); round half to
    even; wrap modulo 256. Output fraction 0."""
    n, c, h, w = q.shape
    a_int = np.asarray(q, np.int64) << (-frac_in)
    a = a_int.astype(np.float32)
    pad = np.zeros((n, c + 4, h, w), np.float32)
    pad[:, 2:2 + c] = a
    s = np.zeros((n, c, h, w), np.float32)
    for k in range(5):
        sq = pad[:, k:k + c] * pad[:, k:k + c]
        s = s + sq
    s_int = np.zeros((n, c + 4, h, w), np.int64)
    s_int[:, 2:2 + c] = a_int * a_int
    s_exact = sum(s_int[:, k:k + c] for k in range(5))
    assert np.array_equal(s.astype(np.int64), s_exact)        # the float32 sum is exact (§3.5 step 2)
    addr = lrn_table.segment(s_exact)
    f = (s - lrn_table.X_SAMPLE[addr]) * lrn_table.H_INV[addr]
    f = f * lrn_table.COEF1[addr]
    f = f + lrn_table.COEF0[addr]
    o = f * a
    if overflow == "clamp":
        o = np.where(o > np.float32(127), np.float32(127), o)
    r = np.rint(o).astype(np.int64)
    return (((r + 128) & 255) - 128).astype(np.int8)
