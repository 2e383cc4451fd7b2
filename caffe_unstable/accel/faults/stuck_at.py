"""Permanent faults: per-device stuck-at maps by lane, vec slot, register bit or memory address (faults.md §6.3).

A stuck bit is forced on every forward and every image, after the transient flips of its register. Datapath
sites: `multiplier` (the 16-bit product register of multiplier (lane, vec)), `product` (the lane's m_t),
`accumulator` (the lane's accumulate-adder result). Memory sites: `weight_mem`, `act_mem` (a byte of one layer's
image, named by `layer`). `random` entries are materialised once, from their own seed (stream 7).
"""
import numpy as np

from ...errors import CaffeUnstableError
from .plan import STUCK_DTYPE, STUCK_SITES, LayerPlan, records
from .rng import generator, sample_distinct

DATAPATH = ("multiplier", "product", "accumulator")
MEMORY = ("weight_mem", "act_mem")


def stuck_records(entries):
    """STUCK_DTYPE records from mappings {site, lane, vec, bit, value, address}; unused fields −1."""
    cols = {k: [] for k in STUCK_DTYPE.names}
    for e in entries:
        cols["site"].append(STUCK_SITES[e["site"]])
        cols["lane"].append(e.get("lane", -1) if e.get("lane") is not None else -1)
        cols["vec"].append(e.get("vec", -1) if e.get("vec") is not None else -1)
        cols["addr"].append(e.get("address", -1) if e.get("address") is not None else -1)
        cols["bit"].append(e["bit"])
        cols["value"].append(e["value"])
    return records(STUCK_DTYPE, None, **cols)


def unit_bits(site, lane_num, vec_size, widths, geometry=None):
    """(units, B): how many units a random entry chooses from, and the bits per unit (datapath sites)."""
    if site == "multiplier":
        return lane_num * vec_size, 16
    if site == "product":
        return lane_num, widths[0]
    if site == "accumulator":
        return lane_num, widths[1]
    return 8 * geometry["N_WBYTES" if site == "weight_mem" else "N_ABYTES"], None


def materialize(entry, e, lane_num, vec_size, widths, layer_index=0, geometry=None):
    """Entry number e of `permanent.random` as stuck mappings (faults.md §6.3; key (7, 0, 0, e, layer_index, 0))."""
    site = entry["site"]
    rng = generator(entry["seed"], (7, 0, 0, e, layer_index if site in MEMORY else 0, 0))
    units, B = unit_bits(site, lane_num, vec_size, widths, geometry)
    cnt = int(entry["count"]) if entry.get("count") is not None else int(rng.binomial(units, entry["fraction"]))
    if cnt > units:
        raise CaffeUnstableError(f"permanent.random[{e}].count", f"must be <= {units} units of {site}, got {cnt}")
    chosen = sample_distinct(rng, units, cnt)
    if site in MEMORY:
        value = rng.integers(0, 2, size=cnt, dtype=np.int64)
        return [{"site": site, "address": int(u // 8), "bit": int(u % 8), "value": int(v)}
                for u, v in zip(chosen, value)]
    bit = rng.integers(0, B, size=cnt, dtype=np.int64)
    value = rng.integers(0, 2, size=cnt, dtype=np.int64)
    out = []
    for u, b, v in zip(chosen, bit, value):
        if site == "multiplier":
            out.append({"site": site, "lane": int(u // vec_size), "vec": int(u % vec_size), "bit": int(b),
                        "value": int(v)})
        else:
            out.append({"site": site, "lane": int(u), "bit": int(b), "value": int(v)})
    return out


class StuckAt:
    """The permanent map of a device: explicit `stuck_at` entries plus materialised `random` entries."""

    name = "stuck_at"

    def __init__(self, stuck_at=(), random=(), lane_num=16, vec_size=4, widths=(32, 32, 32)):
        self.entries = list(stuck_at)
        self.random = list(random)
        self.lane_num, self.vec_size, self.widths = lane_num, vec_size, tuple(widths)
        self.datapath = [m for m in self.entries if m["site"] in DATAPATH]
        for e, entry in enumerate(self.random):
            if entry["site"] in DATAPATH:
                self.datapath += materialize(entry, e, lane_num, vec_size, self.widths)

    def layer_entries(self, op, geometry):
        """Every mapping that applies to this layer: the datapath map, its memory entries, random memory maps."""
        out = list(self.datapath)
        out += [m for m in self.entries if m["site"] in MEMORY and m.get("layer") == op.layer_name]
        for e, entry in enumerate(self.random):
            if entry["site"] in MEMORY:
                out += materialize(entry, e, self.lane_num, self.vec_size, self.widths, op.layer_index, geometry)
        return out

    def plan(self, op, geometry, rng=None):
        """LayerPlan with the stuck map of this layer (draws nothing per forward: the map is the device's)."""
        return LayerPlan(op.layer_index, op.layer_name, geometry, stuck=stuck_records(self.layer_entries(op, geometry)))

    def counts(self):
        """Datapath entries per site, for the log line."""
        return {s: sum(1 for m in self.datapath if m["site"] == s) for s in DATAPATH}
