"""The fault plan: every fault of one forward pass as plain, sorted NumPy arrays (faults.md §2).

Fault models write plans; backends read them and draw no random numbers, so the numba and OpenCL backends
see identical faults. A plan can be saved (`*.faultplan.npz`, no pickles), replayed (`acc.fixed_plan`) and
written by hand (`FaultPlan.single`, `FaultPlan.from_records`, PyTorchFI-style).
"""
import io
import json
from dataclasses import dataclass, field

import numpy as np

from ...errors import CaffeUnstableError

FORMAT = "caffe_unstable.fault_plan/1"
SITES = {"product": 0, "accumulator": 1, "final": 2}
STUCK_SITES = {"multiplier": 0, "product": 1, "accumulator": 2, "weight_mem": 3, "act_mem": 4}
TIMING_SITES = ("accumulate", "final_reduce", "adder_tree")
SAMPLED_VALUES = ("carry_dropped", "stale", "drop")

MAC_EVENT_DTYPE = np.dtype([("n", "<i4"), ("o", "<i4"), ("y", "<i4"), ("x", "<i4"), ("t", "<i4"),
                            ("site", "i1"), ("bit", "i1")])
RATE_EVENT_DTYPE = np.dtype([("n", "<i4"), ("o", "<i4"), ("y", "<i4"), ("x", "<i4"), ("t", "<i4"), ("bit", "i1")])
MEM_EVENT_DTYPE = np.dtype([("n", "<i4"), ("addr", "<i8"), ("bit", "i1")])
STUCK_DTYPE = np.dtype([("site", "i1"), ("lane", "<i2"), ("vec", "<i2"), ("addr", "<i8"), ("bit", "i1"),
                        ("value", "i1")])
RECORD_FIELDS = {"mac_events": MAC_EVENT_DTYPE, "rate_events": RATE_EVENT_DTYPE,
                 "weight_events": MEM_EVENT_DTYPE, "act_events": MEM_EVENT_DTYPE, "stuck": STUCK_DTYPE}
SORT_ORDER = {"mac_events": list(MAC_EVENT_DTYPE.names), "rate_events": ["n", "o", "y", "x", "t"],
              "weight_events": ["n", "addr", "bit"], "act_events": ["n", "addr", "bit"], "stuck": None}


def site_code(site):
    """0 product, 1 accumulator, 2 final; accepts the name or the code."""
    if isinstance(site, str):
        if site not in SITES:
            raise CaffeUnstableError("fault plan", f"unknown site {site!r} (known: {', '.join(SITES)})")
        return SITES[site]
    return int(site)


def records(dtype, sort=None, **columns):
    """A structured array of `dtype` from equal-length columns (scalars broadcast), sorted by `sort` (field names)."""
    cols = {k: np.atleast_1d(np.asarray(v)) for k, v in columns.items()}
    sizes = {c.shape[0] for c in cols.values() if c.shape[0] != 1}
    if len(sizes) > 1:
        raise CaffeUnstableError("fault plan", f"record columns have different lengths: "
                                               f"{ {k: c.shape[0] for k, c in cols.items()} }")
    size = sizes.pop() if sizes else min((c.shape[0] for c in cols.values()), default=0)
    cols = {k: np.broadcast_to(c, (size,)).astype(dtype[k]) for k, c in cols.items() if k in dtype.names}
    if sort and size > 1:      # sort the plain columns: a structured-array sort is ~20x slower
        order = _composite_order([cols[name] for name in sort if name in cols]) if set(cols) <= set(sort) else None
        if order is None:
            order = np.lexsort([cols[name] if name in cols else np.zeros(size, np.int8) for name in reversed(sort)])
        cols = {k: c[order] for k, c in cols.items()}
    out = np.zeros(size, dtype)
    for name, c in cols.items():
        out[name] = c
    return out


def _composite_order(keys):
    """The lexicographic order of integer columns `keys` through one int64 key (several times faster than
    lexsort on the ~10^5 records of a soft-error plan), or None when the key would not fit. Only used when the
    columns are every field of the records, so ties are identical records and the sort need not be stable."""
    key = np.zeros(len(keys[0]), np.int64)
    span_total = 1
    for col in keys:
        lo, hi = int(col.min()), int(col.max())
        span_total *= hi - lo + 1
        if span_total >= 1 << 62:
            return None
        key = key * (hi - lo + 1) + (col.astype(np.int64) - lo)
    return np.argsort(key)


def empty(kind):
    return np.zeros(0, RECORD_FIELDS[kind])


def mac_events(n, o, y, x, t, site, bit):
    """Sorted MAC-flip records (n, o, y, x, t, site, bit); `site` codes or names."""
    site = np.atleast_1d(np.asarray(site))
    if site.dtype.kind in "US":
        site = np.array([site_code(s) for s in site], dtype=np.int64)
    return records(MAC_EVENT_DTYPE, SORT_ORDER["mac_events"], n=n, o=o, y=y, x=x, t=t, site=site, bit=bit)


