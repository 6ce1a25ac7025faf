"""Subpleural consolidation layer: lesion left between the lung mask and the ribs.

A layer of consolidation along the costal pleura, with no aerated lung between it and the
chest wall, has the wall's HU and leaves no indentation in the lung surface, so the lung
stage stops at its inner edge (docs/segmentation.md, "A subpleural consolidation layer").
It shows in the geometry instead: where the lung mask's surface faces lesion it lies
further from the ribs than where it faces aerated lung, because the parietal pleura does
not move. This step measures that, per scan, and where the excess is large grows the lung
mask back towards the ribs by the local excess.

Steps (coarse grid of ``lungs.working_spacing_mm``, anchored to patient coordinates):

1. Bone as in the lung stage (components with cortex); its distance map.
2. Costal surface: lung-mask voxels next to tissue (>= ``tissue_min_hu``) within
   ``costal_bone_distance_mm`` of bone. Lesion-facing: within one coarse voxel of lesion.
3. Gap: per surface voxel, the smallest distance to bone over the surface voxels of the
   same kind within ``window_mm`` (the nearest rib passing; between ribs the intercostal
   muscle lies at the ribs' depth, so the raw distance there says nothing).
4. Excess: median gap of the lesion-facing surface minus that of the aerated surface (the
   patient's own wall thickness; ``reference_gap_mm`` when too little is aerated). At or
   above ``min_excess_mm``, with at least ``min_lesion_fraction`` of the costal surface
   lesion-facing, the scan is flagged.
5. With ``recover``, and only against the patient's own reference: on the CT grid, tissue
   outside the mask (smoothed HU within ``layer_hu``, not bone) within the local excess of a
   lesion-facing surface voxel, and connected to the mask, joins the lung of its nearest
   lung voxel; its lesion label comes from the lesion bands (tissue in the lung's place is
   lesion).

The step covers only the costal pleura: a layer along the diaphragm or the mediastinum has
no rib to measure against.

Beyond the costal reach (session 15, flag only): dependent consolidation or an effusion
thicker than ``costal_bone_distance_mm`` moves the mask's posterior surface out of that
test's sight. :func:`measure_rib_gaps` measures, per lung, how far the posterior
surface lies in front of the posterior ribs, and at ``max_posterior_gap_mm`` the scan gets
the ``dependent_opacity_outside_lung`` warning (a QC flag). The same towards the front
(session 18, flag only): consolidation against the anterior chest wall holds the anterior
surface off the anterior ribs (``anterior_opacity_outside_lung``).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
from scipy import ndimage

from lungvol.config import LungvolConfig
from lungvol.segmentation.distance import distance_transform_edt
from lungvol.segmentation.grid import (
    CoarseGrid,
    bounding_box,
    coarse_max,
    coarse_mean,
    patient_index,
)
from lungvol.segmentation.lungs import bone_map
from lungvol.segmentation.slabs import gaussian_in_slabs
from lungvol.types import (
    LESION_GGO,
    LESION_SOLID,
    LUNG_LEFT,
    LUNG_RIGHT,
    CTVolume,
    LesionMask,
    LungMask,
)

logger = logging.getLogger(__name__)


def _window_size(window_mm: float, spacing_mm: tuple[float, ...]) -> tuple[int, ...]:
    return tuple(2 * max(1, int(round(window_mm / 2.0 / s))) + 1 for s in spacing_mm)


def _dilate1(mask: np.ndarray) -> np.ndarray:
    """One-voxel dilation over the 26-neighbourhood (separable maximum filter)."""
    return ndimage.maximum_filter(mask.view(np.uint8), size=3) > 0


def _local_min_gap(
    surface: np.ndarray, d_bone_mm: np.ndarray, size: tuple[int, ...]
) -> np.ndarray:
    """Per voxel, the smallest bone distance (mm) over ``surface`` voxels in the window."""
    big = np.where(surface, d_bone_mm, np.float32(1e6)).astype(np.float32)
    return ndimage.minimum_filter(big, size=size, mode="nearest")


def _dependent_gap(
    summary: dict, costal: np.ndarray, lung: np.ndarray, d_bone: np.ndarray,
    size: tuple[int, ...], min_excess_mm: float,
) -> None:
    """Posterior (dependent, supine) against anterior costal gap, into ``summary``.

    A layer of consolidation with aerated lung inside it leaves no lesion at the mask's
    surface, so the lesion-facing comparison cannot see it; most such layers are dependent,
    and then the posterior half of the costal surface lies further from the ribs than the
    anterior half. The anatomy differs too (1.6 mm on the real normal chest), so this only
    flags; it adds nothing. Array y increases towards posterior (LPS).
    """
    ys = np.flatnonzero(lung.any(axis=(0, 2)))
    posterior = np.zeros(lung.shape, bool)
    posterior[:, (ys[0] + ys[-1]) // 2 + 1 :, :] = True
    halves = {"posterior": costal & posterior, "anterior": costal & ~posterior}
    if not all(h.any() for h in halves.values()):
        return
    for name, half in halves.items():
        gap = _local_min_gap(half, d_bone, size)
        summary[f"gap_{name}_mm"] = round(float(np.median(gap[half])), 2)
    excess = summary["gap_posterior_mm"] - summary["gap_anterior_mm"]
    summary["dependent_excess_mm"] = round(float(excess), 2)
    summary["dependent_flagged"] = bool(excess >= min_excess_mm)


def _lower_lateral_median(
    gap: np.ndarray, use: np.ndarray, lung: np.ndarray, mid: np.ndarray, *, lateral_low_x: bool
) -> float | None:
    """Median of ``gap`` (z, x) over the lower half of the ``mid`` slices (low z is
    inferior) and, per slice, the lateral half of the lung's columns (low x for the right
    lung): where a middle lobe lies against the anterior chest wall beside the heart."""
    rows = np.flatnonzero(mid)
    if rows.size == 0:
        return None
    lower = np.zeros(mid.shape, bool)
    lower[rows[: (rows.size + 1) // 2]] = True
    present = lung.any(axis=1)  # (z, x): the column holds lung
    xs = np.arange(lung.shape[2], dtype=np.float64)
    centre = (present * xs).sum(axis=1) / np.maximum(present.sum(axis=1), 1)
    lateral = xs[None, :] < centre[:, None] if lateral_low_x else xs[None, :] > centre[:, None]
    sel = use & lower[:, None] & lateral & present
    return float(np.median(gap[sel])) if sel.any() else None


def measure_rib_gaps(
    volume: CTVolume, lungs: LungMask, config: LungvolConfig, grid: CoarseGrid,
    lung_coarse: np.ndarray,
) -> tuple[dict, np.ndarray | None]:
    """Per lung, how far its posterior (and anterior) surface lies from the ribs (mm).

    For each left-right column of a mid-thorax slice (lung area at least
    ``posterior_gap_min_area_fraction`` of the largest), the distance from the lung's most
    posterior voxel to the first bone behind it; the nearest rib passing is the smallest
    over ``window_mm`` in z (an intercostal space shows the next bone, or none). The median
    per lung is its ``posterior_gap``. A normal lung reaches the posterior ribs (median
    2-8 mm on the scans here); dependent consolidation or an effusion outside the mask
    holds it off by their thickness, which the costal test (bone within
    ``costal_bone_distance_mm``) cannot see. Array y increases towards posterior (LPS).

    For a lung at ``max_posterior_gap_mm`` or more, :func:`_dependent_opacity` estimates the
    opacity between it and the ribs (``dependent_opacity_{right,left}_ml``; None when not
    estimated). Returns the summary and the estimate on the CT grid (uint8: the label of the
    lung it lies behind; None when empty), which is outlined in qc.png and NOT added to the
    lung mask: an effusion there is not lung.

    ``anterior_gap_{right,left}_mm`` is the same measure towards the front (the lung's most
    anterior voxel to the last bone in front of it); ``anterior_gap_flagged`` at
    ``max_anterior_gap_mm``. ``anterior_lower_gap_{right,left}_mm`` is its median over the
    lower half of those slices and the lateral half of each lung (session 19: a consolidated
    middle lobe, beside the heart, moves only that part); the right one is flagged at
    ``max_anterior_lower_gap_mm``, the left one at ``max_anterior_lower_gap_left_mm`` as a
    warning of its own (``anterior_lower_gap_left_flagged``: a consolidated lingula, or an
    enlarged heart). Nothing is estimated there.
    """
    sc, lc = config.subpleural, config.lungs
    sp = grid.spacing_mm
    out: dict = {"posterior_gap_right_mm": None, "posterior_gap_left_mm": None,
                 "posterior_gap_flagged": False, "dependent_opacity_right_ml": None,
                 "dependent_opacity_left_ml": None, "anterior_gap_right_mm": None,
                 "anterior_gap_left_mm": None, "anterior_lower_gap_right_mm": None,
                 "anterior_lower_gap_left_mm": None, "anterior_lower_gap_flagged": False,
                 "anterior_lower_gap_left_flagged": False, "anterior_gap_flagged": False}
    if not lung_coarse.any():
        return out, None
    # The side of each coarse lung block: the label at the block's centre voxel (a strided
    # lookup; a second full-resolution downsampling per side cost 0.3 s on 400 slices).
    centres = np.ix_(*(
        np.clip(np.arange(nc) * f - p + f // 2, 0, n - 1)
        for nc, f, p, n in zip(grid.shape, grid.factors, grid.phase, grid.full_shape, strict=True)
    ))
    side_of = lungs.labels[centres]
    # Edge blocks (at least half lung) whose centre voxel is not lung take a neighbour's side
    # (the two lungs are apart but for the junction lines, where the larger label wins).
    side_of = np.where(side_of > 0, side_of, ndimage.maximum_filter(side_of, size=3))
    coarse = {
        side: lung_coarse & (side_of == label)
        for side, label in (("right", LUNG_RIGHT), ("left", LUNG_LEFT))
    }
    box = list(bounding_box(lung_coarse))
    reach = int(sc.posterior_search_mm / sp[1])
    box[1] = slice(max(0, box[1].start - reach), min(grid.shape[1], box[1].stop + reach))
    box_t = tuple(box)
    hu_c = coarse_mean(volume.hu, grid)[box_t]
    bone, _ = bone_map(
        hu_c, coarse_max(volume.hu, grid)[box_t], lc, grid.voxel_volume_ml, grid.spacing_mm
    )
    y = np.arange(bone.shape[1], dtype=np.int32)[None, :, None]
    k = _window_size(sc.window_mm, sp)[0]
    midline = lungs.info.get("midline_x_index")
    opacity = np.zeros(bone.shape, np.uint8)  # coarse: lung label the estimate lies behind
    for side, label in (("right", LUNG_RIGHT), ("left", LUNG_LEFT)):
        lung = coarse[side][box_t]
        area = np.count_nonzero(lung, axis=(1, 2))
        if not area.any():
            continue
        mid = area >= sc.posterior_gap_min_area_fraction * area.max()
        back = np.where(lung, y, -1).max(axis=1)  # (z, x): most posterior lung voxel
        behind = bone & (y > back[:, None, :])
        first = np.where(behind, y, np.iinfo(np.int32).max).min(axis=1)
        valid = (back >= 0) & (first < bone.shape[1]) & mid[:, None]
        gap = np.where(valid, (first - back - 1) * sp[1], np.inf).astype(np.float32)
        nearest = ndimage.minimum_filter1d(gap, k, axis=0, mode="nearest")
        use = valid & np.isfinite(nearest)
        if use.any():
            gap_mm = round(float(np.median(nearest[use])), 1)
            out[f"posterior_gap_{side}_mm"] = gap_mm
            if gap_mm >= sc.max_posterior_gap_mm:
                behind_lung = _dependent_opacity(
                    lung, lung_coarse[box_t], hu_c, bone, back, nearest, use,
                    None if midline is None else float(midline) - box_t[2].start, sp, config,
                )
                opacity[behind_lung & (opacity == 0)] = label
        # The same towards the front: the lung's most anterior voxel to the last bone in
        # front of it (ribs, sternum; flag only, session 18).
        front = np.where(lung, y, np.iinfo(np.int32).max).min(axis=1)
        last = np.where(bone & (y < front[:, None, :]), y, -1).max(axis=1)
        valid = (back >= 0) & (last >= 0) & mid[:, None]  # back >= 0: the column holds lung
        gap = np.where(valid, (front - last - 1) * sp[1], np.inf).astype(np.float32)
        nearest = ndimage.minimum_filter1d(gap, k, axis=0, mode="nearest")
        use = valid & np.isfinite(nearest)
        if use.any():
            out[f"anterior_gap_{side}_mm"] = round(float(np.median(nearest[use])), 1)
        lower_gap = _lower_lateral_median(nearest, use, lung, mid, lateral_low_x=side == "right")
        if lower_gap is not None:
            out[f"anterior_lower_gap_{side}_mm"] = round(lower_gap, 1)
    out["posterior_gap_flagged"] = any(
        v is not None and v >= sc.max_posterior_gap_mm
        for v in (out["posterior_gap_right_mm"], out["posterior_gap_left_mm"])
    )
    # The lower lateral front is judged on the right only: in front of the left lower lung
    # lies the heart's apex, and an enlarged heart reaches the lateral chest wall.
    lower_right = out["anterior_lower_gap_right_mm"]
    out["anterior_lower_gap_flagged"] = bool(
        sc.max_anterior_lower_gap_mm > 0
        and lower_right is not None
        and lower_right >= sc.max_anterior_lower_gap_mm
    )
    # The left one gets a warning of its own that keeps the normal-CT call (session 25): a
    # consolidated lingula and an enlarged heart both put tissue there.
    lower_left = out["anterior_lower_gap_left_mm"]
    out["anterior_lower_gap_left_flagged"] = bool(
        sc.max_anterior_lower_gap_left_mm > 0
        and lower_left is not None
        and lower_left >= sc.max_anterior_lower_gap_left_mm
    )
    out["anterior_gap_flagged"] = out["anterior_lower_gap_flagged"] or any(
        v is not None and v >= sc.max_anterior_gap_mm
        for v in (out["anterior_gap_right_mm"], out["anterior_gap_left_mm"])
    )
    if not opacity.any():
        return out, None
    full_c = np.zeros(grid.shape, np.uint8)
    full_c[box_t] = opacity
    # On the CT grid: the blocks' voxels outside the mask that are not air-like or bone
    # (a block at the far edge holds fat or lung behind the opacity too).
    tissue = (volume.hu >= sc.layer_hu[0]) & (volume.hu < lc.bone_min_hu) & (lungs.labels == 0)
    estimate = np.where(tissue, grid.upsample_nearest(full_c), 0).astype(np.uint8)
    flagged = [
        side for side in ("right", "left")
        if (out[f"posterior_gap_{side}_mm"] or 0.0) >= sc.max_posterior_gap_mm
    ]
    _count_opacity(out, estimate, flagged, volume.voxel_volume_ml)
    return out, estimate


def _count_opacity(
    summary: dict, estimate: np.ndarray, sides: list[str], voxel_ml: float
) -> None:
    """``dependent_opacity_{side}_ml`` for ``sides`` from the labelled estimate, in place."""
    for side, label in (("right", LUNG_RIGHT), ("left", LUNG_LEFT)):
        if side in sides:
            summary[f"dependent_opacity_{side}_ml"] = round(
                float(np.count_nonzero(estimate == label)) * voxel_ml, 1
            )


def _dependent_opacity(
    lung: np.ndarray, lung_any: np.ndarray, hu: np.ndarray, bone: np.ndarray,
    back: np.ndarray, gap_mm: np.ndarray, use: np.ndarray, midline_x: float | None,
    spacing_mm: tuple[float, float, float], config: LungvolConfig,
) -> np.ndarray:
    """Coarse voxels of lesion-like density between one lung's posterior surface and its
    posterior ribs: an ESTIMATE of the dependent opacity the mask left out (not added).

    Per left-right column of the mid-thorax slices (``use``; ``back``: the lung's most
    posterior voxel, ``gap_mm``: the nearest rib passing behind it), the voxels behind the
    lung with coarse HU within ``subpleural.layer_hu``, not bone and not lung, contiguous
    from the lung, up to ``reference_gap_mm`` (the wall) in front of the rib. Columns within
    ``lungs.midline_bone_half_width_mm`` of the midline (spine, aorta, oesophagus) are left
    out, and so are columns whose lung ends more than ``dependent_level_tolerance_mm`` in front
    of the slice's median posterior lung surface (the level of the dependent opacity): behind
    a lingula or middle lobe lies the heart. A lower bound: the paravertebral gutters, the
    lateral recesses and the bases are not counted. Array y increases towards posterior.
    """
    sc, lc = config.subpleural, config.lungs
    cols = use.copy()
    if midline_x is not None:
        x = np.arange(lung.shape[2])
        cols &= (np.abs(x - midline_x) > lc.midline_bone_half_width_mm / spacing_mm[2])[None, :]
    if not cols.any():
        return np.zeros(lung.shape, bool)
    level = np.full(lung.shape[0], np.inf)
    for z in np.flatnonzero(cols.any(axis=1)):
        level[z] = np.median(back[z, cols[z]])
    cols &= back >= level[:, None] - sc.dependent_level_tolerance_mm / spacing_mm[1]
    limit = back + np.floor((np.where(cols, gap_mm, 0.0) - sc.reference_gap_mm) / spacing_mm[1])
    y = np.arange(lung.shape[1])[None, :, None]
    low, high = sc.layer_hu
    behind = y > back[:, None, :]
    ok = ((hu >= low) & (hu <= high) & ~bone & ~lung_any) | ~behind
    # Contiguous from the lung surface: a running AND along y (posterior).
    run = np.logical_and.accumulate(ok, axis=1)
    return run & behind & (y <= limit[:, None, :]) & cols[:, None, :]


def measure_costal_gap(
    volume: CTVolume, lungs: LungMask, lesions: LesionMask, config: LungvolConfig
) -> tuple[dict, dict[str, np.ndarray] | None, np.ndarray | None]:
    """Lung-surface-to-rib gap where the costal surface faces lesion and where it is aerated.

    Returns the summary (mm, fractions, ``flagged``), for the recovery the coarse grid
    arrays (``None`` when there is no costal surface), and :func:`measure_rib_gaps`'s
    estimate of dependent opacity outside the mask (CT grid, uint8 lung label; ``None``).
    """
    # The lung stage's grid: its coarse CT and block maxima come from the cache.
    grid_full = CoarseGrid.for_volume(
        volume.shape, volume.spacing_mm, working_spacing_mm=config.lungs.working_spacing_mm,
        first_index=patient_index(volume.origin_lps_mm, volume.direction, volume.spacing_mm),
    )
    lung_full = grid_full.downsample_fraction(lungs.labels > 0) >= 0.5
    # The rib gaps and the lesion's blocks are independent of the costal gap: they run on a
    # second thread (same results; on the 400-slice phantom the gain, at most the rib
    # gaps' 0.2 s, was within the host's run-to-run spread).
    with ThreadPoolExecutor(max_workers=1) as pool:
        rib_gaps = pool.submit(measure_rib_gaps, volume, lungs, config, grid_full, lung_full)
        lesion_blocks = pool.submit(lambda: grid_full.downsample_max(lesions.labels > 0) > 0)
        summary, arrays = _costal_gap(volume, grid_full, lung_full, lesion_blocks, config)
        gaps, estimate = rib_gaps.result()
    summary.update(gaps)
    return summary, arrays, estimate


def _costal_gap(
    volume: CTVolume, grid_full: CoarseGrid, lung_full: np.ndarray,
    lesion_blocks: Future[np.ndarray], config: LungvolConfig,
) -> tuple[dict, dict[str, np.ndarray] | None]:
    """:func:`measure_costal_gap` but for the rib gaps: the summary and the arrays.
    ``lesion_blocks``: the coarse blocks holding lesion (grid ``grid_full``)."""
    sc, lc = config.subpleural, config.lungs
    sp = grid_full.spacing_mm
    # Work in the lungs' coarse box with room for the ribs around them.
    box_c = bounding_box(lung_full, tuple(
        int(np.ceil(sc.costal_bone_distance_mm / s)) + 2 for s in sp
    ))
    hu_c = coarse_mean(volume.hu, grid_full)[box_c]
    bone_c, _ = bone_map(
        hu_c, coarse_max(volume.hu, grid_full)[box_c], lc, grid_full.voxel_volume_ml,
        grid_full.spacing_mm,
    )
    lung_c = lung_full[box_c]
    summary: dict = {
        "flagged": False, "costal_surface_ml": 0.0, "lesion_facing_fraction": 0.0,
        "gap_aerated_mm": None, "gap_lesion_mm": None, "reference_gap_mm": None,
        "excess_mm": None, "reference_is_own": False,
        "gap_posterior_mm": None, "gap_anterior_mm": None, "dependent_excess_mm": None,
        "dependent_flagged": False,
    }
    if not bone_c.any() or not lung_c.any():
        return summary, None
    d_bone = distance_transform_edt(~bone_c, sampling=sp).astype(np.float32)
    tissue = ~lung_c & (hu_c >= sc.tissue_min_hu)
    surface = lung_c & _dilate1(tissue)
    costal = surface & (d_bone <= sc.costal_bone_distance_mm)
    near_lesion = _dilate1(lesion_blocks.result()[box_c])
    facing, aerated = costal & near_lesion, costal & ~near_lesion
    n_costal = int(np.count_nonzero(costal))
    if n_costal == 0:
        return summary, None
    size = _window_size(sc.window_mm, sp)
    _dependent_gap(summary, costal, lung_c, d_bone, size, sc.min_dependent_excess_mm)
    gap_facing = _local_min_gap(facing, d_bone, size)
    gap_aerated = _local_min_gap(aerated, d_bone, size)
    fraction = np.count_nonzero(facing) / n_costal
    summary["costal_surface_ml"] = round(n_costal * grid_full.voxel_volume_ml, 1)
    summary["lesion_facing_fraction"] = round(float(fraction), 3)
    if aerated.any():
        summary["gap_aerated_mm"] = round(float(np.median(gap_aerated[aerated])), 2)
    if facing.any():
        summary["gap_lesion_mm"] = round(float(np.median(gap_facing[facing])), 2)
    own_reference = 1.0 - fraction >= sc.min_aerated_fraction
    reference = summary["gap_aerated_mm"] if own_reference else sc.reference_gap_mm
    summary["reference_gap_mm"] = reference
    summary["reference_is_own"] = bool(own_reference)
    if summary["gap_lesion_mm"] is None or reference is None:
        return summary, None
    excess = summary["gap_lesion_mm"] - reference
    summary["excess_mm"] = round(float(excess), 2)
    summary["flagged"] = bool(excess >= sc.min_excess_mm and fraction >= sc.min_lesion_fraction)
    reach = np.where(facing, np.clip(gap_facing - reference, 0.0, sc.max_layer_mm), 0.0)
    arrays = {"reach_mm": reach.astype(np.float32), "costal": costal, "box_c": box_c,
              "grid": grid_full}
    return summary, arrays


def _grow_layer(
    volume: CTVolume, lungs: LungMask, lesions: LesionMask, arrays: dict,
    config: LungvolConfig,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, float]:
    """Add the layer on the CT grid; returns new lung and lesion labels, the added voxels
    (bool, CT grid; None when none) and the added solid (mL)."""
    sc, lesc = config.subpleural, config.lesions
    box_c, grid = arrays["box_c"], arrays["grid"]
    reach_c, costal = arrays["reach_mm"], arrays["costal"]
    # Coarse voxels within one voxel of the costal surface take the reach of the nearest
    # surface voxel (aerated ones have none): the CT-grid mask and the coarse one differ by
    # up to a block at the surface. Elsewhere (diaphragm, mediastinum) there is none.
    d_costal, near = distance_transform_edt(~costal, return_indices=True)
    reach_c = np.where(d_costal <= 1.5, reach_c[tuple(near)], 0.0)
    active_c = reach_c > 0
    if not active_c.any():
        return lungs.labels, lesions.labels, None, 0.0
    # CT voxels of the active region, with a margin of the largest reach.
    margin = tuple(int(np.ceil(sc.max_layer_mm / s)) + 1 for s in volume.spacing_mm)
    full = tuple(
        slice(max(0, (b.start + a.start) * f - p - m), min(n, (b.start + a.stop) * f - p + m))
        for a, b, f, p, m, n in zip(
            bounding_box(active_c), box_c, grid.factors, grid.phase, margin, grid.full_shape,
            strict=True,
        )
    )
    lung_labels = lungs.labels[full]
    lung = lung_labels > 0
    hu = volume.hu[full].astype(np.float32)
    sigma = tuple(lesc.smoothing_sigma_mm / s for s in volume.spacing_mm)
    smooth = ndimage.gaussian_filter(hu, sigma) if lesc.smoothing_sigma_mm > 0 else hu
    dist, nearest = distance_transform_edt(
        ~lung, sampling=volume.spacing_mm, return_indices=True
    )
    # Reach at the nearest lung voxel's coarse block (indices into the coarse box).
    coarse = grid.coarse_index(tuple(n + s.start for n, s in zip(nearest, full, strict=True)))
    reach = reach_c[tuple(
        np.clip(c - b.start, 0, n - 1) for c, b, n in zip(coarse, box_c, reach_c.shape, strict=True)
    )]
    low, high = sc.layer_hu
    candidate = (
        ~lung & (dist <= reach) & (smooth >= low) & (smooth <= high)
        & (hu < config.lungs.bone_min_hu)
    )
    grown = ndimage.binary_propagation(lung, mask=lung | candidate) & candidate
    new_lungs = lungs.labels.copy()
    new_lesions = lesions.labels.copy()
    new_lungs[full][grown] = lung_labels[tuple(nearest)][grown]
    ggo_low, ggo_high = lesc.ggo_band_hu
    solid_low, solid_high = lesc.solid_band_hu
    is_solid = grown & (smooth >= solid_low) & (smooth <= solid_high)
    is_ggo = grown & (smooth >= ggo_low) & (smooth < ggo_high)
    view = new_lesions[full]
    view[is_ggo] = LESION_GGO
    view[is_solid] = LESION_SOLID
    added = np.zeros(lungs.labels.shape, bool)
    added[full] = grown
    return new_lungs, new_lesions, added, float(np.count_nonzero(is_solid) * volume.voxel_volume_ml)


def add_solid_shell(
    volume: CTVolume, lung_labels: np.ndarray, lesion_labels: np.ndarray,
    config: LungvolConfig, noise_sigma_mm: float = 0.0, placed: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """One in-plane voxel of solid-band tissue outside the lung mask, next to solid lesion on
    the mask's surface, joins the lung (the label of its neighbour) and the solid lesion.

    Where aerated lung meets the chest wall, mediastinum or diaphragm, the lung mask keeps
    the partial-volume voxels of the pleura (at least half lung). Where solid lesion
    meets them there is no contrast: the mask stops a voxel short, and that voxel is lesion
    in an expert contour drawn along the pleura (on the real chest with inserted lesions,
    49 of the 71 mL of solid outside the mask at 30 % lies within 2 mm of it). The voxel is
    taken when its HU, smoothed like the lesion bands (``lesions.smoothing_sigma_mm``, and
    the band part of the noise adaptation's smoothing, ``noise_sigma_mm``), is in
    ``lesions.solid_band_hu`` and it is not bone. Solid lesion in ``placed`` (bool; the
    layer this step grew towards the ribs, whose outer surface is placed by the rib gap
    already) adds none. Returns the new lung
    and lesion labels and the number of voxels added.

    A correction of a partial-volume bias, voxel by voxel a guess: the true pleura lies
    somewhere in the added voxel or the one inside it, and nothing in the image says where
    (on the inserted lesions 44-56 % of the added voxels lie inside the true lung; a closing
    of the mask, a rib distance or the number of solid neighbours did not sort them). Over a
    surface the volumes come out right on average (docs/segmentation.md, "Solid shell").
    """
    shape = lesion_labels.shape
    flat_lung = lung_labels.reshape(-1)
    solid = lesion_labels == LESION_SOLID
    if placed is not None:
        solid &= ~placed
    z, y, x = np.unravel_index(np.flatnonzero(solid), shape)
    del solid
    # The ring: in-plane 4-neighbours outside the mask of solid lesion voxels (those on the
    # surface). By index, not by a morphological pass over the volume: solid voxels are few.
    ring_parts = []
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        yy, xx = y + dy, x + dx
        ok = (yy >= 0) & (yy < shape[1]) & (xx >= 0) & (xx < shape[2])
        flat = np.ravel_multi_index((z[ok], yy[ok], xx[ok]), shape)
        ring_parts.append(flat[flat_lung[flat] == 0])
    ring = np.unique(np.concatenate(ring_parts))
    if ring.size == 0:
        return lung_labels, lesion_labels, 0
    rz, ry, rx = np.unravel_index(ring, shape)
    sigma_mm = float(np.hypot(config.lesions.smoothing_sigma_mm, noise_sigma_mm))
    sigma = tuple(sigma_mm / s for s in volume.spacing_mm)
    margin = tuple(int(np.ceil(4 * s)) + 1 for s in sigma)
    box = tuple(
        slice(max(0, int(c.min()) - m), min(n, int(c.max()) + m + 1))
        for c, m, n in zip((rz, ry, rx), margin, shape, strict=True)
    )
    hu_box = volume.hu[box]
    # The box holds both lungs' surfaces: two threads (the same values as one call).
    with ThreadPoolExecutor(max_workers=1) as pool:
        smooth = gaussian_in_slabs(hu_box.astype(np.float32), sigma, pool, mode="reflect")
    local = (rz - box[0].start, ry - box[1].start, rx - box[2].start)
    value = smooth[local]
    low, high = config.lesions.solid_band_hu
    keep = (value >= low) & (value <= high) & (hu_box[local] < config.lungs.bone_min_hu)
    if not keep.any():
        return lung_labels, lesion_labels, 0
    rz, ry, rx = rz[keep], ry[keep], rx[keep]
    n = int(rz.size)
    # The label of the in-plane lung neighbour (the two lungs never share one: pleura and
    # mediastinum lie between them; at a junction line the larger label wins).
    neighbour = np.zeros(n, np.uint8)
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        yy = np.clip(ry + dy, 0, shape[1] - 1)
        xx = np.clip(rx + dx, 0, shape[2] - 1)
        neighbour = np.maximum(neighbour, lung_labels[rz, yy, xx])
    new_lungs, new_lesions = lung_labels.copy(), lesion_labels.copy()
    new_lungs[rz, ry, rx] = neighbour
    new_lesions[rz, ry, rx] = LESION_SOLID
    return new_lungs, new_lesions, n


def recover_subpleural_layer(
    volume: CTVolume, lungs: LungMask, lesions: LesionMask, config: LungvolConfig
) -> tuple[LungMask, LesionMask]:
    """Measure the costal gap (module docstring) and, when flagged and
    ``subpleural.recover``, add the layer to both masks.

    The summary goes into the lung mask's ``info["subpleural"]``; a flagged scan gets a
    ``subpleural_layer`` warning (a QC flag) either way, since the recovered layer is an
    estimate.
    """
    sc = config.subpleural
    if not sc.enabled:
        return lungs, lesions
    t0 = time.perf_counter()
    summary, arrays, estimate = measure_costal_gap(volume, lungs, lesions, config)
    summary["recovered_ml"] = 0.0
    summary["recovered_solid_ml"] = 0.0
    new_lung_labels, new_lesion_labels = lungs.labels, lesions.labels
    recovered = None
    warnings: list[str] = []
    if summary["dependent_flagged"] and not summary["flagged"]:
        warnings.append(
            f"subpleural_layer: the posterior (dependent) costal lung surface lies "
            f"{summary['dependent_excess_mm']:.1f} mm further from the ribs than the anterior "
            "one, although little of it faces lesion: a layer of consolidation along the "
            "posterior pleura, with aerated lung inside it, may have been left out of the lung "
            "mask (the lesion would be under-read); nothing was added; check qc.png"
        )
    if summary["flagged"] and arrays is not None:
        # Against the default wall thickness (too little aerated costal surface to measure
        # the patient's own) a wide natural gap, e.g. extrapleural fat, would read as a
        # layer: flag, but add nothing.
        if sc.recover and summary["reference_is_own"]:
            new_lung_labels, new_lesion_labels, added, solid_ml = _grow_layer(
                volume, lungs, lesions, arrays, config
            )
            if added is not None and added.any():
                recovered = added
                added_ml = float(np.count_nonzero(added) * volume.voxel_volume_ml)
                summary["recovered_ml"] = round(added_ml, 1)
            summary["recovered_solid_ml"] = round(solid_ml, 1)
        if not sc.recover:
            action = "nothing was added (subpleural.recover is off)"
        elif not summary["reference_is_own"]:
            action = "nothing was added (too little aerated costal surface to measure the wall)"
        else:
            action = (
                f"{summary['recovered_ml']:.0f} mL between the mask and the ribs was added as "
                "lung (an estimate from the gap, outlined in qc.png)"
            )
        against = (
            "than where it is aerated" if summary["reference_is_own"]
            else "than the default wall thickness (subpleural.reference_gap_mm "
            f"{summary['reference_gap_mm']:g} mm)"
        )
        warnings.append(
            f"subpleural_layer: where the lung surface faces lesion it lies "
            f"{summary['excess_mm']:.1f} mm further from the ribs {against} "
            f"({100 * summary['lesion_facing_fraction']:.0f} % of the costal surface): a "
            f"layer of consolidation along the pleura was likely left out of the lung mask; "
            f"{action}; check it"
        )
    summary["solid_shell_ml"] = 0.0
    if sc.solid_shell:
        new_lung_labels, new_lesion_labels, n_shell = add_solid_shell(
            volume, new_lung_labels, new_lesion_labels, config,
            float(lesions.info.get("noise_band_smoothing_sigma_mm") or 0.0), recovered,
        )
        summary["solid_shell_ml"] = round(n_shell * volume.voxel_volume_ml, 1)
    if estimate is not None and (recovered is not None or summary["solid_shell_ml"] > 0):
        # What the layer step and the shell added is lung now: not outside it.
        estimate = np.where(new_lung_labels > 0, 0, estimate).astype(np.uint8)
        estimated = [
            side for side in ("right", "left")
            if summary[f"dependent_opacity_{side}_ml"] is not None
        ]
        _count_opacity(summary, estimate, estimated, volume.voxel_volume_ml)
    if summary["posterior_gap_flagged"]:
        gaps = ", ".join(
            f"{side} {summary[f'posterior_gap_{side}_mm']:.0f} mm" for side in ("right", "left")
            if summary[f"posterior_gap_{side}_mm"] is not None
        )
        opacity_ml = sum(
            summary[f"dependent_opacity_{side}_ml"] or 0.0 for side in ("right", "left")
        )
        estimated = (
            f"at least {opacity_ml:.0f} mL of lesion-density tissue lies between them and the "
            "ribs (dotted in qc.png); " if opacity_ml > 0 else ""
        )
        warnings.append(
            f"dependent_opacity_outside_lung: the lungs' posterior surface lies in front of the "
            f"posterior ribs by a median {gaps} (normal: under "
            f"{sc.max_posterior_gap_mm:g} mm): dependent consolidation or a pleural effusion "
            f"lies outside the lung mask; {estimated}the lung volume and the lesion proportion "
            "read low; nothing was added; check qc.png"
        )
    if summary["anterior_gap_flagged"]:
        gaps = ", ".join(
            f"{side} {summary[f'anterior_gap_{side}_mm']:.0f} mm" for side in ("right", "left")
            if summary[f"anterior_gap_{side}_mm"] is not None
        )
        if summary["anterior_lower_gap_flagged"]:
            gaps += (
                f"; the right lung's lower lateral part "
                f"{summary['anterior_lower_gap_right_mm']:.0f} mm"
            )
        warnings.append(
            f"anterior_opacity_outside_lung: the lungs' anterior surface lies behind the "
            f"anterior ribs by a median {gaps} (normal: under {sc.max_anterior_gap_mm:g} mm): "
            "consolidation against the anterior chest wall, or fluid there, lies outside the "
            "lung mask; the lung volume and the lesion proportion read low; nothing was "
            "added; check qc.png"
        )
    if summary["anterior_lower_gap_left_flagged"]:
        warnings.append(
            f"left_anterior_lower_gap: the left lung's lower lateral front lies a median "
            f"{summary['anterior_lower_gap_left_mm']:.0f} mm behind the anterior ribs "
            f"(flagged from {sc.max_anterior_lower_gap_left_mm:g} mm; normal lungs here "
            "under 6 mm): a consolidated lingula left out of the lung mask (the lung volume "
            "and the lesion proportion then read low), or an enlarged heart against the chest "
            "wall; nothing was added and the normal-CT call is kept; check qc.png"
        )
    summary["timing_s"] = round(time.perf_counter() - t0, 3)
    logger.info("subpleural: %s", summary)
    lung_info = {**lungs.info, "subpleural": summary}
    if warnings:
        lung_info["warnings"] = [*lungs.info.get("warnings", []), *warnings]
    if summary["recovered_ml"] > 0 or summary["solid_shell_ml"] > 0:
        lung_info = _update_lung_volumes(lung_info, new_lung_labels, volume)
    return (
        LungMask(
            new_lung_labels, lung_info, recovered=recovered,
            outside_estimate=None if estimate is None or not estimate.any() else estimate > 0,
        ),
        LesionMask(new_lesion_labels, lesions.info),
    )


def _update_lung_volumes(info: dict, labels: np.ndarray, volume: CTVolume) -> dict:
    voxel_ml = volume.voxel_volume_ml
    return {
        **info,
        "right_ml": round(float(np.count_nonzero(labels == LUNG_RIGHT) * voxel_ml), 2),
        "left_ml": round(float(np.count_nonzero(labels == LUNG_LEFT) * voxel_ml), 2),
    }
