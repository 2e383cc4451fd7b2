"""Fixtures of the fault-model tests: the spec's test vectors (../shared/specs/fault_vectors.json)."""
import json

import numpy as np
import pytest


@pytest.fixture(scope="session")
def vectors(shared):
    path = shared / "specs" / "fault_vectors.json"
    if not path.is_file():
        pytest.skip(f"{path}: fault vectors not found")
    data = json.loads(path.read_text())
    assert data["format"] == "caffe_unstable.fault_vectors/1"
    return data


@pytest.fixture(scope="session")
def numpy_version_note(vectors):
    """Golden sampling depends on NumPy's Generator streams (faults.md §3.4): name both versions on a mismatch."""
    return f"(vectors generated with NumPy {vectors['generated_with']['numpy']}, running {np.__version__})"
