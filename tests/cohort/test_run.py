"""run_cohort: resumable, failures recorded, config changes refused, killed runs resume."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cohort_fakes import calls, fake_scan, make_cohort

from lungvol.cohort.discover import discover_cohort
from lungvol.cohort.executors import LocalProcessExecutor, SerialExecutor
from lungvol.cohort.results import collect_results
from lungvol.cohort.run import run_cohort
from lungvol.cohort.trial import load_trial
from lungvol.config import LungvolConfig, QuantificationConfig
from lungvol.errors import CohortError

TRIAL = load_trial()
HERE = Path(__file__).resolve().parent


def _scans(n_subjects: int = 3, **extra) -> list[dict]:
    out = []
    for i in range(n_subjects):
        arm = "MSC" if i % 2 == 0 else "placebo"
        for k, visit in enumerate(("baseline", "day10", "month1")):
            out.append({"subject": f"S{i}", "arm": arm, "visit": visit,
                        "lesion": 20.0 - 5 * k + i, "solid": 2.0 - 0.5 * k, **extra})
    return out


def _run(root: Path, out: Path, config: LungvolConfig | None = None, **kw):
    cohort = discover_cohort(root, TRIAL)
    return run_cohort(cohort, out, config or LungvolConfig(), executor=SerialExecutor(),
                      scan_fn=fake_scan, **kw)


def test_second_run_skips_complete_scans(tmp_path):
    root = make_cohort(tmp_path / "c", _scans())
    out = tmp_path / "out"
    progress = []
    first = _run(root, out, on_progress=lambda d, t: progress.append((d, t)))
    assert (first.done, first.skipped, first.failed) == (9, 0, 0)
    assert progress[-1] == (9, 9)
    second = _run(root, out)
    assert (second.done, second.skipped, second.failed) == (0, 9, 0)
    assert len(calls(out)) == 9


def test_changed_input_is_redone(tmp_path):
    root = make_cohort(tmp_path / "c", _scans(1))
    out = tmp_path / "out"
    _run(root, out)
    fake = root / "S0" / "day10" / "fake.json"
    fake.write_text(json.dumps({"lesion": 1.0, "solid": 0.5}))
    os.utime(fake, ns=(time.time_ns(), time.time_ns() + 10**9))
    again = _run(root, out)
    assert (again.done, again.skipped) == (1, 2)
    assert calls(out).count("S0/day10") == 2


def test_failed_scan_is_recorded_others_finish_and_it_is_retried(tmp_path):
    scans = _scans()
    scans[4] = dict(scans[4], fail="cannot read DICOM: truncated file")
    root = make_cohort(tmp_path / "c", scans)
    out = tmp_path / "out"
    summary = _run(root, out)
    assert (summary.done, summary.failed) == (8, 1)
    assert summary.failures[0]["subject"] == "S1"
    assert "truncated" in summary.failures[0]["error"]
    assert "InputError" in (out / "failures.csv").read_text()
    rows = {(r["subject"], r["visit"]): r for r in collect_results(out)}
    assert rows[("S1", "day10")]["status"] == "failed"
    assert "truncated" in rows[("S1", "day10")]["error"]
    assert sum(r["status"] == "ok" for r in rows.values()) == 8
    # Fixed input: the next run retries only the failed scan.
    (root / "S1" / "day10" / "fake.json").write_text(json.dumps({"lesion": 3, "solid": 1}))
    again = _run(root, out)
    assert (again.done, again.skipped, again.failed) == (1, 8, 0)
    assert (out / "failures.csv").read_text().strip().count("\n") == 0


def test_output_of_another_config_is_refused_unless_rerun_changed(tmp_path):
    root = make_cohort(tmp_path / "c", _scans(1))
    out = tmp_path / "out"
    _run(root, out)
    other = LungvolConfig(quantification=QuantificationConfig(normal_ct_max_lesion_pct=2.0))
    with pytest.raises(CohortError, match="use a new -o folder or pass --rerun-changed"):
        _run(root, out, other)
    redo = _run(root, out, other, rerun_changed=True)
    assert (redo.done, redo.skipped) == (3, 0)
    assert json.loads((out / "run.json").read_text())["config_hash"] == other.hash


def test_a_second_run_on_the_same_output_is_refused_while_the_first_holds_it(tmp_path):
    root = make_cohort(tmp_path / "c", _scans(1))
    out = tmp_path / "out"
    out.mkdir()
    with (out / ".run.lock").open("a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(CohortError, match="another lungvol cohort run .* is writing to"):
            _run(root, out)
        fcntl.flock(held, fcntl.LOCK_UN)
    assert _run(root, out).done == 3


def test_results_table_has_ids_visits_days_and_metrics(tmp_path):
    root = make_cohort(tmp_path / "c", _scans(2))
    out = tmp_path / "out"
    _run(root, out)
    rows = collect_results(out)
    assert len(rows) == 6
    r = rows[0]
    assert {"subject", "arm", "visit", "day", "lesion_proportion_pct", "lung_hu_mean",
            "qc_png"} <= set(r)
    assert (out / "scans.csv").is_file()
    pq = pytest.importorskip("pyarrow.parquet")
    assert pq.read_table(out / "scans.parquet").num_rows == 6
    assert "provenance" not in (out / "scans.csv").read_text().splitlines()[0]


def test_results_table_carries_the_phase_check_spread_when_it_was_run(tmp_path):
    check = {"lesion_proportion_range_pp": 0.15, "solid_volume_range_ml": 3.0,
             "normal_ct_agrees": False}
    scans = _scans(1)
    scans[1] = dict(scans[1], phase_check=check)
    root = make_cohort(tmp_path / "c", scans)
    out = tmp_path / "out"
    _run(root, out)
    rows = {r["visit"]: r for r in collect_results(out)}
    assert rows["day10"]["phase_lesion_proportion_range_pp"] == 0.15
    assert rows["day10"]["phase_solid_volume_range_ml"] == 3.0
    assert rows["day10"]["phase_normal_ct_agrees"] is False
    assert "phase_lesion_proportion_range_pp" not in rows["baseline"]
    header = (out / "scans.csv").read_text().splitlines()[0].split(",")
    assert "phase_solid_volume_range_ml" in header


def test_results_table_carries_what_the_subpleural_step_added(tmp_path):
    scans = _scans(1)
    scans[2] = dict(scans[2], subpleural={"flagged": True, "excess_mm": 4.4,
                                          "dependent_excess_mm": 4.2, "recovered_ml": 385.0,
                                          "posterior_gap_right_mm": 23.4,
                                          "posterior_gap_left_mm": 5.9})
    scans[0] = dict(scans[0], subpleural={"flagged": False, "excess_mm": -1.2,
                                          "recovered_ml": 0.0})
    root = make_cohort(tmp_path / "c", scans)
    out = tmp_path / "out"
    _run(root, out)
    rows = {r["visit"]: r for r in collect_results(out)}
    assert rows[scans[2]["visit"]]["subpleural_recovered_ml"] == 385.0
    assert rows[scans[2]["visit"]]["subpleural_excess_mm"] == 4.4
    assert rows[scans[2]["visit"]]["subpleural_dependent_excess_mm"] == 4.2
    assert rows[scans[2]["visit"]]["posterior_gap_right_mm"] == 23.4
    assert rows[scans[2]["visit"]]["posterior_gap_left_mm"] == 5.9
    assert rows["baseline"]["subpleural_recovered_ml"] == 0.0
    assert "subpleural_excess_mm" not in rows[scans[1]["visit"]]  # no step recorded


def test_local_process_executor_runs_the_cohort_in_worker_processes(tmp_path):
    root = make_cohort(tmp_path / "c", _scans(2))
    out = tmp_path / "out"
    executor = LocalProcessExecutor(2)
    try:
        summary = run_cohort(discover_cohort(root, TRIAL), out, LungvolConfig(),
                             executor=executor, scan_fn=fake_scan)
    finally:
        executor.close()
    assert (summary.done, summary.failed) == (6, 0)
    assert sorted(calls(out)) == sorted({f"S{i}/{v}" for i in range(2)
                                         for v in ("baseline", "day10", "month1")})


_KILLED_RUN = """
import sys
sys.path.insert(0, {here!r})
from cohort_fakes import fake_scan
from lungvol.cohort.discover import discover_cohort
from lungvol.cohort.executors import SerialExecutor
from lungvol.cohort.run import run_cohort
from lungvol.cohort.trial import load_trial
from lungvol.config import LungvolConfig
run_cohort(discover_cohort({root!r}, load_trial()), {out!r}, LungvolConfig(),
           executor=SerialExecutor(), scan_fn=fake_scan)
