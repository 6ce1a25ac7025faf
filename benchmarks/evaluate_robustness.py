"""Does lungvol keep its answer when the same chest is scanned or stored a little differently?

The real 141-slice chest CT of ../shared (a normal scan, lesion proportion 0.32 %) is
perturbed in ways real scans differ, each perturbation segmented in full (lungs, lesions,
subpleural step) and compared with the unperturbed lung mask (Dice, after undoing a flip,
rotation or shift) and with its lesion proportion:

- HU calibration offsets of +-24 and +-40 HU over the whole image (tracheal air on this
  scan already reads -950..-970 HU in 2 mm blocks);
- emphysema: aerated lung (voxels below -700 HU inside the lung mask) darkened by 80, 120
  and 200 HU (median lung -897 / -937 / -1004 HU);
- the field of view padded with -3024 HU outside a 250-pixel circle (how many scanners
  store the area outside the reconstruction circle);
- the patient prone (y flipped), rotated 15 degrees in-plane, moved 59 mm sideways;
- the field of view cut laterally through the chest wall only, and 13-14 mm into each lung
  (which must be flagged ``lungs_cut_off_in_plane``; it was not before session 15);
- dependent consolidation the lung stage leaves out: the posterior half of both lungs
  (-300 HU and denser) and a 15 mm dependent layer (-100 HU): flagged
  ``dependent_opacity_outside_lung`` with a lower-bound estimate of the opacity, and the
  normal-CT call withheld (session 16);
- a base consolidated flat across (+30 HU; the right lower third, the lower fifth of both
  lungs), which the lung stage leaves out too: flagged ``lung_base_truncated`` and the
  normal-CT call withheld (session 18);
- consolidation against the anterior chest wall (the front of the right upper lung, +30 HU):
  flagged ``anterior_opacity_outside_lung``, the normal-CT call withheld (session 18); a
  middle-lobe-like region against the heart flagged the same way by the right lung's lower
  lateral front (session 19); a lingula-like one is warned ``left_anterior_lower_gap`` (the
  normal-CT call kept: an enlarged heart lies there too; session 25);
- diffuse ground glass, the aerated lung raised by 100 and 200 HU: read low by design (the
  lesion floor is relative to the lung's own level) and flagged ``lung_density_high``
  (session 18);
- a pacemaker can in the left anterior chest wall with simulated metal streaks
  (``lungvol.phantom.insert_metal``: titanium at 1e5 photons per ray, denser metal at 2e4):
  flagged ``metal_near_lungs`` (session 19);
- intravenous contrast, simulated (``lungvol.phantom.enhance_contrast``): the heart's and
  great vessels' blood pool +220 HU (their walls and the fat around them as scanned), alone
  and with the lung vessels raised by up to 200 HU: flagged ``contrast_enhanced``, the lung
  mask and the normal-CT call kept (session 32; before, the pool joined the spine's bone
  component and hila and mediastinum went into the lungs, silently); and CT angiography,
  the pool +550 HU (session 33: its noise reaches the cortical level; before, it was bone
  again, silently), +800 HU (session 34: over ``lungs.blood_max_hu``, still bone, now
  flagged ``dense_homogeneous_bone``) and a pool enhanced unevenly (front half +600, back
  half +240 HU: still bone, now flagged ``thick_bone_core``).

Each was a silent failure once (session 15: a 24 HU brighter scan lost its trachea and read
lesion 1.52 %, the 120 HU emphysema lost its right lung to the gas rule) or is a guard
against one. Usage::

    .venv/bin/python benchmarks/evaluate_robustness.py          # about 4 minutes
    .venv/bin/python benchmarks/evaluate_robustness.py --json   # also write results/

Measured numbers are in docs/segmentation.md ("Robustness").
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from evaluate_accuracy import _dice  # the same script folder (run as a script)
from scipy import ndimage

from lungvol.config import LungvolConfig
from lungvol.errors import LungvolError
from lungvol.io import read_ct
from lungvol.phantom import enhance_contrast, insert_metal
from lungvol.segmentation import segment_masks
from lungvol.types import CTVolume

REPO = Path(__file__).resolve().parents[1]
REAL_CT = REPO.parent / "shared" / "data" / "real-ct" / "chest-ct-full-dicom" / "dicom"
RESULTS = REPO / "benchmarks" / "results"
ROTATION_DEG = 15.0
SHIFT_PX = 60


def _identity(a: np.ndarray) -> np.ndarray:
    return a


def _with_hu(chest: CTVolume, hu: np.ndarray) -> CTVolume:
    """``chest`` with another image of the same spacing (geometry and source kept)."""
    return CTVolume(
        hu=hu.astype(np.int16), spacing_mm=chest.spacing_mm, origin_lps_mm=chest.origin_lps_mm,
        direction=chest.direction, source=chest.source,
    )


def perturbations(
    chest: CTVolume, labels: np.ndarray
) -> list[tuple[str, np.ndarray, np.ndarray, Callable[[np.ndarray], np.ndarray]]]:
    """(name, perturbed HU, reference lung mask, map of the result back to the reference).
    ``labels``: the unperturbed lung labels (1 right, 2 left). A cropped case's reference
    is the unperturbed mask cropped alike."""
    lung = labels > 0
    hu = chest.hu.astype(np.int32)
    out: list[tuple[str, np.ndarray, np.ndarray, Callable[[np.ndarray], np.ndarray]]] = []
    for offset in (24, -24, 40, -40):
        out.append((f"HU offset {offset:+d}", hu + offset, lung, _identity))
    airy = lung & (hu < -700)
    for darker in (80, 120, 200):
        h = hu.copy()
        h[airy] = np.maximum(-1024, h[airy] - darker)
        out.append((f"emphysema: aerated lung -{darker} HU", h, lung, _identity))
    y, x = np.ogrid[: hu.shape[1], : hu.shape[2]]
    circle = (y - hu.shape[1] / 2) ** 2 + (x - hu.shape[2] / 2) ** 2 > 250**2
    # Diffuse ground glass (session 18: lung_density_high): the aerated lung raised evenly.
    # Lesion is measured above the lung's own level, so it reads low; the flag says so.
    for brighter in (100, 200):
        h = hu.copy()
        h[airy] = h[airy] + brighter
        out.append((f"diffuse ground glass: aerated lung +{brighter} HU", h, lung, _identity))
    out.append(("padding -3024 HU outside the FOV circle",
                np.where(circle[None], -3024, hu), lung, _identity))
    out.append(("prone (y flipped)", hu[:, ::-1, :].copy(), lung, lambda a: a[:, ::-1, :]))
    rotated = ndimage.rotate(hu.astype(np.float32), ROTATION_DEG, axes=(1, 2), reshape=False,
                             order=1, cval=-1024.0)
    rotated_lung = ndimage.rotate(lung.astype(np.float32), ROTATION_DEG, axes=(1, 2),
                                  reshape=False, order=1) > 0.5
    out.append((f"rotated {ROTATION_DEG:g} degrees in-plane", np.rint(rotated), rotated_lung,
                _identity))
    shifted = np.full_like(hu, -1024)
    shifted[:, :, SHIFT_PX:] = hu[:, :, :-SHIFT_PX]
    shifted_lung = np.zeros_like(lung)
    shifted_lung[:, :, SHIFT_PX:] = lung[:, :, :-SHIFT_PX]
    mm = SHIFT_PX * chest.spacing_mm[2]
    out.append((f"moved {mm:.0f} mm sideways", shifted, shifted_lung, _identity))
    # Dependent opacity the lung stage leaves out (session 16: flagged, its volume estimated,
    # the normal-CT call withheld): the posterior half of both lungs consolidated (-300 HU
    # and denser, as in severe COVID-19 or ARDS) and a 15 mm dependent layer (-100 HU). The
    # reference is the unperturbed mask, so the Dice shows what is still left out.
    rng = np.random.default_rng(0)
    y_idx = np.arange(hu.shape[1])[None, :, None]
    ys = np.flatnonzero(lung.any(axis=(0, 2)))
    half = lung & (y_idx >= 0.5 * (ys[0] + ys[-1]))
    h = hu.copy()
    h[half] = np.maximum(h[half], np.rint(-300 + rng.normal(0, 20, np.count_nonzero(half))))
    out.append(("posterior half of both lungs consolidated", h, lung, _identity))
    back = np.where(lung, y_idx, -1).max(axis=1)
    layer = lung & (y_idx >= back[:, None, :] - 15.0 / chest.spacing_mm[1])
    h = hu.copy()
    h[layer] = np.maximum(h[layer], np.rint(-100 + rng.normal(0, 20, np.count_nonzero(layer))))
    out.append(("dependent 15 mm layer consolidated", h, lung, _identity))
    # A base consolidated flat across (+30 HU, lobar pneumonia against the liver): no slice
    # there has air left, so the lung stage leaves it out; flagged lung_base_truncated and
    # the normal-CT call withheld since session 18 (nothing added).
    for name, sides, fraction in (("right lower third", (1,), 1 / 3),
                                  ("both lower fifths", (1, 2), 0.2)):
        h = hu.copy()
        for side in sides:
            m = labels == side
            zs = np.flatnonzero(m.any(axis=(1, 2)))
            cut = m & (np.arange(hu.shape[0])[:, None, None] <= zs[0] + fraction * (zs[-1] - zs[0]))
            h[cut] = np.rint(30 + rng.normal(0, 20, np.count_nonzero(cut)))
        out.append((f"{name} consolidated flat (+30 HU)", h, lung, _identity))
    # Consolidation against the anterior chest wall (session 18: anterior_opacity_outside_lung):
    # the front 45 % of the right lung above its mid-height.
    right = labels == 1
    zs = np.flatnonzero(right.any(axis=(1, 2)))
    ys = np.flatnonzero(right.any(axis=(0, 2)))
    z_idx = np.arange(hu.shape[0])[:, None, None]
    front = right & (z_idx > (zs[0] + zs[-1]) / 2) & (y_idx <= ys[0] + 0.45 * (ys[-1] - ys[0]))
    h = hu.copy()
    h[front] = np.rint(30 + rng.normal(0, 20, np.count_nonzero(front)))
    out.append(("right upper lung, anterior part consolidated (+30 HU)", h, lung, _identity))
    # A consolidated middle lobe / lingula against the heart (session 19: the right one
    # flagged by its lower lateral anterior gap; the left one warned since session 25).
    for side, name, front_fraction in ((1, "middle-lobe-like", 0.45), (2, "lingula-like", 0.40)):
        m = labels == side
        zs = np.flatnonzero(m.any(axis=(1, 2)))
        ys = np.flatnonzero(m.any(axis=(0, 2)))
        part = (m & (z_idx >= zs[0] + 0.1 * (zs[-1] - zs[0]))
                & (z_idx <= zs[0] + 0.5 * (zs[-1] - zs[0]))
                & (y_idx <= ys[0] + front_fraction * (ys[-1] - ys[0])))
        h = hu.copy()
        h[part] = np.rint(30 + rng.normal(0, 20, np.count_nonzero(part)))
        out.append((f"{name} consolidated against the heart (+30 HU)", h, lung, _identity))
    # A pacemaker can (50 x 30 x 8 mm) in the left anterior chest wall, with the streaks of a
    # scan without metal artifact reduction (session 19: metal_near_lungs): titanium at a
    # routine dose, and denser metal at a low dose.
    left = labels == 2
    zs = np.flatnonzero(left.any(axis=(1, 2)))
    z0 = int(zs[0] + 0.75 * (zs[-1] - zs[0]))
    x0 = int(np.flatnonzero(left[z0].any(axis=0)).mean())
    y0 = int(np.flatnonzero(hu[z0, :, x0] > -300)[0] + round(10.0 / chest.spacing_mm[1]))
    for name, mu, photons in (("titanium, 1e5 photons", 0.3, 1e5),
                              ("steel, 2e4 photons", 0.6, 2e4)):
        h, _metal = insert_metal(hu, spacing_mm=chest.spacing_mm, centre_zyx=(z0, y0, x0),
                                 semi_axes_mm=(15.0, 4.0, 25.0), seed=19,
                                 metal_mu_per_mm=mu, photons=photons)
        out.append((f"pacemaker with streaks ({name})", h, lung, _identity))
    # Intravenous contrast (session 32): the blood pool bright, the lung vessels too. The
    # lung stage must not take the heart's wall or fat for consolidated lung, and the
    # scan is flagged contrast_enhanced (the lesion bands are set for non-contrast CT).
    # CT angiography (session 33): blood near 600 HU, whose noise reaches the cortex level.
    for name, blood_gain, vessel_gain in (
        ("blood pool +220 HU", 220.0, 0.0),
        ("blood pool +220 HU, lung vessels +200 HU", 220.0, 200.0),
        ("CT angiography, blood pool +550 HU, lung vessels +200 HU", 550.0, 200.0),
        # A denser bolus (session 34): over lungs.blood_max_hu, still bone, now flagged
        # dense_homogeneous_bone.
        ("CT angiography, blood pool +800 HU, lung vessels +200 HU", 800.0, 200.0),
    ):
        h, _pool = enhance_contrast(hu, labels, spacing_mm=chest.spacing_mm,
                                    blood_gain_hu=blood_gain, vessel_gain_hu=vessel_gain)
        out.append((f"contrast-enhanced: {name}", h, lung, _identity))
    # A pool enhanced unevenly (session 34): the front half +600 HU (right heart, pulmonary
    # trunk), the back half +240 HU, no wall between: one core, neither uniform nor blood,
    # kept as bone; flagged thick_bone_core.
    base, _ = enhance_contrast(hu, labels, spacing_mm=chest.spacing_mm, blood_gain_hu=0.0,
                               vessel_gain_hu=200.0)
    _, pool = enhance_contrast(hu, labels, spacing_mm=chest.spacing_mm, blood_gain_hu=1.0,
                               vessel_gain_hu=200.0)
    front = np.indices(hu.shape, sparse=True)[1] < np.median(np.nonzero(pool)[1])
    out.append((
        "contrast-enhanced: CT angiography, pool front half +600 HU, back half +240 HU, "
        "lung vessels +200 HU", np.where(pool, base + np.where(front, 600, 240), base), lung,
        _identity,
    ))
    xs = np.flatnonzero(lung.any(axis=(0, 1)))
    for name, inset_mm in (("through the chest wall", -25.0), ("13 mm into each lung", 13.0)):
        inset = int(round(inset_mm / chest.spacing_mm[2]))
        x = slice(xs[0] + inset, xs[-1] + 1 - inset)
        out.append((f"field of view cut {name}", np.ascontiguousarray(hu[:, :, x]),
                    np.ascontiguousarray(lung[:, :, x]), _identity))
    return out


def _estimate_ml(lungs: Any) -> float | None:
    """The subpleural step's estimate of dependent opacity outside the mask (mL, both lungs)."""
    sub = lungs.info.get("subpleural", {})
    values = [sub.get(f"dependent_opacity_{side}_ml") for side in ("right", "left")]
    return None if all(v is None for v in values) else round(sum(v or 0.0 for v in values), 1)


