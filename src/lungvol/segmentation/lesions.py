"""Lesion densitometry inside the lungs: ground-glass (1) and solid component (2).

Lesion is decided on two maps:

1. the CT lightly denoised (Gaussian, ``smoothing_sigma_mm``), at full resolution: it
   decides the HU band of every voxel, so volumes keep full-resolution borders;
2. a BACKGROUND density map: a grey-level morphological opening (erosion then dilation)
   with a ball of radius ``background_radius_mm`` on a coarse grid
   (``background_working_spacing_mm``, block means). Bright structures thinner than the
   ball (vessels, their partial-volume halos, bronchial walls, fissures) vanish from it;
   broad opacities (ground glass, consolidation, nodules wider than the ball) keep their
   density. Outside the lung mask counts as air (the partial-volume rim along the
   diaphragm, mediastinum and hila does not become background), except along the costal
   pleura, where the lung is continued outward with the values of lung at least
   ``pleural_core_depth_mm`` deep, so that a subpleural band only needs a footprint on the
   pleura as wide as the ball, not a thickness (``pleural_extrapolation_mm``). The opened
   map is then dilated by one coarse voxel, because the ball cannot reach a coarse block
   that is only partly lesion (the block mean is diluted) and the borders would be lost;
   whether a border voxel is lesion is left to its own HU band;
3. a PARENCHYMA level: the local density of normal air-filled lung (block means below
   ``parenchyma_max_hu`` in blocks of ``parenchyma_block_mm``). A lesion REGION needs a
   background at least ``region_min_background_hu`` and ``region_above_parenchyma_hu``
   above it: dependent lung of a supine patient (posterior median -784 HU on the real
   normal scan here) is not a lesion, faint ground glass on non-dependent lung is.

Rules (bands: ground-glass ``ggo_band_hu`` = [low, high), solid ``solid_band_hu`` =
[low, high], both edges inclusive):

- ground glass: in the GGO band, inside the lung, with ground-glass background in the
  lesion region (above), and not more than ``max_above_background_hu`` denser
  than that background (a vessel partial-volume halo inside a ground-glass patch is
  denser than its surroundings). The ground-glass background is a second opening in
  which solid-band and denser voxels count as air, so it exists only where ground-glass
  density is broad by itself (the partial-volume skirt of block means around a vessel
  does not count), raised to the undilated plain background (ground glass inside or
  around a consolidation or tumour, ground glass densely crossed by vessels). The halo
  of vessels about as wide as the ball (~2 x ``background_radius_mm``) can still pass;
- solid: in the solid band, with background in the lesion region and either
  (a) background in the solid band (consolidation, tumour, nodule wider than the ball),
  (b) not more than ``max_above_background_hu`` above the background, or (c) at least
  ``solid_min_width_mm`` wide in-plane (binary opening of the solid band with the square
  of ``round(width / pixel)`` pixels, at least 2 (3 on pixels wider than the vessel
  clearance), then geodesic reconstruction by half its side inside the band; solid
  components inside ground glass); vessels thinner than that inside ground glass are not
  lesion (as in the phantom truth and ``insert_lesions``);
- rejected solid-band components (26-connected) enclosed by ground glass are solid: at
  least ``enclosed_solid_min_ggo_fraction`` of their lung neighbourhood within
  ``enclosure_shell_mm`` is ground-glass lesion (rejected ground-glass-band halos and solid
  lesion are neutral), and none longer than ``enclosed_solid_max_length_mm``. Solid
  patches narrower than the opening inside ground glass are enclosed; vessels continue
  into normal lung, where their component follows them;
- thick slices (slices further apart and thicker than ``background_radius_mm``, when
  ``thick_slice_surface_rule``): band voxels on a lung surface facing the next slice whose
  slice inward is aerated lung are the wall's partial volume (diaphragm dome, apex), not
  lesion: a ball one slice thick cannot see that surface. On thinner slices still thicker
  than ``thick_slice_chain_min_mm`` that partial volume spans up to
  ``thick_slice_chain_mm`` of slices, HU falling inward; it leaves the ground-glass band the
  hysteresis grows through (lesion accepted there on its own stays);
- hysteresis: ground-glass-band voxels connected to ground glass accepted on its own
  ground-glass background (not on one raised by a vessel) within ``lesion_extension_mm``
  are ground glass when ``extension_above_parenchyma_hu`` above the parenchyma level and
  not within ``extension_vessel_clearance_mm`` of a rejected vessel / airway wall, where
  the lesion is at least ``extension_min_width_mm`` wide in-plane (rims and fingers of
  lesions narrower than the ball, not the skirts of thin vessels); on voxels too coarse
  for that and for the clearance, growth beyond the first in-plane ring must be two voxels
  wide;
- voxels above the solid band enclosed in-plane by solid lesion (noise peaks, vessels
  inside a tumour or consolidation) are solid when ``fill_enclosed_solid``;
- vessel segments: solid components wider than the ball that lie in normal lung, continue
  as a tube, are elongated and no thicker than ``vessel_max_radius_mm`` (hilar and lobar
  vessels) are removed with their ground-glass skirt (:func:`_drop_vessel_segments`);
- connected lesion components (26-connectivity) SMALLER than ``min_component_volume_ml``
  are dropped; a component of exactly that volume is kept.

``LesionMask.info`` reports the dense volume in the bands, what the background rules, the
vessel-segment rule and the size filter removed and what the enclosure and hysteresis rules
added (mL), the final volumes and timings.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
from scipy import ndimage

from lungvol.config import LesionSegmentationConfig
from lungvol.segmentation.distance import distance_transform_edt
from lungvol.segmentation.grid import CoarseGrid, bounding_box, coarse_mean, patient_index
from lungvol.segmentation.noise import adapt_to_noise
from lungvol.segmentation.opening import ball, grey_opening
from lungvol.segmentation.slabs import gaussian_in_slabs, shared_slabs
from lungvol.types import LESION_GGO, LESION_SOLID, CTVolume, LesionMask, LungMask, check_same_grid

logger = logging.getLogger(__name__)

_CONN26 = np.ones((3, 3, 3), dtype=bool)
_PLANE = np.zeros((3, 3, 3), dtype=bool)
_PLANE[1] = True
# Coarse-grid value of lung-mask exterior in the background opening (air): the ball must
# fit inside the lung. Also the value of dense voxels in the ground-glass background.
_OUTSIDE_HU = -1000.0
# Slabs of the enclosed-solid rule's counts, shared by two threads (at least 8 halos thick).
_COUNT_SLABS = 6
# Slabs of the hysteresis from the cores, shared the same way.
_GROW_SLABS = 4
# Steps that run beside another one on the pool work in slabs of about this many voxels
# (memory): the in-plane hole filling and the ground-glass background's input.
_SLAB_VOXELS = 8_000_000


def _background(
    hu_box: np.ndarray, smooth_box: np.ndarray, lung_box: np.ndarray,
    spacing_mm: tuple[float, float, float], first_index: tuple[int, int, int],
    config: LesionSegmentationConfig, pool: ThreadPoolExecutor,
) -> tuple[
    CoarseGrid, np.ndarray, np.ndarray, np.ndarray, tuple[CoarseGrid, np.ndarray], np.ndarray
]:
    """Opened background densities (coarse grid), each dilated by one coarse voxel.

    Returns ``(grid, any_level, ggo_level, pure_ggo_level, parenchyma, near_bone)``
    (parenchyma from :func:`_parenchyma_level`, near_bone from :func:`_near_bone`).
    ``any_level`` opens the CT itself. ``pure_ggo_level`` opens the CT with solid-band and
    denser voxels (vessels, walls, solid) counted as air, so it exists only where
    ground-glass-density parenchyma is broad by itself, not in the partial-volume skirt
    around a vessel; ``ggo_level`` is it raised to ``any_level``'s undilated value (ground
    glass inside a consolidation or tumour). The caller reads them at its band voxels by
    nearest block (the decision at full resolution is made by each voxel's own HU band).

    Outside the lung counts as air, except along the costal pleura (see
    :func:`_pleural_extrapolation`). The blocks are anchored to the patient lattice
    (``first_index``: lattice index of the box's first voxel).
    """
    grid = CoarseGrid.for_volume(
        hu_box.shape, spacing_mm, working_spacing_mm=config.background_working_spacing_mm,
        first_index=first_index,
    )
    lung_fraction = grid.downsample_fraction(lung_box)
    outside = lung_fraction < 0.5
    coarse_hu = coarse_mean(hu_box, grid)  # shared with the noise measure when unsmoothed
    # Independent of the pleural extrapolation (the distance transform): on ``pool``.
    parenchyma_future = pool.submit(
        _parenchyma_level, grid, coarse_hu, lung_fraction, first_index, config
    )
    ggo_hu_future = pool.submit(_air_above, grid, hu_box, smooth_box, config.solid_band_hu[0])
    near_bone = _near_bone(grid, coarse_hu, config)
    source = _pleural_extrapolation(grid, outside, near_bone, config)
    footprint = ball(config.background_radius_mm, grid.spacing_mm)

    def opened(coarse: np.ndarray) -> np.ndarray:
        if source is None:
            coarse = coarse.copy()
            coarse[outside] = _OUTSIDE_HU
        else:
            coarse = coarse[source[0]]
            coarse[source[1]] = _OUTSIDE_HU
        return grey_opening(coarse, footprint)

    def pure_ggo_level() -> np.ndarray:
        return ndimage.maximum_filter(opened(ggo_hu_future.result()), size=3, mode="nearest")

    # The two openings are the costliest steps and independent: one runs on ``pool``.
    pure_ggo_future = pool.submit(pure_ggo_level)
    open_any = opened(coarse_hu)
    dil_any = ndimage.maximum_filter(open_any, size=3, mode="nearest")
    pure_ggo = pure_ggo_future.result()
    return (
        grid, dil_any, np.maximum(pure_ggo, open_any), pure_ggo, parenchyma_future.result(),
        near_bone,
    )


def _air_above(
    grid: CoarseGrid, hu_box: np.ndarray, smooth_box: np.ndarray, max_hu: float
) -> np.ndarray:
    """Block means of the CT with voxels whose smoothed HU is at least ``max_hu`` as air.

    Slab by slab of whole blocks (the blocks are independent, so the means are the same as
    from one full-box copy, which would double the memory beside the distance transform).
    """
    out = np.empty(grid.shape, dtype=np.float32)
    nz, ny, nx = grid.full_shape
    fz, pz = grid.factors[0], grid.phase[0]
    rows = max(1, _SLAB_VOXELS // (fz * ny * nx))  # coarse rows per slab
    for c0 in range(0, grid.shape[0], rows):
        c1 = min(grid.shape[0], c0 + rows)
        z = slice(max(0, c0 * fz - pz), min(nz, c1 * fz - pz))
        slab = np.where(smooth_box[z] >= max_hu, _OUTSIDE_HU, hu_box[z])
        sub = CoarseGrid(
            slab.shape, grid.factors, grid.full_spacing_mm,  # type: ignore[arg-type]
            (pz if c0 == 0 else 0, *grid.phase[1:]),  # type: ignore[arg-type]
        )
        out[c0:c1] = sub.downsample_mean(slab)
    return out


def _near_bone(
    grid: CoarseGrid, coarse_hu: np.ndarray, config: LesionSegmentationConfig
) -> np.ndarray:
    """Coarse voxels with a bone block (mean at or above ``bone_min_hu``) within
    ``pleural_bone_distance_mm`` per axis: the costal pleura's side of the lung exterior
    (ribs, spine), not the mediastinum, hila or diaphragm."""
    bone = coarse_hu >= config.bone_min_hu
    reach = tuple(2 * int(config.pleural_bone_distance_mm / s) + 1 for s in grid.spacing_mm)
    return ndimage.maximum_filter(bone.view(np.uint8), size=reach, mode="constant").astype(bool)


def _pleural_extrapolation(
    grid: CoarseGrid, outside: np.ndarray, near_bone: np.ndarray,
    config: LesionSegmentationConfig,
) -> tuple[tuple[np.ndarray, ...], np.ndarray] | None:
    """Where each coarse voxel takes its background value from, or None (outside = air).

    Returns ``(nearest, air)``: index arrays of the source voxel, and the voxels that are
    air whatever their source.

    The ball of the opening must fit inside the lung, so a subpleural band thinner than
    the ball (the commonest COVID-19 pattern) would vanish from the background. Along the
    costal pleura (``near_bone``: outside voxels with bone within
    ``pleural_bone_distance_mm``, per axis)
    the lung is therefore continued outward by ``pleural_extrapolation_mm``: each such
    voxel takes the value of the nearest lung voxel at least ``pleural_core_depth_mm``
    deep (the partial-volume rim itself is replaced too). The ball then only has to fit
    the band's footprint on the pleura. Elsewhere (diaphragm dome, mediastinum, hila,
    where partial volume with soft tissue is broad in axial slices) outside stays air.
    scipy's distance transform with ``return_indices`` does the nearest-voxel lookup.
    """
    if config.pleural_extrapolation_mm <= 0:
        return None
    sp = grid.spacing_mm
    core_ball = ball(config.pleural_core_depth_mm, sp)
    core = ndimage.binary_erosion(~outside, structure=core_ball, border_value=0)
    if not core.any():
        return None
    dist, nearest = distance_transform_edt(~core, sampling=sp, return_indices=True)
    air = dist > config.pleural_extrapolation_mm + config.pleural_core_depth_mm
    air |= outside & ~near_bone
    return tuple(nearest), air


def _at_voxels(grid: CoarseGrid, coarse: np.ndarray, idx: tuple[np.ndarray, ...]) -> np.ndarray:
    """Values of a coarse map at CT voxels ``idx`` (nearest block). Cheaper than upsampling
    the whole map when only band voxels are needed."""
    return coarse[grid.coarse_index(idx)]


def _solid_width_px(
    spacing_mm: tuple[float, float, float], config: LesionSegmentationConfig
) -> tuple[int, int]:
    """In-plane sides (y, x) of the square nearest ``solid_min_width_mm``: ``round(width /
    pixel)`` pixels, at least 2 (0 when the width is 0: no width test). Even sides too, so
    the square's width in mm stays near the width on clinical grids (odd sides only, as until
    0.6.5, made it 4.9 mm on 0.98 mm pixels, 3.1 mm on 1.02 mm and 5.9 mm on 1.95 mm).

    On pixels wider than ``extension_vessel_clearance_mm`` (the 3 mm phantoms, where the
    clearance box is one voxel and keeps nothing off a vessel) at least 3: a vessel there
    is two pixels wide, as a 5 mm solid core is, and the 2-pixel square took the simulated
    trial's heavy subjects 1.4-1.7 pp over their truth (session 26).
    """
    width_mm = config.solid_min_width_mm
    if width_mm <= 0:
        return (0, 0)
    least = 3 if (
        config.extension_vessel_clearance_mm > 0
        and _clearance_size(spacing_mm, config)[1:] == (1, 1)
    ) else 2
    return tuple(max(least, int(round(width_mm / s))) for s in spacing_mm[1:])  # type: ignore[return-value]


def _wide_solid(solid_band: np.ndarray, side_px: tuple[int, int]) -> np.ndarray:
    """Solid-band voxels of structures at least ``side_px`` wide in-plane.

    In-plane opening with that square, then a geodesic in-plane reconstruction by half its
    side inside the solid band: the square opening clips corners and narrow lobes of solid
    components, while vessels that leave a component gain only that many voxels.
    """
    out = np.zeros_like(solid_band)
    if not solid_band.any():
        return out
    # In-plane filters: the band's box with a one-voxel in-plane margin gives the same
    # result (the erosion's "nearest" edge then repeats background, as outside the box).
    box = bounding_box(solid_band, (0, 1, 1))
    band = solid_band[box]
    wide = _opening_in_plane(band, side_px)
    for _ in range(max(side_px) // 2):
        wide = ndimage.maximum_filter(
            wide.view(np.uint8), size=(1, 3, 3), mode="constant"
        ).astype(bool) & band
    out[box] = wide
    return out


def _opening_in_plane(mask: np.ndarray, side_px: tuple[int, int]) -> np.ndarray:
    """Binary opening with an in-plane square of sides ``side_px`` (y, x; odd or even;
    sides of 0 or 1 leave ``mask`` as it is).

    Separable 1-D min/max filters: O(N) whatever the size, unlike a 2-D structuring element
    in ``ndimage.binary_opening``. The dilation's window is the erosion's reflected: scipy
    puts an even window's centre after its middle, so the dilation shifts it back by one
    (origin -1), or the opening would move the mask by a pixel.
    """
    if max(side_px) <= 1:
        return mask.copy()
    size = (1, max(1, side_px[0]), max(1, side_px[1]))
    origin = tuple(-1 if n % 2 == 0 else 0 for n in size)
    eroded = ndimage.minimum_filter(mask.view(np.uint8), size=size, mode="nearest")
    return ndimage.maximum_filter(
        eroded, size=size, mode="constant", origin=origin
    ).astype(bool) & mask


def _grow_enclosed_solid(
    ggo: np.ndarray, solid: np.ndarray, ggo_band: np.ndarray, solid_band: np.ndarray,
    lung: np.ndarray, smooth: np.ndarray, hu: np.ndarray,
    costal: tuple[CoarseGrid, np.ndarray], spacing_mm: tuple[float, float, float],
    config: LesionSegmentationConfig, pool: ThreadPoolExecutor,
) -> tuple[int, int, np.ndarray | None]:
    """Add rejected solid-band components that are solid lesion to ``solid`` (in place):
    those enclosed by ground glass, and plaques on the pleura.

    The background rules reject solid-band voxels denser than their background: vessels,
    but also solid patches narrower than the opening inside ground glass (and the caps of
    wider ones), and subpleural solid plaques thinner than the ball. Each 26-connected
    component of rejected solid-band voxels is judged by its surroundings within
    ``enclosure_shell_mm`` (a box, per-axis half-widths of at least one voxel):

    - enclosed: of the lung voxels there, leaving out rejected ground-glass-band voxels
      (partial-volume halos, neutral) and solid lesion (neutral: a vessel's edge next to an
      accepted vessel is not evidence either way), at least
      ``enclosed_solid_min_ggo_fraction`` are ground-glass lesion. A vessel in normal lung,
      or crossing ground glass, continues into normal parenchyma (its component follows
      the vessel);
    - plaque (session 11): at least ``plaque_min_wall_contact`` of all its surroundings is
      tissue outside the lung (smoothed HU at or above the solid band's low edge), at least
      ``plaque_min_costal_fraction`` of that tissue is on the costal side (``costal``: the
      background grid and :func:`_near_bone`'s map, read by nearest block), not the
      mediastinum or the hila, where vessels leave the lung; and it holds at least
      ``plaque_min_volume_ml``. Vessels end short of the costal pleura and touch it with
      a tip at most. Off the costal side (session 28), on in-plane pixels of at most
      ``plaque_dense_max_pixel_mm``, it is a plaque too when its mean HU (``hu``, the CT's
      own values) is at least ``plaque_dense_min_hu``: consolidation against the
      diaphragm, mediastinum or spine is dense through, the partial-volume strip along an
      aerated lung's edge is a ramp that averages far lower.

    Either way a component whose largest bounding-box side exceeds
    ``enclosed_solid_max_length_mm`` is a vessel, not a patch. Returns the numbers of
    voxels added as enclosed and as plaques, and the mask of the plaques taken for their
    density off the costal side (None when there are none).
    """
    # uint16 labels where they fit: half the memory traffic of the maximum filter, the
    # costliest step, and of the peak.
    lab, n = _label_26(solid_band & ~solid)
    if not n:
        return 0, 0, None
    if not solid.flags.c_contiguous:
        raise ValueError("solid must be C-contiguous (updated by flat index)")
    where = np.flatnonzero(lab)
    ids = lab.reshape(-1)[where]
    size = tuple(2 * max(1, int(round(config.enclosure_shell_mm / s))) + 1 for s in spacing_mm)
    plaques = config.plaque_min_wall_contact <= 1.0
    s_lo, s_hi = config.solid_band_hu

    def counts(lo: int, hi: int, a: int, b: int) -> tuple[np.ndarray, ...]:
        """Per component, in slices [lo, hi): counted lung shell voxels and those on ground
        glass; with plaques on, all surrounding voxels, those on tissue outside the lung,
        and those of them on the costal side."""
        # Neighbourhood voxels take the largest nearby label (a voxel near two components
        # counts for one of them only: at most makes the test stricter for the other).
        near = ndimage.maximum_filter(lab[a:b], size=size, mode="constant")[lo - a:hi - a]
        z = slice(lo, hi)
        around = (near > 0) & (lab[z] == 0)
        shell = around & lung[z] & ~(ggo_band[z] & ~ggo[z]) & ~solid[z]
        out = [
            np.bincount(near[shell], minlength=n + 1),
            np.bincount(near[shell & ggo[z]], minlength=n + 1),
        ]
        if plaques:
            wall = around & ~lung[z] & (smooth[z] >= s_lo)
            idx = np.nonzero(wall)
            on_wall = near[idx]
            costal_side = _at_voxels(costal[0], costal[1], (idx[0] + lo, *idx[1:]))
            out += [
                np.bincount(near[around], minlength=n + 1),
                np.bincount(on_wall, minlength=n + 1),
                np.bincount(on_wall[costal_side], minlength=n + 1),
            ]
        return tuple(out)

    # A local filter: slabs along z give the same counts. The extension's candidates may
    # still occupy ``pool``: this thread takes the slabs until it is free.
    halo = size[0] // 2
    pieces = max(1, min(_COUNT_SLABS, lab.shape[0] // (8 * max(1, halo))))
    per_slab = shared_slabs(lab.shape[0], halo, counts, pool, pieces)
    total, on_ggo, *wall_counts = (np.sum(x, axis=0) for x in zip(*per_slab, strict=True))
    accept = (total > 0) & (on_ggo >= config.enclosed_solid_min_ggo_fraction * total)
    plaque = np.zeros_like(accept)
    off_costal = np.zeros_like(accept)
    if plaques:
        around, on_wall, costal_counts = wall_counts
        on_wall_ok = (on_wall > 0) & (on_wall >= config.plaque_min_wall_contact * around)
        costal_ok = costal_counts >= config.plaque_min_costal_fraction * on_wall
        dense_ok = np.zeros_like(costal_ok)
        if (
            config.plaque_dense_min_hu <= s_hi
            and max(spacing_mm[1:]) <= config.plaque_dense_max_pixel_mm
        ):
            # Mean HU per component, over the rejected voxels only (cheap: a thin set).
            sums = np.bincount(
                ids, weights=hu[np.unravel_index(where, lab.shape)], minlength=n + 1
            )
            sizes = np.bincount(ids, minlength=n + 1)
            dense_ok = sums >= config.plaque_dense_min_hu * np.maximum(sizes, 1)
        plaque = on_wall_ok & (costal_ok | dense_ok) & ~accept
        off_costal = plaque & ~costal_ok
    accept[0] = plaque[0] = False
    # Guard for vessels that cross a large ground-glass patch with only short stubs in
    # normal lung: a component whose largest bounding-box side exceeds
    # ``enclosed_solid_max_length_mm`` is not a patch.
    objs = ndimage.find_objects(lab)
    min_voxels = config.plaque_min_volume_ml / (float(np.prod(spacing_mm)) / 1000.0)
    for i in np.flatnonzero(accept | plaque):
        o = objs[i - 1]
        length = max((b.stop - b.start) * s for b, s in zip(o, spacing_mm, strict=True))
        if length > config.enclosed_solid_max_length_mm:
            accept[i] = plaque[i] = False
        elif plaque[i] and np.count_nonzero(lab[o] == i) < min_voxels:
            plaque[i] = False
    # The components' voxels by flat index (a thin set): cheaper than indexing by the
    # whole box's labels.
    enclosed, on_pleura = accept[ids], plaque[ids]
    solid.reshape(-1)[where[enclosed | on_pleura]] = True
    off_costal &= plaque
    wall_plaques = None
    if off_costal.any():
        wall_plaques = np.zeros_like(solid)
        wall_plaques.reshape(-1)[where[off_costal[ids]]] = True
    return int(np.count_nonzero(enclosed)), int(np.count_nonzero(on_pleura)), wall_plaques


def _parenchyma_level(
    grid: CoarseGrid, coarse_hu: np.ndarray, lung_fraction: np.ndarray,
    first_index: tuple[int, int, int], config: LesionSegmentationConfig,
) -> tuple[CoarseGrid, np.ndarray]:
    """Local density of normal, air-filled parenchyma (HU) on a grid of ``parenchyma_block_mm``.

    Mean of the background grid's blocks that are all lung and below
    ``parenchyma_max_hu`` (no vessel, no lesion in them), per block of
    ``parenchyma_block_mm``; blocks with few such blocks are filled by normalised Gaussian
    smoothing over two blocks, and far from any (diffuse disease) by the scan's mean level
    (``parenchyma_default_hu`` if no block is normal). Dependent lung of a supine patient
    is denser than non-dependent lung (a real normal scan here: posterior median -784 HU,
    anterior -864 HU); a threshold relative to this level tells faint ground glass from
    dependent density where a fixed one near the band edge cannot. Returns a grid whose
    factors map CT indices to the level map (for :func:`_at_voxels`) and the map.
    """
    # Anchored like ``grid``: its coarse voxel 0 starts at lattice index (first - phase),
    # a multiple of the factor.
    f = np.asarray(grid.factors)
    coarse_first = tuple(
        int(v) for v in (np.asarray(first_index) - np.asarray(grid.phase)) // f
    )
    sub = CoarseGrid.for_volume(
        coarse_hu.shape, grid.spacing_mm, working_spacing_mm=config.parenchyma_block_mm,
        first_index=coarse_first,  # type: ignore[arg-type]
    )
    normal = (lung_fraction >= 0.999) & (coarse_hu < config.parenchyma_max_hu)
    frac = sub.downsample_fraction(normal)
    mean = sub.downsample_mean(np.where(normal, coarse_hu, 0.0).astype(np.float32))
    weight = np.where(frac > 0.1, frac, 0.0).astype(np.float32)
    level = np.where(weight > 0, mean / np.maximum(frac, 1e-6), 0.0).astype(np.float32)
    num = ndimage.gaussian_filter(level * weight, 2.0, mode="nearest")
    den = ndimage.gaussian_filter(weight, 2.0, mode="nearest")
    # Far from any normal lung (diffuse disease) the level falls back to the scan's mean
    # normal level, or to parenchyma_default_hu when no block is normal: never to a value
    # that would lift the region floor above faint ground glass. A small prior weight
    # blends the two smoothly.
    total = float(weight.sum())
    fallback = (
        float((level * weight).sum() / total) if total > 0 else config.parenchyma_default_hu
    )
    prior = np.float32(0.02)
    filled = (num + prior * fallback) / (den + prior)
    # ((i + p1) // f1 + p2) // f2 == (i + p1 + p2 * f1) // (f1 * f2): one lookup grid
    # from CT indices.
    lookup = CoarseGrid(
        grid.full_shape,
        tuple(a * b for a, b in zip(grid.factors, sub.factors, strict=True)),  # type: ignore[arg-type]
        grid.full_spacing_mm,
        tuple(  # type: ignore[arg-type]
            p1 + p2 * f1 for p1, p2, f1 in zip(grid.phase, sub.phase, grid.factors, strict=True)
        ),
    )
    return lookup, filled.astype(np.float32)


def _geodesic_steps(
    spacing_mm: tuple[float, float, float], distance_mm: float
) -> tuple[int, int]:
    """:func:`_grow_geodesic`'s steps for ``distance_mm``: all of them, and those that may
    also move one slice (so the growth reaches at most that many slices along z)."""
    steps = max(1, int(round(distance_mm / min(spacing_mm[1:]))))
    return steps, min(steps, int(distance_mm / spacing_mm[0]))


def _grow_geodesic(
    mask: np.ndarray, allowed: np.ndarray, spacing_mm: tuple[float, float, float],
    distance_mm: float,
) -> int:
    """Grow ``mask`` (in place) through ``allowed`` voxels by about ``distance_mm``.

    In-plane steps of the smallest in-plane spacing; 26-connected steps only while the
    slice spacing is within the distance (each such step also moves one slice).
    scipy's ``binary_dilation(mask=...)`` is the geodesic step. Returns voxels added.
    """
    if not mask.any():
        return 0
    steps, z_steps = _geodesic_steps(spacing_mm, distance_mm)
    box = bounding_box(mask, tuple(steps if ax else z_steps for ax in range(3)))
    seed, within = mask[box], (allowed[box] | mask[box])
    grown = seed
    # binary_dilation with iterations and a mask only revisits the changed border.
    if z_steps:
        grown = ndimage.binary_dilation(grown, _CONN26, iterations=z_steps, mask=within)
    if steps > z_steps:
        grown = ndimage.binary_dilation(grown, _PLANE, iterations=steps - z_steps, mask=within)
    add = grown & ~seed
    mask[box] |= add
    return int(np.count_nonzero(add))


def _extension_candidates(
    seeds: np.ndarray, ggo_band: np.ndarray, smooth: np.ndarray, lung: np.ndarray,
    parenchyma: tuple[CoarseGrid, np.ndarray], spacing_mm: tuple[float, float, float],
    config: LesionSegmentationConfig,
) -> tuple[tuple[slice, ...], np.ndarray, np.ndarray | None] | None:
    """The part of :func:`_extend_from_cores` that does not depend on solid lesion.

    Returns ``(box, cand, deep)``: the box within reach of a seed, the ground-glass-band
    voxels there at least ``extension_above_parenchyma_hu`` above the parenchyma level, and
    lung at least ``extension_vessel_clearance_mm`` deep (None without a clearance); None
    when there is no seed. Independent of the enclosed-solid rule, so it can run beside it.
    """
    if not seeds.any():
        return None
    # Only voxels within reach of a seed matter: work in that box.
    reach = tuple(
        int(np.ceil((_extension_reach_mm(spacing_mm, config)
                     + config.extension_vessel_clearance_mm) / s)) + 1
        for s in spacing_mm
    )
    box = bounding_box(seeds, reach)
    offset = tuple(b.start for b in box)
    band_b = ggo_band[box]
    idx = np.nonzero(band_b)
    full_idx = tuple(i + o for i, o in zip(idx, offset, strict=True))
    floor = (
        _at_voxels(parenchyma[0], parenchyma[1], full_idx) + config.extension_above_parenchyma_hu
    )
    ok = smooth[box][idx] >= floor
    cand = np.zeros_like(band_b)
    cand[tuple(i[ok] for i in idx)] = True
    del idx, full_idx, floor, ok
    deep = None
    if config.extension_vessel_clearance_mm > 0:
        size = _clearance_size(spacing_mm, config)
        deep = ndimage.minimum_filter(
            lung[box].view(np.uint8), size=size, mode="constant"
        ).astype(bool)
    return box, cand, deep


def _clearance_size(
    spacing_mm: tuple[float, float, float], config: LesionSegmentationConfig
) -> tuple[int, ...]:
    """Box filter size of ``extension_vessel_clearance_mm`` (voxels per axis)."""
    return tuple(2 * int(config.extension_vessel_clearance_mm / s) + 1 for s in spacing_mm)


def _min_width_radius_px(
    width_mm: float, spacing_mm: tuple[float, float, float]
) -> tuple[int, int]:
    """In-plane half-widths (y, x) of the largest square no wider than ``width_mm``: an
    opening with it removes structures narrower than about ``width_mm`` (0 where a voxel
    is wider than a third of it: coarse grids are left alone)."""
    return tuple(  # type: ignore[return-value]
        max(0, int((width_mm / s - 1.0) / 2.0)) if width_mm > 0 else 0 for s in spacing_mm[1:]
    )


def _single_pixel_blocks(
    spacing_mm: tuple[float, float, float], config: LesionSegmentationConfig
) -> bool:
    """Whether the background grid (:class:`CoarseGrid`, blocks of about
    ``background_working_spacing_mm``) is single pixels in-plane on this grid: pixels wider
    than 2/3 of it (1.0 mm at 1.5 mm). There the ball holds about four times as many blocks
    as at 0.7-1.0 mm pixels, each the mean of one pixel instead of four, and the opening's
    minimum is biased further down by the same noise index (session 23)."""
    grid = CoarseGrid.for_volume(
        (1, 1, 1), spacing_mm, working_spacing_mm=config.background_working_spacing_mm
    )
    return 1 in grid.factors[1:]


# Every n-th lung voxel for the lung's median HU (a level, not a count: 1.5 M voxels of a
# 5 L lung at 0.7 x 0.7 x 1 mm are plenty).
_LEVEL_STRIDE = 7


def _soft_image_warnings(
    noise_hu: float | None, kernel: str | None, config: LesionSegmentationConfig, *,
    lung_median_hu: Callable[[], float],
) -> list[str]:
    """``soft_image_lesion_bias`` when the aerated lung's noise index (unsmoothed,
    :func:`~lungvol.segmentation.noise.lung_noise_hu`) is below
    ``soft_image_noise_floor_hu``: too little fine structure for the rules' calibration
    (index 15-20 HU on the scans here). The index, not the kernel's name, decides: a smooth
    kernel on a noisy scan measures above the floor and reads near the calibration (the
    real chest blurred by 1.0 mm with noise of SD 100 HU: index 19, +1.6 % on 15 %
    inserted lesion); ``kernel`` (ConvolutionKernel) is only named in the message. A lung
    whose median HU (``lung_median_hu``, called only below the floor) is under
    ``soft_image_min_lung_hu`` is mostly air, with little texture whatever the kernel: not
    flagged."""
    floor = config.soft_image_noise_floor_hu
    if noise_hu is None or floor <= 0 or noise_hu >= floor:
        return []
    if lung_median_hu() < config.soft_image_min_lung_hu:
        return []
    named = f" (reconstruction kernel {kernel})" if kernel else ""
    return [
        f"soft_image_lesion_bias: the aerated-lung noise index is {noise_hu:.1f} HU (< "
        f"lesions.soft_image_noise_floor_hu = {floor:g} HU): a smooth image{named}, from a "
        "soft reconstruction kernel or a volume interpolated onto a finer grid, where vessel "
        "edges spread into the ground-glass band and lesion reads high (the real chest "
        "blurred to an index of 9.7 / 7.0 HU read 15 % inserted lesion +9.9 / +15.8 % and "
        "the normal chest 0.66 / 1.71 %); use a sharp (lung) kernel reconstruction, and "
        "compare visits of one kernel"
    ]


def _width_gate(
    spacing_mm: tuple[float, float, float], config: LesionSegmentationConfig
) -> str:
    """Which width gate the hysteresis has on this grid.

    ``"square"``: in-plane voxels of at most a third of ``extension_min_width_mm`` (clinical
    CT), an opening with :func:`_min_width_radius_px`'s square. ``"pair"``: in-plane voxels
    wider than ``extension_vessel_clearance_mm``, where the clearance box is one voxel and
    keeps nothing off a vessel: growth beyond the first in-plane ring around accepted
    lesion must lie in a 2 x 2 in-plane square (:func:`_pair_gate`). ``"none"`` between
    the two (1-2 mm voxels, where the clearance acts) and when the gate or the extension is
    off (``extension_min_width_mm`` or ``lesion_extension_mm`` 0).
    """
    if config.extension_min_width_mm <= 0 or config.lesion_extension_mm <= 0:
        return "none"
    if any(_min_width_radius_px(config.extension_min_width_mm, spacing_mm)):
        return "square"
    if config.extension_vessel_clearance_mm > 0 and _clearance_size(spacing_mm, config)[1:] == (
        1, 1
    ):
        return "pair"
    return "none"


def _extension_reach_mm(
    spacing_mm: tuple[float, float, float], config: LesionSegmentationConfig
) -> float:
    """The hysteresis's reach (mm): ``extension_gated_mm`` where a width gate acts on this
    grid (:func:`_width_gate`), ``lesion_extension_mm`` elsewhere (and 0 when that is 0:
    the extension is off)."""
    if config.lesion_extension_mm <= 0:
        return 0.0
    if _width_gate(spacing_mm, config) != "none":
        return config.extension_gated_mm
    return config.lesion_extension_mm


def _pair_gate(lesion: np.ndarray, accepted: np.ndarray) -> np.ndarray:
    """Voxels of ``lesion`` in a 2 x 2 in-plane square of it, or in-plane next to
    ``accepted`` (new mask).

    On voxels of 2-3 mm a vessel too thin for the solid band reads in the ground-glass band
    with a one-voxel skirt, and growth runs along it, mostly from the next slice (simulated
    trial, session 22). An even-sized opening: scipy's minimum filter of size 2 takes the
    voxel and the one before it, so the maximum filter that undoes it is shifted one voxel
    back (origin -1).
    """
    size = (1, 2, 2)
    eroded = ndimage.minimum_filter(lesion.view(np.uint8), size=size, mode="nearest")
    keep = ndimage.maximum_filter(eroded, size=size, origin=(0, -1, -1), mode="constant")
    ring = ndimage.maximum_filter(accepted.view(np.uint8), size=(1, 3, 3), mode="constant")
    return lesion & (keep | ring).astype(bool)


def _slices_beyond_ball(
    shape: tuple[int, int, int], spacing_mm: tuple[float, float, float],
    config: LesionSegmentationConfig, slice_thickness_mm: float | None = None,
) -> bool:
    """True when the background ball is one slice thick on its coarse grid (slices further
    apart than ``background_radius_mm``), so it cannot see lung surfaces that face the next
    slice, and the slices are that thick too (``slice_thickness_mm``, the header's, when
    known): thin slices far apart (sequential HRCT, 1 mm every 10 mm) average little across
    the surface."""
    grid = CoarseGrid.for_volume(
        shape, spacing_mm, working_spacing_mm=config.background_working_spacing_mm
    )
    thickness_mm = spacing_mm[0] if slice_thickness_mm is None else slice_thickness_mm
    return (
        ball(config.background_radius_mm, grid.spacing_mm).shape[0] == 1
        and thickness_mm > config.background_radius_mm
    )


def _slice_facing_partial_volume(
    band: np.ndarray, smooth: np.ndarray, lung: np.ndarray, aerated_max_hu: float,
    max_slices: int = 1,
) -> np.ndarray:
    """Band voxels on a lung surface that faces the next slice, with aerated lung behind.

    A thick slice through the diaphragm dome or the apex averages lung with the wall over a
    broad area of the slice, in the lesion bands; a lesion there continues into the slice
    inward. So a ``band`` voxel is partial volume when its neighbour slice on one side is
    outside the lung and on the other side is lung below ``aerated_max_hu`` (or outside
    too: a lung one slice thick). With ``max_slices`` k > 1 the partial volume may span up
    to k slices: the surface voxel and the band voxels inward of it, up to the slice before
    aerated lung (or outside), each smoothed HU lower than the one before (the wall's share
    falls inward; a lesion's does not have to). Slices beyond the array are unknown (a lung
    cut off by the scan's end), never outside.
    """
    def shifted(a: np.ndarray, k: int, fill: bool | float) -> np.ndarray:
        """``b[z] = a[z + k]``, ``fill`` beyond the array."""
        b = np.full_like(a, fill)
        n = a.shape[0]
        if k > 0:
            b[:n - k] = a[k:]
        elif k < 0:
            b[-k:] = a[:n + k]
        else:
            b[:] = a
        return b

    out = np.zeros_like(band)
    for d in (1, -1):  # +1: the lung surface faces the slice below; walk up. -1: the other way
        chain = band & shifted(~lung, -d, False)
        previous = smooth
        for j in range(1, max_slices + 1):
            in_array = shifted(np.ones_like(lung), d * j, False)
            nb_lung = shifted(lung, d * j, False)
            nb_hu = shifted(smooth, d * j, 0.0)
            ends = chain & in_array & (~nb_lung | (nb_hu < aerated_max_hu))
            for i in range(j):  # the surface voxel and the j - 1 inward of it
                out |= shifted(ends, -d * i, False)
            chain &= in_array & nb_lung & shifted(band, d * j, False) & (nb_hu < previous)
            previous = nb_hu
            if not chain.any():
                break
    return out & band


def _thick_slice_chain_slices(
    spacing_mm: tuple[float, float, float], config: LesionSegmentationConfig,
    slice_thickness_mm: float | None = None,
) -> int:
    """Slices a z-facing partial-volume chain may span (:func:`_slice_facing_partial_volume`)
    on slices thicker than ``thick_slice_chain_min_mm`` (the header's thickness when known,
    else the spacing): ``thick_slice_chain_mm`` in whole slices; 0 on thinner slices."""
    thickness_mm = spacing_mm[0] if slice_thickness_mm is None else slice_thickness_mm
    if config.thick_slice_chain_mm <= 0 or thickness_mm <= config.thick_slice_chain_min_mm:
        return 0
    return int(config.thick_slice_chain_mm // spacing_mm[0])


def _extend_from_cores(
    ggo: np.ndarray, solid: np.ndarray, seeds: np.ndarray, solid_band: np.ndarray,
    candidates: tuple[tuple[slice, ...], np.ndarray, np.ndarray | None] | None,
    spacing_mm: tuple[float, float, float], config: LesionSegmentationConfig,
    pool: ThreadPoolExecutor | None = None,
) -> int:
    """Hysteresis: extend ground glass from its cores into connected band voxels (in place).

    The opening keeps lesion only where its ball fits, so rims and fingers of irregular
    lesions are lost. Ground-glass-band voxels connected to ``seeds`` (ground glass
    accepted on its own ground-glass background, not on a vessel-raised one) through such
    voxels, within ``lesion_extension_mm`` (``extension_gated_mm`` where the width gate
    below acts), become ground glass when their lightly denoised HU is at least
    ``extension_above_parenchyma_hu`` above the local normal-lung level (``candidates``,
    from :func:`_extension_candidates`), and they are not within
    ``extension_vessel_clearance_mm`` of a rejected solid-band voxel (a vessel or airway
    wall: growth must not run along their partial-volume skirts; the dense rim along the
    pleura is not counted as a vessel). Voxels grown where the lesion is narrower in-plane
    than ``extension_min_width_mm`` (an opening of grown and accepted lesion) are dropped:
    skirts of vessels too thin for the solid band. On voxels too coarse for that square and
    for the clearance, growth beyond the first in-plane ring must be two voxels wide
    (:func:`_width_gate`). Returns the number of voxels added. With ``pool``, z-slabs are
    shared with it (the same voxels).
    """
    if candidates is None:
        return 0
    box, cand, deep = candidates
    ggo_b, solid_b, seeds_b, band_b = ggo[box], solid[box], seeds[box], solid_band[box]
    size = _clearance_size(spacing_mm, config)
    reach_mm = _extension_reach_mm(spacing_mm, config)
    gate = _width_gate(spacing_mm, config)
    radius = (
        _min_width_radius_px(config.extension_min_width_mm, spacing_mm) if gate == "square"
        else (0, 0)
    )

    def grow(lo: int, hi: int, a: int, b: int) -> np.ndarray:
        """The voxels added in slices [lo, hi), computed on [a, b). Reads only: the
        slabs' results are written once all are done."""
        c, solid_s = cand[a:b], solid_b[a:b]
        if deep is not None:
            vessel = band_b[a:b] & ~solid_s & deep[a:b]
            c = c & ~ndimage.maximum_filter(vessel.view(np.uint8), size=size).astype(bool)
        grown = seeds_b[a:b].copy()
        _grow_geodesic(grown, c, spacing_mm, reach_mm)
        ggo_s = ggo_b[a:b]
        add = grown & ~ggo_s & ~solid_s
        if gate == "square":
            # Growth along the partial-volume skirt of a vessel below the solid band is a
            # tube or a hollow sleeve a voxel or two wide; a lesion's rim lies against its
            # core.
            add &= _opening_in_plane(
                grown | ggo_s | solid_s, (2 * radius[0] + 1, 2 * radius[1] + 1)
            )
        elif gate == "pair":
            add &= _pair_gate(grown | ggo_s | solid_s, ggo_s | solid_s)
        return add[lo - a:hi - a]

    # Local along z: the growth reaches at most its 26-connected steps' slices, the
    # clearance half its box more, and the gates are in-plane. Slabs with that halo give
    # the same voxels; this thread and ``pool`` (when free) take them in turn.
    n = ggo_b.shape[0]
    halo = _geodesic_steps(spacing_mm, reach_mm)[1] + (size[0] // 2 if deep is not None else 0)
    pieces = 1 if pool is None else max(1, min(_GROW_SLABS, n // (8 * max(1, halo))))
    parts = (
        [grow(0, n, 0, n)] if pieces == 1
        else shared_slabs(n, halo, grow, pool, pieces)  # type: ignore[arg-type]
    )
    added = 0
    for lo, part in zip((n * i // pieces for i in range(pieces)), parts, strict=True):
        ggo_b[lo:lo + part.shape[0]] |= part
        added += int(np.count_nonzero(part))
    return added


def _enclosed_above_band(
    solid: np.ndarray, lung: np.ndarray, smooth: np.ndarray, solid_max_hu: float
) -> np.ndarray:
    """Lung voxels denser than ``solid_max_hu`` enclosed in-plane by ``solid`` (new mask).

    Noise peaks and vessels inside a consolidation or tumour. In-plane holes = 4-connected
    (in-plane) components of the complement that do not reach the slice border; labelling
    is much cheaper than binary_fill_holes here. May include voxels of ``solid`` itself.
    """
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    enclosed = np.zeros_like(solid)
    step = max(1, _SLAB_VOXELS // (solid.shape[1] * solid.shape[2]))
    for lo in range(0, solid.shape[0], step):
        z = slice(lo, lo + step)
        lab, n = ndimage.label(~solid[z], structure=in_plane)
        if not n:
            continue
        open_to_border = np.zeros(n + 1, dtype=bool)
        for edge in (lab[:, 0, :], lab[:, -1, :], lab[:, :, 0], lab[:, :, -1]):
            open_to_border[edge] = True
        enclosed[z] = ~open_to_border[lab] & lung[z] & (smooth[z] > solid_max_hu)
    return enclosed


def _elongations(
    lab: np.ndarray, n: int, spacing_mm: tuple[float, float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Per label 1..n (index 0 unused): ratio of the longest to the second principal axis of
    its voxels (mm), from coordinate moments (one pass over the labelled voxels; 1 for
    components of fewer than 4 voxels), and its voxel count."""
    idx = np.nonzero(lab)
    which = lab[idx]
    count = np.bincount(which, minlength=n + 1).astype(np.float64)
    safe = np.maximum(count, 1.0)
    coords = [i.astype(np.float64) * s for i, s in zip(idx, spacing_mm, strict=True)]
    mean = [np.bincount(which, c, minlength=n + 1) / safe for c in coords]
    cov = np.empty((n + 1, 3, 3))
    for a in range(3):
        for b in range(a, 3):
            m = np.bincount(which, coords[a] * coords[b], minlength=n + 1) / safe
            cov[:, a, b] = cov[:, b, a] = m - mean[a] * mean[b]
    lam = np.linalg.eigvalsh(cov)  # ascending
    ratio = np.sqrt(np.clip(lam[:, 2], 0.0, None) / np.maximum(lam[:, 1], 1e-9))
    return np.where(count >= 4, ratio, 1.0), count


class _Components(NamedTuple):
    """26-connected components of solid lesion with their shape (:func:`_elongations`)."""

    labels: np.ndarray
    n: int
    elongation: np.ndarray
    voxels: np.ndarray


def _label_26(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """26-connected components of ``mask``: ``ndimage.label``'s labels and count, as uint16
    where they fit (half the memory and traffic of its int32), else int32."""
    try:
        lab, n = ndimage.label(mask, structure=_CONN26, output=np.uint16)
    except RuntimeError:  # more than 65535 components: "insufficient bit-depth"
        lab, n = ndimage.label(mask, structure=_CONN26)
    return lab, int(n)


def _solid_components(solid: np.ndarray, spacing_mm: tuple[float, float, float]) -> _Components:
    """:class:`_Components` of ``solid`` (the vessel-segment rule's input; uint16 labels,
    held while the extension runs)."""
    lab, n = _label_26(solid)
    return _Components(lab, n, *_elongations(lab, n, spacing_mm))


def _drop_vessel_segments(
    ggo: np.ndarray, solid: np.ndarray, dense: np.ndarray, lung: np.ndarray,
    wall: np.ndarray, spacing_mm: tuple[float, float, float],
    config: LesionSegmentationConfig, components: _Components | None = None,
) -> int:
    """Remove accepted solid components that are vessel segments, and their skirts (in place).

    Vessels wider than the ball (hilar and lobar arteries and veins, their junctions) keep a
    solid-band background and pass the background rules. A 26-connected solid component is
    a vessel segment when:

    - it lies in normal lung: less than ``vessel_max_ggo_fraction`` of the lung in the ring
      between ``vessel_shell_mm`` and ``vessel_ring_mm`` around it is ground-glass lesion (a
      solid part of a lesion sits in ground glass). The ring leaves out the first
      millimetres, where the vessel's own partial-volume skirt is ground glass (wider on a
      noisy scan smoothed by the noise adaptation);
    - the tube continues: at least ``vessel_min_continuation_fraction`` of the lung in its
      shell of ``vessel_shell_mm`` is ``dense`` tissue that is not solid lesion;
    - it is elongated: longest principal axis at least ``vessel_min_elongation`` times the
      second (a round nodule on a vessel stays), or it is a branching tree: at least
      ``vessel_tree_min_volume_ml`` with at most ``vessel_tree_max_wall_contact`` of its
      shell (inside or outside the lung) in ``wall``, tissue outside the lung (a junction of
      wide vessels is round as a whole but lies inside the lung; solid lesion that large
      reaches the pleura);
    - it is nowhere deeper than ``vessel_max_radius_mm`` (tumours and consolidations are
      thicker than vessels).

    Shells and rings are boxes of per-axis half-widths (the shell at least one voxel, the
    ring at least one voxel beyond it). Ground glass in
    the shell of a removed segment (its skirt, accepted on the background the vessel raised)
    goes with it. On the real normal chest here this is 26 mL of inferior pulmonary veins
    and lobar arteries with their skirts; the nodule there (no continuation) and the two real
    tumours (radius >= 15 mm) stay. ``components``: :func:`_solid_components` of ``solid``
    when already computed. Returns the number of voxels removed.
    """
    if config.vessel_max_radius_mm <= 0 or not solid.any():
        return 0
    lab, n, elongation, voxels = components or _solid_components(solid, spacing_mm)

    def box(mm: float, least: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Per-axis half-widths of ``mm`` (at least ``least``) and the box filter size."""
        half = tuple(max(k, int(round(mm / s))) for s, k in zip(spacing_mm, least, strict=True))
        return half, tuple(2 * h + 1 for h in half)

    def dilate(mask: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
        # Box dilation as a separable maximum filter: O(N) whatever the box, where
        # binary_dilation visits every footprint voxel (4 s -> 0.3 s on a 400-slice scan).
        return ndimage.maximum_filter(mask.view(np.uint8), size=size, mode="constant").astype(bool)

    # Cheapest test first: most solid components are round or tiny.
    elongated = elongation >= config.vessel_min_elongation
    # Branching trees (hilar vessels and their first branches) are not elongated as a
    # whole: large ones are judged too, as trees (below). 0 mL disables.
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    tree_sized = (config.vessel_tree_min_volume_ml > 0) & (
        voxels * voxel_ml >= config.vessel_tree_min_volume_ml
    )
    shell_half, shell_fp = box(config.vessel_shell_mm, (1, 1, 1))
    # The ring is at least one voxel wide on coarse grids.
    ring_half, ring_fp = box(config.vessel_ring_mm, tuple(h + 1 for h in shell_half))
    drop: list[tuple[tuple[slice, ...], np.ndarray, np.ndarray]] = []
    for i, obj in enumerate(ndimage.find_objects(lab), start=1):
        if obj is None or not (elongated[i] or tree_sized[i]):
            continue
        sl = tuple(
            slice(max(0, o.start - h), min(dim, o.stop + h))
            for o, h, dim in zip(obj, ring_half, lab.shape, strict=True)
        )
        comp = lab[sl] == i
        near = dilate(comp, shell_fp)
        shell = near & ~comp & lung[sl]
        ring = dilate(comp, ring_fp) & ~near & lung[sl]
        n_shell, n_ring = np.count_nonzero(shell), np.count_nonzero(ring)
        if not n_shell or not n_ring:
            continue
        lesion_free = ~solid[sl]
        on_ggo = np.count_nonzero(ring & ggo[sl] & lesion_free)
        if on_ggo >= config.vessel_max_ggo_fraction * n_ring:
            continue
        continued = np.count_nonzero(shell & dense[sl] & lesion_free)
        if continued < config.vessel_min_continuation_fraction * n_shell:
            continue
        if not elongated[i]:
            # A tree lies inside the lung; lesion of its size reaches the pleura.
            around = near & ~comp
            on_wall = np.count_nonzero(around & wall[sl])
            if on_wall > config.vessel_tree_max_wall_contact * np.count_nonzero(around):
                continue
        depth_mm = distance_transform_edt(np.pad(comp, 1), sampling=spacing_mm)
        if depth_mm.max() > config.vessel_max_radius_mm:
            continue
        drop.append((sl, comp, shell & ggo[sl]))
    # Every component is judged on the masks as they came in, then all are removed: a
    # vessel's verdict does not depend on whether its neighbour's skirt went first.
    if not drop:
        return 0
    before = np.count_nonzero(solid) + np.count_nonzero(ggo)
    for sl, comp, skirt in drop:  # skirts of neighbouring segments may overlap
        solid[sl] &= ~comp
        ggo[sl] &= ~skirt
    return int(before - np.count_nonzero(solid) - np.count_nonzero(ggo))


def _final_solid(
    solid: np.ndarray, fill: Future[np.ndarray] | None, slice_partial: np.ndarray | None,
    wall_plaques: np.ndarray | None, spacing_mm: tuple[float, float, float],
    config: LesionSegmentationConfig | None,
) -> tuple[np.ndarray, np.ndarray, _Components | None]:
    """Solid lesion with the fill's voxels (a new mask; ``solid`` is only read), the part
    of it the vessel-segment rule judges, and that part's components (None without the
    rule: ``config`` None or its radius 0, or no solid).

    Plaques off the costal pleura (``wall_plaques``) were judged by their density against
    the wall: the vessel rule does not see them as solid (one joined to a lesion's solid
    part made it a long strip along the wall that read as a vessel, and took the lesion
    with it: small phantom seed 3 at 15 %, -2.5 -> -6.0 %). They stay tissue, the
    continuation of a vessel leaving the lung at the hilum (seen as neither, the noisy
    chest on 1.95 mm pixels read 1.12 % instead of 0.48 %).
    """
    merged = solid | fill.result() if fill is not None else solid.copy()
    if slice_partial is not None:  # nothing grown back into it
        merged &= ~slice_partial
    judged = merged & ~wall_plaques if wall_plaques is not None else merged
    if config is None or config.vessel_max_radius_mm <= 0 or not judged.any():
        return merged, judged, None
    return merged, judged, _solid_components(judged, spacing_mm)


def _background_rules(
    hu_box: np.ndarray, smooth: np.ndarray, lung_box: np.ndarray, ggo_band: np.ndarray,
    solid_band: np.ndarray, spacing_mm: tuple[float, float, float],
    first_index: tuple[int, int, int], config: LesionSegmentationConfig,
    pool: ThreadPoolExecutor,
) -> tuple[
    np.ndarray, np.ndarray, np.ndarray, tuple[CoarseGrid, np.ndarray],
    tuple[CoarseGrid, np.ndarray],
]:
    """Band voxels accepted as ground glass and as solid by the background rules
    (``first_index``: the box's first voxel on the patient lattice, for the block grids).

    Returns ``(ggo, solid, seeds, parenchyma, costal)``: ``seeds`` is ground glass accepted
    on its own (not vessel-raised) background, the cores for :func:`_extend_from_cores`;
    ``parenchyma`` is :func:`_parenchyma_level`'s lookup, ``costal`` the background grid
    with :func:`_near_bone`'s map.
    """
    s_lo = config.solid_band_hu[0]
    max_above = config.max_above_background_hu
    wide_solid_future = pool.submit(
        _wide_solid, solid_band,
        _solid_width_px(spacing_mm, config),
    )
    grid, bg_any, bg_ggo, bg_pure, paren, near_bone = _background(
        hu_box, smooth, lung_box, spacing_mm, first_index, config, pool
    )

    def region_floor(ix: tuple[np.ndarray, ...]) -> np.ndarray:
        """Least background density of a lesion region at voxels ``ix`` (HU)."""
        return np.maximum(
            config.region_min_background_hu,
            _at_voxels(paren[0], paren[1], ix) + config.region_above_parenchyma_hu,
        )

    def solid_rule() -> np.ndarray:
        wide_solid = wide_solid_future.result()
        idx = np.nonzero(solid_band)
        bg = _at_voxels(grid, bg_any, idx)
        keep = (bg >= region_floor(idx)) & (
            (bg >= s_lo) | (smooth[idx] - bg <= max_above) | wide_solid[idx]
        )
        solid = np.zeros_like(solid_band)
        solid[tuple(i[keep] for i in idx)] = True
        return solid

    # The solid rule is independent of the ground-glass one: it runs on ``pool``.
    solid_future = pool.submit(solid_rule)
    idx = np.nonzero(ggo_band)
    bg = _at_voxels(grid, bg_ggo, idx)
    floor = region_floor(idx)
    keep = (bg >= floor) & (smooth[idx] - bg <= max_above)
    ggo = np.zeros_like(ggo_band)
    ggo[tuple(i[keep] for i in idx)] = True
    seeds = np.zeros_like(ggo_band)
    pure = keep & (_at_voxels(grid, bg_pure, idx) >= floor)
    seeds[tuple(i[pure] for i in idx)] = True
    del pure, bg, floor, keep
    return ggo, solid_future.result(), seeds, paren, (grid, near_bone)


def segment_lesions(
    volume: CTVolume, lungs: LungMask, config: LesionSegmentationConfig
) -> LesionMask:
    """Segment ground-glass (1) and solid (2) lesion inside the lung mask.

    Parameters
    ----------
    volume : CTVolume
        CT in HU, arrays (z, y, x).
    lungs : LungMask
        Lung labels on the CT grid (any non-zero label is lung).
    config : LesionSegmentationConfig
        HU bands, smoothing, background opening and minimum component volume.

    Returns
    -------
    LesionMask
        uint8 labels (0 none, 1 ground-glass, 2 solid) on the CT grid, and ``info`` with
        the volumes removed by each rule (mL) and timings (s).

    Raises
    ------
    GeometryError
        If the lung mask is not on the CT grid.
    """
    t0 = time.perf_counter()
    check_same_grid(lungs.labels, volume, name="lung mask")
    labels = np.zeros(volume.shape, dtype=np.uint8)
    lung = lungs.labels > 0
    voxel_ml = volume.voxel_volume_ml
    if not lung.any():
        return LesionMask(labels=labels, info={"empty_lung_mask": True})
    sp = tuple(float(s) for s in volume.spacing_mm)
    sigma_px = tuple(config.smoothing_sigma_mm / s for s in sp)
    # Margin: the smoothing kernel, and bone near the costal pleura (the ribs lie outside
    # the lungs' box at its lateral, anterior and posterior extremes).
    reach_mm = (
        config.pleural_bone_distance_mm + config.pleural_extrapolation_mm
        if config.pleural_extrapolation_mm > 0 else 0.0
    )
    box = bounding_box(lung, tuple(
        max(int(np.ceil(3 * sg)) + 1, int(np.ceil(reach_mm / s)))
        for sg, s in zip(sigma_px, sp, strict=True)
    ))
    # Every block grid of this stage (noise, background, parenchyma level) is anchored to
    # patient coordinates through the box's first voxel: the same anatomy is cut into the
    # same blocks however the scan was cropped (docs/segmentation.md, "Grid phase").
    first = tuple(
        i + b.start for i, b in zip(
            patient_index(volume.origin_lps_mm, volume.direction, volume.spacing_mm), box,
            strict=True,
        )
    )
    lung_b = lung[box]
    hu_b = volume.hu[box].astype(np.float32)
    # scipy.ndimage releases the GIL, so independent steps run on one extra thread; the
    # results are identical to running them in turn (lesion stage 1-4 s faster on the
    # 400-slice phantom, 2 cores). The pool serves the noise measure, then stays open
    # through the enclosed-solid rule, the extension and the fill.
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        noise = adapt_to_noise(
            hu_b, lung_b, sp,  # type: ignore[arg-type]
            bias_target_hu=(
                config.opening_bias_target_hu if config.background_radius_mm > 0 else 0.0
            ),
            target_hu=config.noise_target_hu, max_sigma_mm=config.noise_max_smoothing_mm,
            block_mm=config.background_working_spacing_mm,
            radius_mm=config.background_radius_mm, level_mm=config.parenchyma_block_mm,
            aerated_max_hu=config.parenchyma_max_hu, first_index=first,  # type: ignore[arg-type]
            pool=pool,
        )
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    t_noise = time.perf_counter()
    with pool:
        band_sigma_mm = config.noise_band_fraction * noise.smoothing_sigma_mm
        # The HU bands (and every rule reading each voxel's own HU) see only that fraction
        # of the noise smoothing, in quadrature with the light denoising: all of it widens
        # vessel skirts into the ground-glass band as a soft kernel does (the noisy normal
        # chest at 1.05 mm pixels: 1.11 % with all, 0.77 % with half; session 25).
        smooth = gaussian_in_slabs(hu_b, tuple(
            float(np.hypot(config.smoothing_sigma_mm, band_sigma_mm)) / s for s in sp
        ), pool)
        if noise.smoothing_sigma_mm > 0:
            # A noisy scan: the background and the parenchyma level see the CT smoothed by
            # all of it, which brings the opening's bias to its calibrated level.
            hu_b = gaussian_in_slabs(hu_b, tuple(noise.smoothing_sigma_mm / s for s in sp), pool)
        g_lo, g_hi = config.ggo_band_hu
        s_lo, s_hi = config.solid_band_hu
        ggo_band = lung_b & (smooth >= g_lo) & (smooth < g_hi)
        solid_band = lung_b & (smooth >= s_lo) & (smooth <= s_hi)
        dense_ml = float((np.count_nonzero(ggo_band) + np.count_nonzero(solid_band)) * voxel_ml)
        t_bands = time.perf_counter()
        rules = config.background_radius_mm > 0
        if rules:
            ggo, solid, seeds, paren, costal = _background_rules(
                hu_b, smooth, lung_b, ggo_band, solid_band, sp, first, config, pool  # type: ignore[arg-type]
            )
        else:  # plain HU bands
            ggo, solid = ggo_band.copy(), solid_band.copy()
        del hu_b
        partial_ml = chain_ml = 0.0
        slice_partial = None
        if (
            rules and config.thick_slice_surface_rule
            and _slices_beyond_ball(
                lung_b.shape, sp, config, volume.source.slice_thickness_mm  # type: ignore[arg-type]
            )
        ):
            slice_partial = _slice_facing_partial_volume(
                ggo_band | solid_band, smooth, lung_b, g_lo
            )
            partial_ml = float(np.count_nonzero(slice_partial & (ggo | solid)) * voxel_ml)
            for accepted in (ggo, solid, seeds):
                accepted &= ~slice_partial
            ggo_band = ggo_band & ~slice_partial
        elif rules and (chain_slices := _thick_slice_chain_slices(
            sp, config, volume.source.slice_thickness_mm  # type: ignore[arg-type]
        )):
            # Slices the ball spans, still thick (session 29): the hysteresis must not run
            # along the wall's partial volume smeared over the next slices (the real chest
            # in 3 mm slabs: 15 % inserted read +13.9 % with it, +8.2 % without).
            # Ground glass accepted there on its own stays, but is no path for the growth.
            chain = _slice_facing_partial_volume(
                ggo_band | solid_band, smooth, lung_b, g_lo, max_slices=chain_slices
            ) & ggo_band
            chain_ml = float(np.count_nonzero(chain & ~ggo) * voxel_ml)
            ggo_band = ggo_band & ~chain
            del chain
        # The extension's candidates do not depend on solid lesion: prepared on the pool
        # while the enclosed-solid rule runs.
        cand_future = (
            pool.submit(
                _extension_candidates, seeds, ggo_band, smooth, lung_b, paren, sp, config  # type: ignore[arg-type]
            )
            if rules and config.lesion_extension_mm > 0 else None
        )
        grown_ml = plaque_ml = dense_plaque_ml = 0.0
        wall_plaques = None
        if rules and (
            config.enclosed_solid_min_ggo_fraction <= 1.0 or config.plaque_min_wall_contact <= 1.0
        ):
            grown, plaque, wall_plaques = _grow_enclosed_solid(
                ggo, solid, ggo_band, solid_band, lung_b, smooth, volume.hu[box], costal,
                sp, config, pool,  # type: ignore[arg-type]
            )
            grown_ml, plaque_ml = voxel_ml * grown, voxel_ml * plaque
            if wall_plaques is not None:
                dense_plaque_ml = voxel_ml * np.count_nonzero(wall_plaques)
        # Voxels above the solid band enclosed (in the axial slice) by solid lesion are
        # solid. The extension only changes ground glass and the fill only reads solid
        # lesion; its voxels join ``solid`` after the extension as before: both run at once.
        fill_future = (
            pool.submit(_enclosed_above_band, solid, lung_b, smooth, s_hi)
            if config.fill_enclosed_solid else None
        )
        # Solid lesion is final once the fill is in: the vessel rule's input is prepared
        # on the pool during the extension.
        solid_future = pool.submit(
            _final_solid, solid, fill_future, slice_partial, wall_plaques, sp,
            config if rules else None,
        )
        extended_ml = 0.0
        if cand_future is not None:
            extended_ml = voxel_ml * _extend_from_cores(
                ggo, solid, seeds, solid_band, cand_future.result(), sp, config, pool  # type: ignore[arg-type]
            )
            del seeds, paren, cand_future
        # Band voxels the background rules rejected (the thick-slice rule's are counted in
        # its own entry, not again here).
        rejected_solid = solid_band & ~solid
        if slice_partial is not None:
            rejected_solid &= ~slice_partial
        background_ml = float(
            (np.count_nonzero(ggo_band & ~ggo) + np.count_nonzero(rejected_solid)) * voxel_ml
        )
        del rejected_solid
        solid, judged, components = solid_future.result()
        del fill_future, solid_future
        if slice_partial is not None:  # nothing grown back into it
            ggo &= ~slice_partial
            del slice_partial
        vessel_ml = 0.0
        if components is not None:
            dense_b = smooth >= s_lo
            vessel_ml = voxel_ml * _drop_vessel_segments(
                ggo, judged, lung_b & dense_b, lung_b, ~lung_b & dense_b, sp, config,  # type: ignore[arg-type]
                components,
            )
            del dense_b
        if rules and wall_plaques is not None:  # tissue to the vessel rule, lesion again
            solid = judged | wall_plaques
        del judged, components
    del smooth
    lesion = ggo | solid
    t_bg = time.perf_counter()

    small_ml = 0.0
    if config.min_component_volume_ml > 0:
        lab, n = _label_26(lesion)
        # Counting only lesion voxels (not the background) avoids a full-box int64 copy.
        sizes = np.bincount(lab[lesion], minlength=n + 1)
        small = sizes * voxel_ml < config.min_component_volume_ml  # exactly the min is kept
        small[0] = False
        if small.any():
            small_ml = float(sizes[small].sum() * voxel_ml)
            lesion &= ~small[lab]
        del lab
    t_cc = time.perf_counter()

    sub = labels[box]
    sub[lesion & ggo] = LESION_GGO
    sub[lesion & solid] = LESION_SOLID
    ggo_ml = float(np.count_nonzero(sub == LESION_GGO) * voxel_ml)
    solid_ml = float(np.count_nonzero(sub == LESION_SOLID) * voxel_ml)
    t_end = time.perf_counter()
    warnings = []
    if noise.smoothing_sigma_mm > 0 and noise.measure == "opening_bias":
        warnings.append(
            f"noisy_scan_smoothed: the background opening lies {noise.opening_bias_hu:.0f} HU "
            f"below normal lung (> lesions.opening_bias_target_hu = "
            f"{config.opening_bias_target_hu:g} HU; noise index {noise.lung_noise_hu:.0f} HU: "
            "sharp kernel, low dose, or pixels over 1.0 mm); the CT was smoothed (Gaussian "
            f"sigma {noise.smoothing_sigma_mm:.2f} mm) before the lesion bands, so lesion "
            "borders are smoother; prefer a softer reconstruction kernel when one exists"
        )
    elif noise.smoothing_sigma_mm > 0:
        warnings.append(
            f"noisy_scan_smoothed: the aerated-lung noise index is {noise.lung_noise_hu:.0f} HU "
            f"(> lesions.noise_target_hu = {config.noise_target_hu:g} HU: sharp kernel or low "
            f"dose; too little lung deep inside to measure the opening bias); the CT was "
            f"smoothed (Gaussian sigma {noise.smoothing_sigma_mm:.2f} mm) before the lesion "
            "bands, so lesion borders are smoother; prefer a softer reconstruction kernel when "
            "one exists"
        )
        if _single_pixel_blocks(sp, config):  # type: ignore[arg-type]
            warnings.append(
                f"noisy_coarse_pixels: a noisy scan on {max(sp[1:]):.2f} mm pixels, smoothed by "
                "its noise index; on pixels wider than 2/3 of "
                f"lesions.background_working_spacing_mm "
                f"({config.background_working_spacing_mm:g} mm) the background grid is single "
                "pixels, where that index was not calibrated, and lesion can read far low (the "
                "real chest with 15 % lesion and noise of SD 100 HU smoothed by the index: -30 % "
                "at 1.02 mm pixels, -2 % at 0.98 mm); compare visits of one pixel size, or "
                "reconstruct with a smaller field of view"
            )
    warnings += _soft_image_warnings(
        noise.lung_noise_hu, volume.source.convolution_kernel, config,
        lung_median_hu=lambda: float(np.median(volume.hu[lung][::_LEVEL_STRIDE])),
    )
    info = {
        "method": "HU bands on the lightly denoised CT, gated by an opened background "
        "density map (grey-level opening with a ball, coarse grid) that removes vessels, "
        "halos, airway walls and the pleural rim; rejected solid enclosed by ground glass or "
        "lying on the costal pleura (plaques) kept; vessel segments wider than the ball "
        "removed by shape and surroundings; minimum component volume",
        "lung_noise_hu": None if noise.lung_noise_hu is None else round(noise.lung_noise_hu, 2),
        "lung_opening_bias_hu": (
            None if noise.opening_bias_hu is None else round(noise.opening_bias_hu, 2)
        ),
        "noise_smoothing_sigma_mm": noise.smoothing_sigma_mm,
        "noise_band_smoothing_sigma_mm": round(band_sigma_mm, 3),
        "noise_smoothing_measure": noise.measure,
        "warnings": warnings,
        "ggo_band_hu": [g_lo, g_hi],
        "solid_band_hu": [s_lo, s_hi],
        "dense_in_band_ml": round(dense_ml, 3),
        "background_removed_ml": round(background_ml, 3),
        "enclosed_solid_added_ml": round(grown_ml, 3),
        "pleural_plaques_added_ml": round(plaque_ml, 3),
        # Of those, the plaques off the costal pleura taken back for their density.
        "dense_wall_plaques_added_ml": round(dense_plaque_ml, 3),
        "extended_from_cores_ml": round(extended_ml, 3),
        # The hysteresis's width gate and reach on this grid (longer where a gate acts).
        "extension_width_gate": _width_gate(sp, config) if rules else "none",  # type: ignore[arg-type]
        "extension_reach_mm": _extension_reach_mm(sp, config) if rules else 0.0,  # type: ignore[arg-type]
        "slice_facing_partial_volume_removed_ml": round(partial_ml, 3),
        "slice_facing_growth_withheld_ml": round(chain_ml, 3),
        "vessel_segments_removed_ml": round(vessel_ml, 3),
        "small_components_removed_ml": round(small_ml, 3),
        "min_component_volume_ml": config.min_component_volume_ml,
        "min_component_rule": "components with volume < minimum are removed (= kept)",
        "ggo_ml": round(ggo_ml, 3),
        "solid_ml": round(solid_ml, 3),
        "timings_s": {
            "noise": round(t_noise - t0, 3),
            "bands": round(t_bands - t_noise, 3),
            "background": round(t_bg - t_bands, 3),
            "components": round(t_cc - t_bg, 3),
            "total": round(t_end - t0, 3),
        },
    }
    logger.info("lesions: GGO %.1f mL, solid %.1f mL", ggo_ml, solid_ml)
    return LesionMask(labels=labels, info=info)
