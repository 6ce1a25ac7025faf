"""Synthetic chest CT with exact ground truth, and lesion insertion into real scans.

The phantom is an adult-sized chest (body ~320 x 235 mm axial, lungs ~4-6 L) built from
analytic shapes in millimetres, so its physical size does not depend on the voxel grid:

- air outside, subcutaneous fat, chest-wall muscle, ribs, sternum and spine;
- mediastinum (fat, heart, aorta, oesophagus), liver/abdomen below the diaphragm domes;
- two lungs (right larger; cardiac notch on the left) with a dependent (anterior ->
  posterior) density gradient;
- trachea, main bronchi and a few generations of intrapulmonary bronchi (air with walls);
- branching vessel trees from each hilum, radii shrinking outward (Murray's law);
- ground-glass opacities (GGO) and solid components with a peripheral / subpleural /
  dependent preference as in COVID-19 pneumonia, including consolidation at the pleura;
- a Gaussian point-spread function and seeded, slightly correlated noise.

Ground truth is the INTENDED anatomy, not a threshold of the noisy image:

- lungs (1 right, 2 left) = pleural cavity interior minus mediastinum, trachea and main
  bronchi; lesions, intrapulmonary vessels and small bronchi are inside the lungs;
- lesions: 2 solid = intended solid component (vessels inside consolidation are not
  visible, so they are solid); 1 GGO = intended ground-glass minus the vessels and bronchi
  that stay visible through it. A perfect densitometry with the default bands (GGO
  -750..-300 HU, solid -300..+50 HU) inside the truth lung, after vessel suppression,
  reproduces this truth up to noise at the borders: partial-volume blending is remapped so
  that the noise-free image crosses the band edges exactly at the truth borders
  (``_edge_weight``), and lesion HU are kept well inside the
  bands (GGO -690..-590, solid -80..+20 before noise) and centred so that half-filled
  border voxels land near the band edges (unbiased volumes).

Everything is drawn on a "design grid" of at most ~1.4 mm voxels as soft occupancies
(fractions 0..1, which give partial volume), then interpolated to the output grid; truth
masks are occupancy >= 0.5 on the output grid. Lesions are placed by ranking a smooth
random propensity field (multi-scale noise + pleural proximity + dependency) and taking
the top voxels, iterating the count until the requested proportions are met.

Arrays are (z, y, x); low x index = patient right, low y = anterior, low z = inferior
(LPS, identity direction).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from lungvol.config import LesionSegmentationConfig
from lungvol.errors import GeometryError, InputError
from lungvol.segmentation.distance import distance_transform_edt
from lungvol.types import (
    LESION_GGO,
    LESION_SOLID,
    LUNG_LEFT,
    LUNG_RIGHT,
    MM3_PER_ML,
    CTVolume,
    SourceInfo,
)

logger = logging.getLogger(__name__)

# --- Named intensities (HU) -------------------------------------------------------------
AIR_HU = -1000.0
FAT_HU = -100.0
MEDIASTINAL_FAT_HU = -85.0
MUSCLE_HU = 45.0
BLOOD_HU = 40.0
LIVER_HU = 58.0
ABDOMEN_HU = 35.0
OESOPHAGUS_HU = 35.0
CSF_HU = 15.0
DISC_HU = 90.0
CANCELLOUS_BONE_HU = 320.0
CORTICAL_BONE_HU = 900.0
AIRWAY_WALL_HU = 50.0
VESSEL_HU = 45.0
PARENCHYMA_ANTERIOR_HU = -872.0  # non-dependent lung
PARENCHYMA_POSTERIOR_HU = -828.0  # dependent lung (supine patient)
# Lesion texture ranges. Each sits inside its default band (GGO -750..-300, solid
# -300..+50) with room for noise, and is centred so that a border voxel half filled with
# lesion lands near the band edge (-750 between parenchyma and GGO, -300 between GGO and
# solid): a perfect densitometry then neither grows nor shrinks lesions at their borders.
GGO_RANGE_HU = (-690.0, -590.0)
SOLID_RANGE_HU = (-80.0, 20.0)
# Truth borders sit where the noise-free image crosses the default band edges (the lower
# edge of the GGO band between parenchyma and lesion, of the solid band between GGO and
# solid), so a perfect densitometry with the default bands reproduces the truth.
LESION_EDGE_HU = LesionSegmentationConfig().ggo_band_hu[0]
SOLID_EDGE_HU = LesionSegmentationConfig().solid_band_hu[0]
MIN_STORED_HU = -1024.0
MAX_STORED_HU = 3071.0

# --- Size presets: (shape (z, y, x), spacing_mm (z, y, x)) ------------------------------
PRESETS: dict[str, tuple[tuple[int, int, int], tuple[float, float, float]]] = {
    # 288 x 358 x 358 mm field of view; ~2-4 s to generate.
    "small": ((96, 128, 128), (3.0, 2.8, 2.8)),
    # Clinical-like thin-slice grid: 320 x 358 x 358 mm.
    "full": ((400, 512, 512), (0.8, 0.7, 0.7)),
}
# Physical field of view used when a shape is given without spacing (z, y, x) in mm.
DEFAULT_FOV_MM = (288.0, 358.0, 358.0)
DESIGN_SPACING_MM = 1.4  # geometry is drawn no finer than this, then interpolated
MIN_FOV_MM = (250.0, 300.0, 300.0)  # smaller fields of view would cut the chest

# --- Anatomy (mm, body-centred: X + = patient left, Y + = posterior, Z + = superior) ----
BODY_SEMI_MM = (165.0, 122.0)  # (LR, AP) semi-axes of the torso ellipse
FAT_LAYER_MM = 14.0
CAVITY_SEMI_MM = (143.0, 100.0)  # pleural cavity ellipse (LR, AP) at its widest level
CAVITY_CENTRE_Y_MM = 5.0
LUNG_APEX_Z_MM = 128.0
LUNG_WIDEST_Z_MM = -25.0
LUNG_FLOOR_Z_MM = -136.0  # deepest costophrenic recess
RIGHT_DOME_TOP_Z_MM = -45.0  # the right hemidiaphragm sits higher than the left
LEFT_DOME_TOP_Z_MM = -50.0
DOME_CURVATURE_PER_MM = 0.0055
HEART_CENTRE_MM = (22.0, -28.0, -38.0)  # (X, Y, Z)
HEART_SEMI_MM = (62.0, 50.0, 54.0)
CARINA_MM = (0.0, 22.0, 38.0)
TRACHEA_RADIUS_MM = 9.0
RIGHT_HILUM_MM = (-48.0, 8.0, 8.0)
LEFT_HILUM_MM = (50.0, 10.0, 4.0)


@dataclass(frozen=True)
class Phantom:
    """A synthetic chest CT with its ground truth.

    Attributes
    ----------
    hu : ndarray of int16, shape (Z, Y, X)
        CT intensities in Hounsfield units.
    spacing_mm : tuple of 3 float, (z, y, x) order
    origin_lps_mm : tuple of 3 float
        LPS world (x, y, z) of voxel [0, 0, 0]; the direction is the identity.
    lungs : ndarray of uint8, shape (Z, Y, X)
        0 background, 1 right lung, 2 left lung (lesions included, airways excluded).
    lesions : ndarray of uint8, shape (Z, Y, X)
        0 none, 1 ground-glass, 2 solid component.
    truth : dict
        Voxel-counted volumes (mL), proportions (%), seed and parameters (JSON-ready).
    """

    hu: np.ndarray
    spacing_mm: tuple[float, float, float]
    origin_lps_mm: tuple[float, float, float]
    lungs: np.ndarray
    lesions: np.ndarray
    truth: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.hu.shape)  # type: ignore[return-value]

    def to_ct_volume(self, *, study_date: str = "20200101") -> CTVolume:
        """The phantom as a ``CTVolume`` (identity direction), e.g. to segment in memory."""
        source = SourceInfo(
            path=f"<phantom seed {self.truth.get('seed')}>",
            kind="phantom",
            sha256=hashlib.sha256(np.ascontiguousarray(self.hu).tobytes()).hexdigest(),
            modality="CT",
            study_date=study_date,
        )
        return CTVolume(
            hu=self.hu,
            spacing_mm=self.spacing_mm,
            origin_lps_mm=self.origin_lps_mm,
            direction=np.eye(3),
            source=source,
        )


# =========================================================================================
# Grid helpers
# =========================================================================================


@dataclass(frozen=True)
class _Grid:
    """A voxel grid centred on the body: voxel centres in body millimetres."""

    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]

    def axis_mm(self, axis: int) -> np.ndarray:
        n, s = self.shape[axis], self.spacing_mm[axis]
        return ((np.arange(n, dtype=np.float32) - (n - 1) / 2.0) * s).astype(np.float32)

    def zyx(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable coordinate arrays (Z, Y, X) in mm."""
        return (
            self.axis_mm(0)[:, None, None],
            self.axis_mm(1)[None, :, None],
            self.axis_mm(2)[None, None, :],
        )

    def index_of(self, point_xyz_mm: tuple[float, float, float]) -> tuple[int, int, int]:
        """Nearest voxel index (z, y, x) of a body point (X, Y, Z), clipped to the grid."""
        x, y, z = point_xyz_mm
        out = []
        for axis, value in zip((0, 1, 2), (z, y, x), strict=True):
            n, s = self.shape[axis], self.spacing_mm[axis]
            out.append(int(np.clip(round(value / s + (n - 1) / 2.0), 0, n - 1)))
        return out[0], out[1], out[2]

    @property
    def voxel_ml(self) -> float:
        return float(np.prod(self.spacing_mm)) / MM3_PER_ML


