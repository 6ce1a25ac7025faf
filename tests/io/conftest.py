"""Fixtures for the io tests (helpers live in io_factory.py)."""

from __future__ import annotations

import numpy as np
import pytest
from io_factory import chest_like


@pytest.fixture
def chest() -> np.ndarray:
    """A (20, 32, 32) int16 chest-like HU volume."""
    return chest_like()
