"""Classical right/left lung segmentation with pathology inclusion.

Steps (heavy work on the coarse grid, see :mod:`lungvol.segmentation.grid`):

1. Body mask: tissue above ``body_threshold_hu``, holes filled slice by slice, largest
   3-D component (drops the table).
2. Internal air: voxels below ``air_threshold_hu`` inside the body, plus air regions that
   touch the field of view and are lung-like (median above ``pure_air_max_hu``) so that a
   scan cropped through the lungs still works.
3. Airways: trachea detected in the top slices, grown down, proximal part (trachea, main
   bronchi) removed together with a wall band of ``airway_wall_mm``.
4. Two lungs: the largest components; a connected pair (anterior/posterior junction) is
   split by distance-transform erosion + watershed. Label by side: 1 = right = low x.
5. Pathology inclusion per lung: a 3-D closing of radius ``fill_closing_radius_mm``
   (distance-transform based) that may only add body voxels at or below
   ``pathology_max_hu`` (no bone), then 2-D hole filling; holes that open onto the abdomen
   (the diaphragm dome seen in axial slices) are rejected. With ``pleural_hull`` a
   slice-wise convex hull adds pleura-based opacities that are bounded by the chest wall.
   Lesion rim: dense disease that reaches the pleura is grown by up to ``rim_max_mm``
   into soft tissue whose HU continues the lesion's (3-D, 26-neighbourhood) and that lies
   inside the lung's envelope (3-D closing by ``rim_envelope_radius_mm``), so the outer
   1-3 mm of consolidation against the chest wall or diaphragm is kept and the wall
   beyond is not; healthy lung seeds nothing. Not at the hila; with
   ``rim_medial_requires_bone``, on the mediastinal side only near bone.
6. Full-resolution refinement: in a one-coarse-voxel band along the lung surface, CT
   voxels are re-decided with ``surface_threshold_hu``, the half-occupancy point between
   aerated lung and soft tissue (pathology additions are kept); rejected
   voxels that continue a dense lesion come back by the same rim rule on the CT grid.
"""

from __future__ import annotations

import logging
import math
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
from scipy import ndimage
from skimage.morphology import convex_hull_image
from skimage.segmentation import watershed

from lungvol.config import LungSegmentationConfig
from lungvol.errors import SegmentationError
from lungvol.segmentation.airways import find_airways
from lungvol.segmentation.distance import distance_transform_edt
from lungvol.segmentation.grid import (
    CoarseGrid,
    bounding_box,
    coarse_max,
    coarse_mean,
    patient_index,
)
from lungvol.types import LUNG_LEFT, LUNG_RIGHT, CTVolume, LungMask

logger = logging.getLogger(__name__)

_CONN6 = ndimage.generate_binary_structure(3, 1)
# Border-touching air regions smaller than this (coarse voxels) are never lung.
_FOV_MIN_VOXELS = 125


def _radius_voxels(radius_mm: float, spacing_mm: tuple[float, ...]) -> tuple[int, ...]:
    return tuple(int(np.ceil(radius_mm / s)) + 1 for s in spacing_mm)


def _dilate_mm(mask: np.ndarray, radius_mm: float, spacing_mm: tuple[float, ...]) -> np.ndarray:
    """Euclidean dilation by ``radius_mm`` (distance transform on the mask's bounding box)."""
    out = np.zeros_like(mask)
    if not mask.any() or radius_mm <= 0:
        return mask.copy()
    box = bounding_box(mask, _radius_voxels(radius_mm, spacing_mm))
    dist = distance_transform_edt(~mask[box], sampling=spacing_mm)
    out[box] = dist <= radius_mm
    return out


def _closing_mm(mask: np.ndarray, radius_mm: float, spacing_mm: tuple[float, ...]) -> np.ndarray:
    """Euclidean closing by a ball of ``radius_mm``.

    Uses two distance transforms instead of a large structuring element (much faster).
    Where ``mask`` has less than the radius to the array border (a lung cut by the field of
    view), the array is padded with background: otherwise the border counts as foreground
    and the closing fills a slab of tissue along it.
    """
    need = _radius_voxels(radius_mm, spacing_mm)
    pad = []
    for axis, (r, n) in enumerate(zip(need, mask.shape, strict=True)):
        idx = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if idx.size == 0:
            return mask.copy()
        pad.append((max(0, r - int(idx[0])), max(0, r - (n - 1 - int(idx[-1])))))
    work = np.pad(mask, pad) if any(p != (0, 0) for p in pad) else mask
    dilated = distance_transform_edt(~work, sampling=spacing_mm) <= radius_mm
    closed = distance_transform_edt(dilated, sampling=spacing_mm) > radius_mm
    if work is not mask:
        crop = tuple(slice(lo, lo + n) for (lo, _hi), n in zip(pad, mask.shape, strict=True))
        closed = closed[crop]
    return closed | mask


