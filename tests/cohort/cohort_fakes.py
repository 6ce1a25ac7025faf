"""Fakes for cohort tests: a cohort folder builder and a stand-in for segment_scan.

Each fake scan folder holds ``fake.json`` with the proportions the fake segmenter reports,
or ``{"fail": "message"}`` to raise InputError, and optionally ``{"sleep_s": t}`` and
``{"qc_flags": [...]}`` (reported in metrics.json).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from PIL import Image

from lungvol.cohort.run import ScanTask, process_scan
from lungvol.errors import InputError


def make_cohort(
    root: Path,
    scans: list[dict[str, Any]],
    *,
    manifest_rows: list[dict[str, Any]] | None = None,
    columns: tuple[str, ...] = ("subject", "arm", "visit"),
) -> Path:
    """Write fake scans (subject, visit/scan, lesion, solid, fail...) and a manifest."""
    root.mkdir(parents=True, exist_ok=True)
    for s in scans:
        folder = root / s["subject"] / s.get("scan", s.get("visit"))
        folder.mkdir(parents=True, exist_ok=True)
        keys = ("lesion", "solid", "fail", "sleep_s", "qc_flags", "phase_check", "lung_ml",
                "subpleural", "kernel")
        payload = {k: s[k] for k in keys if k in s}
        (folder / "fake.json").write_text(json.dumps(payload))
    rows = manifest_rows if manifest_rows is not None else scans
    with (root / "manifest.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return root


def fake_segment(path: Path, out_dir: Path, *, config, device: str, overwrite: bool) -> None:
    """Write metrics.json and qc.png atomically, like segment_scan; log the call."""
    spec = json.loads((Path(path) / "fake.json").read_text())
    time.sleep(spec.get("sleep_s", 0.0))
    if "fail" in spec:
        raise InputError(spec["fail"])
    lesion, solid = float(spec["lesion"]), float(spec["solid"])
    metrics = {
        "lung_volume_ml": float(spec.get("lung_ml", 5000.0)),
        "lung_volume_right_ml": 2700.0,
        "lung_volume_left_ml": 2300.0,
        "lesion_volume_ml": 50.0 * lesion,
        "ggo_volume_ml": 50.0 * (lesion - solid),
        "solid_volume_ml": 50.0 * solid,
        "lesion_proportion_pct": lesion,
        "solid_proportion_pct": solid,
        "ggo_proportion_pct": lesion - solid,
        "normal_ct": lesion < config.quantification.normal_ct_max_lesion_pct,
        "lung_hu": {"mean": -800.0, "p50": -820.0},
        "qc_flags": list(spec.get("qc_flags", [])),
        "provenance": {
            "input": {"path": str(path), "convolution_kernel": spec.get("kernel", "B70f"),
                      "manufacturer": "SIEMENS", "slice_thickness_mm": 1.0},
            "geometry": {"spacing_mm_zyx": [1.0, 0.7, 0.7]},
            "segmentation": {"lungs": {"subpleural": spec.get("subpleural")}},
        },
        "status": "ok",
        "phase_check": spec.get("phase_check"),
    }
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "metrics.json").write_text(json.dumps(metrics))
    Image.new("RGB", (40, 20), (int(min(lesion, 100) * 2.5), 80, 80)).save(tmp / "qc.png")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    log = out_dir.parents[2] / "calls.log"
    with log.open("a") as fh:
        fh.write(f"{out_dir.parent.name}/{out_dir.name}\n")


def fake_scan(task: ScanTask):
    """process_scan with the fake segmenter (top-level: picklable for process pools)."""
    return process_scan(task, segment=fake_segment)


def calls(out: Path) -> list[str]:
    log = Path(out) / "calls.log"
    return log.read_text().split() if log.is_file() else []
