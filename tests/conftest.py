"""Shared fixtures: the path to ../shared real CT data, skipping cleanly when absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

# CI (.ci/run exports CI=true) runs the property tests on a fixed set of examples per test
# (derived from the test's source), so a landing never depends on a random draw; local runs
# keep drawing new examples, which is how the nchypergeom_fisher abort was found.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

REPO = Path(__file__).resolve().parents[1]
SHARED_CT = REPO.parent / "shared" / "data" / "real-ct"
SAMPLE_DATA = REPO / "sample_data"


@pytest.fixture(scope="session")
def real_ct() -> Path:
    """Folder of real chest CT scans (../shared/data/real-ct); skip when not present."""
    if not SHARED_CT.is_dir():
        pytest.skip(
            f"real CT data not found at {SHARED_CT} (only present in the lungvol workspace)"
        )
    return SHARED_CT


@pytest.fixture(scope="session")
def sample_data() -> Path:
    return SAMPLE_DATA
