"""Shared pytest fixtures."""
import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shared() -> Path:
    """The ../shared tree (specs, golden outputs, models, data); skips when absent unless CU_REQUIRE_SHARED=1."""
    path = Path(__file__).resolve().parents[1].parent / "shared"
    if not path.is_dir():
        reason = f"{path}: shared test data not found"
        if os.environ.get("CU_REQUIRE_SHARED") == "1":
            pytest.fail(reason + " (CU_REQUIRE_SHARED=1)")
        pytest.skip(reason)
    return path