"""


@pytest.mark.slow
def test_killed_run_resumes_without_losing_or_redoing_scans(tmp_path):
    root = make_cohort(tmp_path / "c", _scans(3, sleep_s=0.4))
    out = tmp_path / "out"
    code = _KILLED_RUN.format(here=str(HERE), root=str(root), out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 60
        while len(list(out.glob("scans/*/*/cache.json"))) < 3:
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    complete = {p.parent: p.parent.joinpath("metrics.json").stat().st_mtime_ns
                for p in out.glob("scans/*/*/cache.json")}
    assert 3 <= len(complete) < 9
    summary = _run(root, out)
    assert summary.skipped == len(complete)
    assert summary.done == 9 - len(complete)
    for folder, mtime in complete.items():  # complete results were not redone
        assert folder.joinpath("metrics.json").stat().st_mtime_ns == mtime
    rows = collect_results(out)
    assert [r["status"] for r in rows] == ["ok"] * 9
    visible = [p for p in out.glob("scans/*/*") if p.is_dir() and not p.name.startswith(".")]
    assert all((p / "metrics.json").is_file() for p in visible)  # nothing half-written in place


@pytest.mark.slow
def test_dask_executor_runs_the_cohort_through_the_same_contract(tmp_path):
    distributed = pytest.importorskip("distributed")
    from lungvol.cohort.dask_executor import DaskExecutor

    root = make_cohort(tmp_path / "c", _scans(2))
    out = tmp_path / "out"
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  protocol="tcp://", dashboard_address=None) as cluster:
        executor = DaskExecutor(cluster.scheduler_address)
        try:
            summary = run_cohort(discover_cohort(root, TRIAL), out, LungvolConfig(),
                                 executor=executor, scan_fn=fake_scan)
        finally:
            executor.close()
    assert (summary.done, summary.failed) == (6, 0)
    assert [r["status"] for r in collect_results(out)] == ["ok"] * 6


def test_partial_result_of_a_killed_scan_is_removed_by_the_next_run(tmp_path):
    root = make_cohort(tmp_path / "c", _scans(1))
    out = tmp_path / "out"
    _run(root, out)
    stale = out / "scans" / "S0" / ".month1.tmp-0123456789ab"
    stale.mkdir()
    (stale / "lungs.nii.gz").write_bytes(b"half")
    again = _run(root, out)
    assert (again.done, again.skipped) == (0, 3)
    assert not stale.exists()
    assert (out / "scans" / "S0" / "month1" / "metrics.json").is_file()
