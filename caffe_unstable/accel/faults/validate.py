"""Checks of a LayerPlan against its layer (faults.md §2.3): one line naming the layer and the field."""
import numpy as np
from numba import njit

from ...errors import CaffeUnstableError, layer_where
from .plan import RECORD_FIELDS, SAMPLED_VALUES, TIMING_SITES


def _fail(lp, what):
    raise CaffeUnstableError(layer_where(lp.layer_name), f"fault plan: {what}")


def _check_range(lp, kind, arr, name, lo, hi):
    """Every arr[name] in [lo, hi) (hi may be an array broadcast against arr)."""
    if not len(arr):                # most record kinds of most plans: nothing to convert and compare
        return
    col = arr[name].astype(np.int64)
    bad = (col < lo) | (col >= hi)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        top = hi if np.isscalar(hi) else int(np.broadcast_to(hi, col.shape)[i])
        _fail(lp, f"{kind}.{name} = {int(col[i])} out of range [{lo}, {top}) (record {i})")


@njit(cache=True, nogil=True)
def _first_bad_mac(n, o, y, x, t, site, bit, n_hi, O, conv_y, conv_x, L, widths):
    """The index of the first MAC-flip record with a field out of range (or a final record with t != 0), -1 if
    none: one pass over the fields of a soft-error plan's hundreds of thousands of records, then the NumPy
    checks below name the field only when one is bad."""
    for i in range(len(n)):
        s = np.int64(site[i])
        bad = ((n[i] < 0) | (n[i] >= n_hi) | (o[i] < 0) | (o[i] >= O) | (y[i] < 0) | (y[i] >= conv_y)
               | (x[i] < 0) | (x[i] >= conv_x) | (t[i] < 0) | (t[i] >= L) | (s < 0) | (s > 2))
        if bad or bit[i] < 0 or bit[i] >= widths[s] or (s == 2 and t[i] != 0):
            return i
    return -1


def validate_layer_plan(lp, g, batch=None, records=True):
    if g is None:
        _fail(lp, "no geometry to check the records against")
    for kind, dtype in RECORD_FIELDS.items():
        if getattr(lp, kind).dtype != dtype:
            _fail(lp, f"{kind} must have dtype {dtype}, got {getattr(lp, kind).dtype}")
    n_hi = batch if batch is not None else 2 ** 31 - 1
    outputs = {"o": g["O"], "y": g["conv_y"], "x": g["conv_x"], "t": g["L"]}
    for kind, size in (("weight_events", g["N_WBYTES"]), ("act_events", g["N_ABYTES"])):
        arr = getattr(lp, kind)
        _check_range(lp, kind, arr, "n", -1 if kind == "weight_events" else 0, n_hi)
        _check_range(lp, kind, arr, "addr", 0, size)
        _check_range(lp, kind, arr, "bit", 0, 8)
    _validate_stuck(lp, g)
    if lp.timing is not None:
        _validate_timing(lp, g, batch)
    if not records:
        return
    ev = lp.mac_events
    widths = np.array([g["width_product"], g["width_accumulator"], g["width_final"]], np.int64)
    if _first_bad_mac(ev["n"], ev["o"], ev["y"], ev["x"], ev["t"], ev["site"], ev["bit"], n_hi, g["O"],
                      g["conv_y"], g["conv_x"], g["L"], widths) >= 0:
        _check_range(lp, "mac_events", ev, "n", 0, n_hi)
        for name, hi in outputs.items():
            _check_range(lp, "mac_events", ev, name, 0, hi)
        _check_range(lp, "mac_events", ev, "site", 0, 3)
        _check_range(lp, "mac_events", ev, "bit", 0, widths[ev["site"].astype(np.int64)])
        final_t = ev["t"][ev["site"] == 2]
        if (final_t != 0).any():
            _fail(lp, f"mac_events.t = {int(final_t[final_t != 0][0])}: must be 0 for site final")
    re = lp.rate_events
    _check_range(lp, "rate_events", re, "n", 0, n_hi)
    for name, hi in outputs.items():
        _check_range(lp, "rate_events", re, name, 0, hi)
    _check_range(lp, "rate_events", re, "bit", 0, 32)


def _validate_stuck(lp, g):
    st = lp.stuck
    if not len(st):                 # most plans: no stuck bits (the masks below cost more than the check)
        return
    _check_range(lp, "stuck", st, "site", 0, 5)
    _check_range(lp, "stuck", st, "value", 0, 2)
    site = st["site"].astype(np.int64)
    datapath = site <= 2
    _check_range(lp, "stuck", st[datapath], "lane", 0, g["LANE_NUM"])
    _check_range(lp, "stuck", st[site == 0], "vec", 0, g["VEC_SIZE"])
    bit_hi = np.array([16, g["width_product"], g["width_accumulator"], 8, 8])[site]
    _check_range(lp, "stuck", st, "bit", 0, bit_hi)
    _check_range(lp, "stuck", st[site == 3], "addr", 0, g["N_WBYTES"])
    _check_range(lp, "stuck", st[site == 4], "addr", 0, g["N_ABYTES"])


def _validate_timing(lp, g, batch):
    tp = lp.timing
    if tp.model != "carry_horizon":
        _fail(lp, f"timing.model must be carry_horizon, got {tp.model!r}")
    if tp.sampled_value not in SAMPLED_VALUES:
        _fail(lp, f"timing.sampled_value must be one of {', '.join(SAMPLED_VALUES)}, got {tp.sampled_value!r}")
    if not tp.sites or len(set(tp.sites)) != len(tp.sites) or not set(tp.sites) <= set(TIMING_SITES):
        _fail(lp, f"timing.sites must be distinct names from {', '.join(TIMING_SITES)}, got {list(tp.sites)}")
    jitter = tp.thresholds is not None or tp.keys is not None
    if (tp.K_lane is None) == (not jitter) or (jitter and (tp.thresholds is None or tp.keys is None)):
        _fail(lp, "timing: exactly one of K_lane or (thresholds, keys) must be given")
    if tp.K_lane is not None:
        k = np.asarray(tp.K_lane)
        if k.ndim != 2 or k.shape[1] != g["LANE_NUM"] or (batch is not None and k.shape[0] != batch):
            _fail(lp, f"timing.K_lane must have shape [batch, {g['LANE_NUM']}], got {list(k.shape)}")
        if (k < 0).any() or (k > 32).any():
            _fail(lp, "timing.K_lane must be in [0, 32]")
    else:
        th = np.asarray(tp.thresholds)
        if th.shape != (g["LANE_NUM"], 31) or th.dtype != np.uint64:
            _fail(lp, f"timing.thresholds must be uint64 [{g['LANE_NUM']}, 31], got {th.dtype} {list(th.shape)}")
        keys = np.asarray(tp.keys)
        if keys.ndim != 1 or keys.dtype != np.uint64 or (batch is not None and keys.shape[0] != batch):
            _fail(lp, f"timing.keys must be uint64 [batch], got {keys.dtype} {list(keys.shape)}")
