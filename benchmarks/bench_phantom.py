"""Time ``make_phantom`` (and optionally writing it as DICOM) and measure peak memory.

Each size runs in a fresh subprocess, so ``ru_maxrss`` (peak resident memory of that process)
belongs to that case alone. Wall time depends on what else runs on the machine; CPU time
(user + system of the process) is the steadier number. Usage::

    .venv/bin/python benchmarks/bench_phantom.py                      # small and full
    .venv/bin/python benchmarks/bench_phantom.py --size full --write  # also write DICOM

Targets: small in ~2-4 s; full (400 x 512 x 512) within ~4 GB and, ideally, < 60 s.
Results are printed as a table and written to benchmarks/results/bench_phantom.json
(gitignored).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
TARGET_FULL_S = 60.0
TARGET_FULL_GB = 4.0


def _one(size: str, write: bool, lesion_pct: float, solid_pct: float) -> dict:
    """Run in the child process: generate (and write) one phantom, return measurements."""
    from lungvol.phantom import make_phantom, resolve_size, write_phantom

    shape, spacing_mm = resolve_size(size)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    ph = make_phantom(
        shape=shape, spacing_mm=spacing_mm, seed=1, lesion_pct=lesion_pct, solid_pct=solid_pct
    )
    result = {
        "size": size,
        "shape": list(shape),
        "generate_wall_s": round(time.perf_counter() - wall0, 2),
        "generate_cpu_s": round(time.process_time() - cpu0, 2),
        "lung_volume_ml": round(ph.truth["lung_volume_ml"], 1),
        "lesion_pct": round(ph.truth["lesion_proportion_pct"], 3),
        "solid_pct": round(ph.truth["solid_proportion_pct"], 3),
        "target_lesion_pct": lesion_pct,
        "target_solid_pct": solid_pct,
    }
    if write:
        with tempfile.TemporaryDirectory() as tmp:
            wall0 = time.perf_counter()
            write_phantom(ph, Path(tmp) / "ph", fmt="dicom")
            result["write_dicom_wall_s"] = round(time.perf_counter() - wall0, 2)
    result["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", action="append", help="small, full or ZxYxX (repeatable)")
    parser.add_argument("--write", action="store_true", help="also time writing DICOM")
    parser.add_argument("--lesion-pct", type=float, default=20.0)
    parser.add_argument("--solid-pct", type=float, default=4.0)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_one(args.child, args.write, args.lesion_pct, args.solid_pct)))
        return
    rows = []
    for size in args.size or ["small", "full"]:
        cmd = [sys.executable, __file__, "--child", size,
               "--lesion-pct", str(args.lesion_pct), "--solid-pct", str(args.solid_pct)]
        if args.write:
            cmd.append("--write")
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    machine = {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    for r in rows:
        written = r.get("write_dicom_wall_s")
        print(
            f"{r['size']:>6} {'x'.join(map(str, r['shape'])):>12}  "
            f"cpu {r['generate_cpu_s']:6.1f} s  wall {r['generate_wall_s']:6.1f} s  "
            f"peak {r['peak_rss_gb']:4.2f} GB  lesions {r['lesion_pct']:.3f} % "
            f"(target {r['target_lesion_pct']:g})  solid {r['solid_pct']:.3f} % "
            f"(target {r['target_solid_pct']:g})"
            + (f"  write DICOM {written:.1f} s" if written is not None else "")
        )
        if r["size"] == "full":
            ok = r["generate_cpu_s"] <= TARGET_FULL_S and r["peak_rss_gb"] <= TARGET_FULL_GB
            print(f"  full target (<= {TARGET_FULL_S:g} s CPU, <= {TARGET_FULL_GB:g} GB): "
                  f"{'met' if ok else 'MISSED'}")
    print(f"machine: {machine}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench_phantom.json").write_text(
        json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
