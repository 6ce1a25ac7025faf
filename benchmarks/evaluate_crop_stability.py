"""How much do lungvol's volumes move when the same scan is cropped one voxel differently?

A crop changes nothing in the patient, so it should change nothing in the numbers. The lung
and lesion stages do their heavy work on coarse block grids (2 mm and 1.5 mm). Until session
12 these were anchored to the array and to the lungs' bounding box, so a one-voxel crop
moved every block boundary by half a block and the volumes with it; they are now anchored
to patient coordinates (``lungvol.segmentation.grid.patient_index``). This script measures
the result: the real chest CT of ../shared (normal, and with 15 % lesion inserted as in
``evaluate_accuracy.py``), cropped by 0-2 voxels per axis with the origin moved as a real
crop moves it, segmented in full, and the ranges of lung, lesion and solid volume over the
crops (which should be nil); then the same crops with the origin held ("re-phased": the
anatomy sits differently against the blocks, as from one visit to the next), whose ranges
are the measurement noise of the block grids. The z crop (1, 0, 0) also removes the
scan's first slice, which holds 0.5 mL of lung, so it is not a pure crop. It also times
each run and reports the process's peak memory.

Usage::

    .venv/bin/python benchmarks/evaluate_crop_stability.py          # about 3 minutes
    .venv/bin/python benchmarks/evaluate_crop_stability.py --json   # also write results/

Measured numbers are in docs/segmentation.md ("Grid phase").
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from lungvol.config import LungvolConfig
from lungvol.io import read_ct
from lungvol.phantom import insert_lesions
from lungvol.segmentation import segment_lesions, segment_lungs
from lungvol.types import CTVolume, SourceInfo

REPO = Path(__file__).resolve().parents[1]
REAL_CT = REPO.parent / "shared" / "data" / "real-ct" / "chest-ct-full-dicom" / "dicom"
RESULTS = REPO / "benchmarks" / "results"
# (z, y, x) voxels cut from the start of each axis; (0, 2, 2) keeps every block boundary.
CROPS = ((0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1), (1, 0, 0), (0, 2, 2))
# As in evaluate_accuracy.py: 15 % lesion, 3 % solid, seed 12, insertion parenchyma limit.
INSERT = {"lesion_pct": 15.0, "solid_pct": 3.0, "seed": 12, "parenchyma_max_hu": -650.0}


def cropped(
    chest: CTVolume, hu: np.ndarray, crop: tuple[int, int, int], *, move_origin: bool = True
) -> CTVolume:
    """``hu`` (on ``chest``'s grid) without its first ``crop`` (z, y, x) voxels, with the
    origin moved as a real crop moves it (the voxels keep their patient coordinates), or
    with ``move_origin=False`` left where it was: the anatomy then sits differently against
    the block lattice, as it does from one visit to the next (the phase noise)."""
    shift_mm = np.asarray(chest.direction, float) @ np.array(
        [crop[2] * chest.spacing_mm[2], crop[1] * chest.spacing_mm[1],
         crop[0] * chest.spacing_mm[0]]
    ) * float(move_origin)
    return CTVolume(
        hu=np.ascontiguousarray(hu[tuple(slice(c, None) for c in crop)]),
        spacing_mm=chest.spacing_mm,
        origin_lps_mm=tuple(float(v) for v in np.asarray(chest.origin_lps_mm) + shift_mm),  # type: ignore[arg-type]
        direction=chest.direction, source=SourceInfo(path="crop", kind="synthetic", sha256=""),
    )


def measure(
    chest: CTVolume, hu: np.ndarray, config: LungvolConfig, *, move_origin: bool = True
) -> list[dict[str, Any]]:
    """Lung, lesion and solid volume (mL) and wall time of each crop in ``CROPS``."""
    rows = []
    voxel_ml = chest.voxel_volume_ml
    for crop in CROPS:
        volume = cropped(chest, hu, crop, move_origin=move_origin)
        t0 = time.perf_counter()
        lungs = segment_lungs(volume, config.lungs)
        lesions = segment_lesions(volume, lungs, config.lesions).labels
        rows.append({
            "crop_zyx": list(crop),
            "lung_ml": round(np.count_nonzero(lungs.labels) * voxel_ml, 1),
            "lesion_ml": round(np.count_nonzero(lesions) * voxel_ml, 1),
            "solid_ml": round(np.count_nonzero(lesions == 2) * voxel_ml, 1),
            "seconds": round(time.perf_counter() - t0, 2),
        })
    return rows


def summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Range (max - min, mL) and range relative to the mean (%) of each volume."""
    out: dict[str, float] = {}
    for key in ("lung_ml", "lesion_ml", "solid_ml"):
        values = np.array([r[key] for r in rows])
        out[f"{key}_range"] = round(float(np.ptp(values)), 1)
        out[f"{key}_range_pct"] = round(float(100 * np.ptp(values) / max(values.mean(), 1e-9)), 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="write benchmarks/results/")
    args = parser.parse_args()
    if not REAL_CT.is_dir():
        raise SystemExit(f"{REAL_CT} not found: this evaluation needs ../shared beside the repo")
    config = LungvolConfig()
    chest = read_ct(REAL_CT)
    lungs = segment_lungs(chest, config.lungs)
    inserted, _, _ = insert_lesions(
        chest.hu, lungs.labels, spacing_mm=chest.spacing_mm, **INSERT  # type: ignore[arg-type]
    )
    results: dict[str, Any] = {
        "measured_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": platform.platform(),
        "cases": {},
    }
    cases = [
        (f"{name}{suffix}", hu, move)
        for move, suffix in ((True, ""), (False, ", re-phased"))
        for name, hu in (("real chest, normal", chest.hu), ("real chest + inserted 15 %", inserted))
    ]
    for name, hu, move in cases:
        rows = measure(chest, hu, config, move_origin=move)
        results["cases"][name] = {"crops": rows, **summary(rows)}
        for r in rows:
            print(f"{name:40s} crop {tuple(r['crop_zyx'])}: lung {r['lung_ml']:7.1f}  "
                  f"lesion {r['lesion_ml']:6.1f}  solid {r['solid_ml']:5.1f} mL  "
                  f"{r['seconds']:.1f} s", flush=True)
        s = results["cases"][name]
        print(f"{name:40s} range over crops: lung {s['lung_ml_range']} mL "
              f"({s['lung_ml_range_pct']} %), lesion {s['lesion_ml_range']} mL "
              f"({s['lesion_ml_range_pct']} %), solid {s['solid_ml_range']} mL "
              f"({s['solid_ml_range_pct']} %)", flush=True)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    results["peak_memory_gb"] = round(peak_gb, 2)
    print(f"peak memory {peak_gb:.2f} GB")
    if args.json:
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"crop-stability-{results['measured_utc'].replace(':', '')}.json"
        path.write_text(json.dumps(results, indent=2))
        print(f"results: {path}")


if __name__ == "__main__":
    main()
