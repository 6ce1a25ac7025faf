"""Small synthetic CT volumes with hand-made lung and lesion masks (no other stage needed)."""

from __future__ import annotations

import numpy as np

from lungvol.types import CTVolume, LesionMask, LungMask, SourceInfo


def make_volume(
    hu: np.ndarray,
    spacing_mm: tuple[float, float, float] = (2.0, 1.0, 1.0),
    *,
    warnings: tuple[str, ...] = (),
) -> CTVolume:
    source = SourceInfo(
        path="/synthetic/ct",
        kind="nifti",
        sha256="0" * 64,
        series_uid="1.2.3",
        study_date="20200101",
        warnings=warnings,
        selection_reason="only series",
    )
    return CTVolume(
        hu=hu,
        spacing_mm=spacing_mm,
        origin_lps_mm=(0.0, 0.0, 0.0),
        direction=np.eye(3),
        source=source,
    )


BASE_Z = 3  # the lungs' lowest slice in chest()
DOME_SLICES = 7  # slices of chest()'s tapering base


def chest(
    shape: tuple[int, int, int] = (40, 64, 64),
    spacing_mm: tuple[float, float, float] = (2.0, 1.0, 1.0),
    *,
    warnings: tuple[str, ...] = (),
) -> tuple[CTVolume, LungMask, LesionMask]:
    """Two box 'lungs' (-850 HU) inside soft tissue, a GGO box and a solid box in the right lung.

    Lungs stay away from every border, so no edge flag is expected. Their lowest 7 slices
    (z 3-9) taper like a base under the diaphragm's dome: only a posterolateral recess,
    growing to just under half the box's cross-section at z 9 (under the lesions), so the
    base reads (10 - 3) slices, 14 mm at 2 mm, from base to half area (QC flag
    lung_base_truncated under 10 mm).
    """
    nz, ny, nx = shape
    hu = np.full(shape, 40, dtype=np.int16)
    lungs = np.zeros(shape, dtype=np.uint8)
    z = slice(BASE_Z + DOME_SLICES, nz - 3)
    y = slice(8, ny - 8)
    lungs[z, y, 6 : nx // 2 - 3] = 1  # right lung: low x index
    lungs[z, y, nx // 2 + 3 : nx - 6] = 2
    for i in range(DOME_SLICES):  # the recess: 4 x 10 voxels at the base, 14 x (ny - 26) at z 9
        width = 4 + round(10 * i / (DOME_SLICES - 1))
        y0 = ny - 18 - round((ny - 36) * i / (DOME_SLICES - 1))
        lungs[BASE_Z + i, y0 : ny - 8, 6 : 6 + width] = 1
        lungs[BASE_Z + i, y0 : ny - 8, nx - 6 - width : nx - 6] = 2
    hu[lungs > 0] = -850
    lesions = np.zeros(shape, dtype=np.uint8)
    lesions[10:14, 20:30, 10:20] = 1
    hu[10:14, 20:30, 10:20] = -500
    lesions[16:18, 20:25, 10:15] = 2
    hu[16:18, 20:25, 10:15] = -50
    vol = make_volume(hu, spacing_mm, warnings=warnings)
    return vol, LungMask(lungs, {"method": "synthetic"}), LesionMask(lesions, {})
