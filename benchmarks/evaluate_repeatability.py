"""Repeatability: how much lungvol's numbers move when the same chest is scanned again.

A rescan of the same patient on the same day changes two things the segmentation sees: the
image noise, and where the anatomy sits against the block lattices of the lung and lesion
stages (the patient lies a little differently). Neither changes the lesion, so their spread
is the method's measurement noise, the floor under any change from baseline a trial can
call real.

Here a chest is a phantom (``make_phantom(seed=...)``: anatomy and lesions fixed by the
seed) and a rescan draws fresh noise (``noise_seed``) and moves the origin by a random whole
number of voxels per axis (0-3), which puts the anatomy at another block phase (the grids are
anchored to patient coordinates; docs/segmentation.md, "Grid phase"). The truth does not
change between rescans, so any spread is measurement noise.

Per chest and burden: mean and standard deviation over the rescans of the lesion and solid
proportions (%) and the lesion volume (mL). Pooled over chests, per burden: the
within-subject standard deviation wSD = sqrt(mean of the variances), the repeatability
coefficient RC = 2.77 x wSD (the difference between two scans of one subject that 95 % of
pairs stay under; QIBA's definition) and the within-subject coefficient of variation of the
lesion volume (wSD / mean). The bias against the truth is reported beside them.

The real chest's share of this (block phase only, no noise) is in
``benchmarks/evaluate_crop_stability.py`` ("re-phased" rows).

Usage::

    .venv/bin/python benchmarks/evaluate_repeatability.py            # about 2 minutes
    .venv/bin/python benchmarks/evaluate_repeatability.py --size fine --chests 2 --json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from evaluate_accuracy import FINE_GRID  # the same script folder (run as a script)

from lungvol import __version__
from lungvol.config import load_config
from lungvol.phantom import make_phantom
from lungvol.segmentation import segment_masks
from lungvol.types import LESION_SOLID

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
# (lesion %, solid %): mild, moderate and severe disease, solid a fifth of the lesion.
BURDENS = ((2.0, 0.4), (10.0, 2.0), (30.0, 6.0))
SIZES = {"small": {}, "fine": FINE_GRID}
MAX_SHIFT_VOXELS = 3
RC_FACTOR = 2.77  # 1.96 x sqrt(2)


def _scan(chest_seed: int, burden: tuple[float, float], rescan: int, size: str,
          rng: np.random.Generator, config) -> dict[str, Any]:
    ph = make_phantom(seed=chest_seed, noise_seed=10_000 + rescan, lesion_pct=burden[0],
                      solid_pct=burden[1], **SIZES[size])
    shift = rng.integers(0, MAX_SHIFT_VOXELS + 1, size=3)  # (z, y, x) voxels
    vol = ph.to_ct_volume()
    offset_lps = np.array([shift[2] * vol.spacing_mm[2], shift[1] * vol.spacing_mm[1],
                           shift[0] * vol.spacing_mm[0]])
    vol = replace(vol, origin_lps_mm=tuple(float(v) for v in np.add(vol.origin_lps_mm,
                                                                       offset_lps)))
    t0 = time.perf_counter()
    lungs, lesions = segment_masks(vol, config)
    seconds = time.perf_counter() - t0
    vml = vol.voxel_volume_ml
    lung_ml = np.count_nonzero(lungs.labels) * vml
    lesion_ml = np.count_nonzero(lesions.labels) * vml
    solid_ml = np.count_nonzero(lesions.labels == LESION_SOLID) * vml
    return {
        "chest_seed": chest_seed,
        "lesion_target_pct": burden[0],
        "rescan": rescan,
        "shift_voxels_zyx": [int(s) for s in shift],
        "lung_ml": round(lung_ml, 1),
        "lesion_ml": round(lesion_ml, 2),
        "lesion_pct": round(100.0 * lesion_ml / lung_ml, 3),
        "solid_pct": round(100.0 * solid_ml / lung_ml, 3),
        "truth_lesion_pct": round(float(ph.truth["lesion_proportion_pct"]), 3),
        "truth_solid_pct": round(float(ph.truth["solid_proportion_pct"]), 3),
        "seconds": round(seconds, 2),
    }


def summarize(scans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per burden: pooled within-subject SD, RC and wCV over the chests' rescans."""
    out = []
    for lesion_target in sorted({s["lesion_target_pct"] for s in scans}):
        rows = [s for s in scans if s["lesion_target_pct"] == lesion_target]
        chests = sorted({s["chest_seed"] for s in rows})
        row: dict[str, Any] = {"lesion_target_pct": lesion_target, "n_chests": len(chests),
                               "rescans_per_chest": len(rows) // len(chests)}
        for key in ("lesion_pct", "solid_pct", "lesion_ml"):
            per_chest = [np.array([s[key] for s in rows if s["chest_seed"] == c]) for c in chests]
            wsd = float(np.sqrt(np.mean([np.var(v, ddof=1) for v in per_chest])))
            row[f"{key}_wsd"] = round(wsd, 3)
            row[f"{key}_rc"] = round(RC_FACTOR * wsd, 3)
            if key == "lesion_ml":
                mean = float(np.mean([v.mean() for v in per_chest]))
                row["lesion_ml_wcv_pct"] = round(100.0 * wsd / mean, 2)
        for key in ("lesion_pct", "solid_pct"):
            bias = np.mean([s[key] - s[f"truth_{key}"] for s in rows])
            row[f"{key}_bias"] = round(float(bias), 3)
        row["lesion_pct_mean"] = round(float(np.mean([s["lesion_pct"] for s in rows])), 2)
        out.append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--chests", type=int, default=4, help="phantom chests (seeds 0..N-1)")
    parser.add_argument("--rescans", type=int, default=3, help="scans per chest and burden")
    parser.add_argument("--json", action="store_true", help="also write benchmarks/results/")
    args = parser.parse_args()
    config = load_config(None)
    rng = np.random.default_rng(2026)
    started = datetime.now(UTC)
    scans = []
    for chest in range(args.chests):
        for burden in BURDENS:
            for rescan in range(args.rescans):
                s = _scan(chest, burden, rescan, args.size, rng, config)
                scans.append(s)
                print(f"chest {chest} lesion {burden[0]:g} % rescan {rescan} shift "
                      f"{s['shift_voxels_zyx']}: lesion {s['lesion_pct']:.3f} % (truth "
                      f"{s['truth_lesion_pct']:.3f}), solid {s['solid_pct']:.3f} % (truth "
                      f"{s['truth_solid_pct']:.3f}), {s['seconds']:.1f} s", flush=True)
    summary = summarize(scans)
    print(f"\n{args.size} phantoms, {args.chests} chests x {args.rescans} rescans per burden "
          "(new noise, block phase moved)")
    print(f"{'burden':>7} {'mean':>7} {'bias':>7} {'wSD':>7} {'RC':>7} {'wCV vol':>8} "
          f"{'solid bias':>11} {'solid wSD':>10} {'solid RC':>9}")
    for r in summary:
        print(f"{r['lesion_target_pct']:>6g}% {r['lesion_pct_mean']:>7.2f} "
              f"{r['lesion_pct_bias']:>+7.2f} {r['lesion_pct_wsd']:>7.3f} "
              f"{r['lesion_pct_rc']:>7.3f} {r['lesion_ml_wcv_pct']:>7.2f}% "
              f"{r['solid_pct_bias']:>+11.3f} {r['solid_pct_wsd']:>10.3f} "
              f"{r['solid_pct_rc']:>9.3f}")
    print("(proportions in %, bias / wSD / RC in percentage points)")
    if args.json:
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"repeatability-{args.size}-{started:%Y%m%dT%H%M%SZ}.json"
        path.write_text(json.dumps({
            "started_utc": started.isoformat(), "lungvol": __version__,
            "config_hash": config.hash, "machine": platform.platform(),
            "size": args.size, "summary": summary, "scans": scans,
        }, indent=2))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
