"""Segment every scan of a cohort: resumable, parallel, one failure never stops the run.

Output folder ``OUT``::

    OUT/run.json              lungvol version, config hash + resolved config, trial, cohort root
    OUT/jobs.csv              the scans (subject, arm, visit, day, scan_date, scan); no paths to PHI
    OUT/subjects.csv          every subject of the manifest with its arm
    OUT/cohort_issues.csv     subject-level issues found by discovery (no baseline, duplicates...)
    OUT/scans/<subject>/<visit>/      segment_scan's result (masks, metrics.json, qc.png, run.json)
                                      + cache.json (the cache key of that result)
    OUT/scans/<subject>/<visit>.failed.json   the error of the last failed attempt, if any
    OUT/failures.csv          failed scans and their errors (rewritten at the end of every run)
    OUT/scans.csv, scans.parquet      one row per scan with every metric (see collect_results)

A scan is complete when its folder holds metrics.json and a cache.json whose key equals the
sha256 of (input identity, config hash, lungvol version). The input identity is the relative
path, size and modification time of every input file (as make and rsync decide "unchanged"),
so a cohort folder can be moved without redoing the work. segment_scan writes a scan's folder
atomically and cache.json is written last, so a killed run leaves either a complete result or
one that the next run redoes. Failed scans are retried by the next run.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lungvol import __version__
from lungvol.cohort.discover import Cohort, ScanJob
from lungvol.cohort.executors import Executor
from lungvol.config import LungvolConfig, config_from_dict
from lungvol.errors import CohortError

logger = logging.getLogger(__name__)

CACHE_NAME = "cache.json"
METRICS_NAME = "metrics.json"
RUN_NAME = "run.json"
LOCK_NAME = ".run.lock"
SCAN_COLUMNS = ("subject", "arm", "visit", "day", "scan_date", "scan", "is_day_nominal")


@dataclass(frozen=True)
class ScanTask:
    """What a worker needs for one scan: small, picklable, no arrays."""

    subject: str
    visit: str
    input_path: str
    result_dir: str
    config: dict[str, Any]
    cache_key: str
    config_hash: str
    device: str = "cpu"


@dataclass(frozen=True)
class ScanOutcome:
    """What a worker sends back: timing only; the metrics are on disk."""

    subject: str
    visit: str
    seconds: float


@dataclass
class RunSummary:
    """Counts of one ``run_cohort`` call and the failed scans with their errors."""

    done: int = 0
    skipped: int = 0
    failed: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return self.done + self.skipped + self.failed


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _atomic_write_csv(path: Path, columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def input_identity(job: ScanJob) -> str:
    """sha256 of the scan's input files: relative path, size and mtime (ns) of each."""
    p = Path(job.path)
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    h = hashlib.sha256(f"{job.subject}/{job.scan}".encode())
    for f in files:
        st = f.stat()
        rel = f.relative_to(p).as_posix() if p.is_dir() else f.name
        h.update(f"\n{rel}\t{st.st_size}\t{st.st_mtime_ns}".encode())
    return h.hexdigest()


def cache_key(job: ScanJob, config: LungvolConfig) -> str:
    """The per-scan cache key: sha256 of input identity + config hash + lungvol version."""
    blob = f"{input_identity(job)}|{config.hash}|{__version__}"
    return hashlib.sha256(blob.encode()).hexdigest()


def result_dir(out: Path, job: ScanJob) -> Path:
    return Path(out) / "scans" / job.subject / job.visit


def failure_file(out: Path, job: ScanJob) -> Path:
    return Path(out) / "scans" / job.subject / f"{job.visit}.failed.json"


def is_complete(folder: Path, key: str) -> bool:
    """True when ``folder`` holds metrics.json and a cache.json with this key."""
    cache = folder / CACHE_NAME
    if not (folder / METRICS_NAME).is_file() or not cache.is_file():
        return False
    try:
        return json.loads(cache.read_text()).get("cache_key") == key
    except (json.JSONDecodeError, OSError):
        return False


