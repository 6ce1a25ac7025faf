"""Block-phase check: how much a scan's numbers move when its block lattice is shifted.

Both segmentation stages do their heavy work on coarse block grids anchored to patient
coordinates (docs/segmentation.md, "Grid phase"). From one visit to the next the anatomy
sits at a different, in effect random, phase against that lattice, so part of the change
between two visits is measurement noise of the method, not disease. This module measures
it for one scan: the scan is segmented again with the lattice shifted by a few CT voxels
(the scan's origin moved by whole voxels; the voxels and their HU are untouched) and the
spread of the volumes is reported. The reported result (masks, volumes) stays that of the
unshifted lattice, so the numbers in metrics.json still belong to the masks beside them.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import numpy as np

import lungvol.segmentation as lseg
from lungvol.config import LungvolConfig
from lungvol.errors import SegmentationError
from lungvol.quantification.volumes import measure_volumes
from lungvol.types import CTVolume, LesionMask, LungMask

logger = logging.getLogger(__name__)

# Numbers whose spread over the phases is reported (ScanMetrics / Volumes attribute names).
PHASE_MEASURES = (
    "lung_volume_ml",
    "lesion_volume_ml",
    "solid_volume_ml",
    "lesion_proportion_pct",
    "solid_proportion_pct",
)


def shifted_lattice(volume: CTVolume, offset_voxels: tuple[int, int, int]) -> CTVolume:
    """The same voxels with the origin moved by ``offset_voxels`` (z, y, x) CT voxels.

    Moving the origin by k voxels along an array axis moves the voxels' lattice index
    (``segmentation.grid.patient_index``) by k, so every block grid is cut k voxels
    differently, as when the patient lies k voxels elsewhere in the scanner.
    """
    d = np.asarray(volume.direction, float).reshape(3, 3)
    shift_mm = np.zeros(3)
    for axis, k in enumerate(offset_voxels):
        # Array axis a (z, y, x) runs along direction column 2 - a (ITK order x, y, z).
        shift_mm += k * volume.spacing_mm[axis] * d[:, 2 - axis]
    origin = tuple(float(v) for v in np.asarray(volume.origin_lps_mm, float) + shift_mm)
    return dataclasses.replace(volume, origin_lps_mm=origin)  # type: ignore[arg-type]


def _dice(a: np.ndarray, b: np.ndarray) -> float | None:
    n = np.count_nonzero(a) + np.count_nonzero(b)
    return None if n == 0 else round(float(2.0 * np.count_nonzero(a & b) / n), 4)


def _phase_row(
    offset: tuple[int, int, int], lungs: LungMask, lesions: LesionMask, volume: CTVolume,
    reference: tuple[LungMask, LesionMask], config: LungvolConfig,
) -> dict[str, Any]:
    vols = measure_volumes(lungs.labels, lesions.labels, spacing_mm=volume.spacing_mm)
    row: dict[str, Any] = {"offset_voxels": list(offset)}
    row.update({name: round(float(getattr(vols, name)), 4) for name in PHASE_MEASURES})
    row["normal_ct"] = bool(
        vols.lesion_proportion_pct < config.quantification.normal_ct_max_lesion_pct
    )
    row["lung_dice_vs_reported"] = _dice(lungs.labels > 0, reference[0].labels > 0)
    row["lesion_dice_vs_reported"] = _dice(lesions.labels > 0, reference[1].labels > 0)
    return row


def measure_phase_check(
    volume: CTVolume, lungs: LungMask, lesions: LesionMask, config: LungvolConfig,
) -> dict[str, Any]:
    """Segment ``volume`` again at each of ``config.quantification.phase_check_offsets_voxels``
    and report the spread of the volumes (mL) and proportions (%).

    Parameters
    ----------
    volume : CTVolume
    lungs, lesions : LungMask, LesionMask
        The reported segmentation (block lattice unshifted).
    config : LungvolConfig

    Returns
    -------
    dict
        ``phases`` (one row per lattice offset, the reported one first: volumes, proportions,
        normal-CT call, Dice of the lung and lesion masks against the reported ones),
        ``range`` ([min, max] of each measure), ``lesion_proportion_range_pp``,
        ``solid_volume_range_ml``, ``solid_volume_median_ml``, ``lung_volume_median_ml``,
        ``normal_ct_agrees``,
        ``failed_phases`` (rows ``{"offset_voxels", "error"}`` of lattices at which the
        segmentation refused the scan, e.g. no lungs found; the spread is over the others)
        and ``seconds``.
    """
    t0 = time.perf_counter()
    rows = [_phase_row((0, 0, 0), lungs, lesions, volume, (lungs, lesions), config)]
    failed: list[dict[str, Any]] = []
    for offset in config.quantification.phase_check_offsets_voxels:
        shifted = shifted_lattice(volume, offset)
        try:
            lungs_k, lesions_k = lseg.segment_masks(shifted, config)
        except SegmentationError as err:
            # The reported result stands; that it depends on the lattice is the finding.
            failed.append({"offset_voxels": list(offset), "error": str(err)})
            logger.warning("phase check %s: segmentation refused the scan: %s", offset, err)
            continue
        rows.append(_phase_row(offset, lungs_k, lesions_k, volume, (lungs, lesions), config))
        logger.info(
            "phase check %s: lesion %.1f mL, solid %.1f mL", offset,
            rows[-1]["lesion_volume_ml"], rows[-1]["solid_volume_ml"],
        )
    spans = {
        name: [min(r[name] for r in rows), max(r[name] for r in rows)] for name in PHASE_MEASURES
    }
    return {
        "method": "the scan segmented again with the block lattice of both stages shifted by "
        "whole CT voxels (origin moved; voxels unchanged); the reported result is offset "
        "[0, 0, 0]",
        "phases": rows,
        "range": spans,
        "lesion_proportion_range_pp": round(
            spans["lesion_proportion_pct"][1] - spans["lesion_proportion_pct"][0], 4
        ),
        "solid_volume_range_ml": round(
            spans["solid_volume_ml"][1] - spans["solid_volume_ml"][0], 4
        ),
        "solid_volume_median_ml": round(float(np.median([r["solid_volume_ml"] for r in rows])), 4),
        "lung_volume_median_ml": round(float(np.median([r["lung_volume_ml"] for r in rows])), 4),
        "normal_ct_agrees": len({r["normal_ct"] for r in rows}) == 1,
        "failed_phases": failed,
        "seconds": round(time.perf_counter() - t0, 3),
    }
