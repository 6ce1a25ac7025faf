"""Quality-control flags: short machine-readable code, a colon, then a one-line message.

Example: ``"lungs_cut_off_superior: 1.8% of lung voxels lie on the top 1 slice(s); ..."``.
A flag never stops the pipeline; it tells the reader which numbers to distrust.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from scipy import ndimage

from lungvol.config import QuantificationConfig
from lungvol.quantification.volumes import Volumes
from lungvol.segmentation.grid import CoarseGrid, bounding_box
from lungvol.types import LESION_SOLID, LUNG_LEFT, LUNG_RIGHT

# A voxel's 3x3x3 neighbourhood (itself included: it is tissue only when outside the lung
# mask), as (dz, dy, dx) offsets.
_OFFSETS27 = np.array([(dz, dy, dx) for dz in (-1, 0, 1) for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
# Voxels whose neighbours are gathered at once (27 int64 indices each: about 220 MB).
_GATHER_CHUNK = 1_000_000
# A warning that already starts with a code such as "uneven_spacing_resampled: ..." keeps it.
_CODE_RE = re.compile(r"^[a-z][a-z0-9_]*:\s")
# Codes for the reader's plain-text warnings (lungvol.io words them; first match wins).
_KNOWN_WARNINGS = (
    (re.compile(r"uneven slice spacing", re.IGNORECASE), "uneven_spacing_resampled"),
    (re.compile(r"gantry tilt", re.IGNORECASE), "gantry_tilt_resampled"),
    (re.compile(r"slicethickness .* differs", re.IGNORECASE), "slice_thickness_mismatch"),
)


def as_flag(text: str, *, default_code: str) -> str:
    """Return ``text`` as a flag ``"code: message"``.

    A text that already starts with a code keeps it; a known reader warning gets its code;
    anything else gets ``default_code``.

    Examples
    --------
    >>> as_flag("gantry tilt of 12.0 degrees; resampled", default_code="io_warning")
    'gantry_tilt_resampled: gantry tilt of 12.0 degrees; resampled'
    """
    text = " ".join(str(text).split())
    if _CODE_RE.match(text):
        return text
    for pattern, code in _KNOWN_WARNINGS:
        if pattern.search(text):
            return f"{code}: {text}"
    return f"{default_code}: {text}"


def flag_code(flag: str) -> str:
    """The machine-readable code of a flag ("lungs_cut_off_superior: ..." -> the code)."""
    return flag.split(":", 1)[0]


def edge_flags(
    lung_labels: np.ndarray, spacing_mm: tuple[float, float, float], *,
    config: QuantificationConfig,
) -> list[str]:
    """Flags for lungs cut off at the first/last slices or at the in-plane image border.

    Axis 0 runs inferior -> superior, axis 1 anterior -> posterior, axis 2 patient right -> left.
    ``edge_margin_slices`` is the border width in voxels. A first/last slice is flagged when
    it holds at least ``edge_touch_min_fraction`` of all lung voxels (a scan range that
    just reaches the apex or the base touches it a little). An in-plane border is flagged
    when the lung's contact with it is at least ``edge_touch_min_area_mm2``: the chest wall
    lies between the lungs and a field of view that holds the whole chest, so any real
    contact means the lung was cut. (A fraction of lung voxels does not work in-plane: a
    one-voxel column is thin, and a field of view 13 mm inside the real chest's lungs on
    each side, cutting 125 mL of lung, put only 0.10 % of the voxels on the border.)
    """
    n_lung = int(np.count_nonzero(lung_labels))
    if n_lung == 0:
        return []
    m = max(1, int(config.edge_margin_slices))
    threshold = config.edge_touch_min_fraction
    flags: list[str] = []
    z_borders = {
        "inferior": lung_labels[:m],
        "superior": lung_labels[-m:],
    }
    for side, block in z_borders.items():
        fraction = np.count_nonzero(block) / n_lung
        if fraction >= threshold and fraction > 0:
            flags.append(
                f"lungs_cut_off_{side}: {100 * fraction:.2f}% of lung voxels lie on the "
                f"{side}-most {m} slice(s); the lung is probably not fully scanned, so its "
                "volume is too low"
            )
    sz, sy, sx = (float(s) for s in spacing_mm)
    # Border plane, and the area of one voxel face in that plane (mm2).
    in_plane = {
        "anterior": (lung_labels[:, 0, :], sz * sx),
        "posterior": (lung_labels[:, -1, :], sz * sx),
        "right": (lung_labels[:, :, 0], sz * sy),
        "left": (lung_labels[:, :, -1], sz * sy),
    }
    touched = []
    for side, (plane, face_mm2) in in_plane.items():
        area_mm2 = np.count_nonzero(plane) * face_mm2
        if area_mm2 >= config.edge_touch_min_area_mm2 and area_mm2 > 0:
            touched.append(f"{side} {area_mm2 / 100:.1f} cm2")
    if touched:
        flags.append(
            "lungs_cut_off_in_plane: the lungs touch the field-of-view edge ("
            + ", ".join(touched)
            + "), so their volume is too low; reconstruct with a larger field of view"
        )
    return flags


def base_taper_mm(
    lung_labels: np.ndarray, spacing_mm: tuple[float, float, float], *,
    config: QuantificationConfig,
) -> dict[str, float | None]:
    """Per lung, how far (mm) its cross-section takes to grow from the base to half its largest.

    The base is the lowest slice (axis 0 runs inferior -> superior) holding at least
    ``base_min_area_fraction`` of the lung's largest slice area; the taper is the distance
    from it up to the lowest slice holding ``base_half_area_fraction`` of that area. The
    diaphragm's dome rises into the lung's cross-section from the costophrenic recesses
    up, so a normal base tapers over several centimetres (30-51 mm on the scans here); a
    base consolidated flat across, against the liver or the spleen, has no air left to
    segment and the mask ends square (0-2 mm). ``{"right": mm, "left": mm}``; None for an
    empty lung.
    """
    out: dict[str, float | None] = {"right": None, "left": None}
    for side, label in (("right", LUNG_RIGHT), ("left", LUNG_LEFT)):
        area = np.count_nonzero(lung_labels == label, axis=(1, 2))
        if not area.any():
            continue
        base = int(np.argmax(area >= config.base_min_area_fraction * area.max()))
        half = int(np.argmax(area >= config.base_half_area_fraction * area.max()))
        out[side] = round((half - base) * float(spacing_mm[0]), 1)
    return out


def base_flags(
    taper_mm: Mapping[str, float | None], edge: Iterable[str], *,
    config: QuantificationConfig,
) -> list[str]:
    """``lung_base_truncated`` for lungs whose base tapers over less than
    ``min_base_taper_mm``, unless the scan range cuts the lungs off below (``edge``: the
    edge flags; ``lungs_cut_off_inferior`` names that cause already)."""
    if any(flag_code(f) == "lungs_cut_off_inferior" for f in edge):
        return []
    short = [
        f"{side} {mm:.0f} mm" for side, mm in taper_mm.items()
        if mm is not None and mm < config.min_base_taper_mm
    ]
    if not short:
        return []
    return [
        f"lung_base_truncated: the lung mask's base ends square ({', '.join(short)} from the "
        f"base to half the largest cross-section; a normal base tapers over "
        f"{config.min_base_taper_mm:g} mm or more): a consolidated lung base or a subpulmonic "
        "effusion was likely left out of the lung mask, so the lung volume and the lesion "
        "proportion read low; nothing was added; check the coronal view of qc.png"
    ]


def volume_flags(volumes: Volumes, *, config: QuantificationConfig) -> list[str]:
    """Flags for implausible total lung volume, right/left imbalance, lesions outside lungs."""
    flags: list[str] = []
    low, high = config.plausible_lung_volume_ml
    if not low <= volumes.lung_volume_ml <= high:
        flags.append(
            f"lung_volume_implausible: {volumes.lung_volume_ml:.0f} mL is outside the plausible "
            f"{low:.0f}-{high:.0f} mL; check the lung mask in qc.png"
        )
    right, left = volumes.lung_volume_right_ml, volumes.lung_volume_left_ml
    if right == 0 or left == 0:
        missing = "right" if right == 0 else "left"
        flags.append(
            f"lung_missing_{missing}: the {missing} lung mask is empty; check qc.png "
            "(pneumonectomy, collapse or a failed right/left split)"
        )
    else:
        ratio = max(right, left) / min(right, left)
        if ratio > config.max_right_left_volume_ratio:
            flags.append(
                f"lung_right_left_imbalance: right {right:.0f} mL vs left {left:.0f} mL "
                f"(ratio {ratio:.2f} > {config.max_right_left_volume_ratio:g}); "
                "check the right/left split in qc.png"
            )
    if volumes.n_lesion_voxels_outside_lungs:
        flags.append(
            f"lesions_outside_lungs: {volumes.n_lesion_voxels_outside_lungs} lesion voxels lie "
            "outside the lung mask and were not counted"
        )
    return flags


def density_flags(percentile_hu: float, *, config: QuantificationConfig) -> list[str]:
    """``lung_density_high`` when the ``density_percentile``-th percentile of lung HU
    (``percentile_hu``) is above ``density_flag_min_hu``: the least dense tenth of the lung
    is not normally aerated. The lesion stage measures ground glass above the lung's own
    parenchyma level, so ground glass spread evenly over the whole lung reads low (the real
    chest shifted up 200 HU: 7.4 % lesion); a scan at poor inspiration looks the same."""
    if percentile_hu <= config.density_flag_min_hu:
        return []
    q = config.density_percentile
    return [
        f"lung_density_high: the lung's {q:g}th HU percentile is {percentile_hu:.0f} HU "
        f"(above {config.density_flag_min_hu:g}; normally aerated lung -860 to -920): no "
        "normal lung is left to compare with (diffuse ground glass, which then reads low) or "
        "the scan was taken at poor inspiration; check qc.png and the breath hold"
    ]


def metal_in_lung_slices(
    hu: np.ndarray, lung_labels: np.ndarray, lesion_labels: np.ndarray,
    spacing_mm: tuple[float, float, float], *, config: QuantificationConfig,
) -> dict[str, float] | None:
    """Metal and the lung that shares its axial slices; None when the scan holds no metal.

    Metal is ``metal_min_hu`` and denser, in 26-connected components of at least
    ``metal_min_component_ml``. Returns ``metal_ml``, the ``lung_ml`` and ``lesion_ml`` in
    the slices holding it (mL) and ``lung_pct``, the share of the lung there (%): the most
    its in-plane streaks can move the lesion proportion, in percentage points.
    """
    dense = hu >= config.metal_min_hu
    if not dense.any():
        return None
    box = bounding_box(dense)  # label only around the metal
    labels, n = ndimage.label(dense[box], structure=np.ones((3, 3, 3), bool))
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes * voxel_ml >= config.metal_min_component_ml
    keep[0] = False
    metal = keep[labels]
    if not metal.any():
        return None
    in_slice = np.zeros(hu.shape[0], bool)
    in_slice[box[0]] = metal.any(axis=(1, 2))
    lung_total = np.count_nonzero(lung_labels)
    lung_there = np.count_nonzero(lung_labels[in_slice])
    return {
        "metal_ml": round(float(np.count_nonzero(metal)) * voxel_ml, 2),
        "lung_ml": round(float(lung_there) * voxel_ml, 1),
        "lesion_ml": round(float(np.count_nonzero(lesion_labels[in_slice])) * voxel_ml, 1),
        "lung_pct": round(100.0 * float(lung_there) / lung_total, 2) if lung_total else 0.0,
    }


def metal_flags(metal: Mapping[str, float] | None, *, config: QuantificationConfig) -> list[str]:
    """``metal_near_lungs`` when metal shares its slices with at least
    ``metal_flag_min_lung_pct`` of the lung (``metal`` from :func:`metal_in_lung_slices`).
    Metal streaks are bright and dark bands across the slice: bright ones read as ground
    glass, dark ones hide lesion; they also read as bone and air to the lung stage, whose
    midline, airway and split rules then change the mask in other slices too (session 19,
    ``insert_metal``). Nothing is corrected."""
    if metal is None or metal["lung_pct"] < config.metal_flag_min_lung_pct:
        return []
    return [
        f"metal_near_lungs: {metal['metal_ml']:.2f} mL of metal (>= "
        f"{config.metal_min_hu:g} HU: wires, leads, an implant) lies in slices holding "
        f"{metal['lung_pct']:.1f} % of the lung ({metal['lesion_ml']:.0f} mL of lesion read "
        "there); its streaks read as lesion or hide it there, and can mislead the lung mask "
        "elsewhere (a simulated pacemaker took a normal chest from 0.31 % up to 2.97 % lesion): "
        "check qc.png and the scan before using its numbers"
    ]


# Flags that say opacity lies outside the lung mask without an estimate of it: a scan that
# carries one is no normal CT, whatever the rest of the mask reads (session 18).
UNMEASURED_OPACITY_FLAGS = ("lung_base_truncated", "anterior_opacity_outside_lung")


def normal_ct_call(
    volumes: Volumes, lung_info: Mapping[str, Any], *, config: QuantificationConfig,
    flags: Iterable[str] = (),
) -> tuple[bool, list[str]]:
    """The normal-CT call (lesion proportion below ``normal_ct_max_lesion_pct``), withheld
    when the subpleural step's estimate of dependent opacity outside the lung mask
    (``dependent_opacity_{right,left}_ml``, a lower bound), counted as lung and lesion, puts
    the proportion at or above the threshold, or when ``flags`` (the scan's QC flags so far)
    hold one of ``UNMEASURED_OPACITY_FLAGS``: opacity outside the mask that is flagged but
    not estimated. Returns the call and its flag (if withheld).

    A scan whose posterior lungs are consolidated reads almost no lesion in what is left of
    the mask (session 15: 0.02 %), which is no normal CT. The opacity may be an effusion
    instead, which is not lung either way: the flag says so.
    """
    threshold = config.normal_ct_max_lesion_pct
    normal = volumes.lesion_proportion_pct < threshold
    if not normal:
        return normal, []
    codes = {flag_code(f) for f in flags}
    unmeasured = [code for code in UNMEASURED_OPACITY_FLAGS if code in codes]
    if unmeasured:
        return False, [
            f"normal_ct_withheld: the lesion proportion reads "
            f"{volumes.lesion_proportion_pct:.2f} % (< {threshold:g} %), but opacity outside "
            f"the lung mask is flagged and not measured ({', '.join(unmeasured)}), so normal_ct "
            "is false (if it is a pleural effusion, not consolidation, judge the call from "
            "qc.png)"
        ]
    sub = lung_info.get("subpleural") or {}
    outside_ml = sum(float(sub.get(f"dependent_opacity_{s}_ml") or 0.0) for s in ("right", "left"))
    if outside_ml <= 0:
        return normal, []
    at_least_pct = (
        100.0 * (volumes.lesion_volume_ml + outside_ml) / (volumes.lung_volume_ml + outside_ml)
    )
    if at_least_pct < threshold:
        return normal, []
    return False, [
        f"normal_ct_withheld: the lesion proportion reads {volumes.lesion_proportion_pct:.2f} % "
        f"(< {threshold:g} %), but with the {outside_ml:.0f} mL of dependent opacity outside the "
        f"lung mask counted as lesion it is at least {at_least_pct:.1f} %: normal_ct is false "
        "(if the opacity is a pleural effusion, not consolidation, judge the call from qc.png)"
    ]


def air_pocket_flags(
    hu: np.ndarray, lung_labels: np.ndarray, spacing_mm: tuple[float, float, float], *,
    config: QuantificationConfig,
) -> list[str]:
    """Flag air without lung tissue inside the lung mask (pneumothorax, bulla, cyst).

    Lung parenchyma reads -950..-700 HU; a pneumothorax is pure air (-1000 HU) and, being
    internal air next to the lung, is taken into the lung mask, which inflates the lung
    volume and lowers the proportions. Counted on blocks of about ``air_pocket_block_mm``
    (block means, so noise does not count) that lie in the lung and read below
    ``air_pocket_max_hu``.
    """
    lung = lung_labels > 0
    if not lung.any():
        return []
    box = bounding_box(lung)
    grid = CoarseGrid.for_volume(
        tuple(b.stop - b.start for b in box), spacing_mm,  # type: ignore[arg-type]
        working_spacing_mm=config.air_pocket_block_mm,
    )
    air = (grid.downsample_fraction(lung[box]) >= 0.5) & (
        grid.downsample_mean(hu[box]) < config.air_pocket_max_hu
    )
    air_ml = float(np.count_nonzero(air)) * grid.voxel_volume_ml
    if air_ml < config.air_pocket_min_ml:
        return []
    return [
        f"lung_air_pocket: {air_ml:.0f} mL of the lung mask is air without lung tissue (below "
        f"{config.air_pocket_max_hu:g} HU in {config.air_pocket_block_mm:g} mm blocks): a "
        "pneumothorax, a large bulla or cyst, or severe emphysema; a pneumothorax is counted "
        "as lung here, which inflates the lung volume and lowers the proportions; check qc.png"
    ]


def solid_at_surface_ml(
    hu: np.ndarray, lung_labels: np.ndarray, lesion_labels: np.ndarray,
    spacing_mm: tuple[float, float, float], *, config: QuantificationConfig,
) -> float:
    """Solid lesion (mL) in the lung mask's outer voxel layer against soft tissue.

    A solid voxel counts when one of its 26 neighbours (or itself, should it lie outside the
    mask) is outside the lung mask and at or above ``surface_tissue_min_hu`` (chest wall,
    diaphragm, mediastinum; not air); there is nothing beyond the array's faces. There
    consolidation and soft tissue have the same HU, so the lung boundary cannot be seen
    and the lung mask may leave out a layer of the lesion (docs/segmentation.md, "Lesion
    at the lung surface").
    """
    points = np.flatnonzero(lesion_labels == LESION_SOLID)
    if points.size == 0:
        return 0.0
    # Only the solid voxels' neighbourhoods are read, gathered by flat index (a 3x3x3
    # maximum filter of the tissue map over the solid's box counts the same in about three
    # times the time: 0.3 s against 0.09 s on the 400-slice phantom).
    shape = lesion_labels.shape
    strides = np.array([shape[1] * shape[2], shape[2], 1])
    flat_lung = lung_labels.reshape(-1)
    flat_hu = hu.reshape(-1)
    n = 0
    for start in range(0, points.size, _GATHER_CHUNK):
        idx = points[start:start + _GATHER_CHUNK]
        coords = np.unravel_index(idx, shape)
        # Voxels on the array's faces have no neighbours beyond it: masked below.
        inside = np.ones((idx.size, len(_OFFSETS27)), bool)
        for axis, c in enumerate(coords):
            inside[c == 0] &= _OFFSETS27[:, axis] >= 0
            inside[c == shape[axis] - 1] &= _OFFSETS27[:, axis] <= 0
        nb = np.where(inside, idx[:, None] + (_OFFSETS27 @ strides)[None, :], 0)
        tissue = (flat_lung[nb] == 0) & (flat_hu[nb] >= config.surface_tissue_min_hu) & inside
        n += int(np.count_nonzero(tissue.any(axis=1)))
    return n * float(np.prod(spacing_mm)) / 1000.0


def surface_solid_flags(
    surface_ml: float, solid_ml: float, *, config: QuantificationConfig
) -> list[str]:
    """Flag a scan whose solid lesion lies largely against soft tissue (its volume may be
    under-read): at least ``surface_solid_flag_min_ml`` and
    ``surface_solid_flag_min_fraction`` of the solid volume."""
    if solid_ml <= 0 or surface_ml < config.surface_solid_flag_min_ml:
        return []
    if surface_ml < config.surface_solid_flag_min_fraction * solid_ml:
        return []
    return [
        f"solid_at_lung_surface: {surface_ml:.0f} mL of the {solid_ml:.0f} mL of solid lesion "
        "lies against the chest wall, diaphragm or mediastinum, where dense lesion and soft "
        "tissue have the same HU and the lung boundary cannot be seen; the lung mask may "
        "leave out a layer of it, so the solid volume may be under-read (on lungvol's "
        "insertion tests and phantoms by 0.5-1.3 times this volume); check qc.png"
    ]


def spacing_flags(
    spacing_mm: tuple[float, float, float], *, config: QuantificationConfig,
    slice_thickness_mm: float | None = None,
) -> list[str]:
    """Flag slices farther apart than ``max_slice_spacing_mm``, and slices thicker or
    farther apart than ``lesion_bias_slice_mm`` (``slice_thickness_mm``: the header's
    SliceThickness, when known)."""
    flags: list[str] = []
    if spacing_mm[0] > config.max_slice_spacing_mm:
        flags.append(
            f"slice_spacing_large: slices are {spacing_mm[0]:g} mm apart (> "
            f"{config.max_slice_spacing_mm:g} mm); thin lesions are under-sampled, prefer a "
            "thin-slice reconstruction"
        )
    thickness_mm = max(spacing_mm[0], slice_thickness_mm or 0.0)
    if thickness_mm > config.lesion_bias_slice_mm:
        flags.append(
            f"thick_slices_lesion_bias: slices are {thickness_mm:g} mm thick or apart (> "
            f"{config.lesion_bias_slice_mm:g} mm); partial volume smears vessels into the "
            "lesion HU bands, so lesion proportions read high (a normal chest read 0.3 % at "
            "2 mm, about 1 % at 3-4 mm, 1.7-1.9 % at 5-6 mm); compare only scans of the same "
            "thickness, or use a thin-slice reconstruction"
        )
    return flags


def phase_flags(
    phase_check: Mapping[str, Any] | None, *, config: QuantificationConfig
) -> list[str]:
    """Flags from the block-phase check (``quantification.phase_check``; None: not run):
    ``phase_sensitive`` when the lesion proportion spans more than
    ``phase_flag_lesion_range_pp`` over the lattice phases, or the solid volume more than
    ``phase_flag_solid_range_ml`` and ``phase_flag_solid_range_fraction`` of its median,
    or the lung volume more than ``phase_flag_lung_range_fraction`` of its median;
    ``normal_ct_phase_unstable`` when the normal-CT call differs between phases."""
    if not phase_check:
        return []
    flags: list[str] = []
    n = len(phase_check["phases"])
    span = phase_check["range"]
    lesion_pp = float(phase_check["lesion_proportion_range_pp"])
    solid_ml = float(phase_check["solid_volume_range_ml"])
    solid_median_ml = float(phase_check["solid_volume_median_ml"])
    parts = []
    if lesion_pp > config.phase_flag_lesion_range_pp:
        lo, hi = span["lesion_proportion_pct"]
        parts.append(
            f"the lesion proportion over {lo:.2f}-{hi:.2f} % ({lesion_pp:.2f} pp > "
            f"{config.phase_flag_lesion_range_pp:g} pp)"
        )
    if (
        solid_ml > config.phase_flag_solid_range_ml
        and solid_ml > config.phase_flag_solid_range_fraction * solid_median_ml
    ):
        lo, hi = span["solid_volume_ml"]
        parts.append(f"the solid volume over {lo:.1f}-{hi:.1f} mL ({solid_ml:.1f} mL)")
    lung_lo, lung_hi = span["lung_volume_ml"]
    lung_median_ml = float(phase_check["lung_volume_median_ml"])
    if lung_hi - lung_lo > config.phase_flag_lung_range_fraction * lung_median_ml:
        parts.append(
            f"the lung volume over {lung_lo:.0f}-{lung_hi:.0f} mL (more than "
            f"{100 * config.phase_flag_lung_range_fraction:g} %)"
        )
    failed = phase_check.get("failed_phases") or []
    if failed:
        parts.append(
            f"whether lungs are found at all (refused at {len(failed)} of {n + len(failed)} "
            "lattices)"
        )
    if parts:
        flags.append(
            f"phase_sensitive: shifting the block lattice ({n + len(failed)} phases) moves "
            f"{' and '.join(parts)}; changes between visits smaller than this are within "
            "the method's noise; prefer thin slices"
        )
    if not phase_check["normal_ct_agrees"]:
        lo, hi = span["lesion_proportion_pct"]
        flags.append(
            f"normal_ct_phase_unstable: the lesion proportion reads {lo:.2f}-{hi:.2f} % over "
            f"{n} block-lattice phases, across the normal-CT limit; the normal-CT call of this "
            "scan is not reliable: have it read by a radiologist"
        )
    return flags


def passthrough_flags(messages: Iterable[str] | str | None, *, default_code: str) -> list[str]:
    """Warnings from earlier stages (io, segmentation) as flags; a bare string is one warning."""
    if messages is None:
        return []
    if isinstance(messages, str):
        messages = [messages]
    return [as_flag(m, default_code=default_code) for m in messages if str(m).strip()]
