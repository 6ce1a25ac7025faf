"""A small phantom cohort through `run_cohort` on a loopback Dask cluster (2 worker processes).

Checks the distributed path end to end: the same results as local processes, resumability,
and a worker killed mid-run without losing or duplicating a scan.
"""

from __future__ import annotations

import csv
import os
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

distributed = pytest.importorskip("distributed")

from lungvol.cohort.dask_executor import DaskExecutor, _run_on_worker  # noqa: E402
from lungvol.errors import InputError  # noqa: E402

pytestmark = pytest.mark.slow


def counting_scan(task):
    """process_scan plus one line per execution in OUT/executions.log (to count reruns)."""
    from lungvol.cohort.run import process_scan

    log = Path(task.result_dir).parents[2] / "executions.log"
    with open(log, "a") as fh:
        fh.write(f"start {task.subject}/{task.visit} {os.getpid()}\n")
    outcome = process_scan(task)
    with open(log, "a") as fh:
        fh.write(f"end {task.subject}/{task.visit} {os.getpid()}\n")
    return outcome


@pytest.fixture(scope="module")
def cohort_folder(tmp_path_factory: pytest.TempPathFactory):
    simulate = pytest.importorskip("lungvol.cohort.simulate")
    from lungvol.cohort.discover import discover_cohort
    from lungvol.cohort.trial import load_trial

    trial = load_trial(None)
    root = tmp_path_factory.mktemp("cohort")
    simulate.simulate_trial(
        root / "cohort", trial, subjects_per_arm=(1, 1), size="tiny", missing_fraction=0.0, seed=3
    )
    cohort = discover_cohort(root / "cohort", trial)
    assert len(cohort.jobs) >= 4
    return cohort


def _scan_rows(out: Path) -> list[dict[str, str]]:
    with (out / "scans.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_cohort_on_dask_matches_local_processes_and_resumes(cohort_folder, cluster, tmp_path):
    from lungvol.cohort.executors import SerialExecutor
    from lungvol.cohort.results import collect_results
    from lungvol.cohort.run import run_cohort
    from lungvol.config import load_config

    config = load_config()
    with DaskExecutor(cluster.scheduler_address) as ex:
        summary = run_cohort(cohort_folder, tmp_path / "dask", config, executor=ex)
    assert (summary.done, summary.failed) == (len(cohort_folder.jobs), 0), summary.failures
    local = run_cohort(cohort_folder, tmp_path / "local", config, executor=SerialExecutor())
    assert local.failed == 0

    collect_results(tmp_path / "dask")
    collect_results(tmp_path / "local")
    on_dask = {(r["subject"], r["visit"]): r for r in _scan_rows(tmp_path / "dask")}
    locally = {(r["subject"], r["visit"]): r for r in _scan_rows(tmp_path / "local")}
    assert on_dask.keys() == locally.keys()
    for key, row in on_dask.items():
        for column in ("lung_volume_ml", "lesion_volume_ml", "solid_volume_ml"):
            assert float(row[column]) == pytest.approx(float(locally[key][column]), rel=1e-12)

    # resumable: a second run on the cluster segments nothing
    with DaskExecutor(cluster.scheduler_address) as ex:
        again = run_cohort(cohort_folder, tmp_path / "dask", config, executor=ex)
    assert (again.done, again.skipped, again.failed) == (0, len(cohort_folder.jobs), 0)


def test_killing_a_worker_mid_cohort_finishes_every_scan_exactly_once(
    cohort_folder, cluster, tmp_path
):
    from lungvol.cohort.results import collect_results
    from lungvol.cohort.run import run_cohort
    from lungvol.config import load_config

    out = tmp_path / "out"
    out.mkdir()
    killed: list[int] = []
    with DaskExecutor(cluster.scheduler_address) as ex:
        client = ex._client
        pids = client.run(os.getpid)

        def kill_a_busy_worker(done: int, total: int) -> None:
            if killed or done == 0:
                return
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                busy = [w for w, keys in client.processing().items() if keys]
                running = _running_scans(out)
                if busy and running:
                    pid = pids.get(busy[0])
                    if pid is not None and pid in running.values():
                        os.kill(pid, signal.SIGKILL)
                        killed.append(pid)
                        return
                time.sleep(0.05)

        summary = run_cohort(
            cohort_folder,
            out,
            load_config(),
            executor=ex,
            scan_fn=counting_scan,
            on_progress=kill_a_busy_worker,
        )
        client.wait_for_workers(2, timeout=60)

    assert killed, "no worker was busy with a scan when the test tried to kill one"
    n = len(cohort_folder.jobs)
    assert (summary.done, summary.failed) == (n, 0), summary.failures
    collect_results(out)
    keys = Counter((r["subject"], r["visit"]) for r in _scan_rows(out))
    assert len(keys) == n
    assert set(keys.values()) == {1}  # recorded exactly once each
    starts = Counter(
        line.split()[1]
        for line in (out / "executions.log").read_text().splitlines()
        if line.startswith("start")
    )
    assert max(starts.values()) >= 2  # the scan on the killed worker was redone elsewhere
    # A SIGKILLed scan cannot remove its hidden temporary folder; only the redone scan may
    # have one, and it is never taken for a result.
    redone = {scan for scan, count in starts.items() if count > 1}
    for leftover in (p for p in (out / "scans").rglob(".*") if ".tmp" in p.name):
        subject = leftover.parent.name
        visit = leftover.name[1:].split(".tmp")[0]
        assert f"{subject}/{visit}" in redone, leftover


def _running_scans(out: Path) -> dict[str, int]:
    """Scans started but not ended, with the pid running them, from executions.log."""
    log = out / "executions.log"
    if not log.is_file():
        return {}
    state: dict[str, int] = {}
    for line in log.read_text().splitlines():
        kind, scan, pid = line.split()
        if kind == "start":
            state[scan] = int(pid)
        else:
            state.pop(scan, None)
    return state


def test_worker_without_the_output_folder_refuses_instead_of_writing_locally(tmp_path):
    class Task:  # the fields of cohort.run.ScanTask the executor looks at
        input_path = str(tmp_path)
        result_dir = str(tmp_path / "gone" / "scans" / "s1" / "V1")

    outcome = _run_on_worker(lambda task: "ran", Task(), True, str(tmp_path / "gone"))
    assert isinstance(outcome.error, InputError)
    assert "cannot write to" in str(outcome.error)
    assert _run_on_worker(lambda task: "ran", Task(), True, str(tmp_path)).value == "ran"


def test_cli_cohort_run_with_scheduler(cohort_folder, cluster, tmp_path):
    from typer.testing import CliRunner

    from lungvol.cli import app

    runner = CliRunner()
    out = tmp_path / "cli"
    result = runner.invoke(
        app,
        [
            "cohort",
            "run",
            str(cohort_folder.root),
            "-o",
            str(out),
            "--scheduler",
            cluster.scheduler_address,
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    n = len(cohort_folder.jobs)
    assert f"{n} scans: {n} done" in result.output
    assert len(_scan_rows(out)) == n


def test_cli_unreachable_scheduler_is_one_line_exit_1(cohort_folder, tmp_path):
    import socket

    from typer.testing import CliRunner

    from lungvol.cli import app

    with socket.socket() as s:  # bound, not listening: connections are refused
        s.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
        out = tmp_path / "o"
        result = CliRunner().invoke(
            app, ["cohort", "run", str(cohort_folder.root), "-o", str(out), "--scheduler", address]
        )
    assert result.exit_code == 1
    assert f"no Dask scheduler answered at {address}" in result.output
    assert "Traceback" not in result.output
