"""A conv launch under a fault plan (faults.md §2.4): which path computes which outputs, and the §10.4 counters.

* Memory flips and stuck memory bits act on copies of the device buffers first (memory_faults.py); then either
  path computes with them.
* MAC flips and rate errors alone are linear in the sums: the exact GEMM path plus per-output corrections
  (corrections.py, §4.4, §5.6). This is the soft-error case, whose cost must stay near the clean forward.
* Carry-horizon timing and stuck multiplier/product/accumulator bits are not: the outputs of every lane they can
  reach (a lane whose smallest possible horizon is < 31 at some site, a lane with stuck bits) run through the
  register loop (mac.py, mac_run.py) with every record of those outputs applied inline; the other outputs keep
  the fast path. path="mac" sends every output through the loop, path="fast" refuses plans that need it.

Counters: the clean value of an output is known on both paths without extra work (the GEMM sum before its
corrections; in the loop, the faulty sum less the changes the faults made); with memory faults the clean layer
is computed once more.
"""
import dataclasses

import numpy as np
from numba import njit

from .... import errors
from ... import layouts
from ...faults import plan as fplan
from ...faults.indexing import GEOMETRY_KEYS, geometry_from
from ...quant import bias_term
from . import conv, mac_run
from .corrections import Corrector, chain_offsets, chain_weights
from .memory_faults import faulty_input, weight_variants

SITE_CODES = {"accumulate": 0, "final_reduce": 1, "adder_tree": 2}
STUCK_DATAPATH = (0, 1, 2)          # multiplier, product, accumulator


def legacy_plan(events):
    """Launch.events (MAC-flip records) as a LayerPlan."""
    ev = np.sort(np.asarray(events).astype(fplan.MAC_EVENT_DTYPE), order=list(fplan.MAC_EVENT_DTYPE.names))
    return fplan.LayerPlan(-1, "", mac_events=ev)


def check_plan(lp, g, hw, where, records=True):
    """The plan's records against this launch (faults.md §2.3); the plan's geometry, when it has one, must be
    this layer's (records=False: the MAC-flip and rate records' ranges are left to record_arrays). Returns the
    layer's geometry dict."""
    gd = geometry_from(g, (hw.width_product, hw.width_accumulator, hw.width_final))
    if lp.geometry:
        for key in GEOMETRY_KEYS:
            if key in lp.geometry and lp.geometry[key] != gd[key]:
                raise errors.CaffeUnstableError(where, f"fault plan: geometry {key} = {lp.geometry[key]} does not "
                                                       f"match the launch ({gd[key]})")
    lp.validate(gd, g.N, records=records)
    return gd


@njit(cache=True, nogil=True)
def _columns(n, o, y, x, t, site, bit, n_hi, O, Ho, Wo, L, widths, key, t64, site64, bit64, fo_key, fo_rng):
    """One pass over the record fields: the output keys ((n O + o) Ho + y) Wo + x and int64 copies of t, site and
    bit (site64 empty for rate records, which have no site and bits below 32), the range checks of
    validate.py, and the distinct outputs with their record ranges (fo_key, fo_rng[:, :2]; valid when the records
    are in order). Returns (status, outputs): status 0 = valid and in plan order (by key, t, then site and bit
    for MAC flips), 1 = valid but out of order, 2 = a record is out of range (validate names it)."""
    with_site = len(site64) > 0
    ordered = True
    bad = False
    prev = np.int64(-1)
    k_prev = np.int64(-1)
    m = 0
    for i in range(len(n)):             # without branches: a few ns a record
        s = np.int64(site[i]) if with_site else np.int64(1)
        b = np.int64(bit[i])
        wmax = widths[min(max(s, 0), 2)] if with_site else 32
        bad |= ((n[i] < 0) | (n[i] >= n_hi) | (o[i] < 0) | (o[i] >= O) | (y[i] < 0) | (y[i] >= Ho) | (x[i] < 0)
                | (x[i] >= Wo) | (t[i] < 0) | (t[i] >= L) | (s < 0) | (s > 2) | (b < 0) | (b >= wmax)
                | ((s == 2) & (t[i] != 0)))
        k = ((np.int64(n[i]) * O + o[i]) * Ho + y[i]) * Wo + x[i]
        fine = ((k * L + t[i]) * 3 + s) * 32 + b if with_site else k * L + t[i]
        ordered &= fine >= prev
        prev = fine
        fo_key[m], fo_rng[m, 0] = k, i          # a new output's slot; kept when k is new
        m += k != k_prev
        k_prev = k
        key[i], t64[i], bit64[i] = k, t[i], b
        if with_site:
            site64[i] = s
    if bad:
        return 2, 0
    for j in range(m):
        fo_rng[j, 1] = fo_rng[j + 1, 0] if j + 1 < m else len(n)
        fo_rng[j, 2] = fo_rng[j, 3] = 0
    return (0 if ordered else 1), m


