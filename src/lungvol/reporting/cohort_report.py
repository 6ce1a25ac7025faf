"""``analyze_cohort``: a cohort output folder -> endpoints.csv, table2.md, figures, report.html."""

from __future__ import annotations

import datetime as dt
import html
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lungvol import __version__
from lungvol.cohort.endpoints import endpoint_rows, read_reads, subject_visit_table
from lungvol.cohort.results import (
    QC_FLAG_SEPARATOR,
    collect_results,
    qc_flag_counts,
    read_csv_rows,
)
from lungvol.cohort.trial import TrialConfig
from lungvol.errors import CohortError
from lungvol.quantification.qc_flags import flag_code
from lungvol.reporting import tables
from lungvol.reporting.figures import write_figures
from lungvol.reporting.html import build_report_html, figure_html, html_table, thumbnails_html

logger = logging.getLogger(__name__)

ANALYSIS_DIR = "analysis"


@dataclass(frozen=True)
class CohortAnalysis:
    """What ``analyze_cohort`` computed and where it wrote it."""

    scans: list[dict[str, Any]]
    subject_visits: list[dict[str, Any]]
    endpoints: list[dict[str, Any]]
    files: dict[str, Path]


def analyze_cohort(
    out: str | Path,
    trial: TrialConfig,
    *,
    reads_path: str | Path | None = None,
    analysis_dir: str | Path | None = None,
) -> CohortAnalysis:
    """Collect a cohort run's results and write the trial's endpoint tables, figures and report.

    Writes into ``analysis_dir`` (default ``out/analysis``): ``scans.csv`` (+ Parquet) is
    written in ``out``; ``subject_visits.csv``, ``endpoints.csv``, ``table2.md``,
    ``figure2_<endpoint>.png/.svg`` and ``report.html``.

    Raises
    ------
    CohortError
        If ``out`` is not a cohort output folder, or ``reads_path`` is malformed.
    """
    out = Path(out)
    scans = collect_results(out)
    arms = {r["subject"]: r["arm"] for r in read_csv_rows(out / "subjects.csv")}
    unknown_arms = sorted({a for a in arms.values()} - set(trial.arm_names))
    if unknown_arms:
        raise CohortError(
            f"{out} has arms {unknown_arms} that trial {trial.name} does not define; pass the "
            "trial file the cohort was run with (--trial)"
        )
    unknown_visits = sorted({s["visit"] for s in scans} - set(trial.visit_names))
    if unknown_visits:
        raise CohortError(
            f"{out} has visits {unknown_visits} that trial {trial.name} does not define; pass the "
            "trial file the cohort was run with (--trial)"
        )
    reads = read_reads(reads_path, trial, list(arms)) if reads_path else []
    table = subject_visit_table(scans, arms, trial, reads=reads)
    rows = endpoint_rows(table, trial)

    final = Path(analysis_dir) if analysis_dir else out / ANALYSIS_DIR
    # Everything goes into a sibling temporary folder that replaces ``final`` only when
    # complete: an analysis killed halfway leaves the previous one (or none), never a mix.
    target = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    try:
        files: dict[str, Path] = {"scans_csv": out / "scans.csv"}
        files["subject_visits_csv"] = tables.write_rows_csv(table, target / "subject_visits.csv")
        files["endpoints_csv"] = tables.write_rows_csv(rows, target / "endpoints.csv")
        n_subjects = {a: sum(1 for s in arms.values() if s == a) for a in trial.arm_names}
        md = tables.table2_markdown(rows, trial, n_subjects=n_subjects)
        files["table2_md"] = target / "table2.md"
        files["table2_md"].write_text(md, encoding="utf-8")
        figures = write_figures(rows, trial, target)
        for name, paths in figures.items():
            files[f"figure_{name}_png"] = paths["png"]
            files[f"figure_{name}_svg"] = paths["svg"]
        issues_csv = out / "cohort_issues.csv"
        issues = read_csv_rows(issues_csv) if issues_csv.is_file() else []
        page = _report_page(out, trial, scans, table, rows, figures, issues, n_subjects, reads_path)
        files["report_html"] = target / "report.html"
        files["report_html"].write_text(page, encoding="utf-8")
        _replace_folder(target, final)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    files = {
        name: final / path.relative_to(target) if path.is_relative_to(target) else path
        for name, path in files.items()
    }
    logger.info("analysis written to %s", final)
    return CohortAnalysis(scans=scans, subject_visits=table, endpoints=rows, files=files)