def _smooth_noise(
    rng: np.random.Generator, shape: tuple[int, ...], sigma_vox: tuple[float, ...]
) -> np.ndarray:
    """Gaussian-correlated noise with zero mean and unit standard deviation (float32).

    Wide kernels are applied on a grid decimated by an integer factor (about sigma / 2
    voxels) and linearly interpolated back: the field is smooth at that scale, and this
    keeps 10 mm correlation lengths cheap on 0.7 mm grids.
    """
    factors = tuple(max(1, int(sg // 2.0)) for sg in sigma_vox)
    coarse_shape = tuple(-(-n // f) for n, f in zip(shape, factors, strict=True))
    white = rng.standard_normal(coarse_shape, dtype=np.float32)
    coarse_sigma = tuple(sg / f for sg, f in zip(sigma_vox, factors, strict=True))
    smooth = ndimage.gaussian_filter(white, sigma=coarse_sigma, mode="reflect", truncate=3.0)
    del white
    if any(f > 1 for f in factors):
        full = tuple(n * f for n, f in zip(coarse_shape, factors, strict=True))
        smooth = _upsample(smooth, full)[tuple(slice(0, n) for n in shape)]  # type: ignore[arg-type]
    smooth = np.ascontiguousarray(smooth, dtype=np.float32)
    smooth -= np.float32(smooth.mean())
    std = float(smooth.std())
    return smooth / np.float32(std) if std > 0 else smooth


def _gaussian_kernel(sigma_vox: float, truncate: float = 3.0) -> np.ndarray:
    """The normalised 1-D kernel that ``ndimage.gaussian_filter1d`` applies."""
    radius = int(truncate * sigma_vox + 0.5)
    x = np.arange(-radius, radius + 1, dtype=float)
    k = np.exp(-0.5 * (x / sigma_vox) ** 2)
    return k / k.sum()


def _soft(binary: np.ndarray, sigma_vox: float = 0.6) -> np.ndarray:
    """Soft occupancy (0..1, float32) of a binary mask: partial volume at its border."""
    return ndimage.gaussian_filter(binary.astype(np.float32), sigma=sigma_vox, mode="nearest")


def _depth_mm(
    mask: np.ndarray, spacing_mm: tuple[float, float, float], *, max_voxels: int = 2_000_000
) -> np.ndarray:
    """Distance (mm, float32) from each voxel of ``mask`` to the nearest voxel outside it.

    Large masks are measured on a grid coarsened by an integer factor and interpolated
    back (the distance feeds smooth preferences only, so ~1 voxel accuracy is plenty).
    """
    factor = max(1, int(np.ceil((mask.size / max_voxels) ** (1.0 / 3.0))))
    if factor == 1:
        return distance_transform_edt(mask, sampling=spacing_mm).astype(np.float32)
    coarse = mask[::factor, ::factor, ::factor]
    c_spacing = tuple(s * factor for s in spacing_mm)
    depth = distance_transform_edt(coarse, sampling=c_spacing).astype(np.float32)
    zoom = tuple(n / m for n, m in zip(mask.shape, depth.shape, strict=True))
    depth = ndimage.zoom(depth, zoom, order=1, mode="nearest", grid_mode=True)
    return np.where(mask, depth, np.float32(0.0))


def _edge_weight(
    occupancy: np.ndarray,
    before_hu: np.ndarray,
    lesion_hu: np.ndarray,
    edge_hu: float,
) -> np.ndarray:
    """Blend weight (0..1) from an occupancy such that before + w * (lesion - before)
    crosses ``edge_hu`` exactly where the occupancy is 0.5 (the truth border).

    A piecewise-linear remap 0 -> 0, 0.5 -> theta, 1 -> 1, with theta solved per voxel;
    without it a lesion 300 HU above parenchyma would cross the -750 HU band edge at a
    different partial volume than the truth border, biasing densitometry volumes.
    """
    step = lesion_hu - before_hu
    with np.errstate(divide="ignore", invalid="ignore"):
        theta = np.where(step > 1.0, (edge_hu - before_hu) / step, 0.5)
    theta = np.clip(theta, 0.05, 0.95).astype(np.float32)
    low = occupancy * 2.0 * theta
    high = theta + (occupancy - 0.5) * 2.0 * (1.0 - theta)
    return np.where(occupancy <= 0.5, low, high).astype(np.float32)


def _solid_weight(
    solid_occupancy: np.ndarray,
    lesion_occupancy: np.ndarray,
    before_hu: np.ndarray,
    solid_hu: np.ndarray,
) -> np.ndarray:
    """Solid blend weight: crosses the solid band edge at the solid truth border, and never
    lifts a voxel outside the lesion truth (lesion occupancy < 0.5) into the GGO band."""
    w = _edge_weight(solid_occupancy, before_hu, solid_hu, SOLID_EDGE_HU)
    step = np.maximum(solid_hu - before_hu, 1.0)
    cap = np.clip((LESION_EDGE_HU - 1.0 - before_hu) / step, 0.0, 1.0)
    return np.where(lesion_occupancy < 0.5, np.minimum(w, cap), w).astype(np.float32)


def _paint(hu: np.ndarray, occupancy: np.ndarray, value: np.ndarray | float) -> None:
    """In place: hu = hu * (1 - occupancy) + value * occupancy."""
    hu += occupancy * (value - hu)


# =========================================================================================
# Tubes: vessels and airways as capsule segments
# =========================================================================================


@dataclass(frozen=True)
class _Segment:
    start_mm: tuple[float, float, float]  # body (X, Y, Z)
    end_mm: tuple[float, float, float]
    radius_mm: float
    generation: int


def _rasterize_segments(
    grid: _Grid, segments: list[_Segment], *, radius_offset_mm: float = 0.0
) -> np.ndarray:
    """Soft occupancy (float32) of the union of capsules, radius + radius_offset_mm.

    Hand-written because skimage/scipy draw only 2-D or 1-voxel lines; a capsule with
    sub-voxel radius needs an exact point-to-segment distance for partial volume.
    """
    occ = np.zeros(grid.shape, dtype=np.float32)
    h = float(np.mean(grid.spacing_mm))
    zs, ys, xs = grid.axis_mm(0), grid.axis_mm(1), grid.axis_mm(2)
    for seg in segments:
        r = seg.radius_mm + radius_offset_mm
        if r <= 0:
            continue
        a = np.array(seg.start_mm, dtype=np.float32)
        b = np.array(seg.end_mm, dtype=np.float32)
        pad = r + h
        lo = np.minimum(a, b) - pad
        hi = np.maximum(a, b) + pad
        sl = []
        for axis_vals, lo_v, hi_v in ((zs, lo[2], hi[2]), (ys, lo[1], hi[1]), (xs, lo[0], hi[0])):
            i0 = int(np.searchsorted(axis_vals, lo_v))
            i1 = int(np.searchsorted(axis_vals, hi_v, side="right"))
            sl.append(slice(i0, i1))
        if any(s.stop <= s.start for s in sl):
            continue
        pz = zs[sl[0]][:, None, None] - a[2]
        py = ys[sl[1]][None, :, None] - a[1]
        px = xs[sl[2]][None, None, :] - a[0]
        d = b - a
        dd = float(d @ d)
        if dd > 0:
            t = np.clip((px * d[0] + py * d[1] + pz * d[2]) / dd, 0.0, 1.0)
        else:
            t = np.zeros((1, 1, 1), dtype=np.float32)
        dist = np.sqrt((px - t * d[0]) ** 2 + (py - t * d[1]) ** 2 + (pz - t * d[2]) ** 2)
        if r >= h / 2:
            local = np.clip((r - dist) / h + 0.5, 0.0, 1.0)
        else:
            # Thinner than a voxel: a cone whose cross-section integral is pi r^2, so a
            # thin vessel adds its true partial volume instead of a voxel-wide smear.
            local = np.minimum(1.0, 3.0 * r * r / (h * h)) * np.clip(1.0 - dist / h, 0.0, 1.0)
        view = occ[sl[0], sl[1], sl[2]]
        np.maximum(view, local, out=view)
    return occ


def _grow_tree(
    rng: np.random.Generator,
    *,
    root_mm: tuple[float, float, float],
    first_end_mm: tuple[float, float, float],
    radius_mm: float,
    min_radius_mm: float,
    max_generations: int,
    inside_mm: Any,
    length_factor: float,
) -> list[_Segment]:
    """Grow a bifurcating tree: each child radius = r / 2**(1/3) (Murray's law), branches
    spread 25-45 degrees, and a branch stops when its end leaves the lung (``inside_mm``
    returns the depth inside the lung in mm for a point, <= 0 outside)."""
    segments = [_Segment(root_mm, first_end_mm, radius_mm, 0)]
    stack = [(np.array(first_end_mm, dtype=float), np.array(first_end_mm) - np.array(root_mm),
              radius_mm, 1)]
    murray = 2.0 ** (-1.0 / 3.0)
    while stack:
        start, direction, r_parent, gen = stack.pop()
        if gen > max_generations:
            continue
        direction = direction / (np.linalg.norm(direction) + 1e-9)
        # A vector orthogonal to the parent direction defines the branching plane.
        ortho = np.cross(direction, rng.standard_normal(3))
        ortho /= np.linalg.norm(ortho) + 1e-9
        for sign in (1.0, -1.0):
            r = r_parent * murray * rng.uniform(0.92, 1.05)
            if r < min_radius_mm:
                continue
            for _attempt in range(4):
                angle = np.deg2rad(rng.uniform(25.0, 45.0))
                child_dir = np.cos(angle) * direction + sign * np.sin(angle) * ortho
                child_dir += 0.25 * rng.standard_normal(3)
                child_dir /= np.linalg.norm(child_dir)
                length = max(3.0, r * length_factor * rng.uniform(0.7, 1.3))
                end = start + child_dir * length
                if inside_mm(end) > max(1.0, r):
                    segments.append(_Segment(tuple(start), tuple(end), r, gen))
                    stack.append((end, child_dir, r, gen + 1))
                    break
                ortho = np.cross(direction, rng.standard_normal(3))
                ortho /= np.linalg.norm(ortho) + 1e-9
    return segments


# =========================================================================================
# Anatomy on the design grid
# =========================================================================================


def _lung_cavity(grid: _Grid) -> tuple[np.ndarray, np.ndarray]:
    """Binary right and left lung regions (pleural cavity minus mediastinum), before the
    central airways are carved out, on the design grid."""
    zz, yy, xx = grid.zyx()
    # Apex taper: the cavity shrinks towards each apex above its widest level.
    rel = np.clip((zz - LUNG_WIDEST_Z_MM) / (LUNG_APEX_Z_MM - LUNG_WIDEST_Z_MM), 0.0, 1.0)
    taper = np.sqrt(np.clip(1.0 - rel**2, 0.0, 1.0))
    a = CAVITY_SEMI_MM[0] * taper
    b = CAVITY_SEMI_MM[1] * (0.55 + 0.45 * taper)
    with np.errstate(divide="ignore", invalid="ignore"):
        rho2 = (xx / np.maximum(a, 1e-3)) ** 2 + ((yy - CAVITY_CENTRE_Y_MM) / b) ** 2
    cavity = (rho2 <= 1.0) & (zz <= LUNG_APEX_Z_MM) & (zz >= LUNG_FLOOR_Z_MM)
    # Mediastinum half-width (mm) by AP position, widening towards the apex.
    med = np.interp(yy, [-120.0, -60.0, 0.0, 40.0, 120.0], [14.0, 18.0, 24.0, 33.0, 33.0])
    med = med + 18.0 * rel
    medial_ok = np.abs(xx) >= med
    heart = (
        ((xx - HEART_CENTRE_MM[0]) / (HEART_SEMI_MM[0] + 4.0)) ** 2
        + ((yy - HEART_CENTRE_MM[1]) / (HEART_SEMI_MM[1] + 4.0)) ** 2
        + ((zz - HEART_CENTRE_MM[2]) / (HEART_SEMI_MM[2] + 4.0)) ** 2
    ) <= 1.0
    aorta_desc = ((xx - 24.0) ** 2 + (yy - 45.0) ** 2 <= 17.0**2) & (zz <= 55.0)
    dome_r = RIGHT_DOME_TOP_Z_MM - DOME_CURVATURE_PER_MM * ((xx + 62.0) ** 2 + (yy + 5.0) ** 2)
    dome_l = LEFT_DOME_TOP_Z_MM - DOME_CURVATURE_PER_MM * ((xx - 62.0) ** 2 + (yy + 5.0) ** 2)
    base = cavity & medial_ok & ~heart & ~aorta_desc
    right = base & (xx < 0) & (zz >= dome_r)
    left = base & (xx > 0) & (zz >= dome_l)
    return right, left


def _central_airways(grid: _Grid) -> tuple[list[_Segment], list[tuple[float, float, float]]]:
    """Trachea and main bronchi (outside the lung truth), and the two bronchus ends."""
    top_z = grid.axis_mm(0)[-1] + 10.0
    trachea = [
        _Segment((0.0, 14.0, float(top_z)), (0.0, 18.0, 80.0), TRACHEA_RADIUS_MM, 0),
        _Segment((0.0, 18.0, 80.0), CARINA_MM, TRACHEA_RADIUS_MM, 0),
    ]
    right_end = (-46.0, 22.0, 14.0)  # right main bronchus: shorter and steeper
    left_end = (46.0, 26.0, 2.0)
    mains = [
        _Segment(CARINA_MM, right_end, 7.0, 1),
        _Segment(CARINA_MM, left_end, 6.0, 1),
    ]
    return trachea + mains, [right_end, left_end]


def _make_inside_fn(grid: _Grid, depth_mm: np.ndarray) -> Any:
    def inside_mm(point_xyz: np.ndarray) -> float:
        iz, iy, ix = grid.index_of((float(point_xyz[0]), float(point_xyz[1]), float(point_xyz[2])))
        return float(depth_mm[iz, iy, ix])

    return inside_mm


def _vessel_segments(
    rng: np.random.Generator, grid: _Grid, inside_mm: Any
) -> list[_Segment]:
    """Pulmonary arterial/venous trees: three lobar roots per hilum."""
    segments: list[_Segment] = []
    targets = {
        RIGHT_HILUM_MM: [(-70.0, 10.0, 75.0), (-90.0, -30.0, 0.0), (-75.0, 40.0, -55.0)],
        LEFT_HILUM_MM: [(75.0, 10.0, 70.0), (85.0, -20.0, -10.0), (75.0, 40.0, -60.0)],
    }
    for hilum, lobe_targets in targets.items():
        for target in lobe_targets:
            direction = np.array(target) - np.array(hilum)
            first_end = tuple(np.array(hilum) + direction / np.linalg.norm(direction) * 28.0)
            segments += _grow_tree(
                rng,
                root_mm=hilum,
                first_end_mm=first_end,
                radius_mm=6.0,
                min_radius_mm=0.75,
                max_generations=10,
                inside_mm=inside_mm,
                length_factor=5.5,
            )
    return segments


def _bronchus_segments(
    rng: np.random.Generator, bronchus_ends: list[tuple[float, float, float]], inside_mm: Any
) -> list[_Segment]:
    """Lobar and segmental bronchi (inside the lungs) from the main bronchus ends."""
    segments: list[_Segment] = []
    targets = [
        [(-70.0, 20.0, 80.0), (-85.0, -10.0, -30.0)],
        [(70.0, 20.0, 75.0), (80.0, 20.0, -40.0)],
    ]
    for end, lobe_targets in zip(bronchus_ends, targets, strict=True):
        for target in lobe_targets:
            direction = np.array(target) - np.array(end)
            first_end = tuple(np.array(end) + direction / np.linalg.norm(direction) * 22.0)
            segments += _grow_tree(
                rng,
                root_mm=end,
                first_end_mm=first_end,
                radius_mm=4.5,
                min_radius_mm=1.6,
                max_generations=3,
                inside_mm=inside_mm,
                length_factor=6.0,
            )
    return segments


def _wall_hu(grid: _Grid, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Chest wall, mediastinum, abdomen and bones (everything but lungs and tubes).

    Returns the HU map and the body mask (float32 occupancy)."""
    zz, yy, xx = grid.zyx()
    shape = grid.shape
    hu = np.full(shape, AIR_HU, dtype=np.float32)
    texture = _smooth_noise(rng, shape, tuple(3.0 / s for s in grid.spacing_mm))

    body_rho = np.sqrt((xx / BODY_SEMI_MM[0]) ** 2 + (yy / BODY_SEMI_MM[1]) ** 2)
    body = np.broadcast_to(body_rho <= 1.0, shape)
    _paint(hu, _soft(body), FAT_HU + 8.0 * texture)
    inner = np.sqrt(
        (xx / (BODY_SEMI_MM[0] - FAT_LAYER_MM)) ** 2
        + (yy / (BODY_SEMI_MM[1] - FAT_LAYER_MM)) ** 2
    )
    _paint(hu, _soft(np.broadcast_to(inner <= 1.0, shape)), MUSCLE_HU + 6.0 * texture)

    # Pleural cavity envelope (no taper) for ribs, mediastinum and abdomen.
    cav_rho = np.sqrt(
        (xx / CAVITY_SEMI_MM[0]) ** 2 + ((yy - CAVITY_CENTRE_Y_MM) / CAVITY_SEMI_MM[1]) ** 2
    )
    in_trunk = (cav_rho <= 1.0) & (zz <= LUNG_APEX_Z_MM + 5.0)
    # Abdomen under the domes (lungs are painted later and overwrite the thorax part).
    abdomen = in_trunk & (zz < -40.0)
    _paint(hu, _soft(abdomen), np.where(xx < 15.0, LIVER_HU, ABDOMEN_HU) + 6.0 * texture)
    mediastinum = in_trunk & (np.abs(xx) < 60.0) & (zz >= -40.0)
    _paint(hu, _soft(mediastinum), MEDIASTINAL_FAT_HU + 10.0 * texture)

    heart = (
        ((xx - HEART_CENTRE_MM[0]) / HEART_SEMI_MM[0]) ** 2
        + ((yy - HEART_CENTRE_MM[1]) / HEART_SEMI_MM[1]) ** 2
        + ((zz - HEART_CENTRE_MM[2]) / HEART_SEMI_MM[2]) ** 2
    ) <= 1.0
    _paint(hu, _soft(heart), BLOOD_HU + 5.0 * texture)
    great_vessels = [
        _Segment((5.0, -22.0, 5.0), (8.0, -15.0, 55.0), 15.0, 0),  # ascending aorta
        _Segment((8.0, -15.0, 55.0), (22.0, 25.0, 62.0), 13.0, 0),  # arch
        _Segment((22.0, 25.0, 62.0), (24.0, 45.0, 50.0), 13.0, 0),
        _Segment((24.0, 45.0, 50.0), (24.0, 45.0, -150.0), 13.0, 0),  # descending aorta
        _Segment((18.0, -35.0, 0.0), (18.0, -8.0, 22.0), 13.0, 0),  # pulmonary trunk
        _Segment((18.0, -8.0, 22.0), RIGHT_HILUM_MM, 9.0, 0),
        _Segment((18.0, -8.0, 22.0), LEFT_HILUM_MM, 9.0, 0),
        _Segment((-15.0, -10.0, 140.0), (-12.0, -10.0, 15.0), 10.0, 0),  # superior vena cava
    ]
    _paint(hu, _rasterize_segments(grid, great_vessels), BLOOD_HU + 5.0 * texture)
    oesophagus = [_Segment((3.0, 35.0, 160.0), (8.0, 36.0, -60.0), 8.0, 0)]
    _paint(hu, _rasterize_segments(grid, oesophagus), OESOPHAGUS_HU)

    # Spine: vertebral bodies with discs, canal, posterior elements.
    r_body = np.sqrt(xx**2 + (yy - 62.0) ** 2)
    disc = (np.mod(zz + 200.0, 27.0) < 5.0)
    vert = np.broadcast_to(r_body <= 20.0, shape)
    vert_hu = np.where(r_body > 17.5, CORTICAL_BONE_HU, CANCELLOUS_BONE_HU + 40.0 * texture)
    vert_hu = np.where(disc, DISC_HU, vert_hu)
    _paint(hu, _soft(vert), vert_hu)
    r_canal = np.sqrt(xx**2 + (yy - 93.0) ** 2)
    posterior = (r_canal <= 16.0) | ((np.abs(xx) <= 5.0) & (yy >= 93.0) & (yy <= 112.0))
    _paint(hu, _soft(np.broadcast_to(posterior & ~disc, shape)), 600.0 + 40.0 * texture)
    _paint(hu, _soft(np.broadcast_to(r_canal <= 9.0, shape)), CSF_HU)

    # Ribs: 12 pairs hugging the cavity, sloping down anteriorly; sternum in front.
    rel = np.clip((zz - LUNG_WIDEST_Z_MM) / (LUNG_APEX_Z_MM - LUNG_WIDEST_Z_MM), 0.0, 1.0)
    taper = np.sqrt(np.clip(1.0 - rel**2, 0.05, 1.0))
    a = CAVITY_SEMI_MM[0] * taper
    b = CAVITY_SEMI_MM[1] * (0.55 + 0.45 * taper)
    rho = np.sqrt((xx / a) ** 2 + ((yy - CAVITY_CENTRE_Y_MM) / b) ** 2)
    anteriority = np.clip(-(yy - CAVITY_CENTRE_Y_MM) / CAVITY_SEMI_MM[1], -1.0, 1.0)  # +1 front
    ring = (rho >= 1.03) & (rho <= 1.10) & (np.abs(xx) >= 28.0)
    ribs = np.zeros(shape, dtype=bool)
    rib_core = np.zeros(shape, dtype=bool)
    for k in range(12):
        z_post = LUNG_APEX_Z_MM - 8.0 - 19.0 * k
        z_rib = z_post - 30.0 * (anteriority + 1.0) / 2.0
        dz = np.abs(zz - z_rib)
        ribs |= ring & (dz <= 5.0)
        rib_core |= (rho >= 1.045) & (rho <= 1.085) & (np.abs(xx) >= 28.0) & (dz <= 3.0)
    sternum = (np.abs(xx) <= 20.0) & (yy >= -112.0) & (yy <= -98.0) & (zz >= -70.0) & (
        zz <= 105.0
    )
    sternum_b = np.broadcast_to(sternum, shape)
    bone_hu = np.where(rib_core, CANCELLOUS_BONE_HU + 40.0 * texture, CORTICAL_BONE_HU)
    _paint(hu, _soft(ribs | sternum_b), bone_hu)
    return hu, _soft(body)


# =========================================================================================
# Lesion placement (shared by the phantom and insert_lesions)
# =========================================================================================


def _propensity(
    rng: np.random.Generator,
    lung: np.ndarray,
    spacing_mm: tuple[float, float, float],
    *,
    pleural_depth_mm: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Lesion and solid propensity fields: smooth multi-scale noise plus a preference for
    subpleural, dependent (posterior) and basal lung (COVID-19 pattern)."""
    shape = lung.shape
    coarse = _smooth_noise(rng, shape, tuple(10.0 / s for s in spacing_mm))
    fine = _smooth_noise(rng, shape, tuple(3.5 / s for s in spacing_mm))
    y_frac = np.linspace(-1.0, 1.0, shape[1], dtype=np.float32)[None, :, None]
    z_frac = np.linspace(1.0, -1.0, shape[0], dtype=np.float32)[:, None, None]  # +1 at base
    subpleural = np.exp(-pleural_depth_mm / 12.0).astype(np.float32)
    p = coarse + 0.3 * fine + 1.3 * subpleural + 0.35 * y_frac + 0.2 * z_frac
    solid_noise = _smooth_noise(rng, shape, tuple(5.0 / s for s in spacing_mm))
    q = solid_noise + 1.2 * np.exp(-pleural_depth_mm / 8.0).astype(np.float32) + 0.3 * y_frac
    return p.astype(np.float32), q.astype(np.float32)


def _level_occupancy(
    score: np.ndarray, threshold: float, spacing_mm: tuple[float, float, float]
) -> np.ndarray:
    """Soft occupancy of the level set {score >= threshold}: 0.5 exactly at the threshold,
    ramping over about one voxel (score change / gradient magnitude = signed distance)."""
    grads = np.gradient(score, *spacing_mm)
    gmag = np.sqrt(sum(g.astype(np.float32) ** 2 for g in grads)) + np.float32(1e-6)
    del grads
    h = float(np.mean(spacing_mm))
    occ = (score - np.float32(threshold)) / (gmag * np.float32(h)) + np.float32(0.5)
    return np.clip(occ, 0.0, 1.0).astype(np.float32)


def _kth_largest(score: np.ndarray, mask: np.ndarray, k: int) -> float:
    values = score[mask]
    k = int(np.clip(k, 1, values.size))
    return float(np.partition(values, values.size - k)[values.size - k])


def _place_lesions(
    *,
    eligible: np.ndarray,
    not_visible: np.ndarray,
    p: np.ndarray,
    q: np.ndarray,
    lung_voxels: int,
    lesion_pct: float,
    solid_pct: float,
    spacing_mm: tuple[float, float, float],
) -> tuple[np.ndarray, np.ndarray]:
    """Soft occupancies (float32, 0..1) of the lesion region L and of the solid S within L.

    L = {p >= t_L} within ``eligible`` and S = {q' >= t_S} within L, where q' adds a
    preference for the core of lesions. Thresholds are chosen so that the truth,
    |S| + |L minus S minus not_visible|, is lesion_pct and |S| is solid_pct of the lung.
    ``not_visible`` marks voxels (vessels, bronchi) that stay visible through ground-glass
    and are therefore not GGO truth; the voxel count is iterated (fixed point) because
    their share in L is not known in advance. Occupancy >= 0.5 is exactly L (and S).
    """
    target_total = lesion_pct / 100.0 * lung_voxels
    target_solid = solid_pct / 100.0 * lung_voxels
    zeros = np.zeros(eligible.shape, dtype=np.float32)
    n_eligible = int(np.count_nonzero(eligible))
    if target_total < 0.5 or n_eligible == 0:
        return zeros, zeros
    k = int(round(target_total))
    for _ in range(10):
        t_lesion = _kth_largest(p, eligible, k)
        lesion = eligible & (p >= t_lesion)
        n_solid = int(round(target_solid))
        solid = np.zeros_like(lesion)
        if n_solid > 0:
            # How far p rises above the lesion threshold ~ how central in the lesion.
            q_solid = q + np.float32(0.6) * np.minimum(p - np.float32(t_lesion), 1.5)
            t_solid = _kth_largest(q_solid, lesion, n_solid)
            solid = lesion & (q_solid >= t_solid)
        achieved = np.count_nonzero(solid) + np.count_nonzero(lesion & ~solid & ~not_visible)
        if achieved == 0 or abs(achieved - target_total) <= max(0.002 * target_total, 1.0):
            break
        k = min(n_eligible, int(round(k * target_total / achieved)))
    lesion_occ = _level_occupancy(p, t_lesion, spacing_mm) * eligible
    if n_solid > 0:
        solid_occ = np.minimum(_level_occupancy(q_solid, t_solid, spacing_mm), lesion_occ)
    else:
        solid_occ = zeros
    return lesion_occ, solid_occ


# =========================================================================================
# Public API
# =========================================================================================


def resolve_size(size: str) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """Shape and spacing for a preset name ("small", "full") or "ZxYxX" (e.g. "64x96x96").

    A custom shape keeps the default physical field of view (so the body stays adult-sized):
    spacing = field of view / shape.

    Raises
    ------
    InputError
        If the size is neither a preset nor three positive integers joined by "x".
    """
    key = size.strip().lower()
    if key in PRESETS:
        return PRESETS[key]
    m = re.fullmatch(r"(\d+)x(\d+)x(\d+)", key)
    if not m:
        raise InputError(
            f"size {size!r} is not a preset ({', '.join(PRESETS)}) or ZxYxX like 64x96x96; "
            "pass one of those"
        )
    shape = (int(m.group(1)), int(m.group(2)), int(m.group(3)))
    if min(shape) < 16:
        raise InputError(f"size {size!r} has an axis below 16 voxels; use at least 16x16x16")
    spacing = tuple(round(f / n, 4) for f, n in zip(DEFAULT_FOV_MM, shape, strict=True))
    return shape, spacing  # type: ignore[return-value]


def _check_params(lesion_pct: float, solid_pct: float) -> None:
    if not 0.0 <= lesion_pct <= 90.0:
        raise InputError(f"lesion_pct must be in [0, 90] %, got {lesion_pct}; pass a smaller value")
    if not 0.0 <= solid_pct <= lesion_pct:
        raise InputError(
            f"solid_pct must be in [0, lesion_pct={lesion_pct}] %, got {solid_pct}; "
            "the solid component is part of the lesions"
        )


def _volumes(
    lungs: np.ndarray, lesions: np.ndarray, voxel_ml: float
) -> dict[str, float | int]:
    n_right = int(np.count_nonzero(lungs == LUNG_RIGHT))
    n_left = int(np.count_nonzero(lungs == LUNG_LEFT))
    n_lung = n_right + n_left
    in_lung = lungs > 0
    n_ggo = int(np.count_nonzero((lesions == LESION_GGO) & in_lung))
    n_solid = int(np.count_nonzero((lesions == LESION_SOLID) & in_lung))
    pct = 100.0 / n_lung if n_lung else float("nan")
    return {
        "lung_volume_ml": n_lung * voxel_ml,
        "lung_volume_right_ml": n_right * voxel_ml,
        "lung_volume_left_ml": n_left * voxel_ml,
        "lesion_volume_ml": (n_ggo + n_solid) * voxel_ml,
        "ggo_volume_ml": n_ggo * voxel_ml,
        "solid_volume_ml": n_solid * voxel_ml,
        "lesion_proportion_pct": (n_ggo + n_solid) * pct,
        "ggo_proportion_pct": n_ggo * pct,
        "solid_proportion_pct": n_solid * pct,
        "n_lung_voxels": n_lung,
        "n_ggo_voxels": n_ggo,
        "n_solid_voxels": n_solid,
    }


def _occupancy_level(occupancy: np.ndarray, mask: np.ndarray, target_voxels: float) -> float:
    """Occupancy level (0.5 +- 0.2) whose level set within ``mask`` holds ``target_voxels``.

    On the design grid the level is 0.5 by construction. Interpolating to a finer output
    grid shrinks small convex blobs slightly (second-order chord error), so the output
    truth re-picks the level, kept within the partial-volume ramp so truth and image agree.
    """
    values = occupancy[mask & (occupancy > 0.0)]
    k = int(round(target_voxels))
    if k <= 0 or values.size == 0:
        return 1.01  # nothing
    k = min(k, values.size)
    level = float(np.partition(values, values.size - k)[values.size - k])
    return float(np.clip(level, 0.3, 0.7))


def _upsample_axis(a: np.ndarray, axis: int, factor: int) -> np.ndarray:
    """Linear interpolation by an integer factor along one axis, voxel extents aligned
    (like ``ndimage.zoom(..., order=1, grid_mode=True, mode="nearest")`` but several times
    faster, because every output phase is a fixed two-tap blend of neighbouring slices)."""
    if factor == 1:
        return a
    n = a.shape[axis]
    out_shape = list(a.shape)
    out_shape[axis] = n * factor
    out = np.empty(out_shape, dtype=np.float32)
    prev = np.take(a, np.r_[0, np.arange(n - 1)], axis=axis)
    nxt = np.take(a, np.r_[np.arange(1, n), n - 1], axis=axis)
    for r in range(factor):
        delta = (r + 0.5) / factor - 0.5
        idx: list[slice] = [slice(None)] * a.ndim
        idx[axis] = slice(r, None, factor)
        if delta < 0:
            out[tuple(idx)] = (1.0 + delta) * a + (-delta) * prev
        else:
            out[tuple(idx)] = (1.0 - delta) * a + delta * nxt
    return out


def _upsample(field_: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Trilinear interpolation of a design-grid field to the output grid (same extent)."""
    if field_.shape == shape:
        return field_
    factors = [n // m for n, m in zip(shape, field_.shape, strict=True)]
    if all(f * m == n for f, m, n in zip(factors, field_.shape, shape, strict=True)):
        out = field_.astype(np.float32, copy=False)
        for axis, f in enumerate(factors):
            out = _upsample_axis(out, axis, f)
        return out
    zoom = tuple(n / m for n, m in zip(shape, field_.shape, strict=True))
    return ndimage.zoom(field_, zoom, order=1, mode="nearest", grid_mode=True)


def make_phantom(
    *,
    shape: tuple[int, int, int] | None = None,
    spacing_mm: tuple[float, float, float] | None = None,
    seed: int = 0,
    lesion_pct: float = 15.0,
    solid_pct: float = 3.0,
    noise_hu: float = 20.0,
    psf_fwhm_mm: float = 1.2,
    noise_seed: int | None = None,
) -> Phantom:
    """Generate a synthetic chest CT with exact lung and lesion truth.

    Parameters
    ----------
    shape : tuple of 3 int, (z, y, x), optional
        Output grid; default the "small" preset (96, 128, 128).
    spacing_mm : tuple of 3 float, (z, y, x), optional
        Voxel size; default the preset's, or field of view / shape for a custom shape.
    seed : int
        Seeds every random choice: same seed and parameters give identical output.
        Anatomy (body, vessels, airways, texture) and the lesion propensity field depend on
        ``seed`` alone, and lesions are a level set of that field, so one seed at several
        burdens is one subject whose lesions grow or shrink in place (simulate-trial's visits).
    lesion_pct : float, 0..90
        Target total lesion volume / lung volume in % (0 gives a normal lung).
    solid_pct : float, 0..lesion_pct
        Target solid-component volume / lung volume in %.
    noise_hu : float
        Standard deviation of the image noise in HU.
    psf_fwhm_mm : float
        Full width at half maximum of the Gaussian point-spread function.
    noise_seed : int, optional
        Seeds the image noise on its own (another acquisition of the same subject); default
        the ``seed`` stream, as before this parameter existed.

    Returns
    -------
    Phantom
        ``truth`` holds voxel-counted volumes (mL) and proportions (%); achieved
        proportions are within ~2 % (relative) of the targets for lesion_pct >= 1.

    Raises
    ------
    InputError
        Bad proportions (solid above total, outside 0..90 %).
    GeometryError
        A field of view too small to hold an adult chest.

    Examples
    --------
    >>> ph = make_phantom(shape=(48, 64, 64), seed=1, lesion_pct=10.0, solid_pct=2.0)
    >>> ph.hu.dtype.name, int(ph.lungs.max()), abs(ph.truth["lesion_proportion_pct"] - 10.0) < 1.0
    ('int16', 2, True)
    """
    _check_params(lesion_pct, solid_pct)
    if shape is None:
        shape, default_spacing = PRESETS["small"]
        spacing_mm = spacing_mm or default_spacing
    elif spacing_mm is None:
        spacing_mm = tuple(f / n for f, n in zip(DEFAULT_FOV_MM, shape, strict=True))  # type: ignore[assignment]
    shape = tuple(int(n) for n in shape)  # type: ignore[assignment]
    spacing_mm = tuple(float(s) for s in spacing_mm)  # type: ignore[assignment,union-attr]
    if len(shape) != 3 or len(spacing_mm) != 3 or min(spacing_mm) <= 0 or min(shape) < 8:
        raise GeometryError(
            f"shape {shape} / spacing {spacing_mm} mm must be 3 positive values each "
            "(at least 8 voxels per axis)"
        )
    fov = tuple(n * s for n, s in zip(shape, spacing_mm, strict=True))
    if any(f < m for f, m in zip(fov, MIN_FOV_MM, strict=True)):
        raise GeometryError(
            f"field of view {tuple(round(f) for f in fov)} mm (z, y, x) is too small for an "
            f"adult chest; use at least {MIN_FOV_MM} mm (shape x spacing)"
        )
    rng = np.random.default_rng(seed)
    out_grid = _Grid(shape, spacing_mm)  # type: ignore[arg-type]
    factors = tuple(max(1, int(round(DESIGN_SPACING_MM / s))) for s in spacing_mm)
    d_shape = tuple(max(8, int(np.ceil(n / f))) for n, f in zip(shape, factors, strict=True))
    d_spacing = tuple(f_mm / n for f_mm, n in zip(fov, d_shape, strict=True))
    grid = _Grid(d_shape, d_spacing)  # type: ignore[arg-type]
    logger.debug("phantom design grid %s at %s mm", d_shape, d_spacing)

    # --- Anatomy ---------------------------------------------------------------------
    hu, _body = _wall_hu(grid, rng)
    right, left = _lung_cavity(grid)
    lung_region = right | left
    central, bronchus_ends = _central_airways(grid)
    central_outer = _rasterize_segments(grid, central, radius_offset_mm=2.0)
    central_lumen = _rasterize_segments(grid, central)
    lung_bin = lung_region & (central_outer < 0.5)
    lung_occ = _soft(lung_bin, sigma_vox=0.4)  # pleura: a sharp, ~1-voxel transition
    lung_bin = lung_occ >= 0.5  # the truth definition, also on the design grid
    lung_depth = _depth_mm(lung_bin, d_spacing)
    inside = _make_inside_fn(grid, lung_depth)
    vessels = _vessel_segments(rng, grid, inside)
    bronchi = _bronchus_segments(rng, bronchus_ends, inside)

    zz, yy, _xx = grid.zyx()
    texture = _smooth_noise(rng, d_shape, tuple(4.0 / s for s in d_spacing))
    y_frac = np.clip((yy - CAVITY_CENTRE_Y_MM + CAVITY_SEMI_MM[1]) / (2 * CAVITY_SEMI_MM[1]), 0, 1)
    parenchyma = (
        PARENCHYMA_ANTERIOR_HU
        + (PARENCHYMA_POSTERIOR_HU - PARENCHYMA_ANTERIOR_HU) * y_frac
        + 6.0 * texture
    )
    _paint(hu, lung_occ, parenchyma)

    vessel_occ = _rasterize_segments(grid, vessels)
    bronchus_outer = _rasterize_segments(grid, bronchi, radius_offset_mm=1.0)  # + wall
    bronchus_lumen = _rasterize_segments(grid, bronchi)
    airway_bin = (bronchus_outer >= 0.5) | (central_outer >= 0.5)
    not_visible = (vessel_occ >= 0.5) | airway_bin

    # --- Lesions ----------------------------------------------------------------------
    p, q = _propensity(rng, lung_bin, d_spacing, pleural_depth_mm=lung_depth)
    lesion_occ, solid_occ = _place_lesions(
        eligible=lung_bin & ~airway_bin,
        not_visible=not_visible,
        p=p,
        q=q,
        lung_voxels=int(np.count_nonzero(lung_bin)),
        lesion_pct=lesion_pct,
        solid_pct=solid_pct,
        spacing_mm=d_spacing,
    )
    del p, q
    # Truth = occupancy >= 0.5 of lesion AND lung: min() keeps that equivalence.
    lesion_occ = np.minimum(lesion_occ, lung_occ)
    solid_occ = np.minimum(solid_occ, lung_occ)
    ggo_hu = np.interp(texture, [-2.0, 2.0], GGO_RANGE_HU).astype(np.float32)
    solid_hu = np.interp(texture, [-2.0, 2.0], SOLID_RANGE_HU).astype(np.float32)
    _paint(hu, _edge_weight(lesion_occ, hu, ggo_hu, LESION_EDGE_HU), ggo_hu)
    _paint(hu, vessel_occ, VESSEL_HU)
    _paint(hu, _solid_weight(solid_occ, lesion_occ, hu, solid_hu), solid_hu)
    _paint(hu, np.maximum(bronchus_outer, central_outer), AIRWAY_WALL_HU)
    _paint(hu, np.maximum(bronchus_lumen, central_lumen), AIR_HU)
    del zz, yy

    # --- Output grid: interpolate, then truth by occupancy >= 0.5 ----------------------
    excluded = np.maximum(vessel_occ, np.maximum(bronchus_outer, central_outer))
    del vessel_occ, bronchus_outer, bronchus_lumen, central_lumen
    lung_t = _upsample(lung_occ, shape) >= 0.5  # type: ignore[arg-type]
    x_mm = out_grid.axis_mm(2)[None, None, :]
    lungs = np.where(lung_t, np.where(x_mm < 0, LUNG_RIGHT, LUNG_LEFT), 0).astype(np.uint8)
    lesions = np.zeros(shape, dtype=np.uint8)  # type: ignore[arg-type]
    if lesion_occ.max() >= 0.5:
        n_lung_t = int(np.count_nonzero(lung_t))
        sol_up = _upsample(solid_occ, shape)  # type: ignore[arg-type]
        sol_t = lung_t & (
            sol_up >= _occupancy_level(sol_up, lung_t, solid_pct / 100.0 * n_lung_t)
        )
        del sol_up
        vis_t = _upsample(excluded, shape) >= 0.5  # type: ignore[arg-type]
        ggo_candidates = lung_t & ~sol_t & ~vis_t
        del vis_t
        les_up = _upsample(lesion_occ, shape)  # type: ignore[arg-type]
        n_ggo_target = (lesion_pct - solid_pct) / 100.0 * n_lung_t
        ggo_t = ggo_candidates & (les_up >= _occupancy_level(les_up, ggo_candidates, n_ggo_target))
        del les_up, ggo_candidates
        lesions[ggo_t] = LESION_GGO
        lesions[sol_t] = LESION_SOLID
        del ggo_t, sol_t
    del lesion_occ, solid_occ, excluded, lung_occ

    hu_out = _upsample(hu, shape)  # type: ignore[arg-type]
    del hu
    sigma_vox = tuple(max(psf_fwhm_mm, 0.0) / 2.3548 / s for s in spacing_mm)
    blur = min(sigma_vox) > 0.05
    if noise_hu > 0:
        # Quantum noise enters before the reconstruction blur, which also correlates it:
        # scale white noise by 1 / (L2 norm of the separable PSF kernel) so that the
        # blurred noise has standard deviation noise_hu. One filter pass for both.
        gain = (
            float(np.prod([np.sqrt(np.sum(_gaussian_kernel(sg) ** 2)) for sg in sigma_vox]))
            if blur
            else 1.0
        )
        noise_rng = rng if noise_seed is None else np.random.default_rng(noise_seed)
        white = noise_rng.standard_normal(shape, dtype=np.float32)  # type: ignore[arg-type]
        white *= np.float32(noise_hu / gain)
        hu_out += white
        del white
    if blur:
        hu_out = ndimage.gaussian_filter(hu_out, sigma=sigma_vox, mode="nearest", truncate=3.0)
    np.clip(hu_out, MIN_STORED_HU, MAX_STORED_HU, out=hu_out)
    hu_i16 = np.rint(hu_out).astype(np.int16)
    del hu_out

    vols = _volumes(lungs, lesions, out_grid.voxel_ml)
    n_components, n_pleural = _lesion_components(lesions, lungs)
    origin = tuple(float(-(n - 1) / 2.0 * s) for n, s in zip(shape, spacing_mm, strict=True))
    origin_lps = (origin[2], origin[1], origin[0])  # LPS world (x, y, z)
    truth: dict[str, Any] = {
        "generator": "lungvol.phantom.make_phantom",
        "seed": int(seed),
        "shape": list(shape),
        "spacing_mm": list(spacing_mm),
        "origin_lps_mm": list(origin_lps),
        "target_lesion_pct": float(lesion_pct),
        "target_solid_pct": float(solid_pct),
        "noise_hu": float(noise_hu),
        "psf_fwhm_mm": float(psf_fwhm_mm),
        **vols,
        "n_lesion_components": n_components,
        "n_pleural_lesion_components": n_pleural,
        "labels": {"lungs": {"1": "right", "2": "left"}, "lesions": {"1": "ggo", "2": "solid"}},
    }
    if noise_seed is not None:
        truth["noise_seed"] = int(noise_seed)
    return Phantom(
        hu=hu_i16,
        spacing_mm=spacing_mm,  # type: ignore[arg-type]
        origin_lps_mm=origin_lps,  # type: ignore[arg-type]
        lungs=lungs,
        lesions=lesions,
        truth=truth,
    )


def _lesion_components(lesions: np.ndarray, lungs: np.ndarray) -> tuple[int, int]:
    """Number of 26-connected lesion components and how many touch the pleura (lung edge)."""
    lesion = lesions > 0
    if not lesion.any():
        return 0, 0
    labels, n = ndimage.label(lesion, structure=np.ones((3, 3, 3), dtype=bool))
    lung = lungs > 0
    edge = lung & ~ndimage.binary_erosion(lung)
    touching = np.unique(labels[edge & lesion])
    return int(n), int(np.count_nonzero(touching))


# =========================================================================================
# Lesions inserted into real scans
# =========================================================================================


def insert_lesions(
    hu: np.ndarray,
    lungs: np.ndarray,
    *,
    spacing_mm: tuple[float, float, float],
    seed: int,
    lesion_pct: float,
    solid_pct: float,
    parenchyma_max_hu: float = -650.0,
    airway_max_hu: float = -960.0,
    tissue_hu: float | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Insert known ground-glass and solid lesions into a real CT inside its lung mask.

    Lesion density is ADDED to the scan. In ground-glass, a parenchyma voxel becomes
    lesion texture + (voxel - local parenchyma level), so it keeps the scan's own noise and
    fine texture; the local level is a normalised Gaussian average over parenchyma-like
    voxels only, so vessels do not leak into it. Voxels that are not parenchyma-like (HU at
    or above ``parenchyma_max_hu``: vessels, bronchial walls, nodules) keep their value
    inside ground-glass and are not GGO truth. In the solid component every voxel is raised
    to at least the solid texture (a vessel keeps its value, already in the solid band, and
    counts as solid truth). Borders get partial-volume occupancy. Airway lumen (smoothed HU
    below ``airway_max_hu``) is never turned into lesion.

    Parameters
    ----------
    hu : ndarray, shape (Z, Y, X)
        Real CT in HU.
    lungs : ndarray of uint8 or bool, shape (Z, Y, X)
        Lung mask (any non-zero = lung); proportions are relative to its volume.
    spacing_mm : tuple of 3 float, (z, y, x)
    seed : int
    lesion_pct, solid_pct : float
        Target total lesion and solid proportions (% of the lung mask volume).
    parenchyma_max_hu : float
        Smoothed HU at or above which a voxel is not parenchyma-like (vessel, wall, nodule).
    airway_max_hu : float
        Smoothed HU below which a voxel is airway lumen.
    tissue_hu : float, optional
        A third insertion model for the evaluation (session 18; default None, the model
        above). With it, a voxel denser than clear parenchyma is read as a mix of lung and
        tissue of this HU (vessel, wall, pleura): its lung fraction f = (tissue_hu - HU) /
        (tissue_hu - local parenchyma level) takes the lesion (gain f x (lesion - level)),
        and it is ground-glass truth at f >= 0.5 (vessel skirts and the pleura's half-lung
        voxels; vessel cores stay out).

    Returns
    -------
    hu_with_lesions : ndarray of int16, shape (Z, Y, X)
    lesion_labels : ndarray of uint8, shape (Z, Y, X)
        0 none, 1 GGO, 2 solid (the inserted lesions only; pre-existing disease is not
        labelled).
    truth : dict
        Volumes (mL) and proportions (%) of the inserted lesions relative to the lung mask.

    Raises
    ------
    GeometryError
        If ``hu`` and ``lungs`` differ in shape.
    InputError
        Bad proportions, or an empty lung mask.
    """
    _check_params(lesion_pct, solid_pct)
    if hu.shape != lungs.shape or hu.ndim != 3:
        raise GeometryError(
            f"hu has shape {hu.shape} but lungs has {lungs.shape}; pass a 3-D lung mask on "
            "the CT grid"
        )
    spacing_mm = tuple(float(s) for s in spacing_mm)  # type: ignore[assignment]
    lung = np.asarray(lungs) > 0
    n_lung = int(np.count_nonzero(lung))
    if n_lung == 0:
        raise InputError("the lung mask is empty; segment the lungs before inserting lesions")
    rng = np.random.default_rng(seed)
    # Work inside the lung's bounding box (plus a margin): 2-3x less than the whole scan.
    zs, ys, xs = (np.flatnonzero(np.any(lung, axis=ax)) for ax in ((1, 2), (0, 2), (0, 1)))
    margin = 3
    box = tuple(
        slice(max(0, int(v[0]) - margin), min(n, int(v[-1]) + margin + 1))
        for v, n in zip((zs, ys, xs), hu.shape, strict=True)
    )
    lung_c = lung[box]
    base = hu[box].astype(np.float32)
    vox = spacing_mm
    # Airway lumen: smoothed (noise-free) value below airway_max_hu.
    airway = ndimage.gaussian_filter(base, sigma=tuple(max(1.0, 1.0 / s) for s in vox)) < (
        airway_max_hu
    )
    # Per-voxel parenchyma-likeness: 1 for clear parenchyma, 0 for vessels and walls.
    parenchyma_w = np.clip((parenchyma_max_hu - base) / 100.0 + 0.5, 0.0, 1.0)
    parenchyma_w[~lung_c] = 0.0
    # Local parenchyma level by normalised convolution over parenchyma-like voxels
    # (hand-written: scipy has no masked Gaussian average).
    sigma_level = tuple(max(2.0, 2.0 / s) for s in vox)
    like = (lung_c & (parenchyma_w >= 0.5) & ~airway).astype(np.float32)
    weight = ndimage.gaussian_filter(like, sigma=sigma_level)
    level = ndimage.gaussian_filter(base * like, sigma=sigma_level)
    level /= np.maximum(weight, np.float32(1e-3))
    level = np.where(weight > 0.05, level, base)
    del like, weight
    if tissue_hu is not None:
        # Partial volume: a voxel between parenchyma (level) and tissue (vessel, wall,
        # pleura) is the parenchyma fraction f = (tissue - HU) / (tissue - level) of lung;
        # a lesion replaces that part, and the voxel is lesion truth at f >= 0.5.
        fraction = (tissue_hu - base) / np.maximum(tissue_hu - level, np.float32(1.0))
        parenchyma_w = np.where(
            parenchyma_w >= 1.0, 1.0, np.clip(fraction, 0.0, 1.0)
        ).astype(np.float32)
        parenchyma_w[~lung_c] = 0.0
        del fraction
    not_visible = parenchyma_w < 0.5
    depth_mm = _depth_mm(lung_c, spacing_mm)  # type: ignore[arg-type]
    p, q = _propensity(rng, lung_c, spacing_mm, pleural_depth_mm=depth_mm)  # type: ignore[arg-type]
    del depth_mm
    lesion_occ, solid_occ = _place_lesions(
        eligible=lung_c & ~airway,
        not_visible=not_visible,
        p=p,
        q=q,
        lung_voxels=n_lung,
        lesion_pct=lesion_pct,
        solid_pct=solid_pct,
        spacing_mm=spacing_mm,  # type: ignore[arg-type]
    )
    del p, q
    texture = _smooth_noise(rng, base.shape, tuple(4.0 / s for s in spacing_mm))
    ggo_hu = np.interp(texture, [-2.0, 2.0], GGO_RANGE_HU).astype(np.float32)
    solid_hu = np.interp(texture, [-2.0, 2.0], SOLID_RANGE_HU).astype(np.float32)
    del texture
    residual = (base - level) * parenchyma_w  # the scan's own noise in parenchyma
    # Ground-glass: only where the base is parenchyma-like.
    ggo_gain = _edge_weight(lesion_occ, level, ggo_hu, LESION_EDGE_HU) * parenchyma_w
    ggo_gain *= np.maximum(ggo_hu - level, 0.0)
    out = base + ggo_gain
    # Solid: at least the solid texture (plus the scan's noise); denser voxels keep theirs.
    solid_w = _solid_weight(solid_occ, lesion_occ, level + ggo_gain, solid_hu)
    del ggo_gain
    out += solid_w * (1.0 - airway) * np.maximum(solid_hu + residual - out, 0.0)
    del solid_w
    del residual, level
    np.clip(out, MIN_STORED_HU, MAX_STORED_HU, out=out)
    hu_new = np.array(hu, dtype=np.int16, copy=True)
    hu_new[box] = np.rint(out).astype(np.int16)

    labels_c = np.zeros(base.shape, dtype=np.uint8)
    les_t = (lesion_occ >= 0.5) & lung_c
    sol_t = (solid_occ >= 0.5) & les_t & ~airway
    labels_c[les_t & ~sol_t & ~not_visible & ~airway] = LESION_GGO
    labels_c[sol_t] = LESION_SOLID
    labels = np.zeros(hu.shape, dtype=np.uint8)
    labels[box] = labels_c
    lung_labels = np.where(lung_c, LUNG_RIGHT, 0).astype(np.uint8)
    vols = _volumes(lung_labels, labels_c, float(np.prod(spacing_mm)) / MM3_PER_ML)
    for key in ("lung_volume_right_ml", "lung_volume_left_ml"):
        vols.pop(key)
    n_components, n_pleural = _lesion_components(labels_c, lung_labels)
    truth: dict[str, Any] = {
        "generator": "lungvol.phantom.insert_lesions",
        "seed": int(seed),
        "target_lesion_pct": float(lesion_pct),
        "target_solid_pct": float(solid_pct),
        "spacing_mm": list(spacing_mm),
        **vols,
        "n_lesion_components": n_components,
        "n_pleural_lesion_components": n_pleural,
    }
    return hu_new, labels, truth


BLOB_SEMI_AXES_MM = (8.0, 25.0)  # insert_blobs: range of each ellipsoid semi-axis
BLOB_CORE_FRACTION = 0.45  # insert_blobs: solid core radii as a fraction of the blob's
BLOB_TEXTURE_HU = 40.0  # insert_blobs: SD of the 2 mm texture added to the set levels


def _raise_to_lesion_levels(
    hu: np.ndarray, lung: np.ndarray, occ: np.ndarray, core: np.ndarray,
    rng: np.random.Generator, spacing_mm: tuple[float, float, float], *, ggo_hu: float,
    solid_hu: float,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Shared by :func:`insert_blobs` and :func:`insert_subpleural_band`: raise the CT to
    ``ggo_hu`` where ``occ`` (occupancy 0-1) and to ``solid_hu`` where ``core``, each plus a
    2 mm texture of SD ``BLOB_TEXTURE_HU`` (denser voxels keep their value). Returns the
    int16 CT, the truth labels (occupancy >= 0.5 in the lung) and their volumes (mL, %)."""
    texture = _smooth_noise(rng, hu.shape, tuple(2.0 / s for s in spacing_mm))
    texture *= np.float32(BLOB_TEXTURE_HU)  # unit SD -> HU
    base = hu.astype(np.float32)
    out = base + occ * np.maximum(ggo_hu + texture - base, 0.0)
    out += core * np.maximum(solid_hu + texture - out, 0.0)
    np.clip(out, MIN_STORED_HU, MAX_STORED_HU, out=out)
    labels = np.zeros(hu.shape, np.uint8)
    labels[(occ >= 0.5) & lung] = LESION_GGO
    labels[(core >= 0.5) & lung] = LESION_SOLID
    lung_labels = np.where(lung, LUNG_RIGHT, 0).astype(np.uint8)
    vols = _volumes(lung_labels, labels, float(np.prod(spacing_mm)) / MM3_PER_ML)
    for key in ("lung_volume_right_ml", "lung_volume_left_ml"):
        vols.pop(key)
    return np.rint(out).astype(np.int16), labels, vols


def insert_blobs(
    hu: np.ndarray,
    lungs: np.ndarray,
    *,
    spacing_mm: tuple[float, float, float],
    seed: int,
    lesion_pct: float,
    solid_chance: float = 0.5,
    ggo_hu: float = -600.0,
    solid_hu: float = -20.0,
    edge_mm: float = 1.5,
    semi_axes_mm: tuple[float, float] = BLOB_SEMI_AXES_MM,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Insert plain ellipsoidal lesions into a real CT: a second insertion model, unlike
    :func:`insert_lesions` on purpose (an evaluation against one model alone measures how
    well the rules fit that model).

    Ellipsoids with semi-axes drawn uniformly from ``semi_axes_mm`` (min, max; default
    ``BLOB_SEMI_AXES_MM``) are centred at random lung
    voxels (no subpleural or dependent preference) until ``lesion_pct`` of the lung mask is
    covered. Inside, voxels are raised to ``ggo_hu`` plus a 2 mm texture of SD
    ``BLOB_TEXTURE_HU`` (denser voxels, i.e. vessels and walls, keep their value); with
    ``solid_chance`` a blob gets a solid core (``BLOB_CORE_FRACTION`` of its radii) raised
    to ``solid_hu`` plus texture. Edges blend over ``edge_mm``.

    Returns
    -------
    hu_with_lesions : ndarray of int16
    lesion_labels : ndarray of uint8
        1 ground-glass, 2 solid core: occupancy >= 0.5 inside the lung. Truth is the lesion
        REGION: vessels inside a blob are lesion (the convention of a region drawn by a
        reader), unlike :func:`insert_lesions`, which leaves them out.
    truth : dict
        Volumes (mL) and proportions (%) relative to the lung mask.
    """
    _check_params(lesion_pct, 0.0)
    if hu.shape != lungs.shape or hu.ndim != 3:
        raise GeometryError(
            f"hu has shape {hu.shape} but lungs has {lungs.shape}; pass a 3-D lung mask on "
            "the CT grid"
        )
    if not 0 < semi_axes_mm[0] <= semi_axes_mm[1]:
        raise InputError(
            f"semi_axes_mm must be (min, max) with 0 < min <= max (got {semi_axes_mm})"
        )
    lung = np.asarray(lungs) > 0
    points = np.argwhere(lung)
    if len(points) == 0:
        raise InputError("the lung mask is empty; segment the lungs before inserting lesions")
    rng = np.random.default_rng(seed)
    sp = np.asarray(spacing_mm, float)
    occ = np.zeros(hu.shape, np.float32)
    core = np.zeros(hu.shape, np.float32)
    target = lesion_pct / 100.0 * len(points)
    while np.count_nonzero((occ >= 0.5) & lung) < target:
        centre = points[rng.integers(len(points))]
        radii = rng.uniform(*semi_axes_mm, 3)
        box = tuple(
            slice(max(0, int(c - r / s) - 3), min(n, int(c + r / s) + 4))
            for c, r, s, n in zip(centre, radii, sp, hu.shape, strict=True)
        )
        axes = [
            (np.arange(b.start, b.stop) - c) * s / r
            for b, c, s, r in zip(box, centre, sp, radii, strict=True)
        ]
        dist = np.sqrt(
            axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2
            + axes[2][None, None, :] ** 2
        )
        edge = edge_mm / float(radii.mean())  # in units of the normalised radius
        occ[box] = np.maximum(occ[box], np.clip((1.0 - dist) / edge + 0.5, 0.0, 1.0))
        if rng.random() < solid_chance:
            core[box] = np.maximum(
                core[box], np.clip((BLOB_CORE_FRACTION - dist) / edge + 0.5, 0.0, 1.0)
            )
    occ *= lung
    core = np.minimum(core, occ)
    out, labels, vols = _raise_to_lesion_levels(
        hu, lung, occ, core, rng, spacing_mm, ggo_hu=ggo_hu, solid_hu=solid_hu
    )
    truth: dict[str, Any] = {
        "generator": "lungvol.phantom.insert_blobs",
        "seed": int(seed),
        "target_lesion_pct": float(lesion_pct),
        "semi_axes_mm": list(semi_axes_mm),
        "spacing_mm": list(spacing_mm),
        **vols,
    }
    return out, labels, truth


def insert_subpleural_band(
    hu: np.ndarray,
    lungs: np.ndarray,
    *,
    spacing_mm: tuple[float, float, float],
    seed: int,
    depth_mm: float = 15.0,
    solid_depth_mm: float = 0.0,
    posterior_fraction: float = 0.55,
    inferior_fraction: float = 0.7,
    ggo_hu: float = -620.0,
    solid_hu: float = -40.0,
    edge_mm: float = 1.5,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Insert the typical COVID-19 pattern into a real CT: a band of ground glass along the
    costal pleura of the dependent (posterior) lower lungs, optionally with a layer of
    consolidation against the pleura: a third insertion model, whose lesion has no border
    with normal lung on its pleural side.

    The band is the lung within ``depth_mm`` of the lung mask's surface, in the posterior
    ``posterior_fraction`` of the lungs' anterior-posterior extent and the inferior
    ``inferior_fraction`` of their z extent. Inside, voxels are raised to ``ggo_hu`` plus a
    2 mm texture of SD ``BLOB_TEXTURE_HU`` (denser voxels keep their value); the outer
    ``solid_depth_mm`` (0: none) is raised to ``solid_hu`` plus texture. The inner border
    blends over ``edge_mm``.

    Returns
    -------
    hu_with_lesions : ndarray of int16
    lesion_labels : ndarray of uint8
        1 ground-glass, 2 solid (occupancy >= 0.5 inside the lung): the lesion region, vessels
        inside included (as :func:`insert_blobs`).
    truth : dict
        Volumes (mL) and proportions (%) relative to the lung mask.
    """
    if hu.shape != lungs.shape or hu.ndim != 3:
        raise GeometryError(
            f"hu has shape {hu.shape} but lungs has {lungs.shape}; pass a 3-D lung mask on "
            "the CT grid"
        )
    if not 0 <= solid_depth_mm < depth_mm or not 0 < posterior_fraction <= 1 or not (
        0 < inferior_fraction <= 1
    ):
        raise InputError(
            "need 0 <= solid_depth_mm < depth_mm and fractions in (0, 1]; got "
            f"solid_depth_mm={solid_depth_mm}, depth_mm={depth_mm}, "
            f"posterior_fraction={posterior_fraction}, inferior_fraction={inferior_fraction}"
        )
    lung = np.asarray(lungs) > 0
    if not lung.any():
        raise InputError("the lung mask is empty; segment the lungs before inserting lesions")
    rng = np.random.default_rng(seed)
    depth = distance_transform_edt(lung, sampling=spacing_mm).astype(np.float32)
    ys = np.flatnonzero(lung.any(axis=(0, 2)))
    zs = np.flatnonzero(lung.any(axis=(1, 2)))
    # Axis 1 runs anterior -> posterior, axis 0 inferior -> superior.
    y_from = ys[-1] - posterior_fraction * (ys[-1] - ys[0])
    z_to = zs[0] + inferior_fraction * (zs[-1] - zs[0])
    zone = (
        (np.arange(lung.shape[1])[None, :, None] >= y_from)
        & (np.arange(lung.shape[0])[:, None, None] <= z_to)
        & lung
    )
    occ = np.clip((depth_mm - depth) / edge_mm + 0.5, 0.0, 1.0) * zone
    core = (
        np.clip((solid_depth_mm - depth) / edge_mm + 0.5, 0.0, 1.0) * zone
        if solid_depth_mm > 0 else np.zeros_like(occ)
    )
    out, labels, vols = _raise_to_lesion_levels(
        hu, lung, occ, core, rng, spacing_mm, ggo_hu=ggo_hu, solid_hu=solid_hu
    )
    truth: dict[str, Any] = {
        "generator": "lungvol.phantom.insert_subpleural_band",
        "seed": int(seed),
        "depth_mm": float(depth_mm),
        "solid_depth_mm": float(solid_depth_mm),
        "spacing_mm": list(spacing_mm),
        **vols,
    }
    return out, labels, truth


# =========================================================================================
# Writing
# =========================================================================================


# Metal (insert_metal): linear attenuation of water at about 70 keV, per mm.
WATER_MU_PER_MM = 0.019


def average_slabs(array: np.ndarray, slab_mm: int, slice_mm: float) -> np.ndarray:
    """A thick-slice reconstruction of ``array`` (z, y, x; slices ``slice_mm`` apart):
    linear interpolation to 1 mm slices, then means of ``slab_mm`` consecutive ones
    (float32; a trailing remainder under one slab is dropped). Applied to a mask it gives
    each slab's fraction."""
    if slab_mm < 1 or slice_mm <= 0:
        raise ValueError(f"slab_mm must be >= 1 and slice_mm > 0, got {slab_mm}, {slice_mm}")
    fine = ndimage.zoom(np.asarray(array, np.float32), (slice_mm, 1, 1), order=1,
                        mode="nearest")
    n = fine.shape[0] // slab_mm * slab_mm
    return fine[:n].reshape(n // slab_mm, slab_mm, *fine.shape[1:]).mean(axis=1)


def insert_metal(
    hu: np.ndarray,
    *,
    spacing_mm: tuple[float, float, float],
    centre_zyx: tuple[int, int, int],
    semi_axes_mm: tuple[float, float, float],
    seed: int = 0,
    metal_mu_per_mm: float = 0.3,
    photons: float = 1e5,
    beam_hardening: float = 0.05,
    n_angles: int = 180,
) -> tuple[np.ndarray, np.ndarray]:
    """Put a metal ellipsoid into a CT (a pacemaker can, a port) with the streaks a scanner
    without metal artifact reduction makes of it: a robustness case, not ground truth.

    Per axial slice the metal is painted at the stored maximum (``MAX_STORED_HU``), and the
    slice is projected (parallel-beam Radon transform, ``n_angles`` over 180 degrees). Rays
    through the metal are re-measured as a scanner measures them: the metal's true
    attenuation (``metal_mu_per_mm``; titanium about 0.3, steel more, against water's
    0.019), Poisson counts from ``photons`` per ray (photon starvation), and beam hardening
    (the line integral lowered by ``beam_hardening`` x its square over the metal). The
    difference between the filtered back-projections of those rays and of the clean ones
    is added to the slice: bright and dark streaks along the metal's rays and a dark band
    along its long axis, and nothing elsewhere. skimage's Radon pair is used as is (about
    2-3 s per 512 x 512 slice at 180 angles).

    Returns the new HU (int16, clipped to the stored range) and the metal mask.
    """
    from skimage.transform import iradon, radon

    if hu.ndim != 3:
        raise GeometryError(f"hu must be 3-D (z, y, x), got shape {hu.shape}")
    if hu.shape[1] != hu.shape[2] or abs(spacing_mm[1] - spacing_mm[2]) > 1e-3 * spacing_mm[1]:
        raise GeometryError(
            f"insert_metal needs square slices of square pixels, got {hu.shape[1:]} voxels of "
            f"{spacing_mm[1:]} mm"
        )
    zz, yy, xx = np.ogrid[: hu.shape[0], : hu.shape[1], : hu.shape[2]]
    metal = sum(
        ((idx - c) * s / r) ** 2
        for idx, c, s, r in zip((zz, yy, xx), centre_zyx, spacing_mm, semi_axes_mm, strict=True)
    ) <= 1.0
    out = hu.astype(np.float64)
    rng = np.random.default_rng(seed)
    pixel_mm = float(spacing_mm[1])
    theta = np.linspace(0.0, 180.0, n_angles, endpoint=False)
    stored_mu = WATER_MU_PER_MM * (1.0 + MAX_STORED_HU / 1000.0)
    for z in np.flatnonzero(metal.any(axis=(1, 2))):
        m = metal[z]
        out[z][m] = MAX_STORED_HU
        mu = np.clip(WATER_MU_PER_MM * (1.0 + out[z] / 1000.0), 0.0, None)
        shown = radon(mu, theta=theta, circle=False) * pixel_mm
        path_mm = radon(m.astype(np.float64), theta=theta, circle=False) * pixel_mm
        through = path_mm > 0.5
        true = shown + path_mm * (metal_mu_per_mm - stored_mu)
        counts = rng.poisson(photons * np.exp(-true))
        measured = -np.log(np.maximum(counts, 1) / photons)
        measured -= beam_hardening * (path_mm * metal_mu_per_mm) ** 2
        # What the scanner reconstructs, against what the stored image implies, on those rays.
        error = np.where(through, measured - true, 0.0) / pixel_mm
        streaks = iradon(error, theta=theta, filter_name="ramp", circle=False,
                         output_size=hu.shape[1])
        out[z] += 1000.0 * streaks / WATER_MU_PER_MM
        out[z][m] = MAX_STORED_HU  # the metal itself reads saturated
    np.clip(out, MIN_STORED_HU, MAX_STORED_HU, out=out)
    return np.rint(out).astype(np.int16), metal


# enhance_contrast: soft tissue that may be blood (HU), the HU above which a voxel next to it
# is still taken for noise in it (not airway lumen), bone marking the spine (HU), the half
# width of the spine's column (mm), the gap left in front of it (mm), the smallest piece of
# blood pool (mL), and the lung vessels' depth inside the lung mask (mm) and HU range.
_BLOOD_SOFT_HU = (-30.0, 120.0)
_BLOOD_SPECK_MIN_HU = -200.0
_SPINE_MIN_HU = 250.0
_SPINE_HALF_WIDTH_MM = 10.0
_SPINE_GAP_MM = 5.0
_BLOOD_MIN_PIECE_ML = 5.0
_VESSEL_DEPTH_MM = 2.0
_VESSEL_LUNG_HU, _VESSEL_MIN_HU, _VESSEL_FULL_HU = -850.0, -750.0, 40.0


def enhance_contrast(
    hu: np.ndarray,
    lung_labels: np.ndarray,
    *,
    spacing_mm: tuple[float, float, float],
    blood_gain_hu: float,
    vessel_gain_hu: float = 0.0,
    wall_mm: float = 4.0,
) -> tuple[np.ndarray, np.ndarray]:
    """A non-contrast chest CT as if scanned after intravenous contrast: a robustness case
    (a simulation, not ground truth).

    Blood pool: in each slice that holds both lungs (``lung_labels`` 1 right, 2 left),
    soft tissue (``_BLOOD_SOFT_HU``; noise specks inside it included) between the two
    lungs' medial edges and in front of the vertebral body, at least ``wall_mm`` in-plane
    from anything else (myocardium, vessel walls and fat keep their HU), in pieces of at
    least ``_BLOOD_MIN_PIECE_ML``: the heart chambers, aorta, pulmonary trunk and veins;
    raised by ``blood_gain_hu``. Lung vessels: voxels above -750 HU at least 2 mm inside the
    lung mask (not the pleura's partial volume) gain ``vessel_gain_hu`` times their vessel
    fraction (0 at -850 HU, 1 at +40 HU). The blood's noise stays the soft tissue's.

    Returns the new HU (int32) and the blood pool mask.
    """
    if hu.ndim != 3 or lung_labels.shape != hu.shape:
        raise GeometryError(
            f"hu must be 3-D (z, y, x) with lung labels of its shape, got {hu.shape} and "
            f"{lung_labels.shape}"
        )
    lung = lung_labels > 0
    out = hu.astype(np.float32)
    pool = np.zeros(hu.shape, bool)
    cols = np.arange(hu.shape[2])
    rows = np.arange(hu.shape[1])[:, None]
    mid = hu.shape[2] // 2
    half = max(1, int(round(_SPINE_HALF_WIDTH_MM / spacing_mm[2])))
    both_lungs = (lung_labels == 1).any(axis=(1, 2)) & (lung_labels == 2).any(axis=(1, 2))
    for z in np.flatnonzero(both_lungs):
        right, left = lung_labels[z] == 1, lung_labels[z] == 2
        medial_right = np.where(right, cols, -1).max(axis=1)
        medial_left = np.where(left, cols, hu.shape[2]).min(axis=1)
        ys = np.flatnonzero(lung[z].any(axis=1))
        # The vertebral body: the front of the bone in the midline column, behind the
        # lungs' middle.
        bone_rows = np.flatnonzero((hu[z, :, mid - half : mid + half] > _SPINE_MIN_HU).any(axis=1))
        spine_rows = bone_rows[bone_rows > (ys[0] + ys[-1]) / 2]
        y_spine = spine_rows.min() if spine_rows.size else ys[-1]
        between = (
            ((medial_right >= 0) & (medial_left < hu.shape[2]))[:, None]
            & (cols[None, :] > medial_right[:, None]) & (cols[None, :] < medial_left[:, None])
            & (rows < y_spine - _SPINE_GAP_MM / spacing_mm[1])
        )
        soft = between & (hu[z] > _BLOOD_SOFT_HU[0]) & (hu[z] < _BLOOD_SOFT_HU[1])
        # Noise specks inside the soft tissue are soft tissue (holes filled); the airways'
        # lumen is not.
        filled = ndimage.binary_fill_holes(soft) & (hu[z] > _BLOOD_SPECK_MIN_HU)
        pool[z] = filled & (
            distance_transform_edt(filled, sampling=spacing_mm[1:]) >= wall_mm
        )
    pieces, n = ndimage.label(pool)
    if n:
        piece_ml = np.bincount(pieces.ravel())[1:] * float(np.prod(spacing_mm)) / 1000.0
        pool = np.isin(pieces, np.flatnonzero(piece_ml >= _BLOOD_MIN_PIECE_ML) + 1)
    out[pool] += blood_gain_hu
    if vessel_gain_hu:
        deep = distance_transform_edt(lung, sampling=spacing_mm) >= _VESSEL_DEPTH_MM
        vessel = deep & (hu > _VESSEL_MIN_HU)
        fraction = np.clip(
            (out[vessel] - _VESSEL_LUNG_HU) / (_VESSEL_FULL_HU - _VESSEL_LUNG_HU), 0.0, 1.0
        )
        out[vessel] += vessel_gain_hu * fraction
    return np.rint(out).astype(np.int32), pool


def write_phantom(
    phantom: Phantom,
    out_dir: str | Path,
    *,
    fmt: str = "dicom",
    overwrite: bool = False,
    study_date: str = "20200101",
    patient_id: str = "PHANTOM",
    transfer_syntax: str = "explicit_vr_little_endian",
) -> dict[str, Path]:
    """Write the CT, the truth masks and truth.json into ``out_dir`` atomically.

    The CT goes to ``out_dir/dicom/`` (one file per slice, pseudonymous patient id,
    fixed study date, ``transfer_syntax`` as in ``lungvol.io.write_dicom_series``) or
    ``out_dir/ct.nii.gz``; the truth to ``truth_lungs.nii.gz``,
    ``truth_lesions.nii.gz`` (uint8) and ``truth.json``. Everything is written into a
    temporary folder beside ``out_dir`` and renamed into place when complete.

    Returns
    -------
    dict of str to Path
        Keys "ct", "truth_lungs", "truth_lesions", "truth_json".

    Raises
    ------
    InputError
        Unknown format, or ``out_dir`` exists and is not empty (without ``overwrite``).
    """
    from lungvol.io import write_dicom_series, write_volume

    if fmt not in ("dicom", "nifti"):
        raise InputError(f"format {fmt!r} is not supported; use 'dicom' or 'nifti'")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} exists and is not a folder; choose another output path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InputError(f"{out} exists and is not empty; pass --overwrite or another folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary folder
    try:
        spacing = phantom.spacing_mm
        origin = phantom.origin_lps_mm
        if fmt == "dicom":
            write_dicom_series(
                phantom.hu,
                tmp / "dicom",
                spacing_mm=spacing,
                origin_lps_mm=origin,
                series_description=f"lungvol phantom seed {phantom.truth.get('seed')}",
                study_date=study_date,
                patient_id=patient_id,
                transfer_syntax=transfer_syntax,
            )
            ct_name = "dicom"
        else:
            write_volume(phantom.hu, tmp / "ct.nii.gz", spacing_mm=spacing, origin_lps_mm=origin)
            ct_name = "ct.nii.gz"
        write_volume(
            phantom.lungs, tmp / "truth_lungs.nii.gz", spacing_mm=spacing, origin_lps_mm=origin
        )
        write_volume(
            phantom.lesions, tmp / "truth_lesions.nii.gz", spacing_mm=spacing,
            origin_lps_mm=origin,
        )
        truth = dict(phantom.truth, format=fmt)
        (tmp / "truth.json").write_text(json.dumps(truth, indent=2, sort_keys=True) + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("wrote phantom to %s", out)
    return {
        "ct": out / ct_name,
        "truth_lungs": out / "truth_lungs.nii.gz",
        "truth_lesions": out / "truth_lesions.nii.gz",
        "truth_json": out / "truth.json",
    }
