"""Device profiles: `*.devprofile.yaml`, one accelerator bitstream on one board (faults.md §7).

    profile = DeviceProfile.load("pipecnn_kcu1500")     # a path, or a shipped profile's name
    profile.timing["t0_ns"], profile.warnings(), profile.dump("copy.devprofile.yaml")
"""
import copy
import csv
import hashlib
import os
from pathlib import Path

import yaml

from ...errors import CaffeUnstableError
from . import schema, yaml_nodes
from .carry_horizon import first_failure_mhz

SUFFIX = ".devprofile.yaml"
SHIPPED_DIR = Path(__file__).resolve().parents[2] / "profiles"
DEFAULT_PROFILE = "pipecnn_kcu1500"
STUCK_CSV_HEADER = ["site", "lane", "vec", "bit", "value", "layer", "address"]


def find(name_or_path):
    """An existing path, or a shipped profile by name with or without the suffix (faults.md §7.3)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    stem = path.name[:-len(SUFFIX)] if path.name.endswith(SUFFIX) else path.name
    shipped = SHIPPED_DIR / (stem + SUFFIX)
    if path.parent == Path(".") and shipped.is_file():
        return shipped
    known = sorted(p.name[:-len(SUFFIX)] for p in SHIPPED_DIR.glob("*" + SUFFIX))
    raise CaffeUnstableError(os.fspath(name_or_path), f"profile not found (not a file, nor a shipped profile: "
                                                      f"{', '.join(known)})")


class DeviceProfile:
    """A validated device profile: `data` holds every key with its default filled in."""

    def __init__(self, data, path=None, sha256=None):
        self.data, self.path, self.sha256 = data, path, sha256

    # -- loading ------------------------------------------------------------------------------------------------
    @classmethod
    def load(cls, name_or_path, check_files=True):
        path = find(name_or_path)
        shown = os.fspath(name_or_path) if Path(name_or_path).is_file() else os.fspath(path)
        raw = path.read_bytes()
        data = schema.validate(yaml_nodes.load(path), shown)
        profile = cls(data, path, hashlib.sha256(raw).hexdigest())
        if check_files:
            profile._check_files(shown)
        return profile

    def _check_files(self, shown):
        doc = None
        canaries = self.data["canaries"]
        if canaries is not None and not self.resolve(canaries["set"]).is_file():
            doc = doc or yaml_nodes.load(self.path)
            raise CaffeUnstableError(f"{shown}:{doc.line('canaries.set')}",
                                     f"canaries.set: file not found: {canaries['set']}")
        f = self.data["permanent"]["stuck_at_file"]
        if f is not None:
            if not self.resolve(f).is_file():
                doc = doc or yaml_nodes.load(self.path)
                raise CaffeUnstableError(f"{shown}:{doc.line('permanent.stuck_at_file')}",
                                         f"permanent.stuck_at_file: file not found: {f}")
            self.stuck_file_entries()

    def resolve(self, relative):
        """A path named in the profile, relative to the profile's folder."""
        p = Path(relative)
        return p if p.is_absolute() or self.path is None else self.path.parent / p

    def stuck_file_entries(self):
        """The validated rows of `permanent.stuck_at_file` (CSV `site,lane,vec,bit,value,layer,address`)."""
        f = self.data["permanent"]["stuck_at_file"]
        if f is None:
            return []
        path = self.resolve(f)
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
        if not rows or [h.strip() for h in rows[0]] != STUCK_CSV_HEADER:
            raise CaffeUnstableError(f"{path}:1", f"header must be {','.join(STUCK_CSV_HEADER)}")
        out = []
        for i, row in enumerate(rows[1:], start=2):
            if not any(cell.strip() for cell in row):
                continue
            entry = {}
            for key, cell in zip(STUCK_CSV_HEADER, row):
                cell = cell.strip()
                if cell:
                    entry[key] = cell if key in ("site", "layer") else _csv_int(cell, path, i, key)
            doc = yaml_nodes.Doc(entry, {"": i})
            out.append(schema.stuck_entry(schema.Checker(doc, path), entry, f"row {i - 1}", self.accelerator))
        return out

    # -- views ---------------------------------------------------------------------------------------------------
    @property
    def name(self):
        return self.data["name"]

    @property
    def status(self):
        return self.data["status"]

    @property
    def accelerator(self):
        return self.data["accelerator"]

    @property
    def timing(self):
        return self.data["timing"]

    @property
    def soft_errors(self):
        return self.data["soft_errors"]

    @property
    def permanent(self):
        return self.data["permanent"]

    @property
    def canaries(self):
        return self.data["canaries"]

    def widths(self):
        a = self.accelerator
        return a["width_product"], a["width_accumulator"], a["width_final"]

    def first_failure_mhz(self):
        """f_PoFF of the carry-horizon parameters (σ = 0, δ = 0), or None."""
        t = self.timing
        if t["model"] != "carry_horizon" or t["t0_ns"] is None:
            return None
        return first_failure_mhz(t["t0_ns"], t["tau_ns_per_bit"])

    def describe(self):
        """`name and sha256 of its file` (FaultPlan.profile)."""
        return f"{self.name} sha256:{self.sha256}" if self.sha256 else self.name

    def warnings(self):
        """One-line warnings that do not stop a run (faults.md §7.2)."""
        out = []
        if self.status == "starting_point" and self.timing["model"] != "none":
            shown = self.path.name if self.path is not None else self.name
            out.append(f"warning: {shown}: status is starting_point: the timing parameters are a calibration "
                       f"starting point, not measured")
        return out

    def check_freq(self, freq_mhz):
        """A warning line when --freq lies outside valid_mhz, or when the profile has no timing model; else None."""
        if freq_mhz is None:
            return None
        if self.timing["model"] == "none":
            return f"warning: --freq {freq_mhz:g}: profile {self.name} has no timing model (timing.model: none)"
        lo, hi = self.timing["valid_mhz"]
        if not lo <= freq_mhz <= hi:
            return f"warning: --freq {freq_mhz:g} is outside the profile's valid_mhz [{lo:g}, {hi:g}]"
        return None

    # -- writing -------------------------------------------------------------------------------------------------
    def dump(self, path):
        """Write YAML that loads back equal (every default explicit)."""
        from ...io.atomic import write_bytes
        text = yaml.safe_dump(_plain(copy.deepcopy(self.data)), sort_keys=False, width=110)
        write_bytes(path, text.encode("utf-8"))

    def __eq__(self, other):
        return isinstance(other, DeviceProfile) and self.data == other.data


def rebase_files(data, base, out_path):
    """A profile derived from `base` and written to `out_path` (fit, calibrate): the files `base` names are
    relative to its folder, so they are re-anchored at the new profile's folder (in place; returns data)."""
    folder = Path(out_path).resolve().parent

    def moved(relative):
        return Path(os.path.relpath(base.resolve(relative).resolve(), folder)).as_posix()

    if data["canaries"] is not None:
        data["canaries"]["set"] = moved(data["canaries"]["set"])
    if data["permanent"]["stuck_at_file"] is not None:
        data["permanent"]["stuck_at_file"] = moved(data["permanent"]["stuck_at_file"])
    return data


def stem(out_path):
    """A profile file's default name: its file name without .devprofile.yaml (faults.md §7.1)."""
    name = Path(out_path).name
    return name[:-len(SUFFIX)] if name.endswith(SUFFIX) else Path(out_path).stem


def _csv_int(cell, path, line, key):
    try:
        return int(cell)
    except ValueError:
        raise CaffeUnstableError(f"{path}:{line}", f"{key}: must be an integer, got {cell!r}") from None


def _plain(v):
    """Tuples -> lists, recursively (what yaml.safe_dump writes as plain sequences)."""
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v
