"""``measure_scan``: one CT, its lung and lesion masks -> ScanMetrics."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from lungvol.config import LungvolConfig
from lungvol.quantification.hu_stats import lung_hu_stats, percentile_key
from lungvol.quantification.provenance import build_provenance
from lungvol.quantification.qc_flags import (
    air_pocket_flags,
    base_flags,
    base_taper_mm,
    density_flags,
    edge_flags,
    metal_flags,
    metal_in_lung_slices,
    normal_ct_call,
    passthrough_flags,
    phase_flags,
    solid_at_surface_ml,
    spacing_flags,
    surface_solid_flags,
    volume_flags,
)
from lungvol.quantification.volumes import measure_volumes
from lungvol.types import CTVolume, LesionMask, LungMask, ScanMetrics, check_same_grid

logger = logging.getLogger(__name__)


def measure_scan(
    volume: CTVolume,
    lungs: LungMask,
    lesions: LesionMask,
    config: LungvolConfig,
    *,
    timings_s: Mapping[str, float],
    device: str = "cpu",
    phase_check: dict[str, Any] | None = None,
) -> ScanMetrics:
    """Volumes (mL), proportions (%), lung HU statistics, QC flags and provenance of one scan.

    Parameters
    ----------
    volume : CTVolume
        The CT in HU.
    lungs : LungMask
        Labels on the CT grid: 1 right, 2 left.
    lesions : LesionMask
        Labels on the CT grid: 1 ground-glass, 2 solid component.
    config : LungvolConfig
        ``config.quantification`` holds the normal-CT rule, percentiles and QC limits.
    timings_s : mapping of str to float
        Seconds per earlier stage (e.g. read, lungs, lesions); the time of this function is
        added as ``"quantification"`` in the recorded provenance.
    device : str
        Device the stages ran on ("cpu" or "cuda"), recorded in the provenance.
    phase_check : dict, optional
        The block-phase check's result (``lungvol.quantification.phase_check``), kept in the
        metrics and turned into QC flags; None when it was not run.

    Returns
    -------
    ScanMetrics

    Raises
    ------
    GeometryError
        If a mask is not on the CT grid or holds labels other than 0, 1, 2.
    SegmentationError
        If the lung mask is empty.
    """
    t0 = time.perf_counter()
    check_same_grid(lungs.labels, volume, name="lung mask")
    check_same_grid(lesions.labels, volume, name="lesion mask")
    qcfg = config.quantification
    vols = measure_volumes(lungs.labels, lesions.labels, spacing_mm=volume.spacing_mm)
    # One pass for the reported percentiles and the density flag's (dropped unless reported).
    percentiles = tuple(sorted({*qcfg.lung_hu_percentiles, qcfg.density_percentile}))
    hu_stats = lung_hu_stats(volume.hu, lungs.labels, percentiles=percentiles)
    density_key = percentile_key(qcfg.density_percentile)
    density_hu = hu_stats[density_key]
    if qcfg.density_percentile not in qcfg.lung_hu_percentiles:
        del hu_stats[density_key]

    flags: list[str] = []
    flags += passthrough_flags(volume.source.warnings, default_code="io_warning")
    flags += passthrough_flags(lungs.info.get("warnings", ()), default_code="lung_segmentation")
    flags += passthrough_flags(
        lesions.info.get("warnings", ()), default_code="lesion_segmentation"
    )
    flags += spacing_flags(
        volume.spacing_mm, config=qcfg, slice_thickness_mm=volume.source.slice_thickness_mm
    )
    edge = edge_flags(lungs.labels, volume.spacing_mm, config=qcfg)
    flags += edge
    taper_mm = base_taper_mm(lungs.labels, volume.spacing_mm, config=qcfg)
    flags += base_flags(taper_mm, edge, config=qcfg)
    flags += air_pocket_flags(volume.hu, lungs.labels, volume.spacing_mm, config=qcfg)
    flags += volume_flags(vols, config=qcfg)
    flags += density_flags(density_hu, config=qcfg)
    flags += metal_flags(
        metal_in_lung_slices(
            volume.hu, lungs.labels, lesions.labels, volume.spacing_mm, config=qcfg
        ),
        config=qcfg,
    )
    surface_ml = solid_at_surface_ml(
        volume.hu, lungs.labels, lesions.labels, volume.spacing_mm, config=qcfg
    )
    flags += surface_solid_flags(surface_ml, vols.solid_volume_ml, config=qcfg)
    flags += phase_flags(phase_check, config=qcfg)
    normal_ct, normal_flags = normal_ct_call(vols, lungs.info, config=qcfg, flags=flags)
    flags += normal_flags
    for flag in flags:
        logger.info("QC flag %s", flag)

    timings = dict(timings_s)
    timings["quantification"] = time.perf_counter() - t0
    provenance = build_provenance(
        volume,
        config,
        timings_s=timings,
        device=device,
        lung_info=lungs.info,
        lesion_info=lesions.info,
    )
    return ScanMetrics(
        lung_volume_ml=vols.lung_volume_ml,
        lung_volume_right_ml=vols.lung_volume_right_ml,
        lung_volume_left_ml=vols.lung_volume_left_ml,
        lesion_volume_ml=vols.lesion_volume_ml,
        ggo_volume_ml=vols.ggo_volume_ml,
        solid_volume_ml=vols.solid_volume_ml,
        lesion_proportion_pct=vols.lesion_proportion_pct,
        solid_proportion_pct=vols.solid_proportion_pct,
        ggo_proportion_pct=vols.ggo_proportion_pct,
        solid_at_surface_ml=surface_ml,
        normal_ct=bool(normal_ct),
        lung_hu=hu_stats,
        qc_flags=flags,
        provenance=provenance,
        phase_check=phase_check,
        lung_base_taper_mm=taper_mm,
    )