def record_arrays(rec, g, with_site, lp=None, gd=None):
    """Plain int64 columns of MAC-flip (with_site) or rate records, with their output keys; sorted by output,
    then step (then site and bit), as plan arrays are; and "outputs": the faulted outputs and their record ranges
    (corrections.faulted_outputs of these records alone). One numba pass, which also checks the records' ranges
    (the checks LayerPlan lp's validation skips in check_plan; on a bad record it names it); a stable sort only
    when the records are not in plan order."""
    m = len(rec)
    out = {"key": np.empty(m, np.int64), "t": np.empty(m, np.int64), "bit": np.empty(m, np.int64),
           "site": np.empty(m if with_site else 0, np.int64)}
    fo_key, fo_rng = np.empty(m + 1, np.int64), np.empty((m + 1, 4), np.int64)
    site = rec["site"] if with_site else rec["bit"]          # (not read for rate records)
    widths = np.array([gd["width_product"], gd["width_accumulator"], gd["width_final"]] if gd else [32, 32, 32],
                      np.int64)
    status, count = _columns(rec["n"], rec["o"], rec["y"], rec["x"], rec["t"], site, rec["bit"],
                             g.N if lp is not None else 2 ** 31 - 1, g.O, g.Ho, g.Wo, g.L, widths, out["key"],
                             out["t"], out["site"], out["bit"], fo_key, fo_rng)
    if status == 2:
        if lp is not None:
            lp.validate(gd, g.N)              # raises, naming the record and field
        raise errors.CaffeUnstableError(where_of(lp), "fault plan: a record is out of range")
    if status == 0:
        out["outputs"] = (fo_key[:count], fo_rng[:count])
        return out
    fine = out["key"] * g.L + out["t"]
    if with_site:
        fine = (fine * 3 + out["site"]) * 32 + out["bit"]
    order = np.argsort(fine, kind="stable")
    return {k: v[order] if len(v) else v for k, v in out.items()}


def where_of(lp):
    return errors.layer_where(lp.layer_name) if lp is not None else "fault plan"


def _select(arrs, keep):
    return {k: (v[keep] if len(v) == len(keep) else v) for k, v in arrs.items() if k not in ("outputs", "starts")}


def horizon_bounds(tp, g, hw):
    """(K_min (N, LANE, 3): the smallest horizon any add of site accumulate / final_reduce / adder_tree can get
    in image n, lane (31 = never late; a site not modelled counts as 31), jit, k_lane, thresholds, keys, mode)."""
    N, lanes = g.N, hw.lane_num
    if tp is None:
        kmin = np.full((N, lanes, 3), 31, np.int64)
        return kmin, False, np.zeros((N, lanes), np.int64), np.zeros((lanes, 31), np.uint64), \
            np.zeros(N, np.uint64), 0
    jit = tp.K_lane is None
    if jit:
        th = np.ascontiguousarray(tp.thresholds, np.uint64)
        base = np.broadcast_to(31 - (th > 0).sum(axis=1), (N, lanes)).astype(np.int64)
        k_lane, keys = np.zeros((N, lanes), np.int64), np.ascontiguousarray(tp.keys, np.uint64)
    else:
        k_lane = np.ascontiguousarray(tp.K_lane, np.int64)
        base, th, keys = k_lane, np.zeros((lanes, 31), np.uint64), np.zeros(N, np.uint64)
    kmin = np.full((N, lanes, 3), 31, np.int64)
    slack = (0, tp.final_slack_bits, tp.tree_slack_bits)
    for site in tp.sites:
        s = SITE_CODES[site]
        if s == 2 and g.vec // 4 < 2:
            continue                  # VEC 4: the tree has no adds
        kmin[:, :, s] = np.minimum(np.clip(base + slack[s], 0, 31) if s else base, 31)
    return kmin, jit, k_lane, th, keys, fplan.SAMPLED_VALUES.index(tp.sampled_value)