def process_scan(task: ScanTask, *, segment: Callable[..., Any] | None = None) -> ScanOutcome:
    """Segment one scan with lungvol.pipeline.segment_scan and stamp the result with its key.

    Top-level and picklable, for process pools and Dask workers; reads and writes shared
    storage itself. ``segment`` replaces segment_scan (same signature) in tests.
    """
    if segment is None:
        from lungvol.pipeline import segment_scan as segment  # imported by the worker

    start = time.perf_counter()
    config = config_from_dict(task.config, where="cohort run.json")
    folder = Path(task.result_dir)
    folder.parent.mkdir(parents=True, exist_ok=True)
    segment(Path(task.input_path), folder, config=config, device=task.device, overwrite=True)
    seconds = time.perf_counter() - start
    stamp = {
        "cache_key": task.cache_key,
        "config_hash": task.config_hash,
        "seconds": round(seconds, 3),
        "lungvol": __version__,
    }
    _atomic_write_text(folder / CACHE_NAME, json.dumps(stamp, indent=2))
    return ScanOutcome(task.subject, task.visit, seconds)


def _check_run_json(out: Path, config: LungvolConfig, *, rerun_changed: bool) -> None:
    path = out / RUN_NAME
    if not path.is_file():
        return
    try:
        previous = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CohortError(f"{path} is not valid JSON; use a new -o folder") from err
    old = previous.get("config_hash")
    if old != config.hash and not rerun_changed:
        raise CohortError(
            f"{out} holds results made with config {old}, not {config.hash}; use a new -o "
            "folder or pass --rerun-changed to redo every scan with this config"
        )


@contextlib.contextmanager
def _exclusive_run(out: Path):
    """Hold an advisory lock on ``out`` so that two runs never write the same folder.

    The kernel releases it when the process ends, however it ends (Ctrl-C, kill -9).
    """
    with (out / LOCK_NAME).open("a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            raise CohortError(
                f"another lungvol cohort run (pid {holder}) is writing to {out}; wait for it "
                "to finish or use another -o folder"
            ) from err
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def write_cohort_files(out: Path, cohort: Cohort, *, trial_hash: str = "") -> None:
    """Write jobs.csv, subjects.csv and cohort_issues.csv (no identifiers beyond manifest IDs)."""
    rows = [dataclasses.asdict(j) for j in cohort.jobs]
    _atomic_write_csv(out / "jobs.csv", SCAN_COLUMNS, rows)
    subjects = [{"subject": s, "arm": a} for s, a in sorted(cohort.arms.items())]
    _atomic_write_csv(out / "subjects.csv", ("subject", "arm"), subjects)
    issues = [dataclasses.asdict(i) for i in cohort.issues]
    _atomic_write_csv(out / "cohort_issues.csv", ("subject", "kind", "scan", "message"), issues)


def run_cohort(
    cohort: Cohort,
    out: str | Path,
    config: LungvolConfig,
    *,
    executor: Executor,
    on_progress: Callable[[int, int], None] | None = None,
    rerun_changed: bool = False,
    device: str = "cpu",
    scan_fn: Callable[[ScanTask], Any] = process_scan,
    trial_hash: str = "",
) -> RunSummary:
    """Segment every scan of ``cohort`` into ``out``; skip complete ones; record failures.

    Parameters
    ----------
    cohort : Cohort
        From :func:`lungvol.cohort.discover.discover_cohort`.
    out : path
        The cohort output folder (created if missing).
    config : LungvolConfig
        Segmentation and quantification settings; its hash is recorded in ``out/run.json``.
    executor : Executor
        Where scans run (LocalProcessExecutor, DaskExecutor, SerialExecutor).
    on_progress : callable(done, total), optional
        Called after each finished scan (skipped ones count at once).
    rerun_changed : bool
        Accept an ``out`` made with another config and redo its scans; otherwise refuse it.
    scan_fn : callable(ScanTask)
        The per-scan function (top-level, picklable); tests inject a fake.

    Raises
    ------
    CohortError
        If ``out`` holds results of another config and ``rerun_changed`` is False, or
        another run is writing to ``out`` (an advisory lock, ``out/.run.lock``).
    """
    start = time.perf_counter()
    out = Path(out).resolve()  # absolute: workers (processes, Dask) may run elsewhere
    out.mkdir(parents=True, exist_ok=True)
    with _exclusive_run(out):
        return _run_locked(
            cohort,
            out,
            config,
            executor=executor,
            on_progress=on_progress,
            rerun_changed=rerun_changed,
            device=device,
            scan_fn=scan_fn,
            trial_hash=trial_hash,
            start=start,
        )