def _replace_folder(new: Path, final: Path) -> None:
    """Move the complete folder ``new`` to ``final``, replacing a previous one. The old
    folder is renamed aside first and removed last, so an interruption between the two
    renames leaves it beside ``final`` (``.<name>.old.<pid>``), not lost."""
    old = final.with_name(f".{final.name}.old.{os.getpid()}")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(new, final)
    shutil.rmtree(old, ignore_errors=True)


def _report_page(
    out: Path,
    trial: TrialConfig,
    scans: list[dict[str, Any]],
    table: list[dict[str, Any]],
    rows: list[dict[str, Any]],
    figures: dict[str, dict[str, Path]],
    issues: list[dict[str, str]],
    n_subjects: dict[str, int],
    reads_path: str | Path | None,
) -> str:
    run = json.loads((out / "run.json").read_text())
    n_ok = sum(1 for s in scans if s["status"] == "ok")
    n_failed = sum(1 for s in scans if s["status"] == "failed")
    n_pending = sum(1 for s in scans if s["status"] == "pending")
    n_excluded = sum(1 for r in table if r["scan_status"] == "excluded")
    arms = ", ".join(f"{trial.arm_label(a)}: {n_subjects[a]} subjects" for a in trial.arm_names)
    excluded = (
        f"Excluded from the analysis: {n_excluded} measured scans with QC flag "
        f"{', '.join(trial.exclude_qc_flags)}. " if trial.exclude_qc_flags else ""
    )
    intro = (
        f"lungvol {__version__}, generated {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC. "
        f"Config {run.get('config_hash')}, trial {trial.name} ({trial.hash}). {arms}. "
        f"Scans: {n_ok} measured, {n_failed} failed, {n_pending} not yet segmented. {excluded}"
        f"Normal CT from {'radiologist reads where given, else ' if reads_path else ''}"
        "lungvol's rule."
    )
    sections: list[tuple[str, str]] = []
    sections.append(
        (
            "Table 2: change from baseline",
            html_table(tables.table2_header(trial), tables.table2_rows(rows, trial))
            + "<p class='note'>Relative change 100 × (visit − baseline) / baseline; "
            "median (Q1, Q3); "
            f"Hodges-Lehmann difference ({trial.hl_ci.upper()} CI) and Wilcoxon rank-sum p.</p>"
            + html_table(tables.absolute_header(trial), tables.absolute_rows(rows, trial)),
        )
    )
    published = tables.published_rows(trial)
    if published:
        sections.append(
            (
                "Published values (for comparison)",
                html_table(tables.published_header(trial), published),
            )
        )
    normal = tables.normal_ct_table(rows, trial)
    if normal:
        sections.append(("Normal chest CT", html_table(tables.normal_ct_header(trial), normal)))
    figs = "".join(
        figure_html(paths["png"], f"Figure 2 — {trial_endpoint_label(trial, name)}")
        for name, paths in figures.items()
    )
    sections.append(("Figures", figs))
    imputed = [
        [r["subject"], trial.arm_label(r["arm"]), r["visit"], r["imputed_from"], r["scan_status"]]
        for r in table
        if r["is_imputed"]
    ]
    sections.append(
        (
            f"Imputed visits (LOCF): {len(imputed)}",
            html_table(["Subject", "Arm", "Visit", "Carried from", "Scan status"], imputed)
            if imputed
            else "<p>None.</p>",
        )
    )
    if trial.exclude_qc_flags:
        sections.append(excluded_section(table, trial))
    sections.append(lung_volume_section(table, trial))
    sections.append(acquisition_section(table, trial))
    failed = [
        [s["subject"], s["visit"], s["scan"], s["error"]] for s in scans if s["status"] != "ok"
    ]
    sections.append(
        (
            f"Failed or pending scans: {len(failed)}",
            html_table(["Subject", "Visit", "Scan", "Error"], failed) if failed else "<p>None.</p>",
        )
    )
    if issues:
        sections.append(
            (
                f"Cohort issues: {len(issues)}",
                html_table(
                    ["Subject", "Kind", "Message"],
                    [[i["subject"], i["kind"], i["message"]] for i in issues],
                ),
            )
        )
    sections.append(qc_flags_section(scans))
    sections.append(("Per-scan QC", thumbnails_html(scans, out)))
    title = f"lungvol cohort report — {html.unescape(trial.title or trial.name)}"
    return build_report_html(title=title, intro=intro, sections=sections)


