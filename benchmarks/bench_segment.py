"""Time ``segment_scan`` end to end (input files -> output folder) and measure peak memory.

Cases
-----
real       the 141-slice real chest CT (../shared/data/real-ct/chest-ct-full-dicom/dicom)
phantom    a 400 x 512 x 512 phantom written as DICOM, generated once and cached under
           benchmarks/results/ (gitignored)
noisy      the same phantom with image noise of SD 80 HU instead of 20 (a sharp-kernel or
           low-dose scan): the lesion stage's noise adaptation smooths it first
thin       the same field of view in 600 slices of 0.53 mm (a thin-slice HRCT series); not
           part of ``all`` (the target is for 400 slices)

Each case runs in a fresh subprocess, so ``ru_maxrss`` (peak resident memory of that process)
belongs to that case alone. Usage::

    .venv/bin/python benchmarks/bench_segment.py                 # all three cases, 1 run each
    .venv/bin/python benchmarks/bench_segment.py --case phantom --repeat 3
    .venv/bin/python benchmarks/bench_segment.py --case real --profile   # cProfile top 30

Target on the 2-core reference machine: <= 15 s and <= 4 GB for the 512x512x400 phantom.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
REAL_CT = REPO.parent / "shared" / "data" / "real-ct" / "chest-ct-full-dicom" / "dicom"
PHANTOM_SHAPE = (400, 512, 512)  # (z, y, x)
PHANTOM_SPACING_MM = (0.8, 0.7, 0.7)  # 320 mm x 358 mm x 358 mm
PHANTOM_SEED = 7
PHANTOM_DIR = RESULTS / "phantom_400x512x512"
NOISY_DIR = RESULTS / "phantom_400x512x512_noise80"
NOISY_HU = 80.0
THIN_SHAPE = (600, 512, 512)
THIN_DIR = RESULTS / "phantom_600x512x512"
TARGET_S = 15.0
TARGET_GB = 4.0


def _peak_rss_mb() -> float:
    # Linux reports ru_maxrss in KiB (macOS in bytes).
    scale = 1.0 / 1024 if sys.platform != "darwin" else 1.0 / (1024 * 1024)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _phantom_dir(case: str) -> Path:
    return {"phantom": PHANTOM_DIR, "noisy": NOISY_DIR, "thin": THIN_DIR}[case]


def _generate_phantom(case: str = "phantom") -> Path:
    """Write the case's phantom as DICOM once; reuse it while its truth.json exists."""
    folder = _phantom_dir(case)
    dicom = folder / "dicom"
    if (folder / "truth.json").is_file() and dicom.is_dir():
        return dicom
    from lungvol.phantom import make_phantom, write_phantom

    t = time.perf_counter()
    noise = {"noise_hu": NOISY_HU} if case == "noisy" else {}
    shape, spacing = PHANTOM_SHAPE, PHANTOM_SPACING_MM
    if case == "thin":  # the same field of view in thinner slices
        shape = THIN_SHAPE
        spacing = (PHANTOM_SHAPE[0] * PHANTOM_SPACING_MM[0] / THIN_SHAPE[0], *spacing[1:])
    phantom = make_phantom(shape=shape, spacing_mm=spacing, seed=PHANTOM_SEED, **noise)
    write_phantom(phantom, folder, fmt="dicom", overwrite=True)  # atomic itself
    print(f"generated {folder} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    return dicom


def _case_input(case: str) -> Path:
    if case == "real":
        if not REAL_CT.is_dir():
            raise SystemExit(f"real CT not found at {REAL_CT}")
        return REAL_CT
    return _phantom_dir(case) / "dicom"


def _worker(case: str, profile: bool) -> None:
    """Run one case in this (fresh) process and print one JSON line."""
    from lungvol.config import load_config
    from lungvol.pipeline import segment_scan

    config = load_config()
    src = _case_input(case)
    out_root = Path(tempfile.mkdtemp(prefix="lungvol-bench-"))
    stage_cpu_s: dict[str, float] = {}
    try:
        t = time.perf_counter()
        if profile:
            import cProfile
            import pstats

            prof = cProfile.Profile()
            metrics = prof.runcall(segment_scan, src, out_root / "out", config=config)
            stats = pstats.Stats(prof, stream=sys.stderr)
            stats.sort_stats("cumulative").print_stats(30)
        else:
            metrics = segment_scan(src, out_root / "out", config=config)
        wall = time.perf_counter() - t
        stage_cpu_s = json.loads((out_root / "out" / "run.json").read_text())["cpu_s"]
    finally:
        shutil.rmtree(out_root, ignore_errors=True)
    print(
        json.dumps(
            {
                "case": case,
                "shape_zyx": metrics.provenance["geometry"]["shape_zyx"],
                "wall_s": round(wall, 3),
                "stages_s": metrics.provenance["timings_s"],
                "stages_cpu_s": stage_cpu_s,
                # Wall seconds of the lung and lesion stages' own steps (their timings_s).
                "lung_steps_s": metrics.provenance["segmentation"]["lungs"].get("timings_s"),
                "lesion_steps_s": metrics.provenance["segmentation"]["lesions"].get("timings_s"),
                "peak_rss_mb": round(_peak_rss_mb(), 1),
                # CPU seconds (user + system) of this process: unlike wall time, barely
                # affected by other load; wall ~ cpu_s on an idle machine (numpy is ~serial).
                "cpu_s": round(_cpu_s(), 2),
                # Other processes on the machine inflate wall time; record how busy it was.
                "load_avg_1min_after": round(os.getloadavg()[0], 2),
                "lung_volume_ml": round(metrics.lung_volume_ml, 1),
                "lesion_proportion_pct": round(metrics.lesion_proportion_pct, 3),
                "qc_flags": [f.split(":", 1)[0] for f in metrics.qc_flags],
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--case", choices=("real", "phantom", "noisy", "thin", "all"), default="all"
    )
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--profile", action="store_true", help="cProfile the run (stderr)")
    parser.add_argument(
        "--worker", choices=("real", "phantom", "noisy", "thin"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker, args.profile)
        return

    RESULTS.mkdir(parents=True, exist_ok=True)
    cases = ("real", "phantom", "noisy") if args.case == "all" else (args.case,)
    for case in ("phantom", "noisy", "thin"):
        if case in cases:
            subprocess.run(
                [sys.executable, "-c", f"import bench_segment as b; b._generate_phantom({case!r})"],
                cwd=Path(__file__).parent,
                check=True,
            )
    rows = []
    for case in cases:
        for _ in range(args.repeat):
            cmd = [sys.executable, __file__, "--worker", case]
            if args.profile:
                cmd.append("--profile")
            proc = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append(row)
            cpu = row["stages_cpu_s"]
            stages = "  ".join(
                f"{k} {v:.2f}" + (f"/{cpu[k]:.2f}" if k in cpu else "")
                for k, v in row["stages_s"].items()
            )
            print(
                f"{case:8s} {'x'.join(map(str, row['shape_zyx'])):>12s}  "
                f"wall {row['wall_s']:6.2f} s  cpu {row['cpu_s']:6.2f} s  "
                f"peak {row['peak_rss_mb'] / 1024:5.2f} GB  "
                f"load {row['load_avg_1min_after']:4.1f}  | {stages}"
            )
    machine = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }
    out = RESULTS / "bench_segment.json"
    out.write_text(json.dumps({"machine": machine, "runs": rows}, indent=2) + "\n")
    for row in rows:
        if row["case"] in ("phantom", "noisy"):
            ok = row["wall_s"] <= TARGET_S and row["peak_rss_mb"] / 1024 <= TARGET_GB
            print(
                f"{row['case']} target (<= {TARGET_S:g} s, <= {TARGET_GB:g} GB): "
                f"{'met' if ok else 'NOT met'}"
            )
    print("stages: wall/cpu seconds")
    print(f"results: {out}")


if __name__ == "__main__":
    main()