def _remove_stale_temp_folders(out: Path) -> None:
    """Delete ``.<visit>.tmp-*`` folders left by a scan whose process was killed.

    Safe only under the run lock: no other process of this run writes to ``out`` then.
    """
    scans = out / "scans"
    if not scans.is_dir():
        return
    for stale in scans.glob("*/.*.tmp-*"):
        if stale.is_dir():
            logger.info("removing a partial result left by an interrupted run: %s", stale)
            shutil.rmtree(stale, ignore_errors=True)


def _run_locked(
    cohort: Cohort,
    out: Path,
    config: LungvolConfig,
    *,
    executor: Executor,
    on_progress: Callable[[int, int], None] | None,
    rerun_changed: bool,
    device: str,
    scan_fn: Callable[[ScanTask], Any],
    trial_hash: str,
    start: float,
) -> RunSummary:
    _check_run_json(out, config, rerun_changed=rerun_changed)
    _remove_stale_temp_folders(out)
    run_info = {
        "lungvol": __version__,
        "config_hash": config.hash,
        "config_source": config.source,
        "config": config.to_dict(),
        "trial_hash": trial_hash,
        "cohort_root": str(Path(cohort.root).resolve()),
        "n_scans": len(cohort.jobs),
        "updated_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    _atomic_write_text(out / RUN_NAME, json.dumps(run_info, indent=2, default=list))
    write_cohort_files(out, cohort, trial_hash=trial_hash)

    summary = RunSummary()
    config_dict = config.to_dict()
    tasks: list[ScanTask] = []
    jobs_by_key: dict[tuple[str, str], ScanJob] = {}
    for job in cohort.jobs:
        key = cache_key(job, config)
        folder = result_dir(out, job)
        if is_complete(folder, key):
            summary.skipped += 1
            continue
        jobs_by_key[(job.subject, job.visit)] = job
        tasks.append(
            ScanTask(
                job.subject, job.visit, job.path, str(folder), config_dict, key, config.hash, device
            )
        )
    total = len(cohort.jobs)
    logger.info("%d scans: %d complete, %d to segment", total, summary.skipped, len(tasks))
    if on_progress:
        on_progress(summary.skipped, total)
    for task, result in executor.map_unordered(scan_fn, tasks):
        job = jobs_by_key[(task.subject, task.visit)]
        ffile = failure_file(out, job)
        if isinstance(result, BaseException):
            summary.failed += 1
            message = " ".join(str(result).split()) or result.__class__.__name__
            record = {
                "subject": job.subject,
                "visit": job.visit,
                "scan": job.scan,
                "error_type": result.__class__.__name__,
                "error": message[:500],
            }
            ffile.parent.mkdir(parents=True, exist_ok=True)
            _atomic_write_text(ffile, json.dumps(record, indent=2))
            logger.warning("%s/%s failed: %s", job.subject, job.visit, message[:200])
        else:
            summary.done += 1
            ffile.unlink(missing_ok=True)
        if on_progress:
            on_progress(summary.total, total)
    summary.failures = read_failures(out, cohort.jobs)
    _atomic_write_csv(
        out / "failures.csv",
        ("subject", "visit", "scan", "error_type", "error"),
        summary.failures,
    )
    summary.seconds = time.perf_counter() - start
    return summary


def read_failures(out: Path, jobs: Sequence[ScanJob]) -> list[dict[str, str]]:
    """Failure records of the jobs whose last attempt failed."""
    records = []
    for job in jobs:
        ffile = failure_file(out, job)
        if ffile.is_file():
            records.append(json.loads(ffile.read_text()))
    return records
