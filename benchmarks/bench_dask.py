"""Scans per minute: local processes vs a loopback Dask cluster with the same number of workers.

Simulates a small phantom cohort once (lungvol.cohort.simulate), then segments it with
``run_cohort`` twice per repeat, each time into a fresh output folder:

- ``local``: ``LocalProcessExecutor(workers)`` (what ``lungvol cohort run --workers N`` uses),
- ``dask``: ``DaskExecutor`` on a ``LocalCluster(n_workers=N, threads_per_worker=1,
  processes=True, host="127.0.0.1")`` (what ``--scheduler tcp://...`` uses), the cluster
  started before the clock (its start-up time is reported separately).

Both clocks include the workers' first import of lungvol. Results go to
benchmarks/results/bench_dask.json and a Markdown table on stdout.

    .venv/bin/python benchmarks/bench_dask.py --subjects-per-arm 2 --workers 2 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from lungvol import __version__
from lungvol.cohort.dask_executor import DaskExecutor
from lungvol.cohort.discover import discover_cohort
from lungvol.cohort.executors import LocalProcessExecutor
from lungvol.cohort.run import run_cohort
from lungvol.cohort.simulate import simulate_trial
from lungvol.cohort.trial import load_trial
from lungvol.config import load_config

RESULTS = Path(__file__).resolve().parent / "results"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _timed_run(cohort, out: Path, config, executor) -> tuple[float, int, int]:
    start = time.perf_counter()
    summary = run_cohort(cohort, out, config, executor=executor)
    seconds = time.perf_counter() - start
    return seconds, summary.done, summary.failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects-per-arm", type=int, default=2)
    parser.add_argument("--size", default="tiny", help="phantom size (simulate_trial sizes)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the cohort here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("distributed").setLevel(logging.WARNING)

    import distributed

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_dask_"))
    workdir.mkdir(parents=True, exist_ok=True)
    trial = load_trial(None)
    cohort_dir = workdir / "cohort"
    if not (cohort_dir / "manifest.csv").is_file():
        t0 = time.perf_counter()
        simulate_trial(
            cohort_dir,
            trial,
            subjects_per_arm=(args.subjects_per_arm, args.subjects_per_arm),
            size=args.size,
            missing_fraction=0.0,
            seed=args.seed,
            workers=args.workers,
        )
        print(f"simulated cohort in {time.perf_counter() - t0:.1f} s: {cohort_dir}")
    cohort = discover_cohort(cohort_dir, trial)
    config = load_config()
    n_scans = len(cohort.jobs)

    t0 = time.perf_counter()
    cluster = distributed.LocalCluster(
        n_workers=args.workers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=":0",
        silence_logs=logging.ERROR,
    )
    cluster_start_s = time.perf_counter() - t0
    runs: dict[str, list[float]] = {"local": [], "dask": []}
    try:
        for repeat in range(args.repeats):
            for kind in ("local", "dask"):
                out = workdir / f"out-{kind}-{repeat}"
                shutil.rmtree(out, ignore_errors=True)
                executor = (
                    LocalProcessExecutor(args.workers)
                    if kind == "local"
                    else DaskExecutor(cluster.scheduler_address)
                )
                try:
                    seconds, done, failed = _timed_run(cohort, out, config, executor)
                finally:
                    executor.close()
                if done != n_scans or failed:
                    raise SystemExit(f"{kind}: {done} done, {failed} failed of {n_scans}")
                runs[kind].append(seconds)
                print(f"{kind:5s} repeat {repeat}: {n_scans} scans in {seconds:.1f} s")
    finally:
        cluster.close()

    result = {
        "lungvol": __version__,
        "machine": {
            "cpu": _cpu_model(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
        },
        "n_scans": n_scans,
        "phantom_size": args.size,
        "workers": args.workers,
        "repeats": args.repeats,
        "dask_cluster_start_s": round(cluster_start_s, 2),
        "seconds": {k: [round(v, 2) for v in vs] for k, vs in runs.items()},
        "scans_per_minute_median": {
            k: round(60.0 * n_scans / statistics.median(vs), 2) for k, vs in runs.items()
        },
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_dask.json").write_text(json.dumps(result, indent=2))
    print()
    print(
        f"{n_scans} '{args.size}' phantom scans, {args.workers} workers, {_cpu_model()}, "
        f"{os.cpu_count()} cores; median of {args.repeats}"
    )
    print("| executor | seconds (median) | scans/min |")
    print("|---|---|---|")
    for kind, vs in runs.items():
        print(
            f"| {kind} | {statistics.median(vs):.1f} | "
            f"{result['scans_per_minute_median'][kind]:.1f} |"
        )
    print(f"(Dask LocalCluster start-up, not in the clock: {cluster_start_s:.1f} s)")
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