@dataclass(frozen=True)
class LayerOp:
    """What a fault model plans for: one accelerated layer of one forward pass over `batch` images."""

    layer_index: int
    layer_name: str
    batch: int = 1


@dataclass
class TimingPlan:
    """Carry-horizon parameters of one layer (faults.md §2.2). Exactly one of `K_lane` or (`thresholds`, `keys`)."""

    sampled_value: str = "carry_dropped"
    sites: tuple = ("accumulate",)
    final_slack_bits: int = 0
    tree_slack_bits: int = 0
    K_lane: np.ndarray = None        # int8 [batch, LANE]: no jitter or per_image jitter
    thresholds: np.ndarray = None    # uint64 [LANE, 31]: per-add jitter lookup table (§5.5)
    keys: np.ndarray = None          # uint64 [batch]: per-add jitter keys (stream 2)
    model: str = "carry_horizon"

    ARRAYS = ("K_lane", "thresholds", "keys")

    def header(self):
        return {"model": self.model, "sampled_value": self.sampled_value, "sites": list(self.sites),
                "final_slack_bits": int(self.final_slack_bits), "tree_slack_bits": int(self.tree_slack_bits)}


@dataclass
class LayerPlan:
    """The faults of one accelerated layer for every image of the pass; arrays sorted as faults.md §2.2 says."""

    layer_index: int
    layer_name: str
    geometry: dict = None
    mac_events: np.ndarray = field(default_factory=lambda: empty("mac_events"))
    timing: TimingPlan = None
    rate_events: np.ndarray = field(default_factory=lambda: empty("rate_events"))
    weight_events: np.ndarray = field(default_factory=lambda: empty("weight_events"))
    act_events: np.ndarray = field(default_factory=lambda: empty("act_events"))
    stuck: np.ndarray = field(default_factory=lambda: empty("stuck"))
    masked: int = 0          # sampled MAC flips that fell on padded lanes (dropped, no visible effect)
    rate_masked: int = 0     # the same for rate-model timing errors
    # what the sampler knows of its MAC-flip records (set_outputs); not a plan field: not saved, not compared,
    # and dataclasses.replace drops it
    sampled: tuple = field(default=None, init=False, repr=False, compare=False)

    def set_outputs(self, batch, keys, ranges, starts):
        """Record, for the sampler's mac_events (made read-only here: an edit in place would leave this stale),
        their faulted outputs: keys ((n O + o) conv_y + y) conv_x + x, each one's record range (ranges[:, :2];
        columns 2-3 zero) and where each (image, channel)'s outputs start (starts, batch O + 1), for `batch`
        images. A backend may then skip its own pass over the records (outputs())."""
        self.mac_events.flags.writeable = False
        self.sampled = (self.mac_events, int(batch), keys, ranges, starts)

    def outputs(self, batch):
        """(keys, ranges, starts) of set_outputs when they still describe mac_events (the same read-only array)
        and its images fit in `batch` (starts then extended to batch images); else None."""
        s = self.sampled
        if s is None or s[0] is not self.mac_events or self.mac_events.flags.writeable or s[1] > batch:
            return None
        starts = s[4]
        if s[1] < batch:
            extra = (batch - s[1]) * ((len(starts) - 1) // max(s[1], 1))
            starts = np.concatenate([starts, np.full(extra, starts[-1], np.int64)])
        return s[2], s[3], starts

    def is_empty(self):
        return self.timing is None and not any(len(getattr(self, k)) for k in RECORD_FIELDS)

    def validate(self, geometry=None, batch=None, records=True):
        """Check every record against the layer (faults.md §2.3); raises one line naming layer and field.
        records=False leaves out the ranges of the MAC-flip and rate records (for a backend that checks them in
        its own pass over them)."""
        from .validate import validate_layer_plan
        validate_layer_plan(self, geometry if geometry is not None else self.geometry, batch, records)
        return self


@dataclass
class FaultPlan:
    """Every fault of one forward pass of one net (faults.md §2.2)."""

    seed: int = None
    phase: int = 0
    iteration: int = 0
    pass_: int = 0
    batch: int = 1
    freq_mhz: float = None
    ser: float = 0.0
    profile: str = ""
    numpy: str = np.__version__
    layers: list = field(default_factory=list)
    format: str = FORMAT

    SCALARS = ("format", "seed", "phase", "iteration", "pass_", "batch", "freq_mhz", "ser", "profile", "numpy")

    def layer(self, name_or_index):
        """The LayerPlan of a layer (by name or net layer index), or None when the layer has no faults."""
        for lp in self.layers:
            if name_or_index in (lp.layer_name, lp.layer_index):
                return lp
        return None

    # -- explicit plans ------------------------------------------------------------------------------------------
    @classmethod
    def from_records(cls, layer_name, n, o, y, x, t, site, bit, layer_index=-1, batch=None):
        """A plan with MAC-flip records for one layer (interface.md accelerator API point 3).

        Equal-length integer arrays; `site` is the code (0 product, 1 accumulator, 2 final; t = 0 for final) or
        the name. Records are validated against the layer's geometry when the accelerator applies the plan.
        """
        ev = mac_events(n, o, y, x, t, site, bit)
        lp = LayerPlan(int(layer_index), str(layer_name), mac_events=ev)
        return cls(batch=int(batch) if batch is not None else (int(ev["n"].max()) + 1 if len(ev) else 1),
                   layers=[lp])

    @classmethod
    def single(cls, layer, n, o, y, x, t, bit, site="accumulator"):
        """One transient flip (PyTorchFI-style): image n, output (o, y, x), MAC step t, register bit."""
        return cls.from_records(layer, [n], [o], [y], [x], [t], [site_code(site)], [bit])

    # -- container (faults.md §2.3) ------------------------------------------------------------------------------
    def header(self):
        head = {k: getattr(self, k) for k in self.SCALARS}
        head["layers"] = [{"layer_index": lp.layer_index, "layer_name": lp.layer_name, "geometry": lp.geometry,
                           "masked": lp.masked, "rate_masked": lp.rate_masked,
                           "timing": lp.timing.header() if lp.timing is not None else None}
                          for lp in self.layers]
        return head

    def arrays(self):
        out = {}
        indices = [lp.layer_index for lp in self.layers]
        if len(set(indices)) != len(indices):
            raise CaffeUnstableError("fault plan", f"layer indices are not unique ({indices}); set layer_index "
                                                   f"of explicit plans before saving")
        for lp in self.layers:
            for kind in RECORD_FIELDS:
                out[f"L{lp.layer_index}/{kind}"] = getattr(lp, kind)
            if lp.timing is not None:
                for name in TimingPlan.ARRAYS:
                    value = getattr(lp.timing, name)
                    if value is not None:
                        out[f"L{lp.layer_index}/timing.{name}"] = np.asarray(value)
        return out

    def save(self, path):
        """Write `*.faultplan.npz` (numpy.savez_compressed, header as UTF-8 JSON, arrays as L<index>/<field>)."""
        from ...io.atomic import write_bytes
        header = np.frombuffer(json.dumps(self.header()).encode("utf-8"), dtype=np.uint8)
        buf = io.BytesIO()
        np.savez_compressed(buf, header=header, **self.arrays())
        write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path):
        with np.load(path, allow_pickle=False) as z:
            head = json.loads(bytes(z["header"]).decode("utf-8"))
            if head.get("format") != FORMAT:
                raise CaffeUnstableError(path, f"format: expected {FORMAT!r}, got {head.get('format')!r}")
            layers = []
            for meta in head["layers"]:
                prefix = f"L{meta['layer_index']}/"
                lp = LayerPlan(meta["layer_index"], meta["layer_name"], meta["geometry"],
                               masked=meta["masked"], rate_masked=meta["rate_masked"])
                for kind in RECORD_FIELDS:
                    setattr(lp, kind, z[prefix + kind])
                if meta["timing"] is not None:
                    t = meta["timing"]
                    arrays = {name: z[prefix + "timing." + name] if prefix + "timing." + name in z else None
                              for name in TimingPlan.ARRAYS}
                    lp.timing = TimingPlan(t["sampled_value"], tuple(t["sites"]), t["final_slack_bits"],
                                           t["tree_slack_bits"], model=t["model"], **arrays)
                layers.append(lp)
        return cls(**{k: head[k] for k in cls.SCALARS}, layers=layers)

    def equals(self, other):
        """Same header and bit-identical arrays (the replay check)."""
        if self.header() != other.header():
            return False
        a, b = self.arrays(), other.arrays()
        return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]) for k in a)


def output_offsets(events, geometry, batch):
    """CSR table over real outputs: the records of output (n, o, y, x) are events[off[i]:off[i+1]] with
    i = ((n·O + o)·conv_y + y)·conv_x + x. `events` sorted by (n, o, y, x, ...), as every plan array is."""
    g = geometry
    flat = (((events["n"].astype(np.int64) * g["O"] + events["o"]) * g["conv_y"] + events["y"]) * g["conv_x"]
            + events["x"])
    total = batch * g["O"] * g["conv_y"] * g["conv_x"]
    return np.searchsorted(flat, np.arange(total + 1, dtype=np.int64), side="left")
