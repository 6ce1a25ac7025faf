"""Per subject x visit table, change from baseline, LOCF, and the trial's endpoint rows.

Definitions (Shi et al. 2022, ../shared/reference/shi2022-endpoints.md):

- relative change (%) = 100 x (p_visit - p_baseline) / p_baseline, per subject;
- absolute change (percentage points) = p_visit - p_baseline;
- a baseline proportion of exactly 0 makes the relative change undefined: it is left empty
  (``nan``), flagged ``baseline_zero`` and counted in the endpoint rows, never divided by zero;
  the absolute change is still reported;
- a visit without a usable scan (missing, failed, or excluded for one of the trial's
  ``exclude_qc_flags``) takes the last observed value of the same subject (LOCF, when the
  trial's ``imputation`` is ``locf``) and is flagged as imputed; normal-CT counts are never
  imputed;
- subjects without a baseline scan are left out of the change endpoints.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lungvol.cohort.discover import read_csv_table
from lungvol.cohort.trial import TrialConfig
from lungvol.errors import CohortError, StatsError

logger = logging.getLogger(__name__)

NAN = float("nan")
_YES = {"yes", "y", "true", "1", "normal"}
_NO = {"no", "n", "false", "0", "abnormal"}


def _float(value: Any) -> float:
    if value is None or value == "":
        return NAN
    return float(value)


def _bool_or_none(value: Any) -> bool | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _YES:
        return True
    if text in _NO:
        return False
    return None


@dataclass(frozen=True)
class Read:
    """A radiologist read: is the CT of ``subject`` at ``visit`` normal?"""

    subject: str
    visit: str
    is_normal: bool


def read_reads(path: str | Path, trial: TrialConfig, subjects: Sequence[str]) -> list[Read]:
    """Read radiologist reads (CSV: subject, visit, normal = yes/no)."""
    p = Path(path)
    if not p.is_file():
        raise CohortError(f"reads file {p} not found; pass a CSV with subject, visit, normal")
    _header, rows = read_csv_table(p, ("subject", "visit", "normal"), what="reads file")
    known = set(subjects)
    reads: list[Read] = []
    seen: dict[tuple[str, str], int] = {}
    for i, r in enumerate(rows, start=2):
        where = f"{p} line {i}"
        if r["subject"] not in known:
            raise CohortError(f"{where}: subject {r['subject']!r} is not in the cohort manifest")
        if r["visit"] not in trial.visit_names:
            raise CohortError(
                f"{where}: unknown visit {r['visit']!r}; visits are {list(trial.visit_names)}"
            )
        normal = _bool_or_none(r["normal"])
        if normal is None:
            raise CohortError(f"{where}: normal must be yes or no, got {r['normal']!r}")
        key = (r["subject"], r["visit"])
        if key in seen:
            raise CohortError(
                f"{where}: second read for {key[0]} {key[1]} (first on line {seen[key]})"
            )
        seen[key] = i
        reads.append(Read(r["subject"], r["visit"], normal))
    return reads


def subject_visit_table(
    scans: Sequence[dict[str, Any]],
    arms: dict[str, str],
    trial: TrialConfig,
    *,
    reads: Sequence[Read] = (),
) -> list[dict[str, Any]]:
    """One row per subject x trial visit: values, imputation flags, changes, normal CT.

    ``scans`` are rows of the per-scan table (``collect_results``); ``arms`` maps every
    subject of the manifest to its arm.
    """
    by_key = {(s["subject"], s["visit"]): s for s in scans}
    read_of = {(r.subject, r.visit): r.is_normal for r in reads}
    rows: list[dict[str, Any]] = []
    for subject in sorted(arms):
        base_scan = by_key.get((subject, trial.baseline_visit))
        has_baseline = _status(base_scan, trial) == "ok"
        last: dict[str, Any] | None = None
        last_visit = ""
        baseline_values = {
            e.name: _float(base_scan.get(e.metric)) if has_baseline else NAN
            for e in trial.endpoints
        }
        base_lung_ml = _float(base_scan.get("lung_volume_ml")) if has_baseline else NAN
        for visit in trial.visits:
            scan = by_key.get((subject, visit.name))
            status = _status(scan, trial)
            row: dict[str, Any] = {
                "subject": subject,
                "arm": arms[subject],
                "visit": visit.name,
                "day": scan.get("day") if scan else None,
                "scan_status": status,
                "excluded_for": ";".join(excluded_codes(scan, trial)) if scan else "",
                "has_baseline": has_baseline,
                "is_imputed": False,
                "imputed_from": "",
            }
            source = None
            if status == "ok":
                source, last, last_visit = scan, scan, visit.name
            elif trial.imputation == "locf" and last is not None:
                source = last
                row["is_imputed"] = True
                row["imputed_from"] = last_visit
            for e in trial.endpoints:
                value = _float(source.get(e.metric)) if source else NAN
                base = baseline_values[e.name]
                row[f"{e.name}_pct"] = value
                row[f"{e.name}_change_abs_pp"] = value - base
                row[f"{e.name}_baseline_zero"] = has_baseline and base == 0.0
                row[f"{e.name}_change_rel_pct"] = (
                    100.0 * (value - base) / base if base and not math.isnan(base) else NAN
                )
            # Lung volume of this visit's own scan (never imputed) against the baseline scan's:
            # the endpoints' denominator; a large change is inspiration level or a lung mask
            # that leaves out consolidation at one of the two visits.
            lung_ml = _float(scan.get("lung_volume_ml")) if status == "ok" else NAN
            change = (
                100.0 * (lung_ml - base_lung_ml) / base_lung_ml
                if base_lung_ml > 0 and not math.isnan(lung_ml) else NAN
            )
            row["lung_volume_ml"] = lung_ml
            row["lung_volume_change_pct"] = change
            row["lung_volume_flag"] = (
                not math.isnan(change) and abs(change) > trial.lung_volume_change_flag_pct
            )
            row["acquisition_changes"] = (
                acquisition_changes(base_scan, scan, trial)
                if status == "ok" and has_baseline and visit.name != trial.baseline_visit
                else ""
            )
            normal = _bool_or_none(scan.get("normal_ct")) if status == "ok" else None
            row["normal_ct_source"] = "lungvol" if normal is not None else ""
            if (subject, visit.name) in read_of:
                normal = read_of[(subject, visit.name)]
                row["normal_ct_source"] = "reads"
            row["normal_ct"] = normal
            rows.append(row)
    return rows


def excluded_codes(scan: dict[str, Any], trial: TrialConfig) -> list[str]:
    """The trial's ``exclude_qc_flags`` that a measured scan carries (its scans.csv
    ``qc_flag_codes``); empty for a scan that counts."""
    if not trial.exclude_qc_flags or scan.get("status") != "ok":
        return []
    codes = set(str(scan.get("qc_flag_codes") or "").split(";"))
    return [c for c in trial.exclude_qc_flags if c in codes]


def _status(scan: dict[str, Any] | None, trial: TrialConfig) -> str:
    """ok / excluded / failed / pending / missing: a scan that counts is "ok"."""
    if scan is None:
        return "missing"
    if excluded_codes(scan, trial):
        return "excluded"
    return str(scan.get("status", "pending"))


def acquisition_changes(
    baseline: dict[str, Any], scan: dict[str, Any], trial: TrialConfig
) -> str:
    """How ``scan`` was acquired differently from the subject's ``baseline`` scan ("" when
    alike, or when a value is not recorded): reconstruction kernel, manufacturer, slice
    spacing or slice thickness (the header's) beyond ``trial.acquisition_spacing_tolerance_mm``.
    The lesion HU bands read the kernel's noise and the slices' partial volume, so such a
    change moves the lesion proportion by itself."""
    changes = []
    for key, name in (("convolution_kernel", "kernel"), ("manufacturer", "manufacturer")):
        before = str(baseline.get(key) or "").strip()
        after = str(scan.get(key) or "").strip()
        if before and after and before.casefold() != after.casefold():
            changes.append(f"{name} {before} -> {after}")
    for key, name in (("slice_spacing_mm", "slice spacing"),
                      ("slice_thickness_mm", "slice thickness")):
        before_mm, after_mm = _float(baseline.get(key)), _float(scan.get(key))
        if abs(after_mm - before_mm) > trial.acquisition_spacing_tolerance_mm:  # NaN: False
            changes.append(f"{name} {before_mm:g} -> {after_mm:g} mm")
    return "; ".join(changes)


def _finite(values: Sequence[float]) -> list[float]:
    return [float(v) for v in values if v is not None and not math.isnan(float(v))]


def _summary_fields(prefix: str, values: Sequence[float], trial: TrialConfig) -> dict[str, Any]:
    from lungvol.stats import summarize

    out: dict[str, Any] = {f"{prefix}_{k}": None for k in ("n", "median", "q1", "q3", "mean", "se")}
    data = _finite(values)
    out[f"{prefix}_n"] = len(data)
    if not data:
        return out
    s = summarize(data, quantile_definition=trial.quantile_definition)
    out.update(
        {
            f"{prefix}_median": s.median,
            f"{prefix}_q1": s.q1,
            f"{prefix}_q3": s.q3,
            f"{prefix}_mean": s.mean,
            f"{prefix}_se": s.se,
        }
    )
    return out


def _between_arms(x: list[float], y: list[float], trial: TrialConfig) -> dict[str, Any]:
    from lungvol.stats import hodges_lehmann, wilcoxon_rank_sum

    out: dict[str, Any] = {"hl_estimate": None, "hl_ci_low": None, "hl_ci_high": None, "p": None}
    out["hl_method"] = ""
    out["p_method"] = ""
    if not x or not y:
        return out
    try:
        hl = hodges_lehmann(x, y, ci=trial.hl_ci)
        test = wilcoxon_rank_sum(x, y)
    except StatsError as err:
        logger.warning("between-arm comparison not computed: %s", err)
        out["note"] = str(err)
        return out
    out.update(
        hl_estimate=hl.estimate,
        hl_ci_low=hl.ci_low,
        hl_ci_high=hl.ci_high,
        hl_method=f"{hl.method} ({hl.ci_method})",
        p=test.p_value,
        p_method=test.method,
    )
    return out


def endpoint_rows(table: Sequence[dict[str, Any]], trial: TrialConfig) -> list[dict[str, Any]]:
    """One row per endpoint x visit (change endpoints) and per normal-CT visit.

    Change rows hold, per arm (``<arm>_`` prefix): n, median, Q1, Q3, mean, SE of the relative
    change (%), the same of the absolute change (``<arm>_abs_``, percentage points), the number
    of imputed values and of zero baselines; and between arms (first minus second): the
    Hodges-Lehmann difference with its 95% CI and the Wilcoxon rank-sum p.
    Normal-CT rows hold ``<arm>_events``/``<arm>_n``, the odds ratio, its CI and p.
    """
    first, second = trial.arm_names
    rows: list[dict[str, Any]] = []
    for e in trial.endpoints:
        for visit in e.visits:
            cells = [r for r in table if r["visit"] == visit and r["has_baseline"]]
            row: dict[str, Any] = {
                "endpoint": e.name,
                "endpoint_label": e.label,
                "metric": e.metric,
                "visit": visit,
                "visit_label": trial.visit(visit).label,
                "kind": "relative_change",
            }
            rel: dict[str, list[float]] = {}
            for arm in trial.arm_names:
                arm_cells = [r for r in cells if r["arm"] == arm]
                values = [r[f"{e.name}_change_rel_pct"] for r in arm_cells]
                rel[arm] = _finite(values)
                row.update(_summary_fields(arm, values, trial))
                row.update(
                    _summary_fields(
                        f"{arm}_abs", [r[f"{e.name}_change_abs_pp"] for r in arm_cells], trial
                    )
                )
                row[f"{arm}_n_imputed"] = sum(
                    1 for r in arm_cells if r["is_imputed"] and not math.isnan(r[f"{e.name}_pct"])
                )
                row[f"{arm}_n_baseline_zero"] = sum(
                    1 for r in arm_cells if r[f"{e.name}_baseline_zero"]
                )
            row.update(_between_arms(rel[first], rel[second], trial))
            rows.append(row)
    rows.extend(normal_ct_rows(table, trial))
    return rows


def normal_ct_rows(table: Sequence[dict[str, Any]], trial: TrialConfig) -> list[dict[str, Any]]:
    """Normal-CT counts per arm at each ``normal_ct_visits`` visit, with OR, CI and p."""
    from lungvol.stats import analyze_2x2

    first, second = trial.arm_names
    rows = []
    for visit in trial.normal_ct_visits:
        row: dict[str, Any] = {
            "endpoint": "normal_ct",
            "endpoint_label": "Normal chest CT",
            "metric": "normal_ct",
            "visit": visit,
            "visit_label": trial.visit(visit).label,
            "kind": "count",
        }
        counts = {}
        for arm in trial.arm_names:
            assessed = [
                r
                for r in table
                if r["visit"] == visit and r["arm"] == arm and r["normal_ct"] is not None
            ]
            counts[arm] = (sum(1 for r in assessed if r["normal_ct"]), len(assessed))
            row[f"{arm}_events"], row[f"{arm}_n"] = counts[arm]
            row[f"{arm}_source"] = ";".join(sorted({r["normal_ct_source"] for r in assessed}))
        row.update({"or_estimate": None, "or_ci_low": None, "or_ci_high": None, "or_method": ""})
        row.update({"p": None, "p_method": ""})
        (a, n1), (b, n2) = counts[first], counts[second]
        if n1 and n2:
            try:
                res = analyze_2x2(a, n1, b, n2)
            except StatsError as err:
                logger.warning("normal CT at %s not analysed: %s", visit, err)
                row["note"] = str(err)
            else:
                row.update(
                    or_estimate=res.odds_ratio.estimate,
                    or_ci_low=res.odds_ratio.ci_low,
                    or_ci_high=res.odds_ratio.ci_high,
                    or_method=res.odds_ratio.method,
                    p=res.p,
                    p_method=res.p_method,
                )
        rows.append(row)
    return rows
