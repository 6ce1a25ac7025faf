"""Collect the per-scan results of a cohort output folder into one table (CSV, Parquet).

One row per scan of ``OUT/jobs.csv``: subject, arm, visit, actual day, scan date, status
(``ok`` | ``failed`` | ``pending``), the error of a failed scan, and every metric of its
``metrics.json`` (scalars as they are, ``lung_hu`` as ``lung_hu_<name>``, QC flags joined by
``;``), and the acquisition parameters a longitudinal comparison depends on (slice spacing,
pixel spacing, slice thickness, reconstruction kernel, manufacturer). The rest of the
provenance is left out: it describes the source series (UIDs, paths, dates), and the table
must hold no identifier beyond the manifest's subject IDs.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lungvol.cohort.run import CACHE_NAME, METRICS_NAME, RUN_NAME, _atomic_write_csv
from lungvol.errors import CohortError
from lungvol.quantification.qc_flags import flag_code

logger = logging.getLogger(__name__)

ID_COLUMNS = ("subject", "arm", "visit", "day", "scan_date", "scan", "is_day_nominal")
STATUS_COLUMNS = ("status", "error", "seconds", "qc_png")
METRIC_COLUMNS = (
    "lung_volume_ml",
    "lung_volume_right_ml",
    "lung_volume_left_ml",
    "lesion_volume_ml",
    "ggo_volume_ml",
    "solid_volume_ml",
    "lesion_proportion_pct",
    "solid_proportion_pct",
    "ggo_proportion_pct",
    "solid_at_surface_ml",
    "normal_ct",
    "qc_flags",
    "qc_flag_codes",
)
# Joins a scan's QC flags in one CSV cell. Flag messages contain ";" and ","; codes never
# contain either, so qc_flag_codes (codes joined by ";") is the column to filter on.
QC_FLAG_SEPARATOR = " | "


def qc_flag_counts(rows: Sequence[dict[str, Any]]) -> tuple[int, list[tuple[str, int]]]:
    """Measured scans that carry a QC flag, and how many carry each code (most first)."""
    counts: dict[str, int] = {}
    flagged = 0
    for row in rows:
        if row.get("status") != "ok" or not row.get("qc_flag_codes"):
            continue
        flagged += 1
        for code in dict.fromkeys(str(row["qc_flag_codes"]).split(";")):
            counts[code] = counts.get(code, 0) + 1
    return flagged, sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def _is_missing(value: Any) -> bool:
    return value is None or value == "" or (isinstance(value, float) and math.isnan(value))


def write_rows_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Write dict rows to CSV; columns in first-seen order; None and NaN as empty cells."""
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    path = Path(path)
    _atomic_write_csv(
        path, columns, [{k: ("" if _is_missing(v) else v) for k, v in r.items()} for r in rows]
    )
    return path


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    with Path(path).open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _flatten_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    flags = [str(v) for v in (metrics.get("qc_flags") or [])]
    for key in METRIC_COLUMNS:
        value = metrics.get(key)
        if key == "qc_flags":
            value = QC_FLAG_SEPARATOR.join(flags)
        elif key == "qc_flag_codes":
            value = ";".join(flag_code(f) for f in flags)
        row[key] = value
    for name, value in sorted((metrics.get("lung_hu") or {}).items()):
        row[f"lung_hu_{name}"] = value
    sub = (
        ((metrics.get("provenance") or {}).get("segmentation") or {}).get("lungs") or {}
    ).get("subpleural")
    if sub:  # the subpleural-layer step: costal gap excess and what it added to the lungs
        row["subpleural_excess_mm"] = sub.get("excess_mm")
        row["subpleural_dependent_excess_mm"] = sub.get("dependent_excess_mm")
        row["subpleural_recovered_ml"] = sub.get("recovered_ml")
        row["posterior_gap_right_mm"] = sub.get("posterior_gap_right_mm")
        row["posterior_gap_left_mm"] = sub.get("posterior_gap_left_mm")
        row["dependent_opacity_right_ml"] = sub.get("dependent_opacity_right_ml")
        row["dependent_opacity_left_ml"] = sub.get("dependent_opacity_left_ml")
        row["anterior_gap_right_mm"] = sub.get("anterior_gap_right_mm")
        row["anterior_gap_left_mm"] = sub.get("anterior_gap_left_mm")
        row["anterior_lower_gap_right_mm"] = sub.get("anterior_lower_gap_right_mm")
        row["anterior_lower_gap_left_mm"] = sub.get("anterior_lower_gap_left_mm")
    taper = metrics.get("lung_base_taper_mm") or {}
    row["base_taper_right_mm"] = taper.get("right")
    row["base_taper_left_mm"] = taper.get("left")
    row.update(acquisition(metrics))
    phase = metrics.get("phase_check")
    if phase:  # quantification.phase_check: the spread over shifted block lattices
        row["phase_lesion_proportion_range_pp"] = phase.get("lesion_proportion_range_pp")
        row["phase_solid_volume_range_ml"] = phase.get("solid_volume_range_ml")
        row["phase_normal_ct_agrees"] = phase.get("normal_ct_agrees")
    return row


