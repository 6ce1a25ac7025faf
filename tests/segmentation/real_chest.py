"""Helpers shared by the slow accuracy tests: the default config, a volume from an array, and
seg_synthetic's Dice."""

from __future__ import annotations

import numpy as np
from seg_synthetic import dice

from lungvol.config import LungvolConfig
from lungvol.types import CTVolume, SourceInfo

CFG = LungvolConfig()
__all__ = ["CFG", "as_volume", "dice"]


def as_volume(hu: np.ndarray, spacing_mm) -> CTVolume:
    """``hu`` on ``spacing_mm`` (z, y, x) as an axial CTVolume at the origin."""
    return CTVolume(
        hu=hu, spacing_mm=tuple(float(s) for s in spacing_mm), origin_lps_mm=(0.0, 0.0, 0.0),
        direction=np.eye(3), source=SourceInfo(path="phantom", kind="synthetic", sha256=""),
    )
