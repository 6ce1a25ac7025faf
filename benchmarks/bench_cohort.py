"""Cohort throughput: scans per minute of ``lungvol cohort run`` and its scaling with --workers.

Simulates a trial with ``lungvol simulate-trial`` (phantoms), then segments the whole cohort
once per worker count into a fresh output folder, and once more to time a resume where every
scan is already complete. Prints a table and writes JSON. It also measures the last run
against the simulated truth: per scan (least-squares line measured = slope x truth +
intercept, mean error, share within 1 pp, worst) and per endpoint and visit (arm medians of
relative change and the Hodges-Lehmann difference, measured against the truth analysis).

    .venv/bin/python benchmarks/bench_cohort.py --subjects-per-arm 65,35 --workers 1 2
    .venv/bin/python benchmarks/bench_cohort.py --subjects-per-arm 6,4 --size small --json out.json

The full 65 + 35 trial (7 visits, ~600 scans) takes about an hour per worker count on a
2-core machine; smaller cohorts give the same per-scan rates.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from lungvol import __version__
from lungvol.cohort.discover import discover_cohort
from lungvol.cohort.executors import LocalProcessExecutor
from lungvol.cohort.run import run_cohort
from lungvol.cohort.simulate import simulate_trial, truth_endpoint_rows
from lungvol.cohort.trial import load_trial
from lungvol.config import LungvolConfig


def _run(cohort, out: Path, workers: int) -> dict[str, float]:
    executor = LocalProcessExecutor(workers)
    start = time.perf_counter()
    try:
        summary = run_cohort(cohort, out, LungvolConfig(), executor=executor)
    finally:
        executor.close()
    seconds = time.perf_counter() - start
    return {
        "workers": workers,
        "done": summary.done,
        "skipped": summary.skipped,
        "failed": summary.failed,
        "seconds": round(seconds, 2),
        "scans_per_minute": round(60.0 * summary.done / seconds, 2) if summary.done else None,
    }


def _analyze(out: Path, trial) -> dict[str, float]:
    """Time ``cohort analyze`` on a finished output folder; size of the self-contained report."""
    from lungvol.reporting.cohort_report import analyze_cohort

    start = time.perf_counter()
    result = analyze_cohort(out, trial)
    seconds = time.perf_counter() - start
    report = result.files["report_html"]
    return {"seconds": round(seconds, 1), "report_mb": round(report.stat().st_size / 2**20, 2)}


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def _accuracy(cohort_root: Path, out: Path, trial) -> dict:
    """The run in ``out`` against the simulated truth in ``cohort_root``."""
    import numpy as np

    truth_rows = _read_csv(cohort_root / "truth.csv")
    truth = {(r["subject"], r["visit"]): r for r in truth_rows}
    scans = _read_csv(out / "scans.csv")
    failed = [(r["subject"], r["visit"]) for r in scans if r["status"] != "ok"]
    ok = [r for r in scans if r["status"] == "ok"]
    per_scan = {}
    for metric in ("lesion_proportion_pct", "solid_proportion_pct"):
        measured = np.array([float(r[metric]) for r in ok])
        true = np.array([float(truth[(r["subject"], r["visit"])][metric]) for r in ok])
        err = measured - true
        slope, intercept = np.polyfit(true, measured, 1)
        per_scan[metric] = {
            "n": int(err.size),
            "slope": round(float(slope), 3),
            "intercept_pp": round(float(intercept), 3),
            "mean_error_pp": round(float(err.mean()), 3),
            "within_1pp_share": round(float(np.mean(np.abs(err) <= 1.0)), 3),
            "worst_pp": round(float(err[np.argmax(np.abs(err))]), 2),
        }
    true_endpoints = {
        (r["endpoint"], r["visit"]): r
        for r in truth_endpoint_rows(truth_rows, trial, failed=failed)
        if r["kind"] == "relative_change"
    }
    endpoints = []
    for r in _read_csv(out / "analysis" / "endpoints.csv"):
        if r["kind"] != "relative_change":
            continue
        t = true_endpoints[(r["endpoint"], r["visit"])]
        row = {"endpoint": r["endpoint"], "visit": r["visit"]}
        for key in [f"{arm}_median" for arm in trial.arm_names] + ["hl_estimate"]:
            row[key] = round(float(r[key]), 1)
            row[f"{key}_truth"] = round(float(t[key]), 1)
        endpoints.append(row)
    return {"per_scan": per_scan, "endpoints": endpoints, "failed_scans": len(failed)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects-per-arm", default="65,35")
    parser.add_argument("--size", default="small", help="phantom grid: tiny|small|full|ZxYxX")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--missing-fraction", type=float, default=0.15)
    parser.add_argument("--workdir", type=Path, default=None, help="kept when given")
    parser.add_argument("--json", type=Path, default=None, help="write results here")
    args = parser.parse_args()

    counts = tuple(int(v) for v in args.subjects_per_arm.split(","))
    counts = counts * 2 if len(counts) == 1 else counts
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_cohort_"))
    trial = load_trial()
    try:
        start = time.perf_counter()
        sim = simulate_trial(
            work / "cohort",
            trial,
            subjects_per_arm=counts,
            seed=args.seed,
            size=args.size,
            missing_fraction=args.missing_fraction,
            workers=max(args.workers),
        )
        simulate_s = time.perf_counter() - start
        cohort = discover_cohort(sim.root, trial)
        results = [_run(cohort, work / f"out_w{w}", w) for w in args.workers]
        resume = _run(cohort, work / f"out_w{args.workers[-1]}", args.workers[-1])
        analysis = _analyze(work / f"out_w{args.workers[-1]}", trial)
        accuracy = _accuracy(sim.root, work / f"out_w{args.workers[-1]}", trial)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    base = results[0]["scans_per_minute"] or 0.0
    report = {
        "lungvol": __version__,
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, {platform.platform()}",
        "subjects_per_arm": counts,
        "size": args.size,
        "n_scans": sim.n_scans,
        "simulate_seconds": round(simulate_s, 1),
        "runs": results,
        "resume_all_complete_seconds": resume["seconds"],
        "analyze": analysis,
        "accuracy": accuracy,
    }
    print(f"{sim.n_scans} scans ({args.size} phantoms), simulated in {simulate_s:.0f} s")
    print(f"{'workers':>8} {'seconds':>9} {'scans/min':>10} {'speed-up':>9} {'failed':>7}")
    for r in results:
        speedup = (r["scans_per_minute"] or 0.0) / base if base else float("nan")
        print(
            f"{r['workers']:>8} {r['seconds']:>9.1f} {r['scans_per_minute'] or 0:>10.1f} "
            f"{speedup:>9.2f} {r['failed']:>7}"
        )
    print(f"resume, every scan complete: {resume['seconds']:.2f} s ({resume['skipped']} skipped)")
    print(f"cohort analyze: {analysis['seconds']:.1f} s, "
          f"report.html {analysis['report_mb']:.1f} MB")
    for metric, a in accuracy["per_scan"].items():
        print(
            f"{metric}: slope {a['slope']:.2f}, intercept {a['intercept_pp']:+.2f} pp, mean "
            f"error {a['mean_error_pp']:+.2f} pp, {100 * a['within_1pp_share']:.0f} % within "
            f"1 pp, worst {a['worst_pp']:+.2f} pp (n {a['n']})"
        )
    arms = trial.arm_names
    print(f"{'endpoint':<14}{'visit':<9}" + "".join(f"{a + ' (truth)':>20}" for a in arms)
          + f"{'HL (truth)':>20}")
    for r in accuracy["endpoints"]:
        cells = [f"{r[k]:+.1f} ({r[k + '_truth']:+.1f})" for k in
                 [f"{a}_median" for a in arms] + ["hl_estimate"]]
        print(f"{r['endpoint']:<14}{r['visit']:<9}" + "".join(f"{c:>20}" for c in cells))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
