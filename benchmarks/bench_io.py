"""Time ``lungvol.io.read_ct`` and measure its peak memory.

Cases
-----
real       the 141-slice real chest CT (../shared/data/real-ct/chest-ct-full-dicom/dicom)
large      a 400 x 512 x 512 DICOM series (uncompressed), written once with write_dicom_series
           under benchmarks/results/io_400x512x512 (gitignored)
jpeg2000   the same 400-slice volume as JPEG 2000 lossless (decoding-bound)

Each run is a fresh subprocess, so ``ru_maxrss`` is that read's peak resident memory (it
includes the interpreter and libraries, about 150 MB). Usage::

    .venv/bin/python benchmarks/bench_io.py                    # all cases, 3 runs each
    .venv/bin/python benchmarks/bench_io.py --case real --repeat 5

Targets: real ~1-2 s, large a few seconds, peak memory for 512x512x400 well under 1 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
REAL_CT = REPO.parent / "shared" / "data" / "real-ct" / "chest-ct-full-dicom" / "dicom"
LARGE_SHAPE = (400, 512, 512)

_CHILD = r"""
import json, resource, sys, time
from lungvol.io import read_ct
t0, c0 = time.perf_counter(), time.process_time()
vol = read_ct(sys.argv[1])
elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
print(json.dumps({"seconds": elapsed, "cpu_s": cpu, "peak_rss_mb": resource.getrusage(
    resource.RUSAGE_SELF).ru_maxrss / 1024, "shape": list(vol.shape), "dtype": str(vol.hu.dtype)}))
"""


def _large_series(syntax: str) -> Path:
    out = RESULTS / f"io_{LARGE_SHAPE[0]}x{LARGE_SHAPE[1]}x{LARGE_SHAPE[2]}_{syntax}"
    if out.is_dir() and len(list(out.glob("*.dcm"))) == LARGE_SHAPE[0]:
        return out
    import numpy as np

    from lungvol.io import write_dicom_series

    rng = np.random.default_rng(0)
    z, y, x = np.ogrid[: LARGE_SHAPE[0], : LARGE_SHAPE[1], : LARGE_SHAPE[2]]
    body = ((y - 256) / 230.0) ** 2 + ((x - 256) / 240.0) ** 2 <= 1
    lungs = (((y - 240) / 150.0) ** 2 + ((np.abs(x - 256) - 110) / 80.0) ** 2 <= 1) & (z > 20)
    hu = np.full(LARGE_SHAPE, -1000, np.int16)
    hu[np.broadcast_to(body, LARGE_SHAPE)] = 40
    hu[np.broadcast_to(lungs, LARGE_SHAPE)] = -850
    hu += rng.integers(-20, 21, LARGE_SHAPE, dtype=np.int16)
    write_dicom_series(hu, out, spacing_mm=(0.8, 0.7, 0.7), transfer_syntax=syntax)
    return out


def _series_in_subprocess(syntax: str) -> Path:
    """Generate in a child: Linux keeps ru_maxrss across fork/exec, so a parent that had the
    400-slice volume in memory would inflate every later child's peak-memory figure."""
    proc = subprocess.run(
        [sys.executable, __file__, "--generate", syntax], capture_output=True, text=True, check=True
    )
    return Path(proc.stdout.strip().splitlines()[-1])


def _run(path: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path)], capture_output=True, text=True, check=True
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=["real", "large", "jpeg2000", "all"], default="all")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--generate", help=argparse.SUPPRESS)  # internal: write one series
    args = parser.parse_args()
    if args.generate:
        print(_large_series(args.generate))
        return
    cases = ["real", "large", "jpeg2000"] if args.case == "all" else [args.case]
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU, {platform.system()}",
        "load_avg_1min_at_start": os.getloadavg()[0],
        "cases": {},
    }
    for case in cases:
        if case == "real":
            if not REAL_CT.is_dir():
                print(f"skipping real: {REAL_CT} not found", file=sys.stderr)
                continue
            path = REAL_CT
        else:
            path = _series_in_subprocess(
                "explicit_vr_little_endian" if case == "large" else "jpeg2000_lossless"
            )
        runs = [_run(path) for _ in range(args.repeat)]
        seconds = [r["seconds"] for r in runs]
        report["cases"][case] = {
            "shape": runs[0]["shape"],
            "dtype": runs[0]["dtype"],
            "median_s": round(statistics.median(seconds), 3),
            "min_s": round(min(seconds), 3),
            # Process CPU seconds: far less sensitive to other load on the machine.
            "median_cpu_s": round(statistics.median(r["cpu_s"] for r in runs), 3),
            "peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs), 1),
        }
        print(case, json.dumps(report["cases"][case]), file=sys.stderr)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench_io.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
