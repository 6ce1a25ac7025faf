"""Shared fixtures: the path to ../shared real CT data, skipping cleanly when absent."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_CT = REPO.parent / "shared" / "data" / "real-ct"
SAMPLE_DATA = REPO / "sample_data"


@pytest.fixture(scope="session")
def real_ct() -> Path:
    """Folder of real chest CT scans (../shared/data/real-ct); skip when not present."""
    if not SHARED_CT.is_dir():
        pytest.skip(f"real CT data not found at {SHARED_CT} (only in the lungvol workspace)")
    return SHARED_CT


@pytest.fixture(scope="session")
def sample_data() -> Path:
    return SAMPLE_DATA
