"""simulate-trial -> cohort run -> cohort analyze, checked against the simulated truth.

Tolerances (stated in docs/cohort.md): each scan's lesion and solid proportions within
1 percentage point of the phantom's voxel-counted truth; each arm's median relative change
within 10 percentage points of the truth median (computed by the same analysis on the true
proportions, with the scan the test corrupts failed there too). Uses the real pipeline
(io, segmentation, quantification) on small phantoms. To stay within the test budget the
trial is shi2022.yaml cut to its first four visits (baseline, day 10, month 1, month 3);
the unit tests cover all seven.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from lungvol.cli import app
from lungvol.cohort.trial import DEFAULT_TRIAL

pytestmark = pytest.mark.slow

PER_SCAN_TOLERANCE_PP = 1.0
MEDIAN_CHANGE_TOLERANCE_PP = 10.0
CORRUPT = ("S002", "month1")
VISITS = ("baseline", "day10", "month1", "month3")


def _short_trial(path: Path) -> Path:
    data = yaml.safe_load(DEFAULT_TRIAL.read_text())
    data["visits"] = [v for v in data["visits"] if v["name"] in VISITS]
    for endpoint in data["endpoints"]:
        endpoint["visits"] = [v for v in endpoint["visits"] if v in VISITS]
    data["normal_ct_visits"] = [v for v in data["normal_ct_visits"] if v in VISITS]
    path.write_text(yaml.safe_dump(data))
    return path


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def trial_run(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("e2e")
    cohort, out = tmp / "cohort", tmp / "out"
    trial = str(_short_trial(tmp / "trial.yaml"))
    runner = CliRunner()
    sim = runner.invoke(app, ["simulate-trial", str(cohort), "--trial", trial,
                              "--subjects-per-arm", "2",
                              "--seed", "11", "--size", "small", "--missing-fraction", "0.1",
                              "--workers", "2"])
    assert sim.exit_code == 0, sim.output
    # A corrupt scan in the middle of the cohort.
    scan = cohort / CORRUPT[0] / CORRUPT[1] / "ct.nii.gz"
    if not scan.is_file():
        pytest.fail(f"seed 11 should keep {CORRUPT} present; pick another scan")
    scan.write_bytes(b"\x1f\x8b this is not a NIfTI file" * 10)
    run = runner.invoke(app, ["cohort", "run", str(cohort), "-o", str(out), "--workers", "2",
                              "--trial", trial, "--no-progress"])
    assert run.exit_code == 0, run.output
    analyze = runner.invoke(app, ["cohort", "analyze", str(out), "--trial", trial])
    assert analyze.exit_code == 0, analyze.output
    return {"cohort": cohort, "out": out, "run_output": run.output, "trial": trial}


def test_corrupt_scan_is_recorded_and_the_others_finish(trial_run):
    scans = _rows(trial_run["out"] / "scans.csv")
    failed = [(r["subject"], r["visit"]) for r in scans if r["status"] != "ok"]
    assert failed == [CORRUPT]
    assert "1 failed" in trial_run["run_output"]
    visits = _rows(trial_run["out"] / "analysis" / "subject_visits.csv")
    (cell,) = [r for r in visits if (r["subject"], r["visit"]) == CORRUPT]
    assert cell["is_imputed"] == "True"
    assert cell["scan_status"] == "failed"


def test_run_summary_counts_the_qc_flags_of_scans_csv(trial_run):
    """The run's last lines count flagged scans per code, as scans.csv has them (3 mm
    phantoms: thick_slices_lesion_bias on every measured scan)."""
    rows = [r for r in _rows(trial_run["out"] / "scans.csv") if r["status"] == "ok"]
    flagged = [r for r in rows if r["qc_flag_codes"]]
    assert len(flagged) == len(rows)
    assert f"QC flags on {len(flagged)} scans (" in trial_run["run_output"]
    thick = sum("thick_slices_lesion_bias" in r["qc_flag_codes"].split(";") for r in rows)
    assert f"thick_slices_lesion_bias {thick}" in trial_run["run_output"]


def test_measured_proportions_rank_the_scans_like_the_truth(trial_run):
    """Each result row belongs to the right subject and visit: measured lesion and solid
    proportions order the scans as the phantom truth does (Spearman >= 0.9). Accuracy itself
    is the strict-xfail test below and benchmarks/evaluate_accuracy.py."""
    from scipy.stats import spearmanr

    truth = {(r["subject"], r["visit"]): r for r in _rows(trial_run["cohort"] / "truth.csv")}
    rows = [r for r in _rows(trial_run["out"] / "scans.csv") if r["status"] == "ok"]
    assert len(rows) >= 10
    for metric in ("lesion_proportion_pct", "solid_proportion_pct"):
        measured = [float(r[metric]) for r in rows]
        true = [float(truth[(r["subject"], r["visit"])][metric]) for r in rows]
        rho = spearmanr(measured, true).statistic
        assert rho >= 0.9, f"{metric}: Spearman {rho:.2f} between measured and truth"


def test_every_scan_is_within_1pp_of_the_phantom_truth(trial_run):
    """Measured (2026-12-06, session 22): worst total lesion +0.94 pp (S004 baseline; the
    two heaviest subjects, 33-45 % lesion, read +0.81..+0.94), worst solid 0.67 pp.
    Sessions 19-21 had 5 of 28 over 1 pp (+1.28..+1.45): vessel skirts grown into by the
    lesion hysteresis, which the two-voxel width gate now stops on these 2.8 mm voxels
    (docs/cohort.md)."""
    truth = {(r["subject"], r["visit"]): r for r in _rows(trial_run["cohort"] / "truth.csv")}
    errors = []
    for r in _rows(trial_run["out"] / "scans.csv"):
        if r["status"] != "ok":
            continue
        t = truth[(r["subject"], r["visit"])]
        for metric in ("lesion_proportion_pct", "solid_proportion_pct"):
            diff = float(r[metric]) - float(t[metric])
            if abs(diff) > PER_SCAN_TOLERANCE_PP:
                errors.append(f"{r['subject']}/{r['visit']} {metric} {diff:+.2f} pp")
    assert not errors, f"{len(errors)} measurements off by > 1 pp: {errors[:6]}"


def test_arm_medians_of_change_are_close_to_the_truth(trial_run):
    """Against the truth as the analysis can know it: the scan this test corrupts is failed
    there too, and LOCF fills its visit in both (truth_endpoints.csv holds its true value,
    which moved S002's month-1 solid change by 25 points)."""
    from lungvol.cohort.simulate import truth_endpoint_rows
    from lungvol.cohort.trial import load_trial

    truth_rows = _rows(trial_run["cohort"] / "truth.csv")
    trial = load_trial(trial_run["trial"])
    truth = {(r["endpoint"], r["visit"]): r
             for r in truth_endpoint_rows(truth_rows, trial, failed=[CORRUPT])}
    measured = _rows(trial_run["out"] / "analysis" / "endpoints.csv")
    off = []
    for r in measured:
        if r["kind"] != "relative_change":
            continue
        t = truth[(r["endpoint"], r["visit"])]
        for arm in ("MSC", "placebo"):
            if t[f"{arm}_median"] in ("", None) or np.isnan(float(t[f"{arm}_median"])):
                continue
            diff = float(r[f"{arm}_median"]) - float(t[f"{arm}_median"])
            if abs(diff) > MEDIAN_CHANGE_TOLERANCE_PP:
                off.append(f"{r['endpoint']}/{r['visit']}/{arm} {diff:+.1f}")
    assert not off, f"arm medians off by > {MEDIAN_CHANGE_TOLERANCE_PP} pp: {off}"


def test_rerun_skips_complete_scans_and_another_config_is_refused(trial_run, tmp_path):
    runner = CliRunner()
    cohort, out = str(trial_run["cohort"]), str(trial_run["out"])
    trial = trial_run["trial"]
    again = runner.invoke(app, ["cohort", "run", cohort, "-o", out, "--trial", trial,
                                "--no-progress"])
    assert again.exit_code == 0, again.output
    n_ok = sum(r["status"] == "ok" for r in _rows(trial_run["out"] / "scans.csv"))
    assert f"0 done, {n_ok} skipped" in again.output
    other = tmp_path / "other.yaml"
    other.write_text("quantification:\n  normal_ct_max_lesion_pct: 2.0\n")
    refused = runner.invoke(app, ["cohort", "run", cohort, "-o", out, "--trial", trial,
                                  "--config", str(other)])
    assert refused.exit_code == 1
    assert "--rerun-changed" in refused.output
