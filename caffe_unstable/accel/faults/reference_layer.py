"""The slow reference of a faulty layer: faults.md §1.2's register loop over one image in plain NumPy (§11).

    reference_layer(x_int8, w_int8, b_int8, geometry, quant, plan) -> int8 [O][conv_y][conv_x]

It re-accumulates the int8 operands in PipeCNN's MAC order (pipecnn.md §2.3-2.4) with every fault of the plan
applied inline, step by step, vectorised over outputs only: memory flips and stuck memory bits on the stored images
first (§6), then stuck multipliers, the DSP sums and adder tree, product flips and stuck product bits, the
accumulate add (or its carry-horizon form, §5), rate errors, accumulator flips and stuck bits, the final reduction
and final flips, then the output conversion of pipecnn.md §1.5. It shares no code with the backends' fast paths
except `ch_add` (checked on its own against the spec's vectors and a bit-serial adder), so backends are tested
against it. Tiny layers only.
"""
import numpy as np

from .carry_horizon import ch_add
from .memory import activation_image, flip_bytes, force_bytes, parameter_image, split_parameter_image
from .plan import STUCK_SITES, LayerPlan
from .rng import counter_accumulate, counter_final, counter_tree, k_from_u32, u32

M32 = (1 << 32) - 1
SITE_NAMES = ("product", "accumulator", "final")
STUCK_NAMES = {code: name for name, code in STUCK_SITES.items()}


def s32(v):
    v = np.asarray(v, dtype=np.int64) & M32
    return np.where(v >= 1 << 31, v - (1 << 32), v)


