"""The `*.devprofile.yaml` schema (faults.md §7.1): defaults, rules and one-line errors `FILE:LINE: key: problem`.

`validate(doc, file)` returns the profile as plain data with every default filled in; the first problem raises
CaffeUnstableError(where=f"{file}:{line}", what=f"{dotted.key}: {problem}").
"""
import math
import os

from ...errors import CaffeUnstableError
from .plan import SAMPLED_VALUES, TIMING_SITES

FORMAT = "caffe_unstable.device_profile/1"
TOP = ("format", "name", "status", "description", "provenance", "conditions", "accelerator", "timing",
       "soft_errors", "permanent", "canaries", "measurements", "fit")
ACCELERATOR = ("name", "vec_size", "lane_num", "pipe_depth", "width_product", "width_accumulator", "width_final",
               "lrn_overflow")
TIMING = ("model", "safe_mhz", "valid_mhz", "fixed_k", "t0_ns", "tau_ns_per_bit", "jitter_ns", "jitter_scope",
          "sampled_value", "sites", "final_slack_bits", "tree_slack_bits", "lane_offsets_ns", "rate")
RATE = ("curve", "poff_mhz", "f_ref_mhz", "p_ref", "beta_per_mhz", "amplitude", "mu_ns", "sigma_ns", "table",
        "p_max", "bit_pmf", "bit_lo")
SOFT = ("mac_flip_rate", "site", "count", "flip_bits", "weight_bit_flip_prob", "weight_scope", "act_bit_flip_prob")
PERMANENT = ("stuck_at", "stuck_at_file", "random")
STUCK_FIELDS = {"multiplier": ("lane", "vec", "bit", "value"), "product": ("lane", "bit", "value"),
                "accumulator": ("lane", "bit", "value"), "weight_mem": ("layer", "address", "bit", "value"),
                "act_mem": ("layer", "address", "bit", "value")}
RANDOM_FIELDS = ("site", "count", "fraction", "seed")
MISSING = object()


def _fmt(v):
    return repr(v) if isinstance(v, str) else str(v)


