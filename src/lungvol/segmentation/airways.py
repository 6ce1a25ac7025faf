"""Trachea and main-bronchus detection on the coarse grid.

The trachea is found in the top (superior) slices as a round, very dark air tube near the
left-right centre of the body. It is grown downwards through voxels darker than
a threshold that starts at ``airway_max_hu`` and rises in steps towards
``airway_threshold_max_hu``; the last tree before leakage into the lung (a tree larger than
``airway_max_volume_ml``) is kept. Only the PROXIMAL part
of the tree, i.e. airway not surrounded by lung parenchyma (trachea, main bronchi, the
start of the lobar bronchi at the hila), is returned for removal from the lung mask;
intrapulmonary bronchi stay inside the lung.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from lungvol.config import LungSegmentationConfig
from lungvol.segmentation.grid import bounding_box

logger = logging.getLogger(__name__)

# A trachea seed must continue downwards as dark air for at least this length (the top
# slice can hold oesophageal air or a lung-apex fragment that ends at once). Not a tuning
# knob: any trachea in a chest CT is several centimetres long.
_TRACHEA_MIN_LENGTH_MM = 20.0


@dataclass(frozen=True)
class AirwayResult:
    """Airway tree and its proximal part, both boolean on the coarse grid."""

    tree: np.ndarray
    proximal: np.ndarray
    info: dict


def _find_trachea_seed(
    hu: np.ndarray, internal: np.ndarray, body: np.ndarray, spacing_mm: tuple[float, float, float],
    config: LungSegmentationConfig,
) -> tuple[int, np.ndarray, float] | None:
    """Return (slice index, 2-D mask, lumen threshold HU) of the trachea in the highest slice
    where it is seen, at the lowest threshold of the airway ramp (``airway_max_hu`` up to
    ``trachea_seed_max_hu``) that shows it.

    Tracheal air reads above -1000 HU with beam hardening, sharp kernels and calibration
    drift: on the real 141-slice chest here -950..-970 HU in 2 mm blocks, so a scan 20 HU
    brighter lost its airway removal (trachea and main bronchi counted as lung, session 15).
    The cap keeps bronchi in lung out: on the IBSI NSCLC crop (no trachea in view) a
    bronchus passes every trachea test at -900 HU, and its tree took 305 mL of lung.
    """
    for threshold in _threshold_ramp(config):
        if threshold > config.trachea_seed_max_hu:
            break
        found = _trachea_at(hu, internal, body, spacing_mm, config, threshold)
        if found is not None:
            return (*found, threshold)
    return None


def _threshold_ramp(config: LungSegmentationConfig) -> list[float]:
    """Lumen thresholds (HU) from ``airway_max_hu`` up to ``airway_threshold_max_hu``."""
    return [float(t) for t in np.arange(
        config.airway_max_hu, config.airway_threshold_max_hu + 1e-6,
        config.airway_threshold_step_hu,
    )]


def _trachea_at(
    hu: np.ndarray, internal: np.ndarray, body: np.ndarray, spacing_mm: tuple[float, float, float],
    config: LungSegmentationConfig, threshold_hu: float,
) -> tuple[int, np.ndarray] | None:
    """(slice index, 2-D mask) of the trachea with lumen below ``threshold_hu``, or None."""
    z_with_air = np.flatnonzero(internal.any(axis=(1, 2)))
    if z_with_air.size == 0:
        return None
    z_top, z_bottom = int(z_with_air.max()), int(z_with_air.min())
    n_search = max(1, int(round((z_top - z_bottom + 1) * config.trachea_search_fraction)))
    pixel_mm2 = spacing_mm[1] * spacing_mm[2]
    lo_mm2, hi_mm2 = config.trachea_area_mm2
    n_below = max(1, int(np.ceil(_TRACHEA_MIN_LENGTH_MM / spacing_mm[0])))
    for z in range(z_top, z_top - n_search, -1):
        body_x = np.flatnonzero(body[z].any(axis=0))
        if body_x.size == 0:
            continue
        centre_x = 0.5 * (body_x[0] + body_x[-1])
        half_width = 0.5 * (body_x[-1] - body_x[0] + 1)
        dark = internal[z] & (hu[z] < threshold_hu)
        lab, n = ndimage.label(dark)
        if n == 0:
            continue
        best: tuple[float, int] | None = None
        for i, sl in enumerate(ndimage.find_objects(lab), start=1):
            comp = lab[sl] == i
            area = comp.sum() * pixel_mm2
            if not lo_mm2 <= area <= hi_mm2:
                continue
            fill = comp.sum() / comp.size  # a round tube fills ~0.79 of its box
            if fill < 0.45:
                continue
            cx = 0.5 * (sl[1].start + sl[1].stop - 1)
            offset = abs(cx - centre_x) / half_width
            if offset > config.trachea_max_offset_fraction:
                continue
            if not _continues_down(hu, internal, z, lab == i, n_below, config):
                continue  # an air pocket (oesophagus, apex fragment), not a tube
            # The trachea is the widest central air tube (the oesophagus is narrower).
            if best is None or area > best[0]:
                best = (area, i)
        if best is not None:
            return z, lab == best[1]
    return None


def _continues_down(
    hu: np.ndarray, internal: np.ndarray, z: int, comp: np.ndarray, n_below: int,
    config: LungSegmentationConfig,
) -> bool:
    """Whether dark air connected to ``comp`` (slice ``z``) reaches ``n_below`` slices down."""
    z0 = max(0, z - n_below)
    if z - z0 < n_below:
        return False
    dark = internal[z0 : z + 1] & (hu[z0 : z + 1] < config.airway_threshold_max_hu)
    dark[-1] |= comp
    lab, _n = ndimage.label(dark)
    ids = np.unique(lab[-1][comp])
    ids = ids[ids > 0]
    return bool(ids.size) and bool(np.isin(lab[0], ids).any())


def find_airways(
    hu: np.ndarray, internal: np.ndarray, body: np.ndarray, spacing_mm: tuple[float, float, float],
    config: LungSegmentationConfig,
) -> AirwayResult:
    """Detect trachea + bronchi on the coarse grid and split off their proximal part.

    Parameters
    ----------
    hu : ndarray of float32, shape (Z, Y, X) — coarse block-mean HU.
    internal : ndarray of bool — air inside the body (lungs + airways).
    body : ndarray of bool — body mask (2-D filled per slice).
    spacing_mm : (z, y, x) coarse spacing.
    """
    empty = np.zeros(hu.shape, dtype=bool)
    seed = _find_trachea_seed(hu, internal, body, spacing_mm, config)
    if seed is None:
        logger.info("no trachea found in the top slices; airway removal skipped")
        return AirwayResult(empty, empty, {"trachea_found": False})
    z_seed, seed_2d, seed_hu = seed
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    # Grow from the seed with thresholds rising from the seed threshold towards
    # airway_threshold_max_hu (lumen HU varies with kernel, dose and partial volume); keep
    # the last tree before leakage into the lung (volume above airway_max_volume_ml).
    thresholds = [t for t in _threshold_ramp(config) if t >= seed_hu]
    # Work inside the bounding box of the internal air (labelling is the costly part).
    box = bounding_box(internal)
    internal_b, hu_b = internal[box], hu[box]
    zs = z_seed - box[0].start
    seed_b = seed_2d[box[1:]]
    tree_b = np.zeros(internal_b.shape, dtype=bool)
    tree_b[zs] = seed_b
    threshold = seed_hu
    leaked = False
    for t in thresholds:
        dark = internal_b & (hu_b < t)
        dark[zs] |= seed_b
        lab, _n = ndimage.label(dark)
        ids = np.unique(lab[zs][seed_b])
        grown = np.isin(lab, ids[ids > 0])
        if grown.sum() * voxel_ml > config.airway_max_volume_ml:
            leaked = True
            break
        tree_b, threshold = grown, float(t)
    # Proximal = airway not surrounded by lung parenchyma.
    reach = tuple(max(1, int(round(config.airway_neighbourhood_mm / s))) for s in spacing_mm)
    tbox = bounding_box(tree_b, reach)
    parenchyma = (internal_b[tbox] & ~tree_b[tbox]).astype(np.float32)
    lung_fraction = ndimage.uniform_filter(
        parenchyma, size=tuple(2 * r + 1 for r in reach), mode="constant"
    )
    proximal_t = tree_b[tbox] & (lung_fraction < config.proximal_airway_max_lung_fraction)
    proximal_b = np.zeros_like(tree_b)
    proximal_b[tbox] = proximal_t
    # Keep only the proximal pieces connected to the trachea seed.
    lab, _n = ndimage.label(proximal_b)
    ids = np.unique(lab[zs][seed_b])
    proximal_b = np.isin(lab, ids[ids > 0])
    tree = empty.copy()
    tree[box] = tree_b
    proximal = empty.copy()
    proximal[box] = proximal_b
    info = {
        "trachea_found": True,
        "trachea_seed_slice": int(z_seed),
        "trachea_seed_threshold_hu": seed_hu,
        "airway_threshold_hu": float(threshold),
        "airway_growth_stopped_by_leak": bool(leaked),
        "airway_tree_ml": round(float(tree.sum() * voxel_ml), 2),
        "airway_removed_ml": round(float(proximal.sum() * voxel_ml), 2),
    }
    return AirwayResult(tree, proximal, info)
