"""A small synthetic chest for segmentation unit tests (analytic shapes, known regions)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lungvol.types import CTVolume, SourceInfo

SPACING_MM = (2.0, 1.25, 1.25)
SHAPE = (80, 192, 256)
LUNG_HU = -860.0
TISSUE_HU = 40.0
BONE_HU = 700.0
AIR_HU = -1000.0


@dataclass(frozen=True)
class SyntheticChest:
    volume: CTVolume
    right_lung: np.ndarray  # bool, intended right lung (low x)
    left_lung: np.ndarray
    airway: np.ndarray  # trachea + main bronchi lumen outside the lungs
    consolidation: np.ndarray  # dense region at the lateral pleura of the right lung
    vessel: np.ndarray  # thin tube in the left lung
    blob: np.ndarray  # ground-glass sphere in the left lung
    hilar: np.ndarray  # hilar vessels (with hilar_vessels=True): part in the lung's hilum


def _grid() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    z, y, x = np.meshgrid(*(np.arange(n) * s for n, s in zip(SHAPE, SPACING_MM, strict=True)),
                          indexing="ij", sparse=True)
    cz, cy, cx = (n * s / 2 for n, s in zip(SHAPE, SPACING_MM, strict=True))
    return z - cz, y - cy, x - cx


def make_volume(hu: np.ndarray) -> CTVolume:
    return CTVolume(
        hu=hu.astype(np.int16),
        spacing_mm=SPACING_MM,
        origin_lps_mm=(0.0, 0.0, 0.0),
        direction=np.eye(3),
        source=SourceInfo(path="synthetic", kind="nifti", sha256=""),
    )


def make_chest(
    *, seed: int = 0, flip_x: bool = False, hilar_vessels: bool = False
) -> SyntheticChest:
    """Body ellipse, ribs, spine, two ellipsoid lungs, trachea + main bronchi, lesions.

    With ``hilar_vessels``, a soft-tissue tube (radius 5 mm, like a pulmonary artery) runs
    from the mediastinum into each lung beside the main bronchus; ``hilar`` marks its part
    within 10 mm of the lung's medial border, which an expert contour leaves out.
    """
    rng = np.random.default_rng(seed)
    z, y, x = _grid()
    hu = np.full(SHAPE, AIR_HU, dtype=np.float32)
    body = (x / 150.0) ** 2 + (y / 105.0) ** 2 <= 1.0
    hu[np.broadcast_to(body, SHAPE)] = TISSUE_HU
    # Rib ring with intercostal gaps (every other 10 degrees) just outside the lungs.
    ang = np.arctan2(y, x)
    ring = ((x / 128.0) ** 2 + (y / 86.0) ** 2 <= 1.0) & ((x / 120.0) ** 2 + (y / 80.0) ** 2 > 1.0)
    ribs = ring & (np.floor(np.degrees(ang) / 10.0) % 2 == 0)
    hu[np.broadcast_to(ribs, SHAPE)] = BONE_HU
    spine = ((x / 18.0) ** 2 + ((y - 70.0) / 16.0) ** 2) <= 1.0
    hu[np.broadcast_to(spine, SHAPE)] = BONE_HU
    lung_r = ((x + 62.0) / 50.0) ** 2 + ((y + 5.0) / 68.0) ** 2 + (z / 62.0) ** 2 <= 1.0
    lung_l = ((x - 62.0) / 50.0) ** 2 + ((y + 5.0) / 68.0) ** 2 + (z / 62.0) ** 2 <= 1.0
    hu[lung_r | lung_l] = LUNG_HU
    # Trachea from the top down to z = 10 mm, then two main bronchi into the lungs.
    trachea = (x**2 + (y + 10.0) ** 2 <= 8.0**2) & (z >= 10.0)
    airway = np.broadcast_to(trachea, SHAPE).copy()
    for side in (-1.0, 1.0):
        # Bronchus along the line from (z=10, x=0) to (z=-5, x=side*30).
        t = np.clip((x * side) / 30.0, 0.0, 1.0)
        zc = 10.0 - 15.0 * t
        bronchus = ((z - zc) ** 2 + (y + 10.0) ** 2 <= 5.5**2) & (x * side >= 0) & (x * side <= 30)
        airway |= bronchus
    hu[airway] = AIR_HU
    airway_outside = airway & ~(lung_r | lung_l)
    # Consolidation: ball at the lateral pleura of the right lung, inside the lung only.
    consolidation = (((x + 110.0) ** 2 + (y + 5.0) ** 2 + (z + 5.0) ** 2) <= 16.0**2) & lung_r
    hu[consolidation] = 20.0
    # Thin vessel-like tube in the left lung (radius 1.4 mm, along y) and a GGO blob.
    vessel = (((x - 50.0) ** 2 + (z - 20.0) ** 2) <= 1.4**2) & (np.abs(y + 5.0) <= 40.0) & lung_l
    hu[vessel] = 40.0
    blob = (((x - 75.0) ** 2 + (y + 5.0) ** 2 + (z + 20.0) ** 2) <= 9.0**2) & lung_l
    hu[blob] = -520.0
    hilar = np.zeros(SHAPE, bool)
    if hilar_vessels:
        for side in (-1.0, 1.0):
            tube = ((z + 2.0) ** 2 + (y - 6.0) ** 2 <= 5.0**2) & (x * side >= 0) & (x * side <= 45)
            hu[tube] = TISSUE_HU
            hilar |= tube & (lung_r | lung_l) & (np.abs(x) <= 22.0)
    hu += rng.normal(0.0, 12.0, SHAPE).astype(np.float32)
    right, left = lung_r, lung_l
    if flip_x:
        hu = hu[:, :, ::-1]
        right, left = lung_l[:, :, ::-1], lung_r[:, :, ::-1]
        airway_outside = airway_outside[:, :, ::-1]
        consolidation, vessel, blob, hilar = (
            a[:, :, ::-1] for a in (consolidation, vessel, blob, hilar)
        )
    return SyntheticChest(
        volume=make_volume(hu),
        right_lung=np.ascontiguousarray(right),
        left_lung=np.ascontiguousarray(left),
        airway=np.ascontiguousarray(airway_outside),
        consolidation=np.ascontiguousarray(consolidation),
        vessel=np.ascontiguousarray(vessel),
        blob=np.ascontiguousarray(blob),
        hilar=np.ascontiguousarray(hilar),
    )


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b))
