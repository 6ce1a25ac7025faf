"""Core data types passed between pipeline stages.

Conventions, stated once:
- Arrays and per-axis tuples are ``(z, y, x)``. After ``lungvol.io`` every volume is in
  LPS orientation: axis 0 runs inferior -> superior, axis 1 anterior -> posterior,
  axis 2 patient right -> patient left (so a low x index is the patient's RIGHT side).
- World points (``origin_lps_mm``) are DICOM LPS ``(x, y, z)`` in millimetres.
- ``direction`` is ITK's 3x3 direction matrix (columns = index axes x, y, z in LPS world).
- Intensities are Hounsfield units (``hu``), already rescaled.
- Label maps are uint8: lungs 0 = background, 1 = right, 2 = left;
  lesions 0 = none, 1 = ground-glass, 2 = solid component.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from lungvol.errors import GeometryError

MM3_PER_ML = 1000.0

LUNG_RIGHT = 1
LUNG_LEFT = 2
LESION_GGO = 1
LESION_SOLID = 2


@dataclass(frozen=True)
class SourceInfo:
    """Where a volume came from. Holds no patient identifiers (no names, IDs, birth dates).

    ``files`` are the DICOM files of the chosen series in slice order (inferior first), one
    entry per slice; for an enhanced multi-frame CT the same file repeats and ``frames``
    gives each slice's 0-based frame in it (empty for classic single-frame files). The
    DICOM-SEG writer re-reads them to reference the source images.
    """

    path: str
    kind: str  # "dicom" | "nifti" | "nrrd" | "mha"
    sha256: str  # hash of the input bytes (all files of the series, in slice order)
    series_uid: str | None = None
    study_uid: str | None = None
    frame_of_reference_uid: str | None = None
    modality: str | None = None
    manufacturer: str | None = None
    convolution_kernel: str | None = None
    slice_thickness_mm: float | None = None
    study_date: str | None = None  # YYYYMMDD; a date is needed for visit windows
    transfer_syntax_uid: str | None = None
    files: tuple[str, ...] = ()
    frames: tuple[int, ...] = ()
    selection_reason: str = ""
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["n_files"] = len(set(self.files))
        d["n_frames"] = len(self.frames)
        del d["files"], d["frames"]
        d["warnings"] = list(self.warnings)
        return d


@dataclass(frozen=True)
class CTVolume:
    """A CT volume in HU, LPS-oriented, with geometry and source."""

    hu: np.ndarray  # (z, y, x), int16 or float32, Hounsfield units
    spacing_mm: tuple[float, float, float]  # (z, y, x)
    origin_lps_mm: tuple[float, float, float]  # world (x, y, z) of voxel [0, 0, 0]
    direction: np.ndarray  # 3x3, orthonormal
    source: SourceInfo

    def __post_init__(self) -> None:
        if self.hu.ndim != 3:
            raise GeometryError(f"CT volume must be 3-D, got shape {self.hu.shape}")
        if len(self.spacing_mm) != 3 or not all(s > 0 for s in self.spacing_mm):
            raise GeometryError(f"spacing must be 3 positive values in mm, got {self.spacing_mm}")
        d = np.asarray(self.direction, dtype=float)
        if d.shape != (3, 3) or not np.allclose(d @ d.T, np.eye(3), atol=1e-4):
            raise GeometryError(f"direction must be an orthonormal 3x3 matrix, got {d.tolist()}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.hu.shape)  # type: ignore[return-value]

    @property
    def voxel_volume_ml(self) -> float:
        return float(np.prod(self.spacing_mm)) / MM3_PER_ML


def check_same_grid(labels: np.ndarray, volume: CTVolume, *, name: str) -> None:
    """Raise GeometryError unless ``labels`` has the volume's shape."""
    if labels.shape != volume.hu.shape:
        raise GeometryError(
            f"{name} has shape {labels.shape}, but the CT volume has {volume.hu.shape}"
        )


@dataclass(frozen=True)
class LungMask:
    """Lung label map on the CT grid: 0 background, 1 right lung, 2 left lung."""

    labels: np.ndarray  # uint8 (z, y, x)
    info: dict[str, Any] = field(default_factory=dict)  # method details, timings, warnings
    # bool (z, y, x), or None: voxels the subpleural step added (an estimate; qc.png outlines
    # them so a reader can judge it).
    recovered: np.ndarray | None = None
    # bool (z, y, x), or None: the subpleural step's estimate of dependent opacity between
    # the lungs and the posterior ribs, NOT in the mask (consolidation or effusion; qc.png
    # outlines it).
    outside_estimate: np.ndarray | None = None


@dataclass(frozen=True)
class LesionMask:
    """Lesion label map on the CT grid: 0 none, 1 ground-glass, 2 solid component."""

    labels: np.ndarray  # uint8 (z, y, x)
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ScanMetrics:
    """Per-scan measurements written to metrics.json. Volumes in mL, proportions in %.

    A value that was not measured is None (with the reason in ``qc_flags``), never 0.0.
    """

    lung_volume_ml: float
    lung_volume_right_ml: float
    lung_volume_left_ml: float
    lesion_volume_ml: float
    ggo_volume_ml: float
    solid_volume_ml: float
    lesion_proportion_pct: float
    solid_proportion_pct: float
    ggo_proportion_pct: float
    # Solid lesion in the lung mask's outer voxel layer against soft tissue (mL): where the
    # lung boundary is invisible and solid may be under-read (QC flag solid_at_lung_surface).
    solid_at_surface_ml: float
    normal_ct: bool
    lung_hu: dict[str, float]  # mean, std, p5, p25, p50, p75, p95 ...
    qc_flags: list[str]
    provenance: dict[str, Any]
    status: str = "ok"  # "ok" | "failed"
    # Spread of the numbers over shifted block lattices (quantification.phase_check), or
    # None when the check was not run (see lungvol.quantification.phase_check).
    phase_check: dict[str, Any] | None = None
    # Per lung ("right", "left"), the distance (mm) from the base to the lowest slice with
    # half the largest cross-section (quantification.qc_flags.base_taper_mm): a few mm means
    # a base cut off square (QC flag lung_base_truncated). None in results older than 0.5.0.
    lung_base_taper_mm: dict[str, float | None] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
