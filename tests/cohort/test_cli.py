"""CLI: cohort run/analyze and simulate-trial map bad input to one-line errors (exit 1)."""

from __future__ import annotations

import csv

from cohort_fakes import fake_scan, make_cohort
from typer.testing import CliRunner

from lungvol.cli import app
from lungvol.cohort.discover import discover_cohort
from lungvol.cohort.executors import SerialExecutor
from lungvol.cohort.run import run_cohort
from lungvol.cohort.trial import load_trial
from lungvol.config import LungvolConfig

runner = CliRunner()


def _one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[-1].startswith("error:")
    return lines[-1]


def test_cohort_run_with_unknown_arm_fails_with_one_line(tmp_path):
    root = make_cohort(tmp_path / "c", [{"subject": "S1", "arm": "drug", "visit": "baseline",
                                         "lesion": 1, "solid": 0}])
    result = runner.invoke(app, ["cohort", "run", str(root), "-o", str(tmp_path / "o")])
    assert "unknown arm 'drug'" in _one_line_error(result)


def test_cohort_analyze_of_a_non_cohort_folder_says_what_to_run(tmp_path):
    result = runner.invoke(app, ["cohort", "analyze", str(tmp_path)])
    assert "lungvol cohort run" in _one_line_error(result)


def _analyzed_four_subjects(tmp_path, **scan4_extra):
    """Four fake subjects (2 per arm) x 3 visits, run and analyzed; ``scan4_extra`` goes
    into subject S1's day-10 scan. Returns (out folder, analyze result)."""
    scans = [{"subject": f"S{i}", "arm": "MSC" if i < 2 else "placebo", "visit": v,
              "lesion": 20.0 - 4 * k - i, "solid": 2.0 - 0.3 * k}
             for i in range(4) for k, v in enumerate(("baseline", "day10", "month1"))]
    scans[4].update(scan4_extra)
    root = make_cohort(tmp_path / "c", scans)
    out = tmp_path / "o"
    run_cohort(discover_cohort(root, load_trial()), out, LungvolConfig(),
               executor=SerialExecutor(), scan_fn=fake_scan)
    result = runner.invoke(app, ["cohort", "analyze", str(out)])
    assert result.exit_code == 0, result.output
    return out, result


def test_cohort_analyze_prints_table2_and_paths(tmp_path):
    out, result = _analyzed_four_subjects(tmp_path)
    assert "| Total lesion proportion | Day 10 | 2 |" in result.output
    assert "lung volume differs" not in result.output
    assert "acquired differently" not in result.output
    assert (out / "analysis" / "report.html").is_file()


def test_cohort_analyze_lists_scans_whose_lung_volume_moved_from_baseline(tmp_path):
    # S1 day 10: -14 % against its baseline's 5000 mL.
    out, result = _analyzed_four_subjects(tmp_path, lung_ml=4300.0)
    assert "1 scans' lung volume differs from the subject's baseline by more than 10 %" in (
        result.output
    )
    page = (out / "analysis" / "report.html").read_text()
    assert "Lung volume against baseline: 1 scans differ by more than 10 %" in page
    assert "<td>S1</td>" in page
    assert "-14.0" in page
    visits = (out / "analysis" / "subject_visits.csv").read_text().splitlines()
    assert "lung_volume_flag" in visits[0]


def test_cohort_analyze_lists_scans_acquired_differently_from_baseline(tmp_path):
    # S1 day 10 reconstructed with a soft kernel, its baseline with a sharp one.
    out, result = _analyzed_four_subjects(tmp_path, kernel="B30f")
    assert "1 scans were acquired differently from the subject's baseline" in result.output
    page = (out / "analysis" / "report.html").read_text()
    assert "Acquisition against baseline: 1 scans differ" in page
    assert "kernel B70f -&gt; B30f" in page
    scans = (out / "scans.csv").read_text().splitlines()
    assert "convolution_kernel" in scans[0]
    visits = (out / "analysis" / "subject_visits.csv").read_text()
    assert "kernel B70f -> B30f" in visits


def test_cohort_analyze_exclude_flag_leaves_flagged_scans_out(tmp_path):
    """--exclude-flag: S1's day-10 scan (flagged lung_base_truncated) is carried forward
    from its baseline, listed in the report and in subject_visits.csv; without the option it
    counts like any other scan."""
    flag = ("lung_base_truncated: the lung mask's base ends square (right 0 mm ...); "
            "check the coronal view of qc.png")
    out, plain = _analyzed_four_subjects(tmp_path, qc_flags=[flag])
    assert "excluded" not in plain.output
    assert "Excluded scans" not in (out / "analysis" / "report.html").read_text()
    result = runner.invoke(app, ["cohort", "analyze", str(out), "--exclude-flag",
                                 "lung_base_truncated"])
    assert result.exit_code == 0, result.output
    assert "1 measured scans excluded for QC flag lung_base_truncated" in result.output
    page = (out / "analysis" / "report.html").read_text()
    assert "Excluded scans (QC flags): 1" in page
    assert "Excluded from the analysis: 1 measured scans with QC flag lung_base_truncated" in page
    with (out / "analysis" / "subject_visits.csv").open() as fh:
        rows = {(r["subject"], r["visit"]): r for r in csv.DictReader(fh)}
    day10 = rows[("S1", "day10")]
    assert (day10["scan_status"], day10["excluded_for"]) == ("excluded", "lung_base_truncated")
    assert day10["imputed_from"] == "baseline"
    assert day10["total_lesion_pct"] == rows[("S1", "baseline")]["total_lesion_pct"]
    bad = runner.invoke(app, ["cohort", "analyze", str(out), "--exclude-flag", "Base cut"])
    assert "exclude_qc_flags must hold QC flag codes" in _one_line_error(bad)


def test_simulate_trial_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "x.txt").write_text("keep me")
    result = runner.invoke(app, ["simulate-trial", str(tmp_path), "--subjects-per-arm", "1"])
    assert "not empty" in _one_line_error(result)


def test_simulate_trial_rejects_bad_subject_counts(tmp_path):
    result = runner.invoke(app, ["simulate-trial", str(tmp_path / "n"), "--subjects-per-arm",
                                 "many"])
    assert "--subjects-per-arm must be N or N1,N2" in _one_line_error(result)


def test_cohort_run_phase_check_flag_reaches_every_scan_and_the_run_record(tmp_path, monkeypatch):
    import json

    import lungvol.cohort.run as run_mod

    seen = []
    real_run = run_mod.run_cohort

    def recording_run(found, out, config, **kw):
        seen.append(config.quantification.phase_check)
        return real_run(found, out, config, **{**kw, "executor": SerialExecutor(),
                                               "scan_fn": fake_scan})

    monkeypatch.setattr(run_mod, "run_cohort", recording_run)
    root = make_cohort(tmp_path / "c", [{"subject": "S1", "arm": "MSC", "visit": "baseline",
                                         "lesion": 1, "solid": 0}])
    out = tmp_path / "o"
    result = runner.invoke(app, ["cohort", "run", str(root), "-o", str(out), "--phase-check",
                                 "--no-progress"])
    assert result.exit_code == 0, result.output
    assert seen == [True]
    run = json.loads((out / "run.json").read_text())
    assert run["config_hash"] != LungvolConfig().hash
