"""Accuracy of lungvol's lung and lesion segmentation against known truth.

Cases (each reported with its timings):

1. Phantoms (``lungvol.phantom.make_phantom``) at several seeds and lesion burdens, small
   preset (3 x 2.8 x 2.8 mm) and a finer grid (1.6 x 1.4 x 1.4 mm): lung Dice per side,
   total / solid lesion volume error (%), lesion-proportion error (percentage points), and
   the fraction of pleura-touching truth lesion inside the lung mask.
2. The real 141-slice chest CT (../shared/data/real-ct/chest-ct-full-dicom) as is: lesion
   proportion of a normal scan (expected < 1 %).
3. The same scan with lesions inserted by ``lungvol.phantom.insert_lesions`` (inside the
   lung mask that lungvol segmented on the original scan) at 5 / 15 / 30 / 50 % (1 with
   ``--quick``): total / solid
   lesion volume error (%) and proportion error (pp).
4. Tumour coverage: pyradiomics lung1/lung2 and the IBSI NSCLC crop; fraction of each
   tumour label inside the lung mask, labelled lesion (any) and labelled solid.
5. The abdomen scan with only the lung bases: segmented (volumes) or refused (message).
6. A second, independent insertion model (``lungvol.phantom.insert_blobs``): ellipsoidal
   blobs placed uniformly in the lung, parenchyma raised to -600 +/- 40 HU (vessels kept),
   solid cores at -20 +/- 40 HU, 1.5 mm soft edges; truth = the blob region (occupancy
   >= 0.5, vessels inside included). lungvol was tuned against ``insert_lesions``; this
   model says how much of its accuracy is specific to that insertion.
8. A third insertion model (``lungvol.phantom.insert_subpleural_band``, session 13): ground
   glass along the posterior costal pleura of the lower lungs (the typical COVID-19
   pattern), with and without a layer of consolidation against the pleura: a lesion with no
   border to normal lung on its pleural side.
9. The insertions of 3. with ``insert_lesions``' partial-volume model (``tissue_hu`` 40,
   session 18): a voxel denser than parenchyma is a mix of lung and tissue; its lung part
   takes the lesion and it is truth at half lung (vessel skirts, the pleura's voxels).
   3. and 9. bracket how a lesion at a vessel or the pleura is counted.
7. Noise: the real chest, as is and with 15 % lesion inserted, with noise added (white,
   like a sharp kernel's; in-plane correlated, like a soft kernel's) at the noise
   adaptation's settings, by the noise index with the bands smoothed as the background (the
   rule before 0.6.5: ``lesions.opening_bias_target_hu = 0``, ``noise_band_fraction = 1``)
   and with it disabled (both targets 0).
10. Thick slices (session 20): the real chest (2 mm slices) interpolated linearly to 1 mm and
   averaged into 3 / 4 / 5 / 6 mm slabs, as is and with 15 % / 30 % lesion inserted on the
   2 mm scan first; truth and reference lung are the slab means of the 2 mm masks at
   one half (ties broken by a seeded coin). Against the 2 mm result: what thick-slice
   partial volume costs (``thick_slices_lesion_bias`` flags it).
11. Softer kernels (session 20): the same chest (and 15 % inserted first) blurred in-plane
   by a Gaussian of 0.7 / 1.0 / 1.2 mm, as a smoother reconstruction kernel would: wider
   vessel skirts and lesion borders against the same HU bands; whether the scan is flagged
   ``soft_image_lesion_bias`` (session 24).
12. The phantom target over seeds (session 23): seeds 0..N-1 (``--phantom-seeds``, 12) of
   the small phantom at 5 / 15 / 30 % lesion and of the fine one at 10 % (a third as many):
   mean, SD and worst lesion volume error, and how many seeds meet the 5 % target. The
   fixed cases of 1. are single draws of a distribution that is wide at low burden.
13. Pixel sizes (session 25, with 7.; ``--skip-noise`` skips both): the noisy chest of 7.
   (white, SD 100 HU), as is and with 15 % inserted, resampled in-plane (linear) to 0.95 /
   1.02 / 1.05 / 1.46 / 1.95 mm pixels, read with the noise adaptation by the opening bias
   and by the noise index (the rule before 0.6.5). Over 1.0 mm the background grid's
   blocks are single pixels.
14. Insertion seeds (session 27): the insertions of 3. are one seed per burden. The real
   chest with ``insert_lesions`` at 5 / 15 / 30 % over ``--insert-seeds`` (8) seeds each,
   through ``lungvol.qualify.qualify_volume`` (what ``lungvol qualify`` runs on a site's
   scan): mean, SD and worst of each error and how many insertions meet each target (about
   5 minutes).

Prints a table and writes JSON to benchmarks/results/accuracy-<UTC time>.json.

Usage: .venv/bin/python benchmarks/evaluate_accuracy.py [--quick] [--shared PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from lungvol.config import LungvolConfig, load_config
from lungvol.errors import LungvolError
from lungvol.io import read_ct
from lungvol.phantom import (
    average_slabs,
    insert_blobs,
    insert_lesions,
    insert_subpleural_band,
    make_phantom,
    resolve_size,
)
from lungvol.qualify import PARTIAL_VOLUME_TISSUE_HU, qualify_volume
from lungvol.qualify import lesion_metrics as _lesion_metrics
from lungvol.quantification.qc_flags import base_taper_mm, solid_at_surface_ml
from lungvol.segmentation import recover_subpleural_layer, segment_lesions, segment_lungs
from lungvol.types import CTVolume, LungMask, SourceInfo

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SHARED = REPO.parent / "shared" / "data" / "real-ct"
CFG = LungvolConfig()
# The finer phantom grid (z, y, x): 1.6 x 1.4 x 1.4 mm, about clinical thin-slice voxels.
FINE_GRID = {"shape": (200, 256, 256), "spacing_mm": (1.6, 1.4, 1.4)}
# insert_lesions: voxels above this HU are vessels/walls, never ground-glass truth.
INSERT_PARENCHYMA_MAX_HU = -650.0


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2.0 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b)))


def _pct_err(measured: float, truth: float) -> float | None:
    return None if truth <= 0 else 100.0 * (measured - truth) / truth


def _segment(volume: CTVolume) -> tuple[LungMask, Any, dict[str, float]]:
    t0 = time.perf_counter()
    lungs = segment_lungs(volume, CFG.lungs)
    t1 = time.perf_counter()
    lesions = segment_lesions(volume, lungs, CFG.lesions)
    t2 = time.perf_counter()
    lungs, lesions = recover_subpleural_layer(volume, lungs, lesions, CFG)
    t3 = time.perf_counter()
    sub = lungs.info.get("subpleural", {})
    return lungs, lesions, {
        "lungs_s": round(t1 - t0, 2), "lesions_s": round(t2 - t1, 2),
        "subpleural_s": round(t3 - t2, 2), "subpleural_excess_mm": sub.get("excess_mm"),
        "subpleural_recovered_ml": sub.get("recovered_ml"),
        # Base to half the largest cross-section, per lung (QC flag lung_base_truncated
        # under quantification.min_base_taper_mm; session 18).
        "base_taper_mm": base_taper_mm(lungs.labels, volume.spacing_mm,
                                       config=CFG.quantification),
        # Posterior / anterior gap to the ribs, right and left (mm; flags at 20 mm).
        "rib_gaps_mm": [sub.get(f"{side}_gap_{lung}_mm") for side in ("posterior", "anterior")
                        for lung in ("right", "left")],
    }


def _recall(found: np.ndarray, truth: np.ndarray) -> float | None:
    n = np.count_nonzero(truth)
    return round(np.count_nonzero(found & truth) / n, 3) if n else None


def _round(v: float | None, nd: int = 1) -> float | None:
    return None if v is None else round(v, nd)


def _volume(hu: np.ndarray, spacing_mm: tuple[float, float, float], name: str) -> CTVolume:
    return CTVolume(
        hu=hu, spacing_mm=tuple(float(s) for s in spacing_mm), origin_lps_mm=(0.0, 0.0, 0.0),
        direction=np.eye(3), source=SourceInfo(path=name, kind="synthetic", sha256=""),
    )


def phantom_cases(quick: bool) -> list[dict[str, Any]]:
    cases = [(0, 5.0, 1.0, "small"), (1, 15.0, 3.0, "small"), (2, 35.0, 7.0, "small")]
    if not quick:
        cases += [(3, 0.0, 0.0, "small"), (4, 20.0, 4.0, "fine"), (5, 10.0, 2.0, "fine"),
                  (0, 5.0, 1.0, "full")]
    out = []
    for seed, les, sol, size in cases:
        kw: dict[str, Any] = {}
        if size == "fine":
            kw = FINE_GRID
        elif size == "full":  # HRCT-like voxels (0.8 x 0.7 x 0.7 mm), about 30 s
            shape, spacing = resolve_size("full")
            kw = {"shape": shape, "spacing_mm": spacing}
        ph = make_phantom(seed=seed, lesion_pct=les, solid_pct=sol, **kw)
        vol = _volume(ph.hu, ph.spacing_mm, f"phantom-{seed}")
        lungs, lesions, times = _segment(vol)
        row: dict[str, Any] = {
            "case": f"phantom {size} seed {seed} lesion {les:g}% solid {sol:g}%",
            "dice_right": round(_dice(lungs.labels == 1, ph.lungs == 1), 4),
            "dice_left": round(_dice(lungs.labels == 2, ph.lungs == 2), 4),
            **_lesion_metrics(lungs.labels, lesions.labels, ph.lungs, ph.lesions,
                              vol.voxel_volume_ml),
            **times,
        }
        out.append(row)
        print(_fmt(row), flush=True)
    return out


# The seed sweep (session 23): burdens (lesion %, solid %) on each grid; seeds 0..n-1.
SEED_SWEEP = (("small", ((5.0, 1.0), (15.0, 3.0), (30.0, 6.0))), ("fine", ((10.0, 2.0),)))
# A seed passes the phantom target when its lesion volume error is within this (%).
PHANTOM_TARGET_PCT = 5.0


def phantom_seed_cases(n_seeds: int) -> list[dict[str, Any]]:
    """The phantom target over the generator's distribution, not at a few chosen seeds:
    seeds 0..n_seeds-1 per burden on the small grid (a third as many, at least 2, on the
    fine grid, about 15 s each). One row per seed; a summary row per grid and burden (mean,
    SD and worst lesion error, seeds within ``PHANTOM_TARGET_PCT``, least lung Dice)."""
    rows: list[dict[str, Any]] = []
    for size, burdens in SEED_SWEEP:
        seeds = range(n_seeds if size == "small" else max(2, n_seeds // 3))
        kw: dict[str, Any] = FINE_GRID if size == "fine" else {}
        for les, sol in burdens:
            errs, pps, dice = [], [], []
            for seed in seeds:
                ph = make_phantom(seed=seed, lesion_pct=les, solid_pct=sol, **kw)
                vol = _volume(ph.hu, ph.spacing_mm, f"phantom-{seed}")
                lungs, lesions, _times = _segment(vol)
                m = _lesion_metrics(lungs.labels, lesions.labels, ph.lungs, ph.lesions,
                                    vol.voxel_volume_ml)
                d = min(_dice(lungs.labels == k, ph.lungs == k) for k in (1, 2))
                errs.append(m["lesion_err_pct"])
                pps.append(m["proportion_err_pp"])
                dice.append(d)
                rows.append({"case": f"phantom {size} seed {seed} lesion {les:g}% solid {sol:g}%",
                             "min_lung_dice": round(d, 4), **m})
            e = np.asarray(errs, dtype=float)
            summary = {
                "case": f"SEEDS phantom {size} lesion {les:g}% solid {sol:g}% ({len(e)} seeds)",
                "lesion_err_mean_pct": round(float(e.mean()), 1),
                "lesion_err_sd_pct": round(float(e.std(ddof=1)), 1) if len(e) > 1 else None,
                "lesion_err_worst_pct": round(float(e[np.argmax(np.abs(e))]), 1),
                "within_target": f"{int(np.sum(np.abs(e) <= PHANTOM_TARGET_PCT))}/{len(e)}",
                "proportion_err_mean_pp": round(float(np.mean(pps)), 2),
                "min_lung_dice": round(float(min(dice)), 4),
            }
            rows.append(summary)
            print(_fmt(summary), flush=True)
    return rows


INSERT_BURDENS = ((5.0, 1.0, 11), (15.0, 3.0, 12), (30.0, 6.0, 13), (50.0, 10.0, 14))
# The insertion seed sweep (session 27): lesion burdens (%), solid a fifth of each.
INSERT_SEED_BURDENS = (5.0, 15.0, 30.0)
# The partial-volume insertion model: tissue HU of the voxels mixed with lung (the one
# `lungvol qualify --models partial_volume` uses).
INSERT_TISSUE_HU = PARTIAL_VOLUME_TISSUE_HU


def _insertion_row(
    chest: CTVolume, lungs: LungMask, les: float, sol: float, seed: int,
    tissue_hu: float | None = None,
) -> dict[str, Any]:
    """``insert_lesions`` into the real chest (inside lungvol's mask of it), segmented again."""
    vml = chest.voxel_volume_ml
    hu_new, truth_les, _truth = insert_lesions(
        chest.hu, lungs.labels, spacing_mm=chest.spacing_mm, seed=seed,
        lesion_pct=les, solid_pct=sol, parenchyma_max_hu=INSERT_PARENCHYMA_MAX_HU,
        tissue_hu=tissue_hu,
    )
    vol = _volume(hu_new, chest.spacing_mm, "chest+inserted")
    l2, e2, t2 = _segment(vol)
    model = "" if tissue_hu is None else f", partial-volume model (tissue {tissue_hu:g} HU)"
    return {
        "case": f"real chest + inserted lesion {les:g}% solid {sol:g}%{model}",
        "dice_lungs_vs_original_mask": round(_dice(l2.labels > 0, lungs.labels > 0), 4),
        **_lesion_metrics(l2.labels, e2.labels, lungs.labels, truth_les, vml),
        # False positives that were vessels or walls before the insertion (HU above
        # insert_lesions' parenchyma limit): its ground-glass truth leaves them out, a
        # densitometric reading of the ground glass around them does not.
        "lesion_fp_prior_dense_ml": round(np.count_nonzero(
            (e2.labels > 0) & (truth_les == 0) & (chest.hu >= INSERT_PARENCHYMA_MAX_HU)
        ) * vml, 1),
        # Inserted solid the lung mask leaves out, against what metrics.json's
        # solid_at_surface_ml (solid against soft tissue) reports for the scan.
        "solid_outside_lung_mask_ml": round(np.count_nonzero(
            (truth_les == 2) & (l2.labels == 0)) * vml, 1),
        # Inserted lesion of any kind the new lung mask leaves out.
        "lesion_outside_lung_mask_ml": round(np.count_nonzero(
            (truth_les > 0) & (l2.labels == 0)) * vml, 1),
        "solid_at_surface_ml": round(solid_at_surface_ml(
            hu_new, l2.labels, e2.labels, chest.spacing_mm, config=CFG.quantification), 1),
        **t2,
    }


THICK_SLICES_MM = (3, 4, 5, 6)


def _at_half(fraction: np.ndarray, coin: np.ndarray) -> np.ndarray:
    """Truth from a slab-mean fraction: above one half, or exactly one half and heads."""
    return (fraction > 0.5) | ((fraction == 0.5) & coin)


def thick_slice_cases(shared: Path) -> list[dict[str, Any]]:
    """The real chest in thick slabs, as is and with lesions inserted before averaging."""
    chest = read_ct(shared / "chest-ct-full-dicom" / "dicom")
    lungs, _lesions, _times = _segment(chest)
    out = []
    for les, sol, seed in ((0.0, 0.0, 0), (15.0, 3.0, 12), (30.0, 6.0, 13)):
        if les:
            hu, truth, _ = insert_lesions(
                chest.hu, lungs.labels, spacing_mm=chest.spacing_mm, seed=seed,
                lesion_pct=les, solid_pct=sol, parenchyma_max_hu=INSERT_PARENCHYMA_MAX_HU)
        else:
            hu, truth = chest.hu, np.zeros(chest.shape, np.uint8)
        for mm in THICK_SLICES_MM:
            spacing = (float(mm), *chest.spacing_mm[1:])
            thick = np.rint(average_slabs(hu, mm, chest.spacing_mm[0])).astype(np.int16)
            coin = np.random.default_rng(mm).random(thick.shape) < 0.5
            ref_lung = _at_half(average_slabs(lungs.labels > 0, mm, chest.spacing_mm[0]), coin)
            any_t = _at_half(average_slabs(truth > 0, mm, chest.spacing_mm[0]), coin)
            solid_t = _at_half(average_slabs(truth == 2, mm, chest.spacing_mm[0]), coin)
            truth_t = np.where(solid_t, 2, np.where(any_t, 1, 0)).astype(np.uint8)
            l2, e2, t2 = _segment(_volume(thick, spacing, f"chest {mm} mm"))
            row: dict[str, Any] = {
                "case": f"real chest in {mm} mm slabs"
                + (f" + inserted lesion {les:g}% solid {sol:g}%" if les else ", normal"),
                "dice_lungs_vs_slab_mask": round(_dice(l2.labels > 0, ref_lung), 4),
            }
            vml = float(np.prod(spacing)) / 1000.0
            if les:
                row.update(_lesion_metrics(l2.labels, e2.labels, ref_lung, truth_t, vml))
            else:
                lung_ml = np.count_nonzero(l2.labels) * vml
                row.update({
                    "lung_ml": round(lung_ml, 1),
                    "proportion_pct": round(
                        100 * np.count_nonzero(e2.labels) * vml / max(lung_ml, 1e-9), 2),
                    "lesion_info": {k: v for k, v in e2.info.items() if k.endswith("_ml")},
                })
            row.update(t2)
            out.append(row)
            print(_fmt(row), flush=True)
    return out


SOFT_KERNEL_SIGMAS_MM = (0.7, 1.0, 1.2)


def soft_kernel_cases(shared: Path) -> list[dict[str, Any]]:
    """The real chest blurred in-plane (a softer kernel), as is and with 15 % inserted."""
    chest = read_ct(shared / "chest-ct-full-dicom" / "dicom")
    lungs, _lesions, _times = _segment(chest)
    sp = chest.spacing_mm
    hu_15, truth_15, _ = insert_lesions(
        chest.hu, lungs.labels, spacing_mm=sp, seed=12, lesion_pct=15.0, solid_pct=3.0,
        parenchyma_max_hu=INSERT_PARENCHYMA_MAX_HU)
    out = []
    for name, hu, truth in (("normal", chest.hu, None),
                            ("+ inserted lesion 15% solid 3%", hu_15, truth_15)):
        for sigma_mm in SOFT_KERNEL_SIGMAS_MM:
            soft = ndimage.gaussian_filter(hu.astype(np.float32),
                                           (0.0, sigma_mm / sp[1], sigma_mm / sp[2]))
            l2, e2, t2 = _segment(_volume(np.rint(soft).astype(np.int16), sp, "soft"))
            row: dict[str, Any] = {
                "case": f"real chest, in-plane blur {sigma_mm:g} mm, {name}",
                "dice_lungs_vs_original_mask": round(_dice(l2.labels > 0, lungs.labels > 0), 4),
                "lung_noise_hu": e2.info.get("lung_noise_hu"),
                # lesions.soft_image_noise_floor_hu (session 24): flagged or not.
                "soft_image_flagged": any(
                    w.startswith("soft_image_lesion_bias") for w in e2.info["warnings"]),
            }
            if truth is None:
                lung_ml = np.count_nonzero(l2.labels) * chest.voxel_volume_ml
                row["proportion_pct"] = round(
                    100 * np.count_nonzero(e2.labels) * chest.voxel_volume_ml / lung_ml, 2)
            else:
                row.update(_lesion_metrics(l2.labels, e2.labels, lungs.labels, truth,
                                           chest.voxel_volume_ml))
            row.update(t2)
            out.append(row)
            print(_fmt(row), flush=True)
    return out


def partial_volume_cases(shared: Path) -> list[dict[str, Any]]:
    """The insertions of ``real_cases`` (same seeds) with ``insert_lesions``'
    partial-volume model: mixed voxels (vessel skirts, the pleura's half-lung voxels) take
    the lesion in their lung part and are truth at half lung (session 18)."""
    chest = read_ct(shared / "chest-ct-full-dicom" / "dicom")
    lungs, _lesions, _times = _segment(chest)
    out = []
    for les, sol, seed in INSERT_BURDENS:
        row = _insertion_row(chest, lungs, les, sol, seed, tissue_hu=INSERT_TISSUE_HU)
        out.append(row)
        print(_fmt(row), flush=True)
    return out


def real_cases(shared: Path, quick: bool) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    chest = read_ct(shared / "chest-ct-full-dicom" / "dicom")
    lungs, lesions, times = _segment(chest)
    vml = chest.voxel_volume_ml
    lung_ml = np.count_nonzero(lungs.labels) * vml
    row = {
        "case": "real chest 141 slices, normal (+1 small nodule)",
        "lung_ml": round(lung_ml, 1),
        "lesion_ml": round(np.count_nonzero(lesions.labels) * vml, 1),
        "proportion_pct": round(100 * np.count_nonzero(lesions.labels) * vml / lung_ml, 2),
        "solid_proportion_pct": round(
            100 * np.count_nonzero(lesions.labels == 2) * vml / lung_ml, 2),
        "lesion_info": {k: v for k, v in lesions.info.items() if k.endswith("_ml")},
        **times,
    }
    out.append(row)
    print(_fmt(row), flush=True)
    # 50 %: severe diffuse disease (the trial's worst baselines), added in session 15.
    burdens = [(10.0, 2.0, 11)] if quick else list(INSERT_BURDENS)
    for les, sol, seed in burdens:
        row = _insertion_row(chest, lungs, les, sol, seed)
        out.append(row)
        print(_fmt(row), flush=True)
    tumours = [
        ("lung1 (small nodule)", shared / "chest-ct-tumour-nrrd" / "lung1_image.nrrd",
         shared / "chest-ct-tumour-nrrd" / "lung1_label.nrrd"),
        ("lung2 (tumour)", shared / "chest-ct-tumour-nrrd" / "lung2_image.nrrd",
         shared / "chest-ct-tumour-nrrd" / "lung2_label.nrrd"),
        ("nsclc crop (GTV)", shared / "nsclc-crop-dicom-rtstruct" / "nifti" / "image" /
         "phantom.nii.gz", shared / "nsclc-crop-dicom-rtstruct" / "nifti" / "mask" / "mask.nii.gz"),
    ]
    for name, img, lab in tumours:
        vol = read_ct(img)
        label = _read_label(lab, vol)
        lungs_t, les_t, tt = _segment(vol)
        tum = label > 0
        n = max(1, np.count_nonzero(tum))
        row = {
            "case": f"tumour coverage {name}",
            "tumour_ml": round(np.count_nonzero(tum) * vol.voxel_volume_ml, 1),
            "in_lung_mask": round(np.count_nonzero(tum & (lungs_t.labels > 0)) / n, 3),
            "as_any_lesion": round(np.count_nonzero(tum & (les_t.labels > 0)) / n, 3),
            "as_solid": round(np.count_nonzero(tum & (les_t.labels == 2)) / n, 3),
            "lung_ml": round(np.count_nonzero(lungs_t.labels) * vol.voxel_volume_ml, 1),
            # Lesion away from the labelled tumour: vessels, heart or aorta taken into the
            # lung mask (lung1 is otherwise a normal chest), real disease not labelled.
            "solid_outside_tumour_ml": round(np.count_nonzero(
                (les_t.labels == 2) & ~tum) * vol.voxel_volume_ml, 1),
            "lesion_proportion_pct": round(100 * np.count_nonzero(les_t.labels) / max(
                1, np.count_nonzero(lungs_t.labels)), 2),
            "solid_at_surface_ml": round(solid_at_surface_ml(
                vol.hu, lungs_t.labels, les_t.labels, vol.spacing_mm,
                config=CFG.quantification), 1),
            **tt,
        }
        out.append(row)
        print(_fmt(row), flush=True)
    abd = read_ct(shared / "abdomen-lung-bases-nifti" / "example_ct.nii.gz")
    try:
        lungs_a = segment_lungs(abd, CFG.lungs)
        row = {"case": "abdomen with lung bases", "result": "segmented",
               "right_ml": lungs_a.info["right_ml"], "left_ml": lungs_a.info["left_ml"]}
    except LungvolError as err:
        row = {"case": "abdomen with lung bases", "result": f"refused: {err}"}
    out.append(row)
    print(_fmt(row), flush=True)
    return out


def blob_cases(shared: Path) -> list[dict[str, Any]]:
    from scipy import ndimage

    chest = read_ct(shared / "chest-ct-full-dicom" / "dicom")
    lungs, lesions, _ = _segment(chest)
    vml = chest.voxel_volume_ml
    own_ml = np.count_nonzero(lesions.labels) * vml  # the scan's own reading (its nodule, vessels)
    lung = lungs.labels > 0
    lung_ml = np.count_nonzero(lung) * vml
    out = []
    # The burden series at the default sizes (semi-axes 8-25 mm), then 5 % of smaller
    # ellipsoids: ground-glass nodules about the size of the 9 mm background ball.
    cases = [(5.0, 21, None), (15.0, 22, None), (30.0, 23, None),
             (5.0, 21, (3.0, 6.0)), (5.0, 21, (4.0, 8.0)), (5.0, 21, (6.0, 12.0))]
    for pct, seed, axes in cases:
        hu, truth, _ = insert_blobs(chest.hu, lungs.labels, spacing_mm=chest.spacing_mm,
                                    seed=seed, lesion_pct=pct,
                                    **({} if axes is None else {"semi_axes_mm": axes}))
        region, solid = truth > 0, truth == 2
        l2, e2, times = _segment(_volume(hu, chest.spacing_mm, "chest+blobs"))
        les = e2.labels > 0
        les_ml, t_ml = np.count_nonzero(les) * vml, np.count_nonzero(region) * vml
        outside_mm = ndimage.distance_transform_edt(~region, sampling=chest.spacing_mm)
        fp = les & ~region
        row = {
            "case": f"real chest + blobs {pct:g}%" + (
                "" if axes is None else f", semi-axes {axes[0]:g}-{axes[1]:g} mm"),
            "truth_lesion_ml": round(t_ml, 1),
            "lesion_ml": round(les_ml, 1),
            "lesion_err_pct": _round(_pct_err(les_ml, t_ml)),
            # Without the scan's own reading (its nodule and vessel floor, in every case).
            "lesion_err_less_own_pct": _round(_pct_err(les_ml - own_ml, t_ml)),
            "proportion_err_pp": round(
                100.0 * les_ml / (np.count_nonzero(l2.labels) * vml) - 100.0 * t_ml / lung_ml, 2),
            "lesion_recall": _recall(les, region),
            "fp_within_3mm_ml": round(np.count_nonzero(fp & (outside_mm <= 3.0)) * vml, 1),
            "fp_beyond_3mm_ml": round(np.count_nonzero(fp & (outside_mm > 3.0)) * vml, 1),
            "solid_err_pct": _round(_pct_err(np.count_nonzero(e2.labels == 2) * vml,
                                             np.count_nonzero(solid) * vml)),
            **times,
        }
        out.append(row)
        print(_fmt(row), flush=True)
    return out


def band_cases(shared: Path) -> list[dict[str, Any]]:
    """The real chest with a subpleural band (``insert_subpleural_band``): ground glass
    8 / 15 / 25 mm deep, the last two also with an outer consolidation layer of 4 / 6 mm;
    and a 5 mm band that is consolidation but for its inner 1 mm."""
    chest = read_ct(shared / "chest-ct-full-dicom" / "dicom")
    lungs = segment_lungs(chest, CFG.lungs)
    vml = chest.voxel_volume_ml
    out = []
    for depth_mm, solid_mm in ((8.0, 0.0), (15.0, 0.0), (15.0, 4.0), (25.0, 6.0), (5.0, 4.0)):
        hu, truth, _ = insert_subpleural_band(chest.hu, lungs.labels,
                                              spacing_mm=chest.spacing_mm, seed=5,
                                              depth_mm=depth_mm, solid_depth_mm=solid_mm)
        l2, e2, times = _segment(_volume(hu, chest.spacing_mm, "chest+band"))
        row = {
            "case": f"real chest + subpleural band {depth_mm:g} mm"
            + (f", consolidation {solid_mm:g} mm" if solid_mm else ""),
            **_lesion_metrics(l2.labels, e2.labels, lungs.labels, truth, vml),
            "solid_outside_lung_mask_ml": round(np.count_nonzero(
                (truth == 2) & (l2.labels == 0)) * vml, 1),
            **times,
        }
        out.append(row)
        print(_fmt(row), flush=True)
    return out


def _add_noise(hu: np.ndarray, kind: str, sd_hu: float, seed: int = 1) -> np.ndarray:
    """``hu`` plus noise of SD ``sd_hu``: ``white`` (independent per voxel) or ``corr``
    (smoothed in-plane by a 0.8-pixel Gaussian, then scaled back to ``sd_hu``), int16."""
    from scipy import ndimage

    noise = np.random.default_rng(seed).normal(0.0, sd_hu, hu.shape).astype(np.float32)
    if kind == "corr":
        noise = ndimage.gaussian_filter(noise, (0, 0.8, 0.8))
        noise *= sd_hu / noise.std()
    return np.clip(hu + noise, -1024, 3071).astype(np.int16)


def noise_cases(shared: Path) -> list[dict[str, Any]]:
    from dataclasses import replace

    chest = read_ct(shared / "chest-ct-full-dicom" / "dicom")
    lungs = segment_lungs(chest, CFG.lungs)
    vml = chest.voxel_volume_ml
    hu_ins, truth, _ = insert_lesions(
        chest.hu, lungs.labels, spacing_mm=chest.spacing_mm, seed=12, lesion_pct=15.0,
        solid_pct=3.0, parenchyma_max_hu=INSERT_PARENCHYMA_MAX_HU,
    )
    t_les, t_sol = np.count_nonzero(truth) * vml, np.count_nonzero(truth == 2) * vml
    t_prop = 100.0 * t_les / (np.count_nonzero(lungs.labels) * vml)
    # The rule of lungvol 0.6.4: the noise index decides, and the bands see all of it.
    by_index = replace(CFG.lesions, opening_bias_target_hu=0.0, noise_band_fraction=1.0)
    off = replace(by_index, noise_target_hu=0.0)
    out = []
    for kind, sd in (("white", 60.0), ("white", 100.0), ("corr", 60.0)):
        for base, name in ((chest.hu, "normal"), (hu_ins, "inserted 15%")):
            vol = _volume(_add_noise(base, kind, sd), chest.spacing_mm, name)
            l2 = segment_lungs(vol, CFG.lungs)
            row: dict[str, Any] = {"case": f"noise {kind} {sd:g} HU, {name}"}
            for label, cfg in (("", CFG.lesions), ("by_index_", by_index),
                               ("no_adaptation_", off)):
                # Every reading starts from the same lung mask (until session 25 the second
                # reading started from the first one's subpleural recovery).
                e2 = segment_lesions(vol, l2, cfg)
                l3, e2 = recover_subpleural_layer(vol, l2, e2, replace(CFG, lesions=cfg))
                lung_ml = np.count_nonzero(l3.labels) * vml
                les_ml = np.count_nonzero(e2.labels) * vml
                sol_ml = np.count_nonzero(e2.labels == 2) * vml
                if label == "":
                    row["lung_noise_hu"] = e2.info["lung_noise_hu"]
                    row["opening_bias_hu"] = e2.info["lung_opening_bias_hu"]
                if label != "no_adaptation_":
                    row[f"{label}smoothing_sigma_mm"] = e2.info["noise_smoothing_sigma_mm"]
                row[f"{label}proportion_pct"] = round(100.0 * les_ml / lung_ml, 2)
                if name != "normal":
                    row[f"{label}lesion_err_pct"] = _round(_pct_err(les_ml, t_les))
                    row[f"{label}solid_err_pct"] = _round(_pct_err(sol_ml, t_sol))
                    row[f"{label}proportion_err_pp"] = round(100.0 * les_ml / lung_ml - t_prop, 2)
            out.append(row)
            print(_fmt(row), flush=True)
    return out


PIXEL_SIZES_MM = (0.95, 1.02, 1.05, 1.46, 1.95)


def pixel_size_cases(shared: Path) -> list[dict[str, Any]]:
    """The noisy chest of 7. (white noise of SD 100 HU), as is and with 15 % inserted,
    resampled in-plane (linear) to other pixel sizes, read with the noise adaptation by
    the opening bias (default) and by the noise index (``by_index_``, the rule before
    0.6.5). Truth and reference lung: the masks resampled the same way, at one half."""
    from dataclasses import replace

    chest = read_ct(shared / "chest-ct-full-dicom" / "dicom")
    lungs = segment_lungs(chest, CFG.lungs)
    hu_ins, truth, _ = insert_lesions(
        chest.hu, lungs.labels, spacing_mm=chest.spacing_mm, seed=12, lesion_pct=15.0,
        solid_pct=3.0, parenchyma_max_hu=INSERT_PARENCHYMA_MAX_HU,
    )
    by_index = replace(CFG, lesions=replace(
        CFG.lesions, opening_bias_target_hu=0.0, noise_band_fraction=1.0))
    out = []
    for pixel_mm in PIXEL_SIZES_MM:
        zoom = (1.0, chest.spacing_mm[1] / pixel_mm, chest.spacing_mm[2] / pixel_mm)

        def resampled(array: np.ndarray, zoom: tuple[float, ...] = zoom) -> np.ndarray:
            return ndimage.zoom(np.asarray(array, np.float32), zoom, order=1,
                                mode="nearest", grid_mode=True)

        ref_lung = resampled(lungs.labels > 0) >= 0.5
        t_les, t_sol = resampled(truth > 0) >= 0.5, resampled(truth == 2) >= 0.5
        spacing = (chest.spacing_mm[0], *(
            s * n / m for s, n, m in zip(
                chest.spacing_mm[1:], chest.hu.shape[1:], ref_lung.shape[1:], strict=True)
        ))
        for base, name in ((chest.hu, "normal"), (hu_ins, "inserted 15%")):
            hu = np.rint(resampled(_add_noise(base, "white", 100.0))).astype(np.int16)
            vol = _volume(hu, spacing, name)  # type: ignore[arg-type]
            row: dict[str, Any] = {
                "case": f"noise white 100 HU, {name}, {spacing[1]:.2f} mm pixels"}
            l2 = segment_lungs(vol, CFG.lungs)
            for label, cfg in (("", CFG), ("by_index_", by_index)):
                e2 = segment_lesions(vol, l2, cfg.lesions)
                l3, e3 = recover_subpleural_layer(vol, l2, e2, cfg)
                if label == "":
                    row["lung_noise_hu"] = e3.info["lung_noise_hu"]
                    row["opening_bias_hu"] = e3.info["lung_opening_bias_hu"]
                row[f"{label}smoothing_sigma_mm"] = e3.info["noise_smoothing_sigma_mm"]
                row[f"{label}flags"] = [w.split(":")[0] for w in e3.info["warnings"]]
                if name == "normal":
                    row[f"{label}proportion_pct"] = round(
                        100.0 * np.count_nonzero(e3.labels) / np.count_nonzero(l3.labels), 2)
                else:
                    metrics = _lesion_metrics(l3.labels, e3.labels, ref_lung, t_les.astype(
                        np.uint8) + t_sol, vol.voxel_volume_ml)
                    for key in ("lesion_err_pct", "solid_err_pct", "proportion_err_pp"):
                        row[f"{label}{key}"] = metrics[key]
            out.append(row)
            print(_fmt(row), flush=True)
    return out


def insertion_seed_cases(shared: Path, n_seeds: int) -> list[dict[str, Any]]:
    """``insert_lesions`` into the real chest at 5 / 15 / 30 % over ``n_seeds`` seeds each
    (seeds 0..3n-1, in burden order), by :func:`lungvol.qualify.qualify_volume`: one row per
    insertion, then one summary row per burden (mean, SD, worst, insertions within each
    target)."""
    chest = read_ct(shared / "chest-ct-full-dicom" / "dicom")
    report, _panels = qualify_volume(
        chest, CFG, burdens_pct=INSERT_SEED_BURDENS, models=["insert_lesions"],
        repeats=n_seeds,
    )
    rows: list[dict[str, Any]] = []
    for c in report["cases"]:
        row = {"case": f"real chest + inserted {c['lesion_pct']:g}% seed {c['seed']}",
               **{k: v for k, v in c.items() if k not in ("model", "targets_met")}}
        rows.append(row)
        print(_fmt(row), flush=True)
    for g in report["groups"]:
        row = {"case": f"SEEDS real chest + inserted {g['lesion_pct']:g}% ({g['n']} seeds)",
               **{k: v for k, v in g.items() if k not in ("model",)}}
        rows.append(row)
        print(_fmt(row), flush=True)
    return rows


def _read_label(path: Path, volume: CTVolume) -> np.ndarray:
    """Read a label volume through lungvol.io (NIfTI/NRRD) on the CT's grid."""
    from lungvol.config import IOConfig
    from lungvol.io import read_ct as _read

    # Labels are 0/1: skip the HU plausibility checks meant for CT.
    lab = _read(path, config=IOConfig(air_hu_max=1e9, min_value_hu_max=1e9))
    if lab.hu.shape != volume.hu.shape:
        raise SystemExit(f"label {path} has shape {lab.hu.shape}, CT {volume.hu.shape}")
    return np.asarray(lab.hu)


def _fmt(row: dict[str, Any]) -> str:
    keys = [k for k in row if k not in ("case", "lesion_info")]
    return f"{row['case']:<58} " + "  ".join(f"{k}={row[k]}" for k in keys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer cases")
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    parser.add_argument("--skip-real", action="store_true")
    parser.add_argument("--skip-phantoms", action="store_true")
    parser.add_argument("--phantom-seeds", type=int, default=12,
                        help="seeds per burden in the phantom seed sweep (0 skips it)")
    parser.add_argument("--insert-seeds", type=int, default=8,
                        help="seeds per burden in the real chest's insertion sweep (0 skips it)")
    parser.add_argument("--skip-noise", action="store_true")
    parser.add_argument("--skip-blobs", action="store_true")
    parser.add_argument("--skip-bands", action="store_true")
    parser.add_argument("--skip-partial-volume", action="store_true")
    parser.add_argument("--skip-thick", action="store_true")
    parser.add_argument("--skip-kernel", action="store_true")
    parser.add_argument("--config", type=Path, default=None,
                        help="config YAML (default: configs/default.yaml); for sweeps")
    args = parser.parse_args()
    if args.config is not None:
        global CFG
        CFG = load_config(args.config)
    t0 = time.perf_counter()
    results: dict[str, Any] = {
        "started_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpus": __import__("os").cpu_count(),
        "config_hash": CFG.hash,
        "config_source": str(args.config) if args.config else "default",
    }
    if not args.skip_phantoms:
        results["phantoms"] = phantom_cases(args.quick)
    if args.phantom_seeds > 0:
        results["phantom_seeds"] = phantom_seed_cases(3 if args.quick else args.phantom_seeds)
    if not args.skip_real and args.shared.is_dir():
        results["real"] = real_cases(args.shared, args.quick)
    if args.insert_seeds > 0 and not args.skip_real and args.shared.is_dir():
        results["insertion_seeds"] = insertion_seed_cases(
            args.shared, 2 if args.quick else args.insert_seeds)
    if not args.skip_blobs and not args.quick and args.shared.is_dir():
        results["blobs"] = blob_cases(args.shared)
    if not args.skip_bands and not args.quick and args.shared.is_dir():
        results["bands"] = band_cases(args.shared)
    if not args.skip_partial_volume and not args.quick and args.shared.is_dir():
        results["partial_volume"] = partial_volume_cases(args.shared)
    if not args.skip_thick and not args.quick and args.shared.is_dir():
        results["thick_slices"] = thick_slice_cases(args.shared)
    if not args.skip_kernel and not args.quick and args.shared.is_dir():
        results["soft_kernel"] = soft_kernel_cases(args.shared)
    if not args.skip_noise and not args.quick and args.shared.is_dir():
        results["noise"] = noise_cases(args.shared)
        results["pixel_sizes"] = pixel_size_cases(args.shared)
    results["total_s"] = round(time.perf_counter() - t0, 1)
    out_dir = REPO / "benchmarks" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = out_dir / f"accuracy-{stamp}.json"
    path.write_text(json.dumps(results, indent=2, default=float))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