ACQUISITION_COLUMNS = (
    "slice_spacing_mm", "pixel_spacing_mm", "slice_thickness_mm", "convolution_kernel",
    "manufacturer",
)


def acquisition(metrics: dict[str, Any]) -> dict[str, Any]:
    """The scan's acquisition parameters from its metrics.json provenance (none of them
    identifies a patient): what must stay the same between a subject's visits."""
    provenance = metrics.get("provenance") or {}
    spacing = (provenance.get("geometry") or {}).get("spacing_mm_zyx") or [None, None, None]
    source = provenance.get("input") or {}
    return {
        "slice_spacing_mm": spacing[0],
        "pixel_spacing_mm": spacing[1],
        "slice_thickness_mm": source.get("slice_thickness_mm"),
        "convolution_kernel": source.get("convolution_kernel"),
        "manufacturer": source.get("manufacturer"),
    }


def collect_results(out: str | Path) -> list[dict[str, Any]]:
    """Read every scan's status and metrics under ``out`` and write scans.csv (+ .parquet).

    Raises
    ------
    CohortError
        If ``out`` is not a cohort output folder (no run.json / jobs.csv).
    """
    out = Path(out)
    if not (out / RUN_NAME).is_file() or not (out / "jobs.csv").is_file():
        raise CohortError(
            f"{out} is not a cohort output folder (no run.json/jobs.csv); run "
            "`lungvol cohort run COHORT -o OUT` first"
        )
    config_hash = json.loads((out / RUN_NAME).read_text()).get("config_hash")
    rows: list[dict[str, Any]] = []
    for job in read_csv_rows(out / "jobs.csv"):
        row: dict[str, Any] = {k: job.get(k, "") for k in ID_COLUMNS}
        row["day"] = int(job["day"])
        row["is_day_nominal"] = job.get("is_day_nominal") == "True"
        folder = out / "scans" / job["subject"] / job["visit"]
        failed = out / "scans" / job["subject"] / f"{job['visit']}.failed.json"
        row.update({"status": "pending", "error": "", "seconds": None, "qc_png": ""})
        row.update(dict.fromkeys(METRIC_COLUMNS))
        cache = folder / CACHE_NAME
        if failed.is_file():
            record = json.loads(failed.read_text())
            row["status"] = "failed"
            row["error"] = f"{record.get('error_type', '')}: {record.get('error', '')}"
        elif (folder / METRICS_NAME).is_file() and cache.is_file():
            stamp = json.loads(cache.read_text())
            if stamp.get("config_hash") == config_hash:
                metrics = json.loads((folder / METRICS_NAME).read_text())
                row.update(_flatten_metrics(metrics))
                row["seconds"] = stamp.get("seconds")
                row["status"] = "ok" if metrics.get("status", "ok") == "ok" else "failed"
                if row["status"] == "failed":
                    row["error"] = "segment_scan reported status " + str(metrics.get("status"))
                if (folder / "qc.png").is_file():
                    row["qc_png"] = str((folder / "qc.png").relative_to(out))
        rows.append(row)
    write_table(rows, out / "scans.csv")
    return rows


def write_table(rows: list[dict[str, Any]], csv_path: Path) -> list[Path]:
    """Write ``rows`` as CSV, and as Parquet beside it when pyarrow is installed."""
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    _atomic_write_csv(csv_path, columns, rows)
    written = [csv_path]
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        logger.info(
            "pyarrow not installed; wrote %s only (pip install pyarrow for Parquet)", csv_path
        )
        return written
    table = pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in rows])
    parquet_path = csv_path.with_suffix(".parquet")
    pq.write_table(table, parquet_path)
    written.append(parquet_path)
    return written
