"""Provenance recorded with every scan's metrics: versions, config, input identity, timings."""

from __future__ import annotations

import datetime as dt
import math
import platform
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np

from lungvol import __version__
from lungvol.config import LungvolConfig
from lungvol.types import CTVolume

# Distribution names whose versions change numbers in metrics.json.
_VERSIONED_PACKAGES = (
    "numpy",
    "scipy",
    "scikit-image",
    "SimpleITK",
    "pydicom",
    "highdicom",
    "matplotlib",
)
# Arrays in a stage's ``info`` larger than this are summarised, not copied into JSON.
_MAX_INLINE_ARRAY = 64


def package_versions() -> dict[str, str | None]:
    """Python and key package versions (None when a package is not installed)."""
    versions: dict[str, str | None] = {"python": platform.python_version(), "lungvol": __version__}
    for name in _VERSIONED_PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return versions


def json_safe(value: Any) -> Any:
    """Convert numpy scalars/arrays, tuples, paths and NaN into plain JSON values.

    NaN/inf become None (JSON has no NaN); large arrays become a short description.
    """
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        if value.size > _MAX_INLINE_ARRAY:
            return f"<array shape={list(value.shape)} dtype={value.dtype}>"
        return [json_safe(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


def build_provenance(
    volume: CTVolume,
    config: LungvolConfig,
    *,
    timings_s: Mapping[str, float],
    device: str = "cpu",
    lung_info: Mapping[str, Any] | None = None,
    lesion_info: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything needed to trace a number in metrics.json back to its inputs and code.

    Holds no patient identifiers: ``SourceInfo`` carries none by construction.
    """
    source = volume.source
    return {
        "lungvol_version": __version__,
        "config_hash": config.hash,
        "config_source": config.source,
        "input": json_safe(source.to_dict()),
        "geometry": {
            "shape_zyx": list(volume.shape),
            "spacing_mm_zyx": [float(s) for s in volume.spacing_mm],
            "origin_lps_mm": [float(s) for s in volume.origin_lps_mm],
            "voxel_volume_ml": volume.voxel_volume_ml,
        },
        "segmentation": {
            "lungs": json_safe(dict(lung_info or {})),
            "lesions": json_safe(dict(lesion_info or {})),
        },
        "timings_s": {k: round(float(v), 4) for k, v in timings_s.items()},
        "device": device,
        "versions": package_versions(),
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