def excluded_section(table: list[dict[str, Any]], trial: TrialConfig) -> tuple[str, str]:
    """(heading, body): measured scans left out of the analysis for one of the trial's
    ``exclude_qc_flags`` (handled like visits without a usable scan)."""
    excluded = [r for r in table if r["scan_status"] == "excluded"]
    heading = f"Excluded scans (QC flags): {len(excluded)}"
    rule = (
        f"<p class='note'>Measured scans with QC flag {', '.join(trial.exclude_qc_flags)} "
        "(trial setting exclude_qc_flags) are left out: their visit is handled like one "
        "without a usable scan (imaging endpoints "
        + ("carried forward, LOCF" if trial.imputation == "locf" else "not imputed")
        + "; normal CT not imputed). An excluded baseline leaves the subject out of the "
        "change endpoints.</p>"
    )
    if not excluded:
        return heading, rule + "<p>None.</p>"
    listing = [
        [r["subject"], trial.arm_label(r["arm"]), r["visit"], r["excluded_for"].replace(";", ", ")]
        for r in excluded
    ]
    return heading, rule + html_table(["Subject", "Arm", "Visit", "QC flags"], listing)


def lung_volume_section(table: list[dict[str, Any]], trial: TrialConfig) -> tuple[str, str]:
    """(heading, body): measured follow-up scans whose lung volume differs from the subject's
    baseline scan by more than ``trial.lung_volume_change_flag_pct``."""
    limit = trial.lung_volume_change_flag_pct
    flagged = [r for r in table if r.get("lung_volume_flag")]
    heading = f"Lung volume against baseline: {len(flagged)} scans differ by more than {limit:g} %"
    if not flagged:
        return heading, "<p>None.</p>"
    base_of = {
        r["subject"]: r["lung_volume_ml"] for r in table if r["visit"] == trial.baseline_visit
    }
    listing = [
        [r["subject"], trial.arm_label(r["arm"]), r["visit"], f"{base_of[r['subject']]:.0f}",
         f"{r['lung_volume_ml']:.0f}", f"{r['lung_volume_change_pct']:+.1f}"]
        for r in flagged
    ]
    body = (
        "<p class='note'>The lung volume is every endpoint's denominator. A large change between "
        "visits of one subject is a different inspiration level, or a lung mask that leaves "
        "out consolidation against the chest wall at one visit (then the lesion proportion of "
        "that visit is under-read): check both visits' QC pictures. The endpoints are not "
        "changed.</p>"
        + html_table(
            ["Subject", "Arm", "Visit", "Baseline lung (mL)", "Visit lung (mL)", "Change (%)"],
            listing,
        )
    )
    return heading, body


def acquisition_section(table: list[dict[str, Any]], trial: TrialConfig) -> tuple[str, str]:
    """(heading, body): measured follow-up scans acquired differently from the subject's
    baseline scan (kernel, manufacturer, slice spacing or thickness; ``acquisition_changes``)."""
    changed = [r for r in table if r.get("acquisition_changes")]
    heading = f"Acquisition against baseline: {len(changed)} scans differ"
    if not changed:
        return heading, "<p>None.</p>"
    listing = [
        [r["subject"], trial.arm_label(r["arm"]), r["visit"], r["acquisition_changes"]]
        for r in changed
    ]
    body = (
        "<p class='note'>The lesion HU bands read the reconstruction kernel's noise and the "
        "slices' partial volume: a visit reconstructed differently from its baseline changes "
        "the lesion proportion by itself (thicker slices read normal lung higher). Reconstruct "
        "the visits alike where the raw data allow. The endpoints are not changed.</p>"
        + html_table(["Subject", "Arm", "Visit", "Changed"], listing)
    )
    return heading, body


def qc_flags_section(scans: list[dict[str, Any]]) -> tuple[str, str]:
    """(heading, body): how many measured scans carry each QC flag, then every flag with its
    message, so a reader sees which numbers to distrust before reading the tables."""
    n_flagged, counts = qc_flag_counts(scans)
    n_measured = sum(1 for s in scans if s["status"] == "ok")
    heading = f"QC flags: {n_flagged} of {n_measured} measured scans"
    if not n_flagged:
        return heading, "<p>None.</p>"
    listing = [
        [s["subject"], s["visit"], flag_code(f), f.split(":", 1)[1].strip() if ":" in f else f]
        for s in scans
        if s["status"] == "ok"
        for f in str(s.get("qc_flags") or "").split(QC_FLAG_SEPARATOR)
        if f.strip()
    ]
    body = (
        html_table(["Flag", "Scans"], counts)
        + "<p class='note'>What each flag means: docs/pipeline.md, \"QC flags\".</p>"
        + html_table(["Subject", "Visit", "Flag", "Message"], listing)
    )
    return heading, body


def trial_endpoint_label(trial: TrialConfig, name: str) -> str:
    for e in trial.endpoints:
        if e.name == name:
            return e.label
    return name