def _label_means(values: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """Mean of ``values`` per label 1..n (bincount; much faster than ndimage.median)."""
    counts = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    sums = np.bincount(labels.ravel(), weights=values.ravel(), minlength=n + 1)[1:]
    return sums / np.maximum(counts, 1)


# In-plane (axial) neighbourhoods as 3-D structuring elements: operations with them act on
# every slice independently, in one call (much faster than a Python loop over slices).
_PLANE_CROSS = np.zeros((3, 3, 3), bool)
_PLANE_CROSS[1] = ndimage.generate_binary_structure(2, 1)
_PLANE_SQUARE = np.zeros((3, 3, 3), bool)
_PLANE_SQUARE[1] = True


def _fill_holes_2d(mask: np.ndarray) -> np.ndarray:
    """Fill holes slice by slice (axial), all slices in one call."""
    return ndimage.binary_fill_holes(mask, structure=_PLANE_CROSS)


def _body_mask(hu: np.ndarray, config: LungSegmentationConfig) -> np.ndarray:
    tissue = hu > config.body_threshold_hu
    tissue = ndimage.binary_opening(tissue, structure=np.ones((1, 3, 3), bool))
    lab, n = ndimage.label(tissue)
    if n == 0:
        return tissue
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    body = lab == int(np.argmax(sizes))
    return _fill_holes_2d(body)


def _internal_air(
    hu: np.ndarray, body: np.ndarray, config: LungSegmentationConfig
) -> tuple[np.ndarray, float]:
    """Air inside the body, plus lung-like air regions cut by the field of view."""
    air = hu < config.air_threshold_hu
    internal = air & body
    outside = air & ~body
    lab, n = ndimage.label(outside)
    added_ml = 0.0
    if n:
        sizes = np.bincount(lab.ravel(), minlength=n + 1)
        # Median, not mean: outside air with a blanket or table edge has a heavy tail.
        big = np.flatnonzero(sizes[1:] >= _FOV_MIN_VOXELS) + 1
        lung_like = [i for i in big if np.median(hu[lab == i]) > config.pure_air_max_hu]
        if lung_like:
            extra = np.isin(lab, lung_like)
            internal |= extra
            added_ml = float(extra.sum())
    return internal, added_ml


def bone_map(
    hu: np.ndarray, block_max_hu: np.ndarray, config: LungSegmentationConfig,
    voxel_ml: float, spacing_mm: tuple[float, float, float] | None = None,
) -> tuple[np.ndarray, float]:
    """Bone on the working grid: 3-D components of block means at or above ``bone_min_hu``
    in which at least ``cortical_min_fraction`` of the blocks hold a CT voxel at or above
    ``cortical_min_hu`` (``block_max_hu``), less the enhanced blood joined to them. Also
    returns the size of the largest piece left out (working-grid voxels): contrast-enhanced
    blood.

    Ribs, spine and sternum have cortex throughout (25-60 % of their blocks on the real
    scans); contrast-enhanced blood (heart, aorta: 150-400 HU) has none, and would otherwise
    pass the rib tests of the pleural hull and the mediastinal rule and take mediastinum
    into the lungs. Where blood touches bone (the descending aorta lies on the spine, the
    right ventricle behind the sternum) the block means bridge them into one component.
    Such a component is judged once more by its cores (the component less its surface,
    one 6-connected erosion; ``voxel_ml``: a block's volume): a core of at least
    ``blood_core_min_ml`` in which fewer than ``cortical_min_fraction`` of the blocks hold
    cortex or touch a block that does is blood, and so are the blocks of its surface that
    touch no other core and hold no cortex. One erosion cuts the bridge (a vessel wall and
    the cortex, averaged, a block or two thick); bone keeps its cores, whose cortex lies
    in or around them (a vertebra's shell around cancellous bone): on the real scans here
    every bone core of that size holds cortex in 2.6-81 % of its blocks. Near a
    homogeneous core, cortex must also be denser than the core (CT angiography's blood
    reaches the cortical level by its noise): :func:`_blood_joined_to_bone`. With
    ``spacing_mm`` (the blocks' size) and ``blood_min_depth_mm`` above 0, a core lying that
    deep in its component is blood whatever its cortex (the rerun that the QC flags of
    :func:`suspect_bone_core` advise).
    """
    candidate = hu >= config.bone_min_hu
    cortical = block_max_hu >= config.cortical_min_hu
    keep, rejected_max = _with_cortex(candidate, cortical, config.cortical_min_fraction)
    if config.blood_core_min_ml > 0 and keep.any():
        blood, cortical = _blood_joined_to_bone(
            hu, keep, cortical, config, voxel_ml, spacing_mm
        )
        if blood.any():
            # What the blood leaves of its surface (a rim one block out, where the surface
            # bends) no longer joins bone: the component test once more, with the cortex
            # judged as for the cores.
            keep, _ = _with_cortex(keep & ~blood, cortical, config.cortical_min_fraction)
            rejected = candidate & ~keep
            pieces, k = ndimage.label(rejected, structure=_CONN6)
            rejected_max = float(np.bincount(pieces[rejected], minlength=k + 1)[1:].max())
    return keep, rejected_max


def _with_cortex(
    mask: np.ndarray, cortical: np.ndarray, min_fraction: float
) -> tuple[np.ndarray, float]:
    """The 6-connected components of ``mask`` in which at least ``min_fraction`` of the
    blocks are ``cortical``, and the size of the largest other one (blocks)."""
    lab, n = ndimage.label(mask, structure=_CONN6)
    if n == 0:
        return mask.copy(), 0.0
    # Counted over the mask's blocks only (a few % of the grid; the same counts).
    size = np.bincount(lab[mask], minlength=n + 1)
    cortex = np.bincount(lab[mask & cortical], minlength=n + 1)
    keep_id = cortex >= min_fraction * size
    keep_id[0] = False
    return keep_id[lab], float(np.where(keep_id, 0, size)[1:].max(initial=0))


def _label_quartiles(
    values: np.ndarray, labels: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """First quartile, median and third quartile (nearest rank, lower) of ``values`` per
    label 1..n (index 0 and empty labels: 0). scipy.ndimage has a median per label but no
    other quantile; one sort gives all three."""
    order = np.lexsort((values, labels))
    v, lab = values[order], labels[order]
    counts = np.bincount(lab, minlength=n + 1)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    out = []
    for q in (0.25, 0.5, 0.75):
        idx = starts + np.floor(q * np.maximum(counts - 1, 0)).astype(np.int64)
        out.append(np.where(counts > 0, v[np.minimum(idx, len(v) - 1)], 0.0))
    return out[0], out[1], out[2]


class _Cores(NamedTuple):
    """The cores of a bone map (:func:`_bone_cores`), in its box."""

    box: tuple[slice, ...]  # the bone's bounding box (one block of margin)
    sub: np.ndarray  # the bone map in it
    core: np.ndarray  # one 6-connected erosion of it
    labels: np.ndarray  # the core's 6-connected components 1..n
    n: int
    size: np.ndarray  # blocks per label (index 0: 0)
    q1: np.ndarray  # quartiles of the block means (``hu``) per label
    median: np.ndarray
    q3: np.ndarray


def _bone_cores(hu: np.ndarray, bone: np.ndarray) -> _Cores | None:
    """A bone map less its surface (one 6-connected erosion), labelled, with each core's
    size and block-mean quartiles; None when no core is left."""
    box = bounding_box(bone, 1)
    sub = bone[box]
    core = ndimage.binary_erosion(sub, structure=_CONN6)
    labels, n = ndimage.label(core, structure=_CONN6)
    if n == 0:
        return None
    size = np.bincount(labels[core], minlength=n + 1)
    q1, median, q3 = _label_quartiles(hu[box][core], labels[core], n)
    return _Cores(box, sub, core, labels, n, size, q1, median, q3)


def _blood_joined_to_bone(
    hu: np.ndarray, bone: np.ndarray, cortical: np.ndarray, config: LungSegmentationConfig,
    voxel_ml: float, spacing_mm: tuple[float, float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The blocks of ``bone`` that are enhanced blood bridged to it (:func:`bone_map`):
    cortex-free cores of at least ``blood_core_min_ml``, and their cortex-free surface
    blocks that touch no other core. Also returns the cortex as judged here.

    Blood is homogeneous, bone is not (cortex and marrow): near a core of that size (two
    6-connected steps) whose block means have an interquartile range of at most
    ``blood_max_iqr_hu`` and a median below ``blood_max_hu``, a ``cortical`` block is
    cortex only where its mean (``hu``) is also ``blood_cortex_margin_hu`` above that
    median. The blocks of bright blood (CT angiography, 550-650 HU) that reach
    ``cortical_min_hu`` are its noise tail, no denser than the rest of it; the cortex
    around homogeneous cancellous bone is denser than it. Elsewhere the absolute test
    stands. A homogeneous core at or above ``blood_max_hu`` is compact bone (cortex
    throughout, an ivory vertebra)."""
    blood_full = np.zeros(bone.shape, bool)
    cores = _bone_cores(hu, bone)
    if cores is None:
        return blood_full, cortical
    box, sub, core, core_lab, m = cores.box, cores.sub, cores.core, cores.labels, cores.n
    core_size, q1, median, q3 = cores.size, cores.q1, cores.median, cores.q3
    hu_b = hu[box]
    big = core_size * voxel_ml >= config.blood_core_min_ml
    big[0] = False
    homogeneous = big & (q3 - q1 <= config.blood_max_iqr_hu) & (median < config.blood_max_hu)
    if homogeneous.any():
        # The least median of a homogeneous core within two steps (+inf: none there),
        # worked out in those cores' box.
        near = bounding_box(homogeneous[core_lab], 2)
        least = np.where(homogeneous, median, np.inf).astype(np.float32)[core_lab[near]]
        for _ in range(2):
            least = ndimage.grey_erosion(least, footprint=_CONN6)
        cortical = cortical.copy()
        cortical[box][near] &= (
            (hu_b[near] - config.blood_cortex_margin_hu >= least) | np.isposinf(least)
        )
    cortical_b = cortical[box]
    # A vertebra's cortex lies around its cancellous core, not in it: a core block counts
    # as cortex where it or a 6-neighbour holds a cortical voxel.
    near_cortex = ndimage.binary_dilation(cortical_b, structure=_CONN6)
    core_cortex = np.bincount(core_lab[core & near_cortex], minlength=m + 1)
    blood_id = big & (core_cortex < config.cortical_min_fraction * core_size)
    if spacing_mm is not None and config.blood_min_depth_mm > 0:
        # Too thick for bone, whatever its cortex: blood (opt-in, for a flagged scan).
        objs = ndimage.find_objects(core_lab)
        need = config.blood_min_depth_mm
        # Metal (a prosthesis) stays out of the blood, as out of suspect_bone_core's flags.
        for i in np.flatnonzero(big & ~blood_id & (median < config.metal_core_min_hu)):
            if _may_be_deep(core_size[i] * voxel_ml, objs[i - 1], spacing_mm, need):
                depth = _core_depth_mm(sub, core_lab, i, objs[i - 1], spacing_mm, need)
                blood_id[i] = depth >= need
    if not blood_id.any():
        return blood_full, cortical
    blood = blood_id[core_lab]
    surface = (
        ndimage.binary_dilation(blood, structure=_CONN6) & sub & ~core & ~cortical_b
        & ~ndimage.binary_dilation(core & ~blood, structure=_CONN6)
    )
    blood_full[box] = blood | surface
    return blood_full, cortical


def _core_depth_mm(
    component: np.ndarray, core_lab: np.ndarray, i: int, obj: tuple[slice, ...],
    spacing_mm: tuple[float, float, float], need_mm: float,
) -> float:
    """Largest distance (mm) from core ``i`` of ``core_lab`` (bounding box ``obj``) to the
    surface of ``component`` (the bone map), measured in the core's box with a margin of
    ``need_mm``: exact up to ``need_mm``, beyond it at least that. Outside the array counts
    as not bone (a structure cut by a crop reads no deeper than what is in view)."""
    near = tuple(
        slice(max(0, b.start - int(np.ceil(need_mm / s)) - 2),
              min(n, b.stop + int(np.ceil(need_mm / s)) + 2))
        for b, s, n in zip(obj, spacing_mm, component.shape, strict=True)
    )
    depth = distance_transform_edt(
        np.pad(component[near], 1, constant_values=False), sampling=spacing_mm
    )[1:-1, 1:-1, 1:-1]
    return float(depth[core_lab[near] == i].max())


def _may_be_deep(
    size_ml: float, obj: tuple[slice, ...], spacing_mm: tuple[float, float, float],
    depth_mm: float,
) -> bool:
    """Whether a core of ``size_ml`` in box ``obj`` can lie ``depth_mm`` deep in its
    component: it holds a ball of that radius less the block the erosion making it a core
    took off (volume), and its box spans that ball less a block each side (extents). A
    cheap necessary test before :func:`_core_depth_mm`."""
    radius_mm = max(0.0, depth_mm - max(spacing_mm))
    return size_ml >= 4.0 / 3.0 * np.pi * radius_mm**3 / 1000.0 and all(
        (b.stop - b.start) * s >= 2.0 * depth_mm - 4.0 * s
        for b, s in zip(obj, spacing_mm, strict=True)
    )


class SuspectCore(NamedTuple):
    """The largest core of the bone map that is unlike bone (:func:`suspect_bone_core`)."""

    volume_ml: float
    median_hu: float
    iqr_hu: float
    depth_mm: float
    uniform: bool  # uniform at or above blood_max_hu (else: only too thick for bone)


def suspect_bone_core(
    hu: np.ndarray, bone: np.ndarray, spacing_mm: tuple[float, float, float],
    config: LungSegmentationConfig, voxel_ml: float,
) -> SuspectCore | None:
    """The largest core of ``bone`` (one 6-connected erosion, at least ``blood_core_min_ml``)
    that is unlike bone; None when there is none.

    Depth is the largest distance inside the core's bone component (mm). Unlike bone is:

    - uniform and dense: block means (``hu``) with an IQR of at most ``blood_max_iqr_hu``
      and a median at or above ``blood_max_hu``, at least ``dense_core_flag_min_depth_mm``
      deep. :func:`bone_map` keeps such a core as compact bone, but bone is rarely that
      uniform (block-mean IQR 82-537 HU on the real scans here; the phantoms' sternum is
      uniform at 900 HU but a plate 7.7-8.4 mm deep), while a dense contrast bolus is (the
      simulated CT-angiography pool over 650 HU: IQR 21-72 HU, 25.7 mm deep);
    - thick: at least ``thick_core_flag_min_depth_mm`` deep, whatever its HU. The real
      scans' bone cores lie at most 9.5 mm deep, the phantoms' vertebrae 13.6 mm, the
      synthetic test chest's spine 17.5 mm; a blood pool whose parts enhance differently
      with no wall between them is neither uniform nor blood to :func:`bone_map` (the
      simulated CTPA-like pool: IQR ~360 HU), but as deep as the heart.

    Either way the lung stage takes it for bone, as it did all contrast before lungvol
    0.6.10: its QC flag says so rather than guess. A threshold of 0 turns its test off. A core
    whose median is ``metal_core_min_hu`` or more is metal (a prosthesis), not blood, and is
    never reported.
    """
    if not bone.any() or (
        config.dense_core_flag_min_depth_mm <= 0 and config.thick_core_flag_min_depth_mm <= 0
    ):
        return None
    cores = _bone_cores(hu, bone)
    if cores is None:
        return None
    sub, core_lab, size = cores.sub, cores.labels, cores.size
    q1, median, q3 = cores.q1, cores.median, cores.q3
    # Metal (a prosthesis) is neither bone nor blood: never flagged here.
    big = (size * voxel_ml >= config.blood_core_min_ml) & (median < config.metal_core_min_hu)
    big[0] = False
    dense_depth = config.dense_core_flag_min_depth_mm
    thick_depth = config.thick_core_flag_min_depth_mm
    uniform = big & (q3 - q1 <= config.blood_max_iqr_hu) & (median >= config.blood_max_hu)
    uniform &= dense_depth > 0
    objs = ndimage.find_objects(core_lab)
    # A core thick_depth deep holds a ball of that radius: a cheap test of its volume and
    # extents first (the real bone cores pass it rarely), the distance transform after.
    thick = np.zeros_like(big)
    if thick_depth > 0:
        for i in np.flatnonzero(big):
            thick[i] = _may_be_deep(size[i] * voxel_ml, objs[i - 1], spacing_mm, thick_depth)
    found = []
    for i in np.flatnonzero(uniform | thick):
        need = min(d for d, on in ((dense_depth, uniform[i]), (thick_depth, thick[i])) if on)
        deepest = _core_depth_mm(sub, core_lab, i, objs[i - 1], spacing_mm, need)
        if deepest >= need:
            found.append(SuspectCore(
                float(size[i] * voxel_ml), float(median[i]), float(q3[i] - q1[i]), deepest,
                bool(uniform[i] and deepest >= dense_depth),
            ))
    return max(found, key=lambda c: c.volume_ml, default=None)


def _midline_x(bone: np.ndarray, body: np.ndarray) -> float:
    """Left-right midline (x index): the spine/sternum column, else the body centre.

    Bone summed over z and y peaks at the vertebral column and sternum; ribs spread out.
    Works for crops where the body is cut by the field of view.
    """
    bone_profile = np.count_nonzero(bone & body, axis=(0, 1))
    if bone_profile.sum() > 0:
        smooth = ndimage.uniform_filter1d(bone_profile.astype(float), size=5)
        return float(np.argmax(smooth))
    body_x = np.flatnonzero(body.any(axis=(0, 1)))
    return 0.5 * (body_x[0] + body_x[-1]) if body_x.size else body.shape[2] / 2.0


def _split_pair(component: np.ndarray, spacing_mm: tuple[float, ...]) -> np.ndarray | None:
    """Split one connected two-lung component; returns labels 1/2 (unordered) or None."""
    box = bounding_box(component, 1)
    sub = component[box]
    dist = distance_transform_edt(sub, sampling=spacing_mm)
    for depth_mm in np.arange(min(spacing_mm), 30.0, min(spacing_mm)):
        core = dist > depth_mm
        lab, n = ndimage.label(core, structure=_CONN6)
        if n < 2:
            continue
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        order = np.argsort(sizes)[::-1]
        if sizes[order[1]] < 0.1 * core.sum():
            continue
        markers = np.zeros(sub.shape, np.int32)
        markers[lab == order[0]] = 1
        markers[lab == order[1]] = 2
        split = watershed(-dist, markers, mask=sub)
        out = np.zeros(component.shape, np.uint8)
        out[box] = split.astype(np.uint8)
        return out
    return None


def _gas_components(
    lab: np.ndarray, n: int, hu: np.ndarray, airways: np.ndarray,
    spacing_mm: tuple[float, ...], config: LungSegmentationConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """Per component 1..n of internal air: is it gas (bowel, stomach, outside the body)?

    Gas is mostly pure air: more than ``gas_min_fraction`` of its working-grid blocks read
    below ``gas_max_hu`` and more than ``lung_max_air_fraction`` below ``pure_air_max_hu``.
    Lung blocks average parenchyma, vessels and septa (-950..-700 HU; on the real scans
    here at most 0.5 % below -990 and 3 % below -950). A component that the bronchi enter
    (at least ``gas_airway_contact_min_mm2`` of its surface against ``airways``, the
    removed proximal tree with its wall) is lung however airy: severe emphysema, or a lung
    joined to a pneumothorax or bulla (then flagged ``lung_air_pocket``). Gut and outside
    air never touch the bronchi.

    Returns ``(gas, airy_lung)``: gas components, and airy components kept for their
    airway contact.
    """
    if n == 0:
        return np.zeros(0, bool), np.zeros(0, bool)
    flat = lab.ravel()
    size = np.bincount(flat, minlength=n + 1)[1:].astype(float)
    pure = np.bincount(flat, weights=(hu < config.gas_max_hu).ravel(), minlength=n + 1)[1:]
    airy = np.bincount(flat, weights=(hu < config.pure_air_max_hu).ravel(), minlength=n + 1)[1:]
    size = np.maximum(size, 1.0)
    gas_like = (pure > config.gas_min_fraction * size) & (
        airy > config.lung_max_air_fraction * size
    )
    if not gas_like.any() or not airways.any():
        return gas_like, np.zeros(n, bool)
    # Contact area: component voxels face-adjacent to the airway region, times the mean
    # face area of a working-grid voxel (an estimate; the threshold only needs its order).
    shell = ndimage.binary_dilation(airways, structure=_CONN6) & ~airways
    contact = np.bincount(lab[shell], minlength=n + 1)[1:]
    face_mm2 = float(np.mean([
        spacing_mm[1] * spacing_mm[2], spacing_mm[0] * spacing_mm[2],
        spacing_mm[0] * spacing_mm[1],
    ]))
    bronchi_enter = contact * face_mm2 >= config.gas_airway_contact_min_mm2
    return gas_like & ~bronchi_enter, gas_like & bronchi_enter


def _pick_lungs(
    lung_air: np.ndarray, body: np.ndarray, hu: np.ndarray, bone: np.ndarray,
    airways: np.ndarray, spacing_mm: tuple[float, ...], config: LungSegmentationConfig,
) -> tuple[np.ndarray, dict]:
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    lab, n = ndimage.label(lung_air, structure=_CONN6)
    sizes_ml = np.bincount(lab.ravel())[1:] * voxel_ml if n else np.zeros(0)
    gas, airy_lung = _gas_components(lab, n, hu, airways, spacing_mm, config)
    gas_sizes_ml = sizes_ml[gas]
    gas_ml = float(gas_sizes_ml.sum())
    sizes_ml = np.where(gas, 0.0, sizes_ml)
    largest_ml = float(sizes_ml.max()) if n else 0.0
    if largest_ml < config.min_lung_volume_ml:
        gas_note = (
            f"; {gas_ml:.0f} mL of air that is not lung (bowel or stomach gas, air outside "
            "the body: mostly pure air) was left out" if gas_ml else ""
        )
        raise SegmentationError(
            f"no lungs in view: the largest lung-like internal air region is "
            f"{largest_ml:.0f} mL (< lungs.min_lung_volume_ml = "
            f"{config.min_lung_volume_ml:.0f} mL){gas_note}; "
            "check that the scan is a chest CT covering the lungs"
        )
    order = np.argsort(sizes_ml)[::-1]
    big = [int(i) + 1 for i in order[:2] if sizes_ml[i] >= config.min_lung_volume_ml]
    info: dict = {
        "split_connected_pair": False,
        "gas_not_lung_ml": round(gas_ml, 2),
        "gas_largest_ml": round(float(gas_sizes_ml.max()) if gas.any() else 0.0, 2),
        "airy_lung_kept_ml": round(float(sizes_ml[airy_lung].sum()), 2),
    }
    parts: list[np.ndarray] = []
    centre = _midline_x(bone, body)
    if len(big) == 1:
        comp = lab == big[0]
        xs = np.nonzero(comp)[2]
        # Both sides hold a sizeable part of it: two lungs joined at a junction line.
        spans_both = min(np.mean(xs < centre), np.mean(xs > centre)) > 0.2
        split = _split_pair(comp, spacing_mm) if spans_both else None
        if split is not None:
            parts = [split == 1, split == 2]
            info["split_connected_pair"] = True
        else:
            parts = [comp]
    else:
        parts = [lab == i for i in big]
    labels = np.zeros(lung_air.shape, np.uint8)
    if len(parts) == 2:
        cx = [float(np.mean(np.nonzero(p)[2])) for p in parts]
        right, left = (parts[0], parts[1]) if cx[0] < cx[1] else (parts[1], parts[0])
        labels[right] = LUNG_RIGHT
        labels[left] = LUNG_LEFT
    else:
        cx = float(np.mean(np.nonzero(parts[0])[2]))
        labels[parts[0]] = LUNG_RIGHT if cx < centre else LUNG_LEFT
        info["single_lung"] = True
    info["midline_x_index"] = round(centre, 1)
    # Small lung fragments (partial-volume islands at the bases and apices) near a lung.
    small = np.array(
        [i + 1 for i in range(n) if (i + 1) not in big and not gas[i]], dtype=np.int64
    )
    fragments_ml = 0.0
    if small.size:
        in_small = (lab > 0) & ~np.isin(lab, big)  # the fragments only (few voxels)
        means = _label_means(hu[in_small], lab[in_small], n)[small - 1]
        candidates = small[means > config.pure_air_max_hu]
        if candidates.size:
            reach = tuple(
                max(1, int(round(config.fragment_distance_mm / s))) for s in spacing_mm
            )
            box = bounding_box(labels > 0, reach)
            near = ndimage.maximum_filter(labels[box], size=tuple(2 * r + 1 for r in reach))
            frag = np.isin(lab[box], candidates) & (near > 0)
            sub = labels[box]
            sub[frag] = near[frag]
            fragments_ml = float(frag.sum() * voxel_ml)
    info["fragments_added_ml"] = round(fragments_ml, 2)
    return labels, info


def _hole_fill_open_to_abdomen(
    holes: np.ndarray, lung: np.ndarray, max_fraction: float
) -> np.ndarray:
    """Drop 3-D hole components whose top/bottom faces mostly touch non-lung tissue.

    A 2-D hole in an axial slice can be the diaphragm dome (liver/spleen) ringed by lung;
    such a region continues below into the abdomen. Enclosed lesions sit on lung.
    """
    lab, n = ndimage.label(holes, structure=_CONN6)
    if n == 0:
        return holes
    below = np.zeros_like(holes)
    below[1:] = holes[1:] & ~holes[:-1]  # bottom-face voxels (voxel below is not hole)
    below_on_lung = np.zeros_like(holes)
    below_on_lung[1:] = below[1:] & lung[:-1]
    above = np.zeros_like(holes)
    above[:-1] = holes[:-1] & ~holes[1:]
    above_on_lung = np.zeros_like(holes)
    above_on_lung[:-1] = above[:-1] & lung[1:]
    ids = np.arange(1, n + 1)
    faces = ndimage.sum(below | above, lab, ids) + 1e-9
    on_lung = ndimage.sum(below_on_lung | above_on_lung, lab, ids)
    open_ids = ids[(1.0 - on_lung / faces) > max_fraction]
    return holes & ~np.isin(lab, open_ids)


def _convex_hulls_2d(mask: np.ndarray, min_pixels: int = 20) -> np.ndarray:
    """Per-slice convex hull of ``mask`` (slices with fewer than ``min_pixels`` stay empty).

    The hull is that of the pixel CENTRES: skimage's default (``offset_coordinates=True``)
    takes the hull of the pixel corners, which adds every staircase step of a slanted
    border, a half-pixel skin that the pleural hull then added along the whole costal
    surface (59 mL of chest wall on the 2.8 mm simulated-trial phantoms).
    """
    hull = np.zeros_like(mask)
    counts = np.count_nonzero(mask, axis=(1, 2))
    for z in np.flatnonzero(counts >= min_pixels):
        box = bounding_box(mask[z])
        hull[z][box] = convex_hull_image(mask[z][box], offset_coordinates=False)
    return hull


def _pleural_hull(
    lung: np.ndarray, other: np.ndarray, allowed: np.ndarray, bone_near: np.ndarray,
    midline_x: float, spacing_mm: tuple[float, ...], config: LungSegmentationConfig,
) -> np.ndarray:
    """Slice-wise convex-hull additions bounded by the chest wall.

    A hull deficit (hull minus lung) in an axial slice is added only when its outer chord
    (the part of it on the hull border) runs along the rib cage: at least
    ``pleural_min_bone_fraction`` of the chord pixels have bone (:func:`bone_map`) within
    ``bone_search_mm`` in the slice (``bone_near``). Deficits that face the mediastinum,
    heart, hilum or the diaphragm dome have chords across soft tissue and are left out.
    Deficits deeper than ``pleural_max_depth_mm`` are left out as well, and so are those
    whose chord faces the midline (``midline_x``, an x index of these arrays; outward
    normal within ``pleural_medial_angle_deg`` of it) with a bone-free stretch longer than
    ``pleural_max_gap_mm``: a short chord across the heart whose two ends lie near ribs
    (the left lung's cardiac notch on pyradiomics lung1) passes the fraction test. A
    deficit that touches more than ``pleural_max_lung_pieces`` separate in-plane pieces of
    the lung of at least ``pleural_piece_min_area_mm2`` spans what separates them, and needs
    ``pleural_bridge_min_bone_fraction`` of its chord along the ribs instead. In a basal
    slice through the diaphragm dome that is the stomach and spleen between the anterior
    and posterior lung (pyradiomics lung2, 5 mm slices: a 47 mL deficit whose chord lies
    half along the ribs, 0.49-0.51 by the block grid's phase); a pleural lens touches the one
    piece whose surface it continues, and a tumour between pieces of a lung cut by the
    field of view lies against the ribs (the IBSI NSCLC crop: chords 0.53-1.0 along them).

    The hulls are computed slice by slice; borders, depths and the per-deficit tests run on
    all slices at once with in-plane structuring elements.
    """
    if not bone_near.any():
        return np.zeros_like(lung)
    hull = _convex_hulls_2d(lung)
    deficit = hull & ~lung & allowed & ~other
    if not deficit.any():
        return np.zeros_like(lung)
    hull_border = hull & ~ndimage.binary_erosion(hull, structure=_PLANE_CROSS)
    # In-plane depth (pixels) inside the hull, only in slices with a deficit.
    depth = np.zeros(hull.shape, np.float32)
    for z in np.flatnonzero(deficit.any(axis=(1, 2))):
        box = bounding_box(hull[z], 1)
        depth[z][box] = distance_transform_edt(hull[z][box])
    max_depth_px = config.pleural_max_depth_mm / min(spacing_mm[1:])
    lab, n = ndimage.label(deficit, structure=_PLANE_CROSS)
    ids = np.arange(1, n + 1)
    chord = deficit & hull_border
    n_chord = ndimage.sum_labels(chord, lab, ids)
    n_bone = ndimage.sum_labels(chord & bone_near, lab, ids)
    too_deep = np.zeros(n + 1, bool)
    too_deep[np.unique(lab[deficit & (depth > max_depth_px)])] = True
    bridge = _lung_pieces_touched(lab, n, lung, spacing_mm, config) > config.pleural_max_lung_pieces
    min_fraction = np.where(
        bridge, config.pleural_bridge_min_bone_fraction, config.pleural_min_bone_fraction
    )
    ok = (
        (n_chord > 0)  # fully enclosed deficits are left to hole filling
        & ~too_deep[1:]
        & (n_bone >= min_fraction * np.maximum(n_chord, 1))
        & ~_faces_midline_across_soft_tissue(
            lab, n, chord, chord & ~bone_near, midline_x, spacing_mm, config
        )
    )
    keep = np.zeros(n + 1, bool)
    keep[1:] = ok
    return keep[lab]


def _lung_pieces_touched(
    lab: np.ndarray, n: int, lung: np.ndarray, spacing_mm: tuple[float, ...],
    config: LungSegmentationConfig,
) -> np.ndarray:
    """Per in-plane deficit 1..n: the number of separate in-plane pieces of ``lung`` of at
    least ``pleural_piece_min_area_mm2`` that it touches (8-connected) in its slice."""
    touched = np.zeros(n, np.int64)
    min_px = config.pleural_piece_min_area_mm2 / (spacing_mm[1] * spacing_mm[2])
    for z in np.flatnonzero(lab.any(axis=(1, 2))):
        pieces, n_pieces = ndimage.label(lung[z], structure=_PLANE_SQUARE[1])
        if n_pieces < 2:
            touched[np.unique(lab[z][lab[z] > 0]) - 1] = n_pieces
            continue
        big = np.bincount(pieces.ravel(), minlength=n_pieces + 1) >= min_px
        big[0] = False
        # Pairs (deficit, piece) of 8-neighbouring pixels, gathered at the deficit pixels
        # only (few) from the piece labels padded by one pixel; each pair counted once.
        ys, xs = np.nonzero(lab[z])
        ids = lab[z][ys, xs].astype(np.int64)
        padded = np.pad(pieces, 1)
        keys = np.concatenate([
            ids * (n_pieces + 1) + padded[ys + 1 + dy, xs + 1 + dx]
            for dy in (-1, 0, 1) for dx in (-1, 0, 1)
        ])
        keys = np.unique(keys)
        deficit_id, piece = keys // (n_pieces + 1), keys % (n_pieces + 1)
        np.add.at(touched, deficit_id[big[piece]] - 1, 1)
    return touched


def _faces_midline_across_soft_tissue(
    lab: np.ndarray, n: int, chord: np.ndarray, bone_free: np.ndarray, midline_x: float,
    spacing_mm: tuple[float, ...], config: LungSegmentationConfig,
) -> np.ndarray:
    """Per in-plane deficit 1..n: does its chord face the midline and cross soft tissue?

    The chord's direction is the principal axis of its pixels (in mm); its outward normal
    points from the deficit's centroid towards the chord. The bone-free stretch is the
    largest in-plane 8-connected run of ``bone_free`` chord pixels, in pixels times the
    in-plane pixel size (a lower bound on its length). scipy has no per-label covariance,
    so the moments are summed per label with bincount.
    """
    if n == 0:
        return np.zeros(0, bool)
    z_px, y_px, x_px = np.nonzero(lab)
    ids = lab[z_px, y_px, x_px]
    on_chord = chord[z_px, y_px, x_px]
    y_mm, x_mm = y_px * spacing_mm[1], x_px * spacing_mm[2]

    def mean(values: np.ndarray, where: np.ndarray) -> np.ndarray:
        total = np.bincount(ids[where], weights=values[where], minlength=n + 1)[1:]
        return total / np.maximum(np.bincount(ids[where], minlength=n + 1)[1:], 1)

    everywhere = np.ones(ids.shape, bool)
    cy_def, cx_def = mean(y_mm, everywhere), mean(x_mm, everywhere)
    cy, cx = mean(y_mm, on_chord), mean(x_mm, on_chord)
    syy = mean(y_mm * y_mm, on_chord) - cy * cy
    sxx = mean(x_mm * x_mm, on_chord) - cx * cx
    sxy = mean(y_mm * x_mm, on_chord) - cy * cx
    # Principal axis (y, x) = (cos t, sin t) with tan 2t = 2 sxy / (syy - sxx); the normal
    # is (-sin t, cos t), turned to point from the deficit's centroid to the chord's.
    theta = 0.5 * np.arctan2(2 * sxy, syy - sxx)
    ny, nx = -np.sin(theta), np.cos(theta)
    nx = np.where(ny * (cy - cy_def) + nx * (cx - cx_def) < 0, -nx, nx)
    towards_midline = np.sign(midline_x * spacing_mm[2] - cx_def)
    medial = nx * towards_midline >= np.cos(np.radians(config.pleural_medial_angle_deg))
    runs, n_runs = ndimage.label(bone_free, structure=_PLANE_SQUARE)
    if n_runs == 0:
        return np.zeros(n, bool)
    run_px = np.bincount(runs.ravel(), minlength=n_runs + 1)
    run_px[0] = 0
    longest_px = np.zeros(n + 1, np.int64)
    np.maximum.at(longest_px, ids, run_px[runs[z_px, y_px, x_px]])
    longest_mm = longest_px[1:] * min(spacing_mm[1:])
    return medial & (longest_mm > config.pleural_max_gap_mm)


def _bone_near(
    bone: np.ndarray, spacing_mm: tuple[float, ...], config: LungSegmentationConfig,
    exclude_x: tuple[float, float] | None = None,
) -> np.ndarray:
    """Voxels with bone (:func:`bone_map`) within ``bone_search_mm`` in their axial slice.

    ``exclude_x`` = (low, high) x indices: bone in that column (spine, sternum) is ignored,
    so that only the ribs count.
    """
    if exclude_x is not None:
        lo, hi = max(0, int(np.floor(exclude_x[0]))), max(0, int(np.ceil(exclude_x[1])) + 1)
        bone = bone.copy()  # the caller's map is shared with the other thread
        bone[:, :, lo:hi] = False
    near = np.zeros_like(bone)
    # Slice by slice: 2-D transforms are several times faster than one 3-D transform with
    # an enormous z sampling.
    for z in np.flatnonzero(bone.any(axis=(1, 2))):
        dist = distance_transform_edt(~bone[z], sampling=spacing_mm[1:])
        near[z] = dist <= config.bone_search_mm
    return near


def _mediastinal_additions(
    candidates: np.ndarray, lung_any: np.ndarray, body: np.ndarray, bone_near: np.ndarray,
    hilar_zone: np.ndarray, spacing_mm: tuple[float, ...], config: LungSegmentationConfig,
) -> np.ndarray:
    """Closing/hole additions at the hila (to be dropped).

    Mediastinal tissue = inside the body, not lung, not a candidate, no bone within
    ``bone_search_mm`` in the slice (includes the proximal airway and its wall band).
    Within the hilar zone (``hilar_zone``: within ``hilar_zone_mm`` of the detected airway
    tree), candidates within ``hilar_exclusion_mm`` of mediastinal tissue are dropped: the
    closing bridges the hilar concavity (vessels and bronchial walls entering the lung),
    which an expert contour leaves out. Disease against the mediastinum away from the
    bronchi (e.g. paravertebral, at the bases), pleura-based disease against the ribs (bone
    near) and disease surrounded by lung are not affected. In-plane pieces of the other
    hilar-zone additions that touch the dropped part (the deeper part of the bridge) are
    dropped as well; vessels enclosed in-plane by lung are filled again by the caller.
    """
    reach_mm = config.hilar_exclusion_mm
    if reach_mm <= 0 or not candidates.any():
        return np.zeros_like(candidates)
    mediastinal = body & ~lung_any & ~candidates & ~bone_near & hilar_zone
    if not mediastinal.any():
        return np.zeros_like(candidates)
    near = _dilate_mm(mediastinal, reach_mm, spacing_mm)
    dropped = candidates & near & hilar_zone
    if not dropped.any():
        return dropped
    # The deeper part of a hilar bridge: in-plane pieces of the remaining additions that
    # touch the dropped mouth (their hilar-zone part).
    rest = candidates & ~dropped & hilar_zone
    lab, n = ndimage.label(rest, structure=_PLANE_SQUARE)
    touching = np.unique(lab[ndimage.binary_dilation(dropped, structure=_PLANE_SQUARE) & rest])
    return dropped | np.isin(lab, touching[touching > 0])


def _touching_in_plane(candidates: np.ndarray, other_lung: np.ndarray) -> np.ndarray:
    """In-plane pieces of ``candidates`` that touch the other lung (to be dropped).

    An addition of one lung that reaches the other lung in an axial slice has crossed the
    mediastinum (heart, great vessels, anterior/posterior junction); intrapulmonary
    vessels and disease are separated from the other lung by pleura and mediastinum.
    """
    if not candidates.any() or not other_lung.any():
        return np.zeros_like(candidates)
    lab, _n = ndimage.label(candidates, structure=_PLANE_CROSS)
    contact = ndimage.binary_dilation(other_lung, structure=_PLANE_SQUARE) & candidates
    ids = np.unique(lab[contact])
    return np.isin(lab, ids[ids > 0])


def _medial_slab(labels: np.ndarray) -> np.ndarray:
    """Voxels between the right and the left lung's centroids (left to right, x): the
    mediastinal side, where heart and great vessels of lesion-like HU abut the lungs."""
    xs = np.arange(labels.shape[2])
    centres = []
    for k in (LUNG_RIGHT, LUNG_LEFT):
        profile = np.count_nonzero(labels == k, axis=(0, 1))
        if not profile.any():
            return np.zeros(labels.shape, bool)
        centres.append(float((profile * xs).sum() / profile.sum()))
    lo, hi = int(np.ceil(min(centres))), int(np.floor(max(centres))) + 1
    medial = np.zeros(labels.shape, bool)
    medial[:, :, lo:hi] = True
    return medial


def _lesion_rim(
    labels: np.ndarray, hu: np.ndarray, body: np.ndarray, blocked: np.ndarray,
    wall_zone: np.ndarray, spacing_mm: tuple[float, ...], config: LungSegmentationConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """Outer rim of dense disease that reaches the pleura.

    Where disease fills the lung up to the chest wall, the air threshold and the closing
    (whose ball sags between the healthy pleura on either side) stop 1-3 mm short of the
    wall. Dense lung (at or above ``rim_seed_min_hu``; components with a dense core, not
    one-voxel partial-volume sheets) grows by up to ``rim_max_mm``, one voxel per step, into
    body voxels with HU in [``rim_min_hu``, ``rim_max_hu``] in ``wall_zone`` (outside the
    hila) and outside the airway band. A voxel joins when at least
    ``rim_min_dense_neighbours`` of its 26 neighbours are dense and its HU is within
    ``rim_max_step_hu`` of their mean (lesion texture varies slowly; the step to
    extrapleural fat is larger), and only inside the lung's envelope:
    the lung closed by ``rim_envelope_radius_mm`` (plus ``rim_envelope_tolerance_mm``), a
    smooth surface across the diseased patch. The envelope is what keeps out chest wall,
    liver or heart as dense as the lesion. Healthy (aerated) lung seeds nothing.

    Returns the labels of the added voxels and the lesion zone (rim, seeds and the voxels
    next to them inside the envelope), where the CT-grid pass of the refinement may add more.
    """
    out = np.zeros(labels.shape, np.uint8)
    zone = np.zeros(labels.shape, bool)
    steps = int(round(config.rim_max_mm / max(spacing_mm)))
    seeds = (labels > 0) & (hu >= config.rim_seed_min_hu)
    if steps <= 0 or not seeds.any():
        return out, zone
    box = bounding_box(seeds, steps + 1)
    sub = labels[box]
    sub_lung = sub > 0
    seed = seeds[box]
    h = hu[box]
    soft = ndimage.binary_dilation(seed, structure=_CONN6, iterations=steps) & ~sub_lung
    soft &= body[box] & ~blocked[box] & wall_zone[box]
    soft &= (h >= config.rim_min_hu) & (h <= config.rim_max_hu)
    # Seeds are lesions, not partial volume: a seed component must hold a voxel whose six
    # neighbours are all dense (seed or soft tissue outside the lung). A one-voxel sheet of
    # partial volume (the pleura, lung apex and base caps) has air on one side and drops out.
    core = seed & ndimage.binary_erosion(seed | soft, structure=_CONN6)
    comp, _n = ndimage.label(seed, structure=_CONN6)
    keep = np.unique(comp[core])
    seed &= np.isin(comp, keep[keep > 0])
    soft &= ndimage.binary_dilation(seed, structure=_CONN6, iterations=steps)
    if not soft.any():
        return out, zone
    # Only inside the lung's envelope (closing by rim_envelope_radius_mm): a smooth surface
    # across the diseased patch; chest wall of the same HU as the lesion lies beyond it.
    inside = _envelope(
        labels > 0, box, config.rim_envelope_radius_mm, config.rim_envelope_tolerance_mm,
        spacing_mm,
    )
    soft[soft] = inside(np.nonzero(soft))
    grown = np.where(seed, sub, 0).astype(np.uint8)
    _grow_by_continuity(
        grown, h, soft, grown > 0, config.rim_min_dense_neighbours, steps, config
    )
    out[box] = np.where(sub_lung, 0, grown)
    # The CT-grid pass of the refinement may act next to the lesion, inside the envelope.
    ring = ndimage.binary_dilation(grown > 0, structure=_CONN6) & ~sub_lung & (grown == 0)
    ring &= wall_zone[box]
    ring[ring] = inside(np.nonzero(ring))
    zone[box] = (grown > 0) | ring
    return out, zone


def _grow_by_continuity(
    labels: np.ndarray, hu: np.ndarray, candidates: np.ndarray, dense: np.ndarray,
    min_neighbours: int, passes: int, config: LungSegmentationConfig,
) -> None:
    """Label candidates that continue a dense lesion, in place (``labels``, ``dense``).

    A candidate joins when at least ``min_neighbours`` of its 26 neighbours are dense and
    its HU is within ``rim_max_step_hu`` of their mean; it takes their largest label and is
    dense for the next pass. Neighbours are gathered by flat index for the candidates only
    (cheap for a thin rim); voxels on the array faces never join.
    """
    cand = candidates.copy()
    for axis in range(3):
        index = [slice(None)] * 3
        index[axis] = [0, -1]
        cand[tuple(index)] = False
    idx = np.flatnonzero(cand)
    if idx.size == 0:
        return
    if not (labels.flags.c_contiguous and dense.flags.c_contiguous):
        raise ValueError("labels and dense must be C-contiguous (updated in place)")
    flat_labels = labels.reshape(-1)
    flat_dense = dense.reshape(-1)
    strides = np.array([labels.shape[1] * labels.shape[2], labels.shape[2], 1])
    offsets = _OFFSETS26 @ strides
    # ``hu`` is read where it lies (often a box of the CT: a copy of it all cost the
    # 400-slice phantom 0.2 s), by flat index in its own element strides.
    if hu.shape != labels.shape:
        raise ValueError("hu and labels must have the same shape")
    flat_hu, hu_strides = _flat_view(hu)
    if hu_strides is None:
        hu_idx, hu_offsets = idx, offsets
    else:
        coords = np.unravel_index(idx, labels.shape)
        hu_idx = sum(c * st for c, st in zip(coords, hu_strides, strict=True))
        hu_offsets = _OFFSETS26 @ np.array(hu_strides)
    for _ in range(passes):
        nb = idx[:, None] + offsets[None, :]
        nb_dense = flat_dense[nb]
        nb_hu = flat_hu[hu_idx[:, None] + hu_offsets[None, :]].astype(np.float32)
        count = nb_dense.sum(axis=1)
        mean_hu = np.where(nb_dense, nb_hu, 0.0).sum(axis=1) / np.maximum(count, 1)
        ok = (count >= min_neighbours) & (
            np.abs(flat_hu[hu_idx] - mean_hu) <= config.rim_max_step_hu
        )
        if not ok.any():
            break
        flat_labels[idx[ok]] = np.where(nb_dense[ok], flat_labels[nb[ok]], 0).max(axis=1)
        flat_dense[idx[ok]] = True
        idx, hu_idx = idx[~ok], hu_idx[~ok]


def _flat_view(a: np.ndarray) -> tuple[np.ndarray, tuple[int, ...] | None]:
    """``a`` as a 1-D array without copying, and its element strides (None: C order).

    A strided view (a box of a larger array, positive strides) becomes a 1-D view of the
    memory from its first to its last element, in which element ``(i, j, k)`` lies at
    ``i * s0 + j * s1 + k * s2`` (numpy's ``reshape(-1)`` would copy it).
    """
    if a.flags.c_contiguous:
        return a.reshape(-1), None
    item = a.itemsize
    if any(st <= 0 or st % item for st in a.strides) or a.size == 0:
        return np.ascontiguousarray(a).reshape(-1), None
    steps = tuple(st // item for st in a.strides)
    span = sum((n - 1) * st for n, st in zip(a.shape, steps, strict=True)) + 1
    return np.lib.stride_tricks.as_strided(a, shape=(span,), strides=(item,)), steps


# The 26 neighbours of a voxel, as (dz, dy, dx) offsets.
_OFFSETS26 = np.array(
    [(dz, dy, dx) for dz in (-1, 0, 1) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dz or dy or dx]
)


def _envelope(
    mask: np.ndarray, box: tuple[slice, ...], radius_mm: float, tolerance_mm: float,
    spacing_mm: tuple[float, ...],
):
    """Test for points (indices within ``box``): inside the closing of ``mask`` by ``radius_mm``
    (or less than ``tolerance_mm`` outside it)?

    Distance transforms on a 2x coarser grid (8x fewer voxels) over ``box`` grown by the
    radius; the signed depth is interpolated linearly at the points, so the surface stays
    within about a voxel of the mask where it is convex. Beyond the array border there is
    no lung.
    """
    ebox = tuple(
        slice(max(0, b.start - r), min(n, b.stop + r))
        for b, r, n in zip(box, _radius_voxels(radius_mm, spacing_mm), mask.shape, strict=True)
    )
    sub = mask[ebox]
    shape2 = tuple((n + 1) // 2 for n in sub.shape)
    pad = [(0, 2 * m - n) for m, n in zip(shape2, sub.shape, strict=True)]
    frac = np.pad(sub, pad).reshape(shape2[0], 2, shape2[1], 2, shape2[2], 2).mean(axis=(1, 3, 5))
    sp2 = tuple(2 * s for s in spacing_mm)
    # Background margin: the array border must not count as foreground (a lung cut by the
    # field of view would get a slab of tissue along it).
    margin = _radius_voxels(radius_mm, sp2)
    lung2 = np.pad(frac >= 0.5, [(m, m) for m in margin])
    dilated = distance_transform_edt(~lung2, sampling=sp2) <= radius_mm
    depth = distance_transform_edt(dilated, sampling=sp2) - radius_mm
    shift = [b.start - e.start for b, e in zip(box, ebox, strict=True)]

    def inside(points: tuple[np.ndarray, ...]) -> np.ndarray:
        coords = [(p + d - 0.5) / 2.0 + m for p, d, m in zip(points, shift, margin, strict=True)]
        return ndimage.map_coordinates(depth, coords, order=1, mode="nearest") >= -tolerance_mm

    return inside


def _include_pathology(
    labels: np.ndarray, hu: np.ndarray, bone: np.ndarray, body: np.ndarray, blocked: np.ndarray,
    airway_tree: np.ndarray, midline_x: float, spacing_mm: tuple[float, ...],
    config: LungSegmentationConfig,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    out = labels.copy()
    added = np.zeros(labels.shape, bool)
    allowed = body & (hu <= config.pathology_max_hu) & ~blocked
    radius = config.fill_closing_radius_mm
    # Bone maps are only needed inside the lungs' boxes (the closing margin below); bone
    # up to bone_search_mm beyond them still counts.
    lungs_box = bounding_box(labels > 0, _radius_voxels(radius + config.bone_search_mm, spacing_mm))
    x0 = lungs_box[2].start
    # Pleura-based additions must lie along the ribs: the spine/sternum column is ignored.
    half_px = config.midline_bone_half_width_mm / spacing_mm[2]
    boxes = {}
    for lab_id in (LUNG_RIGHT, LUNG_LEFT):
        lung = labels == lab_id
        if lung.any():
            boxes[lab_id] = bounding_box(lung, _radius_voxels(radius, spacing_mm))
    # The bone maps and each lung's closing depend only on the input: the rib map and the
    # left lung's closing run on a second thread, the right lung's closing on this one
    # after the other maps (scipy.ndimage releases the GIL; the results are those of
    # running in turn).
    def closing(lab_id: int) -> np.ndarray:
        return _closing_mm(labels[boxes[lab_id]] == lab_id, radius, spacing_mm)

    with ThreadPoolExecutor(max_workers=1) as pool:
        rib_future = pool.submit(
            _bone_near, bone[lungs_box], spacing_mm, config,
            (midline_x - x0 - half_px, midline_x - x0 + half_px),
        )
        ids = list(boxes)
        closing_futures = {lab_id: pool.submit(closing, lab_id) for lab_id in ids[1:]}
        bone_near = np.zeros(labels.shape, bool)
        bone_near[lungs_box] = _bone_near(bone[lungs_box], spacing_mm, config)
        hilar_zone = _dilate_mm(airway_tree | blocked, config.hilar_zone_mm, spacing_mm)
        closings = {lab_id: closing(lab_id) for lab_id in ids[:1]}
        rib_near = np.zeros(labels.shape, bool)
        rib_near[lungs_box] = rib_future.result()
        closings.update((lab_id, f.result()) for lab_id, f in closing_futures.items())
    dropped_ml = 0.0
    across_ml = 0.0
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    info: dict = {}
    for lab_id, name in ((LUNG_RIGHT, "right"), (LUNG_LEFT, "left")):
        if lab_id not in boxes:
            continue
        box = boxes[lab_id]
        sub = labels[box] == lab_id
        free = allowed[box] & (out[box] == 0)
        closed = closings[lab_id] & (free | sub)
        filled = _fill_holes_2d(closed)
        holes = filled & ~closed & free
        holes = _hole_fill_open_to_abdomen(holes, closed, config.max_open_face_fraction)
        grown = closed | holes
        lung_any = (out[box] != 0) | sub
        candidates = grown & ~sub & free
        dropped = _mediastinal_additions(
            candidates, lung_any, body[box], bone_near[box], hilar_zone[box], spacing_mm, config
        )
        across = _touching_in_plane(candidates, lung_any & ~sub)
        if dropped.any() or across.any():
            # Vessels inside the lung that were joined to a dropped hilar addition come back
            # as in-plane holes of what is left (the bridged hilar mouth is open again).
            grown &= ~(dropped | across)
            refill = _fill_holes_2d(grown) & ~grown & free & ~across
            grown |= _hole_fill_open_to_abdomen(refill, grown, config.max_open_face_fraction)
        dropped_ml += float(np.count_nonzero(dropped & ~grown)) * voxel_ml
        across_ml += float(np.count_nonzero(across)) * voxel_ml
        if config.pleural_hull:
            other = (out[box] != 0) & ~sub
            grown |= _pleural_hull(
                grown, other, free, rib_near[box], midline_x - box[2].start, spacing_mm, config
            )
        new = grown & ~sub & free
        sub_out = out[box]
        sub_out[new] = lab_id
        added[box] |= new
        info[f"pathology_added_{name}_ml"] = round(float(new.sum() * voxel_ml), 2)
    info["mediastinal_additions_dropped_ml"] = round(dropped_ml, 2)
    info["additions_touching_other_lung_dropped_ml"] = round(across_ml, 2)
    # Not at the hila: there, vessels of the lesion's HU enter the lung.
    zone = ~hilar_zone
    if config.rim_medial_requires_bone:
        zone &= bone_near | ~_medial_slab(out)
    rim, lesion_zone = _lesion_rim(out, hu, body, blocked, zone, spacing_mm, config)
    out = np.where(rim > 0, rim, out).astype(np.uint8)
    added |= rim > 0
    info["lesion_rim_added_ml"] = round(float(np.count_nonzero(rim)) * voxel_ml, 2)
    return out, added, lesion_zone, info


def _refine_full_resolution(
    labels_c: np.ndarray, added_c: np.ndarray, blocked_c: np.ndarray, lesion_c: np.ndarray,
    grid: CoarseGrid, hu_full: np.ndarray, config: LungSegmentationConfig,
) -> np.ndarray:
    """Upsample coarse labels; re-decide CT voxels in a one-voxel band along the surface.

    Rejected voxels next to the lesion zone (``lesion_c``, coarse) may come back by the
    rim rule (:func:`_grow_rim_full_resolution`).
    """
    if all(f == 1 for f in grid.factors):
        return labels_c.astype(np.uint8)  # the working grid is the CT grid: nothing to refine
    lung_c = labels_c > 0
    full = np.zeros(grid.full_shape, np.uint8)
    if not lung_c.any():
        return full
    box_c = bounding_box(lung_c, 1)
    lung_c, labels_c = lung_c[box_c], labels_c[box_c]
    band_c = (ndimage.binary_dilation(lung_c) & ~ndimage.binary_erosion(lung_c)) & ~blocked_c[box_c]
    band_label_c = ndimage.maximum_filter(labels_c, size=3)
    # Band voxels take the neighbouring lung label; those not added by pathology inclusion
    # are then re-decided on the CT grid by the surface threshold: a partial-volume voxel
    # that is at least half aerated lung (about -400 HU between -850 and +40) is lung. The
    # air threshold (-500) would leave that layer out: 1.4 % of the lung of a phantom at
    # HRCT voxels (docs/segmentation.md, "The lung surface threshold").
    merged_c = np.where(band_c, band_label_c, labels_c).astype(np.uint8)
    test_c = band_c & ~added_c[box_c] & (band_label_c > 0)
    # CT voxels of the coarse box (blocks start ``phase`` voxels before CT index 0).
    box_f = tuple(
        slice(max(0, b.start * f - p), min(n, b.stop * f - p))
        for b, f, n, p in zip(box_c, grid.factors, grid.full_shape, grid.phase, strict=True)
    )
    sub_shape = tuple(b.stop - b.start for b in box_f)
    sub_phase = tuple(p if b.start == 0 else 0 for b, p in zip(box_c, grid.phase, strict=True))
    sub_grid = CoarseGrid(sub_shape, grid.factors, grid.full_spacing_mm, sub_phase)  # type: ignore[arg-type]
    sub = sub_grid.upsample_nearest(merged_c)
    hu_box = hu_full[box_f]
    rejected = sub_grid.upsample_nearest(test_c) & (hu_box >= config.surface_threshold_hu)
    sub[rejected] = 0
    near_lesion = sub_grid.upsample_nearest(lesion_c[box_c])
    _grow_rim_full_resolution(sub, hu_box, rejected & near_lesion, config)
    full[box_f] = sub
    return full



def _grow_rim_full_resolution(
    labels: np.ndarray, hu: np.ndarray, rejected: np.ndarray, config: LungSegmentationConfig
) -> None:
    """The rim rule of :func:`_lesion_rim` on the CT grid, for voxels the refinement rejected.

    A rejected voxel with HU in [``rim_min_hu``, ``rim_max_hu``] comes back (in place, in
    ``labels``) when at least ``rim_min_dense_neighbours_ct_grid`` of its 26 neighbours are
    lung at or above ``rim_seed_min_hu`` and its HU is within ``rim_max_step_hu`` of their
    mean; two passes.
    """
    if config.rim_max_mm <= 0 or not rejected.any():
        return
    box = bounding_box(rejected, 1)
    sub, h = labels[box].copy(), hu[box]
    cand = rejected[box] & (h >= config.rim_min_hu) & (h <= config.rim_max_hu)
    dense = (sub > 0) & (h >= config.rim_seed_min_hu)
    _grow_by_continuity(sub, h, cand, dense, config.rim_min_dense_neighbours_ct_grid, 2, config)
    labels[box] = sub


def _suspect_core_warning(core: SuspectCore, config: LungSegmentationConfig) -> str:
    """The QC message for :func:`suspect_bone_core`'s find, with the setting to rerun with:
    ``blood_max_hu`` above a uniform core's median (+100 HU, rounded up to 50), or
    ``blood_min_depth_mm`` at the thick test's depth."""
    if core.uniform:
        what = (
            f"dense_homogeneous_bone: a {core.volume_ml:.0f} mL structure of "
            f"{core.median_hu:.0f} HU, uniform (IQR {core.iqr_hu:.0f} HU) and "
            f"{core.depth_mm:.0f} mm deep, was taken for bone, which is rarely uniform"
        )
        rerun = f"blood_max_hu: {50.0 * math.ceil((core.median_hu + 100.0) / 50.0):g}"
    else:
        what = (
            f"thick_bone_core: a {core.volume_ml:.0f} mL structure {core.depth_mm:.0f} mm deep "
            f"(median {core.median_hu:.0f} HU, IQR {core.iqr_hu:.0f} HU) was taken for bone, "
            "and no bone of the chest is that thick"
        )
        rerun = f"blood_min_depth_mm: {config.thick_core_flag_min_depth_mm:g}"
    return (
        f"{what}; if this scan has intravenous contrast (CT angiography), it is blood and the "
        "mediastinum may be in the lung mask: check qc.png and rerun with a --config YAML "
        f"holding lungs: {{{rerun}}}"
    )


def segment_lungs(volume: CTVolume, config: LungSegmentationConfig) -> LungMask:
    """Segment the right (1) and left (2) lung, airways excluded, pathology included.

    Parameters
    ----------
    volume : CTVolume
        CT in HU, arrays (z, y, x), LPS (low x index = patient right).
    config : LungSegmentationConfig
        Thresholds and radii (``lungs:`` section of the config).

    Returns
    -------
    LungMask
        uint8 labels on the CT grid (0 background, 1 right, 2 left) and ``info`` with
        method details, volumes added by each step (mL) and timings (s).

    Raises
    ------
    SegmentationError
        When no lung-sized air region is in view (abdomen-only, head, soft-tissue volume).
    """
    t0 = time.perf_counter()
    # Blocks anchored to patient coordinates: the same scan cropped differently gives the
    # same blocks, hence the same mask.
    grid = CoarseGrid.for_volume(
        volume.shape, volume.spacing_mm, working_spacing_mm=config.working_spacing_mm,
        first_index=patient_index(volume.origin_lps_mm, volume.direction, volume.spacing_mm),
    )
    sp = grid.spacing_mm

    def bone_and_check(
        hu: np.ndarray, block_max_hu: Future[np.ndarray]
    ) -> tuple[np.ndarray, int, SuspectCore | None]:
        bone, blood_voxels = bone_map(
            hu, block_max_hu.result(), config, grid.voxel_volume_ml, sp
        )
        return bone, blood_voxels, suspect_bone_core(hu, bone, sp, config, grid.voxel_volume_ml)

    # The bone map and its check need neither the body nor the airways: they run on a
    # second thread beside them, the block maxima beside the block means (scipy.ndimage
    # and numpy's reductions release the GIL; the results are those of running in turn).
    with ThreadPoolExecutor(max_workers=1) as pool:
        block_max = pool.submit(coarse_max, volume.hu, grid)
        hu = coarse_mean(volume.hu, grid)
        bone_future = pool.submit(bone_and_check, hu, block_max)
        t_down = time.perf_counter()  # the bone map's wait counts in the next timing
        body = _body_mask(hu, config)
        internal, fov_air = _internal_air(hu, body, config)
        airways = find_airways(hu, internal, body, sp, config)
        bone, blood_voxels, suspect = bone_future.result()
    blood_ml = blood_voxels * grid.voxel_volume_ml
    warnings = []
    if blood_ml >= config.contrast_blood_min_ml:
        warnings.append(
            f"contrast_enhanced: a {blood_ml:.0f} mL region reads >= {config.bone_min_hu:g} HU "
            "without cortical bone (enhanced heart or aorta); the lesion HU bands are set for "
            "non-contrast CT (enhancing consolidation and vessels read above the solid band), "
            "so compare only scans of the same contrast phase"
        )
    if suspect is not None:
        warnings.append(_suspect_core_warning(suspect, config))
    blocked = _dilate_mm(airways.proximal, config.airway_wall_mm, sp)
    lung_air = internal & ~blocked
    labels_c, pick_info = _pick_lungs(lung_air, body, hu, bone, blocked, sp, config)
    if pick_info["gas_largest_ml"] >= config.gas_warning_min_ml:
        warnings.append(
            f"gas_not_lung: a {pick_info['gas_largest_ml']:.0f} mL region of internal air that "
            "is mostly pure air and that no bronchus enters was not taken as lung (bowel or "
            "stomach gas, air outside the body, a pneumothorax apart from the lung); check "
            "qc.png"
        )
    t_pick = time.perf_counter()
    labels_c, added_c, lesion_c, path_info = _include_pathology(
        labels_c, hu, bone, body, blocked, airways.tree, pick_info["midline_x_index"], sp,
        config,
    )
    t_path = time.perf_counter()
    labels = _refine_full_resolution(
        labels_c, added_c, blocked, lesion_c, grid, volume.hu, config
    )
    t_end = time.perf_counter()
    voxel_ml = volume.voxel_volume_ml
    info = {
        "method": "classical: body mask, internal air, airway removal, side split, "
        "closing + hole fill + pleural hull + lesion rim, full-resolution boundary refinement",
        "working_spacing_mm": [round(s, 3) for s in sp],
        "block_factors": list(grid.factors),
        "block_phase": list(grid.phase),
        "fov_lung_air_ml": round(fov_air * grid.voxel_volume_ml, 2),
        "enhanced_blood_ml": round(blood_ml, 1),
        "suspect_bone_core_ml": 0.0 if suspect is None else round(suspect.volume_ml, 1),
        "warnings": warnings,
        **airways.info,
        **pick_info,
        **path_info,
        "right_ml": round(float(np.count_nonzero(labels == LUNG_RIGHT) * voxel_ml), 2),
        "left_ml": round(float(np.count_nonzero(labels == LUNG_LEFT) * voxel_ml), 2),
        "timings_s": {
            "downsample": round(t_down - t0, 3),
            "body_air_airway_split": round(t_pick - t_down, 3),
            "pathology_inclusion": round(t_path - t_pick, 3),
            "refine": round(t_end - t_path, 3),
            "total": round(t_end - t0, 3),
        },
    }
    logger.info("lungs: right %.0f mL, left %.0f mL", info["right_ml"], info["left_ml"])
    return LungMask(labels=labels, info=info)
