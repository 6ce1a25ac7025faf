"""Phantoms shared by the phantom tests (generated once per session)."""

from __future__ import annotations

import pytest

from lungvol.phantom import Phantom, make_phantom


@pytest.fixture(scope="session")
def ph_small() -> Phantom:
    """The "small" preset with lesions (15 % / 3 %)."""
    return make_phantom(seed=4, lesion_pct=15.0, solid_pct=3.0)


@pytest.fixture(scope="session")
def normal_small() -> Phantom:
    """The same anatomy and seed without lesions."""
    return make_phantom(seed=4, lesion_pct=0.0, solid_pct=0.0)