def flip_ref(v, b, w):
    """faults.md §1.2 flip(v, b, w), written out again."""
    v = np.asarray(v, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    was = (v & M32) >> b & 1
    d = np.where(b < w - 1, np.where(was == 0, 1, -1), np.where(was == 0, -1, 1)) * (np.int64(1) << b)
    return s32(v + d)


def force_ref(v, b, val, w):
    v = np.asarray(v, dtype=np.int64)
    return np.where(((v & M32) >> b & 1) == val, v, flip_ref(v, b, w))


def _apply_in_order(reg, rows, bits, w):
    """Flip reg[rows[i]] at bits[i] for every i, in order (repeated rows are applied one after another)."""
    for i in range(len(rows)):
        reg[rows[i]] = flip_ref(reg[rows[i]], bits[i], w)


class Faults:
    """The faults of one call, per output row: flips {site: (row, t, bit)}, rate (row, t, bit), stuck maps, timing."""

    def __init__(self, flips=None, rate=None, stuck_mult=(), stuck_product=(), stuck_acc=(), timing=None):
        self.flips = flips or {}
        self.rate = rate
        self.stuck_mult = stuck_mult            # (lane, vec, bit, value)
        self.stuck_product = stuck_product      # (lane, bit, value)
        self.stuck_acc = stuck_acc              # (lane, bit, value)
        self.timing = timing                    # dict: sampled_value, sites, final/tree_slack_bits (+ K source)


def _by_step(triple):
    if triple is None:
        return {}
    rows, ts, bits = (np.asarray(a, dtype=np.int64) for a in triple)
    out = {}
    for i in range(len(rows)):
        out.setdefault(int(ts[i]), ([], []))
        out[int(ts[i])][0].append(rows[i])
        out[int(ts[i])][1].append(bits[i])
    return out


def _ch(a, b, K, mode, prev):
    s, late = ch_add(a, b, K, 32, mode, prev)
    return s32(s), np.asarray(late)


def register_loop(x, w, P, widths=(32, 32, 32), lane=None, faults=None, horizon=None):
    """The §1.2 loop for R outputs at once. x, w: int [R, L, VEC] operands in MAC order; lane: [R].

    horizon(kind, t, i) -> K per row (kind "accumulate", "final_reduce", "adder_tree"), or None (no timing).
    Returns (S [R] int64 holding int32 values, hit [R] bool).
    """
    faults = faults or Faults()
    R, L, VEC = x.shape
    wp, wa, wf = widths
    lane = np.zeros(R, np.int64) if lane is None else np.asarray(lane)
    flips = {s: _by_step(faults.flips.get(s)) for s in ("product", "accumulator")}
    rate = _by_step(faults.rate)
    tm = faults.timing or {}
    sites = tm.get("sites", ())
    A = np.zeros((P, R), np.int64)
    prev = np.zeros(R, np.int64)
    hit = np.zeros(R, bool)
    for t in range(L):
        r = t % P
        p = x[:, t, :].astype(np.int64) * w[:, t, :].astype(np.int64)
        for ln, v, b, val in faults.stuck_mult:
            rows = lane == ln
            p[rows, v] = force_ref(p[rows, v], b, val, 16)
        D = p.reshape(R, VEC // 4, 4).sum(axis=2)
        m = D[:, 0].copy()
        for i in range(1, VEC // 4):
            if "adder_tree" in sites:
                K = np.clip(horizon("adder_tree", t, i) + tm.get("tree_slack_bits", 0), 0, 31)
                m, late = _ch(m, D[:, i], K, "carry_dropped", 0)
                hit |= late != 0
            else:
                m = s32(m + D[:, i])
        if t in flips["product"]:
            _apply_in_order(m, *flips["product"][t], wp)
        for ln, b, val in faults.stuck_product:
            rows = lane == ln
            m[rows] = force_ref(m[rows], b, val, wp)
        if "accumulate" in sites:
            s, late = _ch(A[r], m, horizon("accumulate", t, 0), tm.get("sampled_value", "carry_dropped"), prev)
            hit |= late != 0
        else:
            s = s32(A[r] + m)
        if t in rate:
            rows, bits = rate[t]
            for i in range(len(rows)):
                s[rows[i]] = s32(s[rows[i]] - (np.int64(1) << bits[i]))
        if t in flips["accumulator"]:
            _apply_in_order(s, *flips["accumulator"][t], wa)
        for ln, b, val in faults.stuck_acc:
            rows = lane == ln
            s[rows] = force_ref(s[rows], b, val, wa)
        A[r] = s
        prev = s.copy()
    S = A[(L - 1) % P].copy()
    for i in range(1, P):
        u = A[(L - 1 - i) % P] if L - 1 - i >= 0 else np.zeros(R, np.int64)
        if "final_reduce" in sites:
            K = np.clip(horizon("final_reduce", None, i) + tm.get("final_slack_bits", 0), 0, 31)
            S, late = _ch(S, u, K, "carry_dropped", 0)
            hit |= late != 0
        else:
            S = s32(S + u)
    final = faults.flips.get("final")
    if final is not None:
        rows, _, bits = final
        _apply_in_order(S, np.asarray(rows), np.asarray(bits), wf)
    return S, hit


def horizon_fn(timing, n, lane, oidx, L, P, vec):
    """horizon(kind, t, i) for rows with image n, lane and real output index oidx, from a TimingPlan-like dict."""
    if timing.get("K_lane") is not None:
        K = np.asarray(timing["K_lane"], dtype=np.int64)[n, lane]
        return lambda kind, t, i: K
    th = np.asarray(timing["thresholds"], dtype=np.uint64)[lane]
    keys = np.asarray(timing["keys"], dtype=np.uint64)[n]

    def horizon(kind, t, i):
        if kind == "accumulate":
            ctr = counter_accumulate(oidx, t, L)
        elif kind == "final_reduce":
            ctr = counter_final(oidx, i, P)
        else:
            ctr = counter_tree(oidx, t, i, L, vec)
        return k_from_u32(u32(keys, ctr), th)
    return horizon


def output_conversion(acc, bias, frac_w, frac_din, frac_dout, relu):
    """pipecnn.md §1.5 closed form: round half up, saturate before the bias, wrap after it, then ReLU."""
    n, m = frac_w + frac_din - frac_dout, frac_w - frac_dout
    acc = np.asarray(acc, dtype=np.int64)
    r1 = (acc + (1 << (n - 1))) >> n
    rb = (np.asarray(bias, dtype=np.int64) + (1 << (m - 1))) >> m
    y = np.where(r1 >= 128, 127, np.where(r1 <= -129, -128, (r1 + rb + 128) % 256 - 128))
    return np.maximum(y, 0) if relu else y


# -- one layer ---------------------------------------------------------------------------------------------------
def _pair(v):
    return (int(v), int(v)) if np.isscalar(v) else (int(v[0]), int(v[1]))


def operands(x, w, g):
    """x [Cin][H][W], w [O][Cg][Kh][Kw] int8 -> (xs, ws) int64 [R, L, VEC], R = O·conv_y·conv_x in (o, y, x) order."""
    sh, sw = _pair(g["stride"])
    ph, pw = _pair(g["pad"])
    O, cy, cx, L, VEC, Kh, Kw, Cg = (g[k] for k in ("O", "conv_y", "conv_x", "L", "VEC_SIZE", "Kh", "Kw", "Cg"))
    H, W = g["H"], g["W_in"]
    xpad = np.zeros((g["Cin"] + VEC, H + 2 * ph + Kh + sh * cy, W + 2 * pw + Kw + sw * cx), np.int64)
    xpad[:g["Cin"], ph:ph + H, pw:pw + W] = x
    o, yy, xx, t, v = np.meshgrid(np.arange(O), np.arange(cy), np.arange(cx), np.arange(L), np.arange(VEC),
                                  indexing="ij")
    grp, ky, kx = t // (Kh * Kw), (t % (Kh * Kw)) // Kw, t % Kw
    ch = grp * VEC + v
    real = ch < Cg
    c0 = (o // (O // g.get("group", 1))) * Cg
    xs = np.where(real, xpad[np.where(real, c0 + ch, 0), yy * sh + ky, xx * sw + kx], 0)
    ws = np.where(real, np.asarray(w, dtype=np.int64)[o, np.minimum(ch, Cg - 1), ky, kx], 0)
    R = O * cy * cx
    return xs.reshape(R, L, VEC), ws.reshape(R, L, VEC)


def plan_dict(plan):
    """A LayerPlan or a scenario-style dict (fault_vectors.json) as plain lists and arrays: mac_events, rate_events,
    weight_events, act_events as int rows, stuck as mappings with site names, timing as a dict with int arrays."""
    if plan is None:
        return {}
    if isinstance(plan, LayerPlan):
        p = {kind: [tuple(int(v) for v in rec) for rec in getattr(plan, kind)]
             for kind in ("mac_events", "rate_events", "weight_events", "act_events")}
        p["stuck"] = [{"site": STUCK_NAMES[int(s["site"])], "lane": int(s["lane"]), "vec": int(s["vec"]),
                       "address": int(s["addr"]), "bit": int(s["bit"]), "value": int(s["value"])} for s in plan.stuck]
        tp = plan.timing
        p["timing"] = None if tp is None else dict(tp.header(), K_lane=tp.K_lane, thresholds=tp.thresholds,
                                                   keys=tp.keys)
    else:
        p = dict(plan)
    t = p.get("timing")
    if t:
        t = dict(t)
        if t.get("K_lane") is not None:
            t["K_lane"] = np.asarray(t["K_lane"], dtype=np.int64)
        else:
            t["thresholds"] = np.array([[int(v) for v in row] for row in np.asarray(t["thresholds"]).tolist()],
                                       np.uint64)
            t["keys"] = np.array([int(k) for k in np.asarray(t["keys"]).reshape(-1).tolist()], np.uint64)
        p["timing"] = t
    return p


def stored_images(x, w, b, g, p, n):
    """(x, w, b) as the layer computes with them for image n: memory flips of the stored images, then stuck
    memory bits (faults.md §6; flips in padding have no visible effect)."""
    b = np.zeros(g["O"], np.int8) if b is None else np.asarray(b, np.int8)
    stuck = p.get("stuck") or []
    acts = [e for e in p.get("act_events", []) if e[0] == n]
    act_stuck = [s for s in stuck if s["site"] == "act_mem"]
    if acts or act_stuck:
        img = activation_image(x, g)
        if acts:
            img = flip_bytes(img, [e[1] for e in acts], [e[2] for e in acts])
        if act_stuck:
            img = force_bytes(img, *zip(*[(s["address"], s["bit"], s["value"]) for s in act_stuck]))
        x = img.reshape(-1, g["H"], g["W_in"])[:g["Cin"]]
    wev = [e for e in p.get("weight_events", []) if e[0] in (n, -1)]
    w_stuck = [s for s in stuck if s["site"] == "weight_mem"]
    if wev or w_stuck:
        img = parameter_image(w, b, g)
        if wev:
            img = flip_bytes(img, [e[1] for e in wev], [e[2] for e in wev])
        if w_stuck:
            img = force_bytes(img, *zip(*[(s["address"], s["bit"], s["value"]) for s in w_stuck]))
        w, b = split_parameter_image(img, g)
    return x, w, b


def _quant(quant):
    get = quant.get if isinstance(quant, dict) else lambda k, d=None: getattr(quant, k, d)
    return int(get("frac_w")), int(get("frac_din")), int(get("frac_dout")), bool(get("relu", False))


def simulate_image(x, w, b, g, quant, plan, n=0):
    """Image n of a layer under `plan`: (int8 y [O][cy][cx], hit [O][cy][cx], (xs, ws, S)) — the register loop's
    operands in MAC order and its int32 sums, for tests that look inside."""
    p = plan_dict(plan)
    x, w, b = stored_images(np.asarray(x, np.int8), np.asarray(w, np.int8), b, g, p, n)
    xs, ws = operands(x, w, g)
    O, cy, cx = g["O"], g["conv_y"], g["conv_x"]
    o = np.repeat(np.arange(O), cy * cx)
    lane = (o + g["po"]) % g["LANE_NUM"]
    row = lambda e: (e[1] * cy + e[2]) * cx + e[3]  # noqa: E731  (real output index = row)
    flips = {}
    for code, site in enumerate(SITE_NAMES):
        ev = [e for e in p.get("mac_events", []) if e[0] == n and e[5] == code]
        if ev:
            flips[site] = ([row(e) for e in ev], [e[4] for e in ev], [e[6] for e in ev])
    rate = [e for e in p.get("rate_events", []) if e[0] == n]
    stuck = p.get("stuck") or []
    faults = Faults(flips=flips,
                    rate=([row(e) for e in rate], [e[4] for e in rate], [e[5] for e in rate]) if rate else None,
                    stuck_mult=[(s["lane"], s["vec"], s["bit"], s["value"]) for s in stuck
                                if s["site"] == "multiplier"],
                    stuck_product=[(s["lane"], s["bit"], s["value"]) for s in stuck if s["site"] == "product"],
                    stuck_acc=[(s["lane"], s["bit"], s["value"]) for s in stuck if s["site"] == "accumulator"],
                    timing=p.get("timing"))
    horizon = None
    if p.get("timing"):
        horizon = horizon_fn(p["timing"], np.full(len(o), n), lane, np.arange(len(o)), g["L"], g["PIPE_DEPTH"],
                             g["VEC_SIZE"])
    widths = tuple(g.get(k, 32) for k in ("width_product", "width_accumulator", "width_final"))
    S, hit = register_loop(xs, ws, g["PIPE_DEPTH"], widths, lane, faults, horizon)
    frac_w, frac_din, frac_dout, relu = _quant(quant)
    y = output_conversion(S, b[o], frac_w, frac_din, frac_dout, relu)
    return y.reshape(O, cy, cx).astype(np.int8), hit.reshape(O, cy, cx), (xs, ws, S)


def reference_layer(x_int8, w_int8, b_int8, geometry, quant, plan, n=None, with_hit=False):
    """The faulty layer by the §1.2 loop, slow (faults.md §11).

    x_int8 [Cin][H][W] (image `n` of the plan's records, default 0) or [N][Cin][H][W] (image i is record n = i);
    w_int8 [O][Cg][Kh][Kw]; b_int8 [O] or None; geometry: the dict of `faults.indexing.conv_geometry` (its register
    widths are used); quant: frac_w, frac_din, frac_dout, relu (a mapping or attributes); plan: a LayerPlan, a
    scenario-style dict (fault_vectors.json) or None. Returns int8 [O][conv_y][conv_x] (or [N][...]), and the
    outputs with at least one late add (bool, same shape) when with_hit.
    """
    x = np.asarray(x_int8, np.int8)
    images = [(n or 0, x)] if x.ndim == 3 else list(enumerate(x))
    runs = [simulate_image(xi, w_int8, b_int8, geometry, quant, plan, ni)[:2] for ni, xi in images]
    y = np.stack([r[0] for r in runs]) if x.ndim == 4 else runs[0][0]
    hit = np.stack([r[1] for r in runs]) if x.ndim == 4 else runs[0][1]
    return (y, hit) if with_hit else y
