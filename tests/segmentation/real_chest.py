"""Helpers shared by the slow accuracy tests: the default config and a volume from an array."""

from __future__ import annotations

import numpy as np

from lungvol.config import LungvolConfig
from lungvol.types import CTVolume, SourceInfo

CFG = LungvolConfig()


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b))


def as_volume(hu: np.ndarray, spacing_mm) -> CTVolume:
    """``hu`` on ``spacing_mm`` (z, y, x) as an axial CTVolume at the origin."""
    return CTVolume(
        hu=hu, spacing_mm=tuple(float(s) for s in spacing_mm), origin_lps_mm=(0.0, 0.0, 0.0),
        direction=np.eye(3), source=SourceInfo(path="phantom", kind="synthetic", sha256=""),
    )