def measure(chest: CTVolume, config: LungvolConfig) -> list[dict[str, Any]]:
    from lungvol.quantification import measure_scan

    t0 = time.perf_counter()
    lungs, lesions = segment_masks(chest, config)
    lung = lungs.labels > 0
    vml = chest.voxel_volume_ml
    rows = [{
        "case": "as scanned", "lung_ml": round(np.count_nonzero(lung) * vml, 1),
        "lung_dice": 1.0,
        "lesion_pct": round(100.0 * np.count_nonzero(lesions.labels) / np.count_nonzero(lung), 2),
        "trachea_found": lungs.info.get("trachea_found"),
        "seconds": round(time.perf_counter() - t0, 1),
    }]
    for name, hu, reference, back in perturbations(chest, lungs.labels):
        t0 = time.perf_counter()
        row: dict[str, Any] = {"case": name}
        ct = _with_hu(chest, hu)
        try:
            new_lungs, new_lesions = segment_masks(ct, config)
            scan = measure_scan(ct, new_lungs, new_lesions, config, timings_s={})
            flags = scan.qc_flags
        except LungvolError as err:  # a refusal is a result too
            row["refused"] = str(err)
            rows.append(row)
            continue
        labels = back(new_lungs.labels)
        new_lung = labels > 0
        row.update({
            "lung_ml": round(np.count_nonzero(new_lung) * vml, 1),
            "lung_dice": round(_dice(new_lung, reference), 4),
            "right_ml": round(np.count_nonzero(labels == 1) * vml, 1),
            "left_ml": round(np.count_nonzero(labels == 2) * vml, 1),
            "lesion_pct": round(
                100.0 * np.count_nonzero(new_lesions.labels) / max(1, np.count_nonzero(new_lung)),
                2),
            "trachea_found": new_lungs.info.get("trachea_found"),
            "trachea_seed_threshold_hu": new_lungs.info.get("trachea_seed_threshold_hu"),
            "airy_lung_kept_ml": new_lungs.info.get("airy_lung_kept_ml"),
            "dependent_opacity_ml": _estimate_ml(new_lungs),
            "base_taper_mm": scan.lung_base_taper_mm,
            "normal_ct": scan.normal_ct,
            "qc_flags": sorted({f.split(":", 1)[0] for f in flags}),
            "seconds": round(time.perf_counter() - t0, 1),
        })
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="write benchmarks/results/")
    args = parser.parse_args()
    if not REAL_CT.is_dir():
        raise SystemExit(f"{REAL_CT} not found: this evaluation needs ../shared beside the repo")
    config = LungvolConfig()
    rows = measure(read_ct(REAL_CT), config)
    for r in rows:
        if "refused" in r:
            print(f"{r['case']:42s} refused: {r['refused']}")
            continue
        print(f"{r['case']:42s} lung {r['lung_ml']:7.1f} mL  Dice {r['lung_dice']:.4f}  "
              f"lesion {r['lesion_pct']:5.2f} %  trachea {r['trachea_found']}  "
              + ("" if r.get("normal_ct") is None else f"normal {r['normal_ct']}  ")
              + ("" if r.get("dependent_opacity_ml") is None
                 else f"opacity outside {r['dependent_opacity_ml']:.0f} mL  ")
              + f"{' '.join(r.get('qc_flags', []))}  {r['seconds']:.1f} s", flush=True)
    if args.json:
        results = {
            "measured_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "machine": platform.platform(), "config_hash": config.hash, "cases": rows,
        }
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"robustness-{results['measured_utc'].replace(':', '')}.json"
        path.write_text(json.dumps(results, indent=2))
        print(f"results: {path}")


if __name__ == "__main__":
    main()