class Checker:
    def __init__(self, doc, file):
        self.doc, self.file = doc, os.fspath(file)

    def fail(self, path, what):
        raise CaffeUnstableError(f"{self.file}:{self.doc.line(path)}", f"{path}: {what}")

    def mapping(self, value, path, known, nullable=False):
        if value is None and nullable:
            return None
        if not isinstance(value, dict):
            self.fail(path, f"must be a mapping, got {_fmt(value)}")
        for key in value:
            if key not in known:
                self.fail(f"{path}.{key}" if path else key, f"unknown key (known: {', '.join(known)})")
        return value

    def get(self, m, path, key, required=False, why="required"):
        if key in m:
            return m[key]
        if required:
            self.fail(f"{path}.{key}" if path else key, why)
        return MISSING

    def integer(self, value, path, lo=None, hi=None):
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(path, f"must be an integer, got {_fmt(value)}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            self.fail(path, f"must be an integer in [{lo}, {hi}], got {value}" if lo is not None and hi is not None
                      else f"must be an integer >= {lo}, got {value}" if lo is not None
                      else f"must be an integer <= {hi}, got {value}")
        return value

    def number(self, value, path, rule=None, test=None):
        """A number (int, float, or a string that parses as a float); `test(x)` must hold, `rule` says how."""
        x = value
        if isinstance(x, str):
            try:
                x = float(x)
            except ValueError:
                x = None
        if isinstance(value, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
            self.fail(path, f"must be a number{' ' + rule if rule else ''}, got {_fmt(value)}")
        if test is not None and not test(x):
            self.fail(path, f"must be a number {rule}, got {value}")
        return x

    def choice(self, value, path, options):
        if value not in options:
            self.fail(path, f"must be one of {', '.join(options)}, got {_fmt(value)}")
        return value

    def string(self, value, path):
        if not isinstance(value, str):
            self.fail(path, f"must be a string, got {_fmt(value)}")
        return value


def validate(doc, file):
    """The validated profile (plain data, defaults filled) of a yaml_nodes.Doc read from `file`."""
    c = Checker(doc, file)
    top = c.mapping(doc.value, "", TOP)
    fmt = c.get(top, "", "format", required=True)
    if fmt != FORMAT:
        c.fail("format", f"expected {FORMAT!r}, got {_fmt(fmt)}")
    out = {"format": FORMAT}
    name = top.get("name", os.path.basename(os.fspath(file)).split(".")[0])
    out["name"] = c.string(name, "name")
    out["status"] = c.choice(top.get("status", "starting_point"), "status", ("starting_point", "calibrated",
                                                                            "measured"))
    out["description"] = c.string(top.get("description", ""), "description")
    out["provenance"] = c.mapping(top.get("provenance", {}), "provenance", tuple(top.get("provenance") or {}))
    cond = c.mapping(top.get("conditions", {}), "conditions", ("temperature_c", "vccint_v"))
    out["conditions"] = {k: None if cond.get(k) is None else c.number(cond[k], f"conditions.{k}")
                         for k in ("temperature_c", "vccint_v") if k in cond}
    out["accelerator"] = _accelerator(c, c.mapping(top.get("accelerator", {}), "accelerator", ACCELERATOR))
    out["timing"] = _timing(c, c.mapping(top.get("timing", {"model": "none"}), "timing", TIMING), out["accelerator"])
    out["soft_errors"] = _soft(c, c.mapping(top.get("soft_errors", {}), "soft_errors", SOFT), out["accelerator"])
    out["permanent"] = _permanent(c, c.mapping(top.get("permanent", {}), "permanent", PERMANENT), out["accelerator"])
    out["canaries"] = _canaries(c, top.get("canaries"))
    out["measurements"] = _measurements(c, top.get("measurements"))
    fit = top.get("fit")
    out["fit"] = c.mapping(fit, "fit", tuple(fit or {}), nullable=True)
    return out


def _accelerator(c, m):
    p = "accelerator"
    name = c.string(m.get("name", "PipeCNN"), f"{p}.name")
    if name != "PipeCNN":
        c.fail(f"{p}.name", f"only PipeCNN is implemented, got {name!r}")
    vec = c.integer(m.get("vec_size", 4), f"{p}.vec_size", 4)
    if vec % 4:
        c.fail(f"{p}.vec_size", f"must be a multiple of 4 (4-product DSP blocks), got {vec}")
    out = {"name": name, "vec_size": vec, "lane_num": c.integer(m.get("lane_num", 16), f"{p}.lane_num", 1),
           "pipe_depth": c.integer(m.get("pipe_depth", 6), f"{p}.pipe_depth", 1)}
    out["width_product"] = c.integer(m.get("width_product", 32), f"{p}.width_product",
                                     16 + math.ceil(math.log2(vec)), 32)
    for k in ("width_accumulator", "width_final"):
        out[k] = c.integer(m.get(k, 32), f"{p}.{k}", 1, 32)
    out["lrn_overflow"] = c.choice(m.get("lrn_overflow", "clamp"), f"{p}.lrn_overflow", ("clamp", "wrap"))
    return out


def _timing(c, m, acc):
    p = "timing"
    model = c.choice(m.get("model", "none"), f"{p}.model", ("carry_horizon", "rate", "none"))
    out = {"model": model}
    ch = model == "carry_horizon"
    safe = c.get(m, p, "safe_mhz", required=model != "none", why=f"required when timing.model is {model}")
    out["safe_mhz"] = None if safe is MISSING else c.number(safe, f"{p}.safe_mhz", "> 0", lambda x: x > 0)
    valid = m.get("valid_mhz", None if out["safe_mhz"] is None else [out["safe_mhz"], 2 * out["safe_mhz"]])
    if valid is not None:
        if not isinstance(valid, list) or len(valid) != 2:
            c.fail(f"{p}.valid_mhz", f"must be a list [lo, hi] of two numbers, got {_fmt(valid)}")
        valid = [c.number(v, f"{p}.valid_mhz[{i}]") for i, v in enumerate(valid)]
        if not valid[0] < valid[1]:
            c.fail(f"{p}.valid_mhz", f"must have lo < hi, got {valid}")
    out["valid_mhz"] = valid
    fixed_k = m.get("fixed_k")
    if fixed_k is not None:
        c.integer(fixed_k, f"{p}.fixed_k", 0, 32)
        if not ch:
            c.fail(f"{p}.fixed_k", "only with timing.model: carry_horizon")
    out["fixed_k"] = fixed_k
    need = ch and fixed_k is None
    for k in ("t0_ns", "tau_ns_per_bit"):
        v = c.get(m, p, k, required=need, why="required when timing.model is carry_horizon")
        out[k] = None if v is MISSING or v is None else c.number(v, f"{p}.{k}", "> 0", lambda x: x > 0)
    out["jitter_ns"] = c.number(m.get("jitter_ns", 0), f"{p}.jitter_ns", ">= 0", lambda x: x >= 0)
    out["jitter_scope"] = c.choice(m.get("jitter_scope", "per_add"), f"{p}.jitter_scope", ("per_add", "per_image"))
    out["sampled_value"] = c.choice(m.get("sampled_value", "carry_dropped"), f"{p}.sampled_value", SAMPLED_VALUES)
    sites = m.get("sites", ["accumulate"])
    if not isinstance(sites, list) or not sites or len(set(map(str, sites))) != len(sites):
        c.fail(f"{p}.sites", f"must be a non-empty list of distinct sites, got {_fmt(sites)}")
    out["sites"] = [c.choice(s, f"{p}.sites[{i}]", TIMING_SITES) for i, s in enumerate(sites)]
    for k in ("final_slack_bits", "tree_slack_bits"):
        out[k] = c.integer(m.get(k, 0), f"{p}.{k}", -32, 32)
    offsets = m.get("lane_offsets_ns")
    if offsets is not None:
        if not isinstance(offsets, list) or len(offsets) != acc["lane_num"]:
            c.fail(f"{p}.lane_offsets_ns", f"must be a list of accelerator.lane_num ({acc['lane_num']}) numbers, "
                                           f"got {_fmt(offsets)}")
        offsets = [c.number(v, f"{p}.lane_offsets_ns[{i}]") for i, v in enumerate(offsets)]
    out["lane_offsets_ns"] = offsets
    if ch and fixed_k is None:
        _safe_clock_rule(c, out)
    rate = m.get("rate")
    if model == "rate" and rate is None:
        c.fail(f"{p}.rate", "required when timing.model is rate")
    out["rate"] = None if rate is None else _rate(c, c.mapping(rate, f"{p}.rate", RATE), out["safe_mhz"])
    return out


def _safe_clock_rule(c, t):
    """Reject a carry-horizon model that could fail at its safe clock (faults.md §5.5)."""
    delta = max(t["lane_offsets_ns"] or [0.0])
    x = (1000.0 / t["safe_mhz"] - t["t0_ns"] - delta - 4 * t["jitter_ns"]) / t["tau_ns_per_bit"]
    if x < 31:
        c.fail("timing.safe_mhz", f"the model fails at the safe clock (K = {max(math.floor(x), 0)} < 31 at "
                                  f"{t['safe_mhz']:g} MHz)")


def _rate(c, m, safe):
    p = "timing.rate"
    curve = c.choice(m.get("curve", "exponential"), f"{p}.curve", ("exponential", "gaussian_tail", "table"))
    out = {"curve": curve}
    rules = {"poff_mhz": (">= timing.safe_mhz", lambda x: safe is None or x >= safe),
             "f_ref_mhz": (None, None), "p_ref": ("in (0, 1]", lambda x: 0 < x <= 1),
             "beta_per_mhz": (">= 0", lambda x: x >= 0), "amplitude": ("in (0, 1]", lambda x: 0 < x <= 1),
             "mu_ns": (None, None), "sigma_ns": ("> 0", lambda x: x > 0)}
    required = {"exponential": ("poff_mhz", "f_ref_mhz", "p_ref", "beta_per_mhz"),
                "gaussian_tail": ("amplitude", "mu_ns", "sigma_ns")}.get(curve, ())
    for k, (rule, test) in rules.items():
        v = c.get(m, p, k, required=k in required, why=f"required for curve {curve}")
        out[k] = None if v is MISSING or v is None else c.number(v, f"{p}.{k}", rule, test)
    table = c.get(m, p, "table", required=curve == "table", why="required for curve table")
    out["table"] = None if table is MISSING or table is None else _table(c, table, f"{p}.table")
    out["p_max"] = c.number(m.get("p_max", 0.5), f"{p}.p_max", "in (0, 1]", lambda x: 0 < x <= 1)
    pmf = m.get("bit_pmf", "geometric")
    if isinstance(pmf, dict):
        weights = {}
        for bit, w in pmf.items():
            if isinstance(bit, bool) or not isinstance(bit, int) or not 0 <= bit <= 31:
                c.fail(f"{p}.bit_pmf", f"bits must be integers in [0, 31], got {_fmt(bit)}")
            weights[bit] = c.number(w, f"{p}.bit_pmf.{bit}", ">= 0", lambda x: x >= 0)
        if sum(weights.values()) <= 0:
            c.fail(f"{p}.bit_pmf", "weights must sum to > 0")
        pmf = weights
    elif pmf != "geometric":
        c.fail(f"{p}.bit_pmf", f"must be geometric or a mapping {{bit: weight}}, got {_fmt(pmf)}")
    out["bit_pmf"] = pmf
    out["bit_lo"] = c.integer(m.get("bit_lo", 26), f"{p}.bit_lo", 0, 31)
    return out


def _table(c, table, path):
    if not isinstance(table, list) or len(table) < 2:
        c.fail(path, f"must be a list of at least 2 rows [mhz, p], got {_fmt(table)}")
    rows = []
    for i, row in enumerate(table):
        if not isinstance(row, list) or len(row) != 2:
            c.fail(f"{path}[{i}]", f"must be a row [mhz, p], got {_fmt(row)}")
        rows.append([c.number(row[0], f"{path}[{i}][0]"),
                     c.number(row[1], f"{path}[{i}][1]", "in [0, 1]", lambda x: 0 <= x <= 1)])
        if i and rows[i][0] <= rows[i - 1][0]:
            c.fail(f"{path}[{i}]", "mhz must be strictly increasing")
        if i and rows[i][1] < rows[i - 1][1]:
            c.fail(f"{path}[{i}]", "p must be non-decreasing")
    return rows


def _soft(c, m, acc):
    p = "soft_errors"
    prob = ("in [0, 0.01]", lambda x: 0 <= x <= 0.01)
    out = {"mac_flip_rate": c.number(m.get("mac_flip_rate", 0), f"{p}.mac_flip_rate", *prob),
           "site": c.choice(m.get("site", "accumulator"), f"{p}.site", ("accumulator", "product")),
           "count": c.choice(m.get("count", "hardware"), f"{p}.count", ("hardware", "model"))}
    w = acc["width_accumulator" if out["site"] == "accumulator" else "width_product"]
    bits = m.get("flip_bits", [0, w - 1])
    if not isinstance(bits, list) or len(bits) != 2:
        c.fail(f"{p}.flip_bits", f"must be a list [lo, hi] of two integers, got {_fmt(bits)}")
    lo, hi = (c.integer(b, f"{p}.flip_bits[{i}]") for i, b in enumerate(bits))
    if not 0 <= lo <= hi <= w - 1:
        c.fail(f"{p}.flip_bits", f"must satisfy 0 <= lo <= hi <= {w - 1} (the {out['site']} width), got {bits}")
    out["flip_bits"] = [lo, hi]
    out["weight_bit_flip_prob"] = c.number(m.get("weight_bit_flip_prob", 0), f"{p}.weight_bit_flip_prob", *prob)
    out["weight_scope"] = c.choice(m.get("weight_scope", "buffer"), f"{p}.weight_scope", ("buffer", "ddr"))
    out["act_bit_flip_prob"] = c.number(m.get("act_bit_flip_prob", 0), f"{p}.act_bit_flip_prob", *prob)
    return out


def stuck_entry(c, m, path, acc):
    """One stuck-at mapping (faults.md §6.3), checked against the accelerator build."""
    if not isinstance(m, dict):
        c.fail(path, f"must be a mapping, got {_fmt(m)}")
    site = c.choice(c.get(m, path, "site", required=True), f"{path}.site", tuple(STUCK_FIELDS))
    c.mapping(m, path, ("site",) + STUCK_FIELDS[site])
    out = {"site": site}
    bit_hi = {"multiplier": 15, "product": acc["width_product"] - 1, "accumulator": acc["width_accumulator"] - 1}
    for k in STUCK_FIELDS[site]:
        v = c.get(m, path, k, required=True, why=f"required for site {site}")
        if k == "layer":
            out[k] = c.string(v, f"{path}.layer")
            continue
        out[k] = c.integer(v, f"{path}.{k}", 0)
        limit = {"lane": ("accelerator.lane_num", acc["lane_num"]), "vec": ("accelerator.vec_size", acc["vec_size"])}
        if k in limit and v >= limit[k][1]:
            c.fail(f"{path}.{k}", f"must be < {limit[k][0]} ({limit[k][1]}), got {v}")
        if k == "bit" and v > bit_hi.get(site, 7):
            c.fail(f"{path}.bit", f"must be in [0, {bit_hi.get(site, 7)}] for site {site}, got {v}")
        if k == "value" and v > 1:
            c.fail(f"{path}.value", f"must be 0 or 1, got {v}")
    return out


def _permanent(c, m, acc):
    p = "permanent"
    entries = m.get("stuck_at", [])
    if not isinstance(entries, list):
        c.fail(f"{p}.stuck_at", f"must be a list of mappings, got {_fmt(entries)}")
    out = {"stuck_at": [stuck_entry(c, e, f"{p}.stuck_at[{i}]", acc) for i, e in enumerate(entries)]}
    f = m.get("stuck_at_file")
    out["stuck_at_file"] = None if f is None else c.string(f, f"{p}.stuck_at_file")
    rand = m.get("random", [])
    if not isinstance(rand, list):
        c.fail(f"{p}.random", f"must be a list of mappings, got {_fmt(rand)}")
    out["random"] = []
    for i, e in enumerate(rand):
        path = f"{p}.random[{i}]"
        c.mapping(e, path, RANDOM_FIELDS)
        r = {"site": c.choice(c.get(e, path, "site", required=True), f"{path}.site", tuple(STUCK_FIELDS))}
        if ("count" in e) == ("fraction" in e):
            c.fail(path, "needs exactly one of count or fraction")
        if "count" in e:
            r["count"] = c.integer(e["count"], f"{path}.count", 0)
        else:
            r["fraction"] = c.number(e["fraction"], f"{path}.fraction", "in [0, 1]", lambda x: 0 <= x <= 1)
        r["seed"] = c.integer(c.get(e, path, "seed", required=True), f"{path}.seed", 0)
        out["random"].append(r)
    return out


def _canaries(c, m):
    m = c.mapping(m, "canaries", ("set", "degraded_min"), nullable=True)
    if m is None:
        return None
    return {"set": c.string(c.get(m, "canaries", "set", required=True), "canaries.set"),
            "degraded_min": c.number(m.get("degraded_min", 0.9), "canaries.degraded_min", "in (0, 1]",
                                     lambda x: 0 < x <= 1)}


def _measurements(c, m):
    if m is None or isinstance(m, list):
        if m is not None:
            for i, row in enumerate(m):
                if not isinstance(row, dict):
                    c.fail(f"measurements[{i}]", f"must be a mapping of measurement columns, got {_fmt(row)}")
        return m
    m = c.mapping(m, "measurements", ("file", "sha256"))
    return {"file": c.string(c.get(m, "measurements", "file", required=True), "measurements.file"),
            "sha256": None if m.get("sha256") is None else c.string(m["sha256"], "measurements.sha256")}