class PlanConv:
    """One conv launch under LayerPlan `lp` on the device buffers of `mem`."""

    def __init__(self, backend, mem, launch, lp, legacy=False):
        self.be, self.mem, self.launch, self.lp = backend, mem, launch, lp
        self.stage = launch.conv
        self.g = g = launch.conv.geom
        self.hw = backend.hw
        self.widths = (self.hw.width_product, self.hw.width_accumulator, self.hw.width_final)
        gd = check_plan(lp, g, self.hw, launch.slot, records=False)
        self.kmin, self.jit, self.k_lane, self.th, self.keys, self.mode = horizon_bounds(lp.timing, g, self.hw)
        st = lp.stuck
        self.stuck = {code: st[st["site"] == code] for code in STUCK_DATAPATH}
        stuck_lanes = np.zeros(self.hw.lane_num, bool)
        for code in STUCK_DATAPATH:
            stuck_lanes[self.stuck[code]["lane"].astype(np.int64)] = True
        self.stuck_lanes = stuck_lanes
        lanes = (np.arange(g.O) + g.po) % self.hw.lane_num
        self.lane_of = lanes
        loop_lane = (self.kmin < 31).any(axis=2) | stuck_lanes[None, :]            # (N, LANE)
        path = launch.path
        if path == "auto":
            path = "mac" if legacy else "auto"
        if path == "fast" and (loop_lane.any() or legacy):
            what = "MAC fault records" if legacy else "carry-horizon timing or stuck datapath bits"
            raise errors.CaffeUnstableError(launch.slot, f"the fast path cannot apply {what}; use path 'mac' or "
                                                         f"'auto'")
        self.in_loop = np.ones((g.N, g.O), bool) if path == "mac" else loop_lane[:, lanes]   # (N, O)
        self.memory = bool(len(lp.weight_events) or len(lp.act_events) or
                           (st["site"] >= 3).any())
        self.mac = self._sampled_records(lp, gd)
        if self.mac is None:
            self.mac = record_arrays(lp.mac_events, g, True, lp, gd)
        self.rate = record_arrays(lp.rate_events, g, False, lp, gd)
        self._mask = None

    def _sampled_records(self, lp, gd):
        """The sampler's MAC-flip records as they are (int32/int8 field views) with the faulted outputs it found
        (LayerPlan.outputs), when nothing here needs per-record keys (no register loop, rate records or memory
        faults) and the plan was sampled for this geometry: its records are then in range and in plan order by
        construction, and record_arrays' pass over them is skipped (about 15 ns a record). Else None."""
        g = self.g
        if (self.in_loop.any() or len(lp.rate_events) or self.memory or not lp.geometry
                or any(lp.geometry.get(k) != gd[k] for k in GEOMETRY_KEYS)
                or (gd["conv_y"], gd["conv_x"]) != (g.Ho, g.Wo)):
            return None
        outputs = lp.outputs(g.N)
        if outputs is None:
            return None
        ev = lp.mac_events
        return {"t": ev["t"], "site": ev["site"], "bit": ev["bit"], "outputs": outputs[:2], "starts": outputs[2]}

    # -- the launch ---------------------------------------------------------------------------------------------
    def run(self, out):
        g, stage, mem = self.g, self.stage, self.mem
        lp = self.lp
        bdev = mem.get("bias") if stage.has_bias else None
        bias0 = bdev if bdev is not None else np.zeros(g.Op, np.int8)
        x = faulty_input(mem["input"], lp.act_events, lp.stuck, g)
        mask = None
        if self.launch.clean_saturation:
            mask = np.zeros((g.N, g.O, g.Ho * g.Wo), np.uint8)
            self._mask = None if (self.in_loop.any() or self.memory) else mask
        variants = weight_variants(mem["weights"], bias0, lp.weight_events, lp.stuck, g)
        sat = np.zeros((g.N, g.O, g.Ho, g.Wo), bool) if self.memory else None
        flags = np.zeros((g.N, g.O, g.Ho, g.Wo), np.uint8) if self.in_loop.any() else None
        hw = g.Ho * g.Wo
        any_loop = self.in_loop.any()        # (soft errors alone: no record goes to the loop, skip the lookup)
        in_loop_rec = {name: self.in_loop[arr["key"] // (g.O * hw), (arr["key"] // hw) % g.O] if any_loop
                       else None for name, arr in (("mac", self.mac), ("rate", self.rate))}
        changed = saturated = late = 0
        used_fast = used_loop = False
        for imgs, wdev, bias in variants:
            rb = self._bias_terms(bias)
            fast_imgs = imgs[~self.in_loop[imgs].all(axis=1)]
            if len(fast_imgs):
                used_fast = True
                c, s = self._fast(x, wdev, rb, fast_imgs, out, in_loop_rec, sat, variant=wdev is not mem["weights"])
                changed, saturated = changed + c, saturated + s
            loop_imgs = imgs[self.in_loop[imgs].any(axis=1)]
            if len(loop_imgs):
                used_loop = True
                late += self._loop(x, wdev, rb, loop_imgs, out, in_loop_rec, flags)
        hit = 0
        if flags is not None:
            hit, c, s = mac_run.flag_counts(flags)
            changed, saturated = changed + c, saturated + s
            if sat is not None:              # the loop's outputs: its own sums, not the GEMM's
                sat[self.in_loop] = (flags[self.in_loop] & 4) != 0
        if self.memory:
            changed, saturated = self._memory_counts(out, sat, mask)
        elif mask is not None and self._mask is None:     # register-loop outputs: the clean sums need a pass
            self.be.clean_pass(mem, self.stage, conv.SaturationReader(mask, self.stage.fmt.n))
        stats = {"path": "+".join(p for p, used in (("fast", used_fast), ("mac", used_loop)) if used) or "fast",
                 "mac_flips": int(len(lp.mac_events)), "masked": int(lp.masked), "outputs_changed": changed,
                 "outputs_saturated": saturated, "rate_events": int(len(lp.rate_events)), "late_adds": late,
                 "outputs_hit": int(hit),
                 "weight_flips": int(len(lp.weight_events)), "act_flips": int(len(lp.act_events))}
        only_stuck = not (len(lp.mac_events) or len(lp.rate_events) or lp.timing is not None
                          or len(lp.weight_events) or len(lp.act_events))
        stats["stuck_outputs_changed"] = 0 if not len(lp.stuck) else (changed if only_stuck else None)
        stats["hit_mask"] = (flags & 1).view(bool) if flags is not None else None    # (N, O, Ho, Wo): a late add
        if mask is not None:
            stats["clean_saturated"] = mask.reshape(g.N, g.O, g.Ho, g.Wo).view(bool)
        if x is not mem["input"]:
            stats["input_consumed"] = x  # activation-memory faults: what the launch read (for the backward)
        return stats

    def _bias_terms(self, bias):
        """rb of the conversion from a device bias (a layer without a bias has zeros there, which only memory
        faults can change; its m is then unchecked, so they count only where the kernel could shift by m)."""
        b = layouts.bias_recover(bias, self.g).astype(np.int64)
        m = self.stage.fmt.m
        if not b.any() or not 1 <= m <= 32:
            return np.zeros(self.g.O, np.int64)
        return bias_term(b, m)

    def _fast(self, x, wdev, rb, imgs, out, in_loop_rec, sat, variant):
        """GEMM over `imgs` plus the corrections of their records on outputs outside the loop."""
        g, mem = self.g, self.mem
        whole = len(imgs) == g.N
        weights = conv.ConvWeights(wdev, g) if variant else self.be.conv_weights(mem, wdev, g)
        pick = {}
        for name, arr in (("mac", self.mac), ("rate", self.rate)):
            if in_loop_rec[name] is None and whole:
                pick[name] = arr                # (soft errors alone: every record, no mask to build)
                continue
            keep = ~in_loop_rec[name] if in_loop_rec[name] is not None else np.ones(len(arr["t"]), bool)
            if not whole:
                keep &= np.isin(arr["key"] // (g.O * g.Ho * g.Wo), imgs)
            pick[name] = _select(arr, keep) if not keep.all() else arr
        xs = x if whole else x[imgs]
        fix = None
        if len(pick["mac"]["t"]) or len(pick["rate"]["t"]) or sat is not None:
            fix = Corrector(pick["mac"], pick["rate"], *self._column_weights(wdev), rb, g, self.stage.fmt,
                            self.stage.relu, self.widths, imgs, xs, sat, self.be._scratch_buffer)
        dst = out if whole else np.zeros((len(imgs),) + out.shape[1:], out.dtype)
        reader = fix
        if self._mask is not None:
            reader = conv.SaturationReader(self._mask, self.stage.fmt.n, None if whole else imgs, also=fix)
        conv.conv_fast(xs, weights, rb, self.stage, dst, None, self.be._scratch_buffer, reader)
        if fix is not None:
            fix.finish(dst, fix.rel_of)
        if not whole:
            out[imgs] = dst
        return fix.counts() if fix is not None else (0, 0)

    def _column_weights(self, wdev):
        """(corrections.chain_weights of wdev, chain_offsets of the layer), cached for the slot's device weights
        and input shape (rebuilt after an upload)."""
        g = self.g
        shape = (g.C, g.H, g.W, g.pad_h, g.pad_w)
        cached = self.mem.get("_column_weights")
        if cached is not None and cached[0] is wdev and cached[1] == shape:
            return cached[2]
        both = (chain_weights(wdev, g), chain_offsets(g))
        if wdev is self.mem.get("weights"):
            self.mem["_column_weights"] = (wdev, shape, both)
        return both

    def _loop(self, x, wdev, rb, imgs, out, in_loop_rec, flags):
        """The register loop over the loop outputs of `imgs` (grouped by their channel sets)."""
        g = self.g
        sets = {}
        for n in imgs:
            sets.setdefault(self.in_loop[n].tobytes(), []).append(n)
        late = 0
        for mask_bytes, ns in sets.items():
            ch = np.flatnonzero(np.frombuffer(mask_bytes, bool)).astype(np.int64)
            ns = np.array(ns, np.int64)
            late += self._loop_set(x, wdev, rb, ns, ch, out, in_loop_rec, flags)
        return late

    def _loop_set(self, x, wdev, rb, imgs, ch, out, in_loop_rec, flags):
        g = self.g
        lanes = self.lane_of[ch]
        kf = np.ascontiguousarray(self.kmin[:, lanes].min(axis=1))
        tp = self.lp.timing
        timing = (self.jit, self.k_lane, self.th, self.keys, self.mode, kf,
                  int(tp.final_slack_bits) if tp else 0, int(tp.tree_slack_bits) if tp else 0)
        recs = {}
        for name, arr in (("mac", self.mac), ("rate", self.rate)):
            keep = in_loop_rec[name] & np.isin(arr["key"] // (g.O * g.Ho * g.Wo), imgs)
            recs[name] = _select(arr, keep)
        sm, sp, sa = (self.stuck[c] for c in STUCK_DATAPATH)
        stuck = (tuple(sm[k].astype(np.int64) for k in ("lane", "vec", "bit", "value")),
                 tuple(sp[k].astype(np.int64) for k in ("lane", "bit", "value")),
                 tuple(sa[k].astype(np.int64) for k in ("lane", "bit", "value")))
        wc, wf = loop_weights(self.mem, wdev, ch, g)
        return mac_run.run_loop(x, wc, ch, imgs, rb, self.stage, self.hw, out, flags, timing, recs["mac"],
                                recs["rate"], stuck, self.stuck_lanes[lanes].astype(np.uint8), wf)

    def _memory_counts(self, out, sat, mask=None):
        """With memory faults every output may change: compare with the clean layer, computed once more (which
        also gives the clean saturation `mask`, when one is wanted)."""
        g = self.g
        reader = conv.SaturationReader(mask, self.stage.fmt.n) if mask is not None else None
        clean = self.be.clean_pass(self.mem, self.stage, reader)
        diff = layouts.activations_recover(out, g.O) != layouts.activations_recover(clean, g.O)
        return int(diff.sum()), int((diff & sat).sum())


def loop_weights(mem, wdev, ch, g):
    """The loop's weights of channels ch and their mac_run.float_weights, cached for the slot's device weights
    and one channel set."""
    key = ch.tobytes()
    cached = mem.get("_loop_weights")
    if cached is not None and cached[0] is wdev and cached[1] == key:
        return cached[2]
    wc = mac_run.loop_weight_matrix(wdev, ch, g)
    both = (wc, mac_run.float_weights(wc))
    if wdev is mem.get("weights"):
        mem["_loop_weights"] = (wdev, key, both)
    return both


def with_events(lp, events):
    """A copy of LayerPlan lp with the MAC-flip records `events` added (Launch.events next to Launch.plan)."""
    ev = np.concatenate([lp.mac_events, np.asarray(events).astype(fplan.MAC_EVENT_DTYPE)])
    return dataclasses.replace(lp, mac_events=np.sort(ev, order=list(fplan.MAC_EVENT_DTYPE.names)))
