"""The golden `caffe train` runs of ../shared/golden/solvers: manifest cases, a writable working copy, readers.

The HDF5 list files name train.h5/test.h5 by relative path, so every run starts with CWD = a copy of that folder
(golden/README.md). The copy leaves out Caffe's logs and snapshots (our runs write snapshots of the same names);
tests read Caffe's files from GOLDEN_SOLVERS itself.
"""
import json
import os
import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
GOLDEN_SOLVERS = SHARED / "golden" / "solvers"
ADAPTIVE = ("AdaGrad", "RMSProp", "AdaDelta", "Adam")


def manifest():
    path = GOLDEN_SOLVERS / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else []


def solver_cases():
    """One pytest param per golden solver run (a single skipped param when ../shared is absent)."""
    cases = [pytest.param(entry["solver"], id=entry["solver"]) for entry in manifest()]
    return cases or [pytest.param(None, marks=pytest.mark.skip(reason=f"{GOLDEN_SOLVERS} absent"))]


def working_copy(dest, snapshots=()):
    """Copy golden/solvers (without logs/ and snapshots/) to `dest`, writable; add the named snapshot files."""
    dest = Path(dest)
    shutil.copytree(GOLDEN_SOLVERS, dest, ignore=shutil.ignore_patterns("logs", "snapshots"),
                    copy_function=shutil.copyfile, dirs_exist_ok=True)
    os.chmod(dest, 0o755)
    if snapshots:
        (dest / "snapshots").mkdir(exist_ok=True)
        for name in snapshots:
            shutil.copyfile(GOLDEN_SOLVERS / "snapshots" / name, dest / "snapshots" / name)
    return dest


def solver_type(name):
    text = (GOLDEN_SOLVERS / f"{name}.solver.prototxt").read_text()
    match = re.search(r'^type:\s*"(\w+)"', text, re.M)
    return match.group(1) if match else "SGD"


def trajectory(name):
    """{k: (weights {(layer, i): array}, history [arrays])} of <name>_trajectory.h5."""
    out = {}
    with h5py.File(GOLDEN_SOLVERS / f"{name}_trajectory.h5", "r") as f:
        for key in f["weights"]:
            k = int(key.split("_")[1])
            weights = {(layer, int(i)): np.asarray(f["weights"][key][layer][i])
                       for layer in f["weights"][key] for i in f["weights"][key][layer]}
            history = []
            if key in f.get("history", {}):
                group = f["history"][key]
                history = [np.asarray(group[str(j)]) for j in range(len(group))]
            out[k] = (weights, history)
    return out


def glog_message(line):
    """`file:line] message` of a glog line (None for a continuation line)."""
    match = re.match(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ (\S+\] .*)$", line)
    return match.group(1) if match else None
