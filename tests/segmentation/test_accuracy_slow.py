"""Accuracy on the real chest, normal and with inserted lesions, and under simulated
pathology (slow). The phantoms are in test_accuracy_phantoms_slow.py and the eight-seed
insertions in test_accuracy_insertion_seeds_slow.py (separate files so that the suite's
workers share them out).

Thresholds are the project targets (issue 2) where they are met; the one target not met yet
is a strict expected failure with the measured number as its reason (docs/segmentation.md).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from real_chest import CFG, as_volume, dice
from scipy import ndimage

from lungvol.config import IOConfig
from lungvol.io import read_ct
from lungvol.quantification.qc_flags import solid_at_surface_ml, surface_solid_flags
from lungvol.segmentation import (
    recover_subpleural_layer,
    segment_lesions,
    segment_lungs,
    segment_masks,
)
from lungvol.types import CTVolume

pytestmark = pytest.mark.slow



def test_a_soft_kernel_chest_is_flagged_and_the_sharp_one_is_not(chest, chest_lesions):
    """The real chest (lung noise index 15.6 HU) is not flagged soft_image_lesion_bias;
    blurred in-plane by 1.0 mm, as a soft kernel, its index falls to about 8 HU, it reads
    1.04 % lesion (0.32 % sharp) and is flagged (session 24)."""
    vol, lungs = chest
    codes = [w.split(":")[0] for w in chest_lesions.info["warnings"]]
    assert "soft_image_lesion_bias" not in codes
    assert chest_lesions.info["lung_noise_hu"] > CFG.lesions.soft_image_noise_floor_hu + 3.0
    sigma_px = (0.0, 1.0 / vol.spacing_mm[1], 1.0 / vol.spacing_mm[2])
    soft_hu = np.rint(ndimage.gaussian_filter(vol.hu.astype(np.float32), sigma_px))
    soft = dataclasses.replace(vol, hu=soft_hu.astype(np.int16))
    lesions = segment_lesions(soft, lungs, CFG.lesions)
    (flag,) = [w for w in lesions.info["warnings"] if w.startswith("soft_image_lesion_bias")]
    assert lesions.info["lung_noise_hu"] < CFG.lesions.soft_image_noise_floor_hu
    assert np.count_nonzero(lesions.labels) > 2 * np.count_nonzero(chest_lesions.labels)


def test_real_chest_lungs_are_plausible(chest):
    vol, lungs = chest
    right = np.count_nonzero(lungs.labels == 1) * vol.voxel_volume_ml
    left = np.count_nonzero(lungs.labels == 2) * vol.voxel_volume_ml
    assert 2000 < right < 4000
    assert 1700 < left < 3500
    assert right > left  # the right lung is the larger one
    # Right lung on the patient's right = low x index.
    assert np.nonzero(lungs.labels == 1)[2].mean() < np.nonzero(lungs.labels == 2)[2].mean()
    assert lungs.info["trachea_found"]
    assert lungs.info["airway_removed_ml"] > 10


def test_real_lungs_joined_at_the_anterior_junction_are_split_as_before(chest):
    """The real chest with its lungs joined in front of the mediastinum: on every slice
    where the lungs come within 30 mm of each other (68 of 141), five rows of aerated lung
    (-850 HU) bridge the gap at its narrowest row. The two lungs are one air component; the
    split gives each side back (per-side Dice 0.996-0.997 against the original mask,
    session 27; the bridge itself is new lung)."""
    vol, lungs = chest
    labels = lungs.labels
    hu = vol.hu.copy()
    px = vol.spacing_mm[2]
    bridged = 0
    for z in range(labels.shape[0]):
        right, left = labels[z] == 1, labels[z] == 2
        rows = np.flatnonzero(right.any(axis=1) & left.any(axis=1))
        if rows.size == 0:
            continue
        r_max = np.array([np.flatnonzero(right[y]).max() for y in rows])
        l_min = np.array([np.flatnonzero(left[y]).min() for y in rows])
        gap = l_min - r_max - 1
        ok = gap > 0
        if not ok.any():
            continue
        i = np.flatnonzero(ok)[np.argmin(gap[ok])]
        if gap[i] * px > 30.0:
            continue
        y = rows[i]
        hu[z, y - 2:y + 3, r_max[i] + 1:l_min[i]] = -850
        bridged += 1
    assert bridged > 40
    joined = segment_lungs(dataclasses.replace(vol, hu=hu), CFG.lungs)
    assert joined.info["split_connected_pair"]
    for side in (1, 2):
        assert dice(joined.labels == side, labels == side) > 0.99


def test_real_normal_chest_lesion_proportion(chest, chest_lesions):
    """Target < 1 % (a scan without pneumonia); measured 0.37 %, solid 0.17 % (session 8),
    more than half of it the 25 mm nodule. Before the vessel-segment rule 0.85 % and solid
    0.53 %: 19 mL of hilar veins and lobar arteries counted as solid (the solid guard)."""
    _, lungs = chest
    lesions = chest_lesions
    n_lung = np.count_nonzero(lungs.labels)
    proportion = 100.0 * np.count_nonzero(lesions.labels) / n_lung
    assert proportion < 1.0
    assert 100.0 * np.count_nonzero(lesions.labels == 2) / n_lung < 0.3
    assert lesions.info["vessel_segments_removed_ml"] > 10.0


def test_real_normal_chest_has_no_subpleural_layer(chest, chest_lesions):
    """The subpleural step leaves a normal scan alone: its few lesion voxels at the costal
    pleura lie closer to the ribs than the aerated surface (excess -1.15 mm, session 14)."""
    vol, lungs = chest
    new_lungs, new_lesions = recover_subpleural_layer(vol, lungs, chest_lesions, CFG)
    info = new_lungs.info["subpleural"]
    assert not info["flagged"], info
    assert info["excess_mm"] < 1.0, info
    assert not info["dependent_flagged"], info  # +1.57 mm (session 14)
    assert info["recovered_ml"] == 0.0
    # Session 16: the solid shell adds the pleura's voxel next to solid lesion on the surface
    # (the nodule, vessels at the mediastinum): 1.1 mL, all of it solid.
    changed = new_lungs.labels != lungs.labels
    assert np.count_nonzero(changed) * vol.voxel_volume_ml == pytest.approx(
        info["solid_shell_ml"], abs=0.05)
    assert info["solid_shell_ml"] <= 2.0, info
    assert (new_lesions.labels[changed] == 2).all()
    assert (new_lesions.labels[~changed] == chest_lesions.labels[~changed]).all()


def test_real_normal_chest_has_no_solid_at_the_lung_surface(chest, chest_lesions):
    """The QC flag solid_at_lung_surface stays off on a normal scan (0.7 mL, session 9)."""
    vol, lungs = chest
    lesions = chest_lesions.labels
    surface_ml = solid_at_surface_ml(vol.hu, lungs.labels, lesions, vol.spacing_mm,
                                     config=CFG.quantification)
    assert surface_ml < 3.0
    assert not surface_solid_flags(surface_ml, np.count_nonzero(lesions == 2)
                                   * vol.voxel_volume_ml, config=CFG.quantification)


def _with_noise(hu: np.ndarray, sd_hu: float, seed: int = 1) -> np.ndarray:
    """``hu`` plus white noise of ``sd_hu`` (a sharp-kernel or low-dose scan), int16."""
    noise = np.random.default_rng(seed).normal(0.0, sd_hu, hu.shape).astype(np.float32)
    return np.clip(hu + noise, -1024, 3071).astype(np.int16)


_INSERTED: dict[tuple[float, float, int, float], dict[str, float]] = {}


def _inserted(
    chest, lesion_pct: float, solid_pct: float, seed: int, noise_sd_hu: float = 0.0
) -> dict[str, float]:
    """Insert lesions (phantom.insert_lesions) into the real chest inside its lung mask,
    optionally add white noise, segment the modified scan again, and return errors against
    the inserted truth (computed once per case for the module: ``chest`` is module-scoped)."""
    key = (lesion_pct, solid_pct, seed, noise_sd_hu)
    if key not in _INSERTED:
        _INSERTED[key] = _inserted_errors(chest, lesion_pct, solid_pct, seed, noise_sd_hu)
    return _INSERTED[key]


def _inserted_errors(
    chest, lesion_pct: float, solid_pct: float, seed: int, noise_sd_hu: float
) -> dict[str, float]:
    from lungvol.phantom import insert_lesions

    vol, lungs = chest
    hu, truth, _ = insert_lesions(vol.hu, lungs.labels, spacing_mm=vol.spacing_mm, seed=seed,
                                  lesion_pct=lesion_pct, solid_pct=solid_pct)
    if noise_sd_hu > 0:
        hu = _with_noise(hu, noise_sd_hu)
    with_lesions = as_volume(hu, vol.spacing_mm)
    new_lungs, lesion_mask = segment_masks(with_lesions, CFG)
    lesions = lesion_mask.labels
    n_les, n_sol = np.count_nonzero(lesions), np.count_nonzero(lesions == 2)
    t_les, t_sol = np.count_nonzero(truth), np.count_nonzero(truth == 2)
    surface_ml = solid_at_surface_ml(hu, new_lungs.labels, lesions, vol.spacing_mm,
                                     config=CFG.quantification)
    return {
        "surface_ml": surface_ml,
        "surface_flagged": bool(surface_solid_flags(surface_ml, n_sol * vol.voxel_volume_ml,
                                                    config=CFG.quantification)),
        "solid_outside_ml": np.count_nonzero((truth == 2) & (new_lungs.labels == 0))
        * vol.voxel_volume_ml,
        "total_pct": 100.0 * (n_les - t_les) / t_les,
        "solid_pct": 100.0 * (n_sol - t_sol) / t_sol,
        "proportion_pp": 100.0 * n_les / np.count_nonzero(new_lungs.labels)
        - 100.0 * t_les / np.count_nonzero(lungs.labels),
        "overlap": np.count_nonzero((lesions > 0) & (truth > 0)) / t_les,
        "subpleural_flagged": new_lungs.info["subpleural"]["flagged"],
    }


def _in_slabs(vol: CTVolume, slab_mm: int) -> CTVolume:
    """``vol`` as a thick-slice reconstruction (benchmarks/evaluate_accuracy.py, "thick
    slices")."""
    from lungvol.phantom import average_slabs

    slabs = average_slabs(vol.hu, slab_mm, vol.spacing_mm[0])
    return as_volume(np.rint(slabs).astype(np.int16), (float(slab_mm), *vol.spacing_mm[1:]))


@pytest.fixture(scope="module")
def chest_5mm(chest):
    """The normal chest in 5 mm slabs: lesion proportion with the thick-slice surface rule
    and without it."""

    thick = _in_slabs(chest[0], 5)
    off = dataclasses.replace(CFG, lesions=dataclasses.replace(
        CFG.lesions, thick_slice_surface_rule=False))
    out = {}
    for name, cfg in (("rule", CFG), ("off", off)):
        lungs, lesions = segment_masks(thick, cfg)
        out[name] = 100.0 * np.count_nonzero(lesions.labels) / np.count_nonzero(lungs.labels)
        out[f"{name}_info"] = lesions.info
    return out


def test_thick_slice_surface_rule_on_the_normal_chest_in_5mm_slabs(chest_5mm):
    """5 mm slabs: the diaphragm dome's and apex's partial volume read as ground glass
    (3.82 % without the rule, 2.08 % with it; 0.31 % at 2 mm; session 20; 1.90 % with
    session 21's extension width gate)."""
    assert chest_5mm["off"] > 3.0, chest_5mm["off"]
    assert chest_5mm["rule"] < 2.5, chest_5mm["rule"]
    assert chest_5mm["rule_info"]["slice_facing_partial_volume_removed_ml"] > 30.0
    assert chest_5mm["off_info"]["slice_facing_partial_volume_removed_ml"] == 0.0


@pytest.mark.xfail(
    strict=True,
    reason="known gap (2026-12-06 session 21): the normal chest in 5 mm slabs reads 1.90 % "
    "lesion (2.08 % before session 21's extension width gate; 0.32 % at 2 mm): hilar "
    "vessels smeared across the slice and the dome's partial volume under lung that is "
    "itself a little dense; flagged thick_slices_lesion_bias "
    "(docs/segmentation.md, 'Thick slices')",
)
def test_real_normal_chest_in_5mm_slabs_is_a_normal_ct(chest_5mm):
    assert chest_5mm["rule"] < 1.0, chest_5mm["rule"]


def test_real_chest_inserted_lesions_15pct(chest):
    """Targets: total <= 10 %, proportion <= 1 pp; measured -1.7 %, -0.16 pp (2026-12-05
    session 12; session 11 -0.6 %, 0.00 pp at another block phase); +0.5 %, +0.13 pp with
    session 16's solid shell; +3.0 %, +0.53 pp with session 17's surface threshold (the
    mask keeps the half-lung voxels at the pleura, 84 mL here, and the ground glass counted
    in them next to inserted lesion is not in this insertion's truth: docs/segmentation.md,
    "The lung surface threshold"); +3.7 %, +0.62 pp with session 28's dense plaques. The
    solid target is the test below."""
    err = _inserted(chest, 15.0, 3.0, seed=12)
    # Lesions at the pleura that the mask follows do not look like a layer left out
    # (subpleural excess -0.1 mm, session 14).
    assert not err["subpleural_flagged"]
    assert abs(err["total_pct"]) <= 10.0, err
    assert abs(err["proportion_pp"]) <= 1.0, err
    assert err["overlap"] >= 0.75, err



def test_solid_at_the_surface_estimates_what_the_lung_mask_leaves_out(chest):
    """Inserted solid that replaces the lung surface is partly outside the lung mask (the
    boundary is invisible); the scan is flagged, and solid_at_surface_ml is of the size of
    the solid left out (session 11: 34.5 mL against 28.5 mL)."""
    err = _inserted(chest, 15.0, 3.0, seed=12)
    assert err["surface_flagged"], err
    assert 0.5 * err["solid_outside_ml"] <= err["surface_ml"] <= 2.0 * err["solid_outside_ml"]


def test_real_chest_inserted_lesions_15pct_solid(chest):
    """Target 15 %: -4.6 % since session 16's solid shell (-15.9 % before: 28.5 mL of
    inserted solid outside the lung mask at the lung surface, where lesion and chest wall
    have the same HU; docs/segmentation.md, "Solid shell"); -10.6 % with session 17's
    surface threshold; -6.6 % with session 28's dense plaques."""
    err = _inserted(chest, 15.0, 3.0, seed=12)
    assert abs(err["solid_pct"]) <= 15.0, err


def test_real_chest_inserted_lesions_15pct_in_sharp_kernel_noise(chest):
    """The same scan with white noise of SD 100 HU added (aerated-lung noise index 50 HU):
    the lesion stage smooths it to its calibrated noise level first (Gaussian sigma
    0.83 mm). Measured total -8.3 %, solid -24.5 % (session 12; -7.8 to -9.1 % over ten
    block phases); without the adaptation -53 % and -47 %. Session 16 (the solid shell):
    -5.9 %, solid -12.4 %, proportion -0.81 pp (-1.18 before; the lesion stage alone moves
    this case by 0.37 pp between block phases, so the margin is small). Session 17 (the
    surface threshold): -3.4 %, solid -18.9 %, -0.41 pp. Since 0.6.5 the opening's bias
    chooses the smoothing (sigma 0.94 mm, the HU bands half of it; the evaluation's version
    of this case, section 7: -1.7 %, -0.22 pp)."""
    err = _inserted(chest, 15.0, 3.0, seed=12, noise_sd_hu=100.0)
    assert abs(err["total_pct"]) <= 10.0, err
    assert abs(err["proportion_pp"]) <= 1.0, err


def _noisy_on_pixels(hu: np.ndarray, spacing_mm, pixel_mm: float):
    """``hu`` with white noise of SD 100 HU, resampled in-plane (linear) to ``pixel_mm``
    pixels (benchmarks/evaluate_accuracy.py, section 13); returns (CT volume, resampler)."""
    zoom = (1.0, spacing_mm[1] / pixel_mm, spacing_mm[2] / pixel_mm)

    def resampled(array: np.ndarray) -> np.ndarray:
        return ndimage.zoom(np.asarray(array, np.float32), zoom, order=1, mode="nearest",
                            grid_mode=True)

    coarse = np.rint(resampled(_with_noise(hu, 100.0))).astype(np.int16)
    spacing = (spacing_mm[0], *(s * n / m for s, n, m in zip(
        spacing_mm[1:], hu.shape[1:], coarse.shape[1:], strict=True)))
    return as_volume(coarse, spacing), resampled


def test_real_chest_in_noise_on_pixels_over_1mm_reads_as_on_its_own(chest):
    """The noisy case above resampled to 1.02 mm pixels, where the background grid's blocks
    are single pixels and the ball holds about four times as many: smoothed by its noise
    index (lungvol 0.6.4) it read -30.2 % (-4.50 pp, evaluation section 13); smoothed by
    the opening bias -0.8 %, -0.07 pp (session 25)."""
    from lungvol.phantom import insert_lesions

    vol, lungs = chest
    hu, truth, _ = insert_lesions(vol.hu, lungs.labels, spacing_mm=vol.spacing_mm, seed=12,
                                  lesion_pct=15.0, solid_pct=3.0)
    coarse, resampled = _noisy_on_pixels(hu, vol.spacing_mm, 1.02)
    assert coarse.spacing_mm[1] > 1.0
    new_lungs, lesions = segment_masks(coarse, CFG)
    t_les = np.count_nonzero(resampled(truth > 0) >= 0.5)
    t_lung = np.count_nonzero(resampled(lungs.labels > 0) >= 0.5)
    n_les = np.count_nonzero(lesions.labels)
    total_pct = 100.0 * (n_les - t_les) / t_les
    proportion_pp = 100.0 * n_les / np.count_nonzero(new_lungs.labels) - 100.0 * t_les / t_lung
    assert lesions.info["noise_smoothing_measure"] == "opening_bias"
    assert abs(total_pct) <= 10.0, (total_pct, proportion_pp)
    assert abs(proportion_pp) <= 1.0, (total_pct, proportion_pp)


def test_real_normal_chest_in_noise_on_1_05mm_pixels_stays_normal(chest):
    """The same noise at 1.05 mm pixels needs about 1.0 mm of smoothing to calibrate the
    opening; applied to the HU bands too it widened vessel skirts into the ground-glass
    band and the normal chest read 1.11 % (session 25, first try); the bands see half of
    it (lesions.noise_band_fraction): 0.57 %."""
    vol, _ = chest
    coarse, _ = _noisy_on_pixels(vol.hu, vol.spacing_mm, 1.05)
    lungs, lesions = segment_masks(coarse, CFG)
    assert lesions.info["noise_smoothing_sigma_mm"] > 0.9
    assert 100.0 * np.count_nonzero(lesions.labels) / np.count_nonzero(lungs.labels) < 1.0


def test_real_normal_chest_in_noise_stays_near_normal(chest):
    """With white noise of SD 100 HU the normal chest reads 0.45 % (0.32 % without noise;
    session 12; 0.70 / 0.31 % with session 17's surface threshold; 0.61 / 0.39 % at session
    11's block phase): the smoothing blurs vessel skirts into the ground-glass band. Before
    the vessel-segment rule 1.12 % (session 7); its ring
    test leaves the widened skirt out."""
    vol, _ = chest
    noisy = as_volume(_with_noise(vol.hu, 100.0), vol.spacing_mm)
    lungs = segment_lungs(noisy, CFG.lungs)
    lesions = segment_lesions(noisy, lungs, CFG.lesions)
    assert lesions.info["noise_smoothing_sigma_mm"] > 0
    assert lesions.info["vessel_segments_removed_ml"] > 10.0
    proportion = 100.0 * np.count_nonzero(lesions.labels) / np.count_nonzero(lungs.labels)
    assert proportion < 1.0


def _inplane_depth_mm(mask: np.ndarray, spacing_mm) -> np.ndarray:
    """Depth inside ``mask`` (mm) measured within each axial slice."""

    depth = np.zeros(mask.shape, np.float32)
    for k in np.flatnonzero(mask.any(axis=(1, 2))):
        depth[k] = ndimage.distance_transform_edt(mask[k], sampling=spacing_mm[1:])
    return depth


def _simulated_effusion(vol: CTVolume, lungs: np.ndarray):
    """A right pleural effusion on the real chest: in the lower 45 % of the right lung, lung
    voxels within a posterior meniscus (in-plane depth below the pleura up to 0.6 x the
    distance behind a coronal level at 55 % of the lung's AP extent) become fluid
    (12 +/- 15 HU), and 4 mm of lung next to it compressive atelectasis (35 +/- 20 HU).
    Returns (CT, fluid, atelectasis)."""

    right = lungs == 1
    zs = np.flatnonzero(right.any(axis=(1, 2)))
    z_top = zs[0] + int(0.45 * (zs[-1] - zs[0]))
    ys = np.nonzero(right)[1]
    y_level = ys.min() + 0.55 * (ys.max() - ys.min())
    y = np.arange(right.shape[1])[None, :, None]
    z = np.arange(right.shape[0])[:, None, None]
    thick_mm = np.clip((y - y_level) * vol.spacing_mm[1] * 0.6, 0, None) * np.clip(
        (z_top - z) / (0.3 * (z_top - zs[0])), 0, 1)
    depth_mm = _inplane_depth_mm(right, vol.spacing_mm)  # thick_mm is 0 above z_top
    fluid = right & (depth_mm > 0) & (depth_mm <= thick_mm)
    near = ndimage.distance_transform_edt(~fluid, sampling=vol.spacing_mm) <= 4.0
    atelectasis = right & ~fluid & near & (z <= z_top)
    rng = np.random.default_rng(0)
    hu = vol.hu.astype(np.float32)
    hu[fluid] = 12.0 + rng.normal(0.0, 15.0, np.count_nonzero(fluid))
    hu[atelectasis] = 35.0 + rng.normal(0.0, 20.0, np.count_nonzero(atelectasis))
    edited = ndimage.binary_dilation(fluid | atelectasis, iterations=2)
    hu = np.where(edited, ndimage.gaussian_filter(hu, 0.5), vol.hu)
    return as_volume(hu.astype(np.int16), vol.spacing_mm), fluid, atelectasis


def test_pleural_effusion_is_neither_lung_nor_lesion(chest):
    """Fluid (12 HU) lies in the solid band; counted as lung it would read as solid lesion.
    Measured (session 7): 359 mL of fluid, none of it in the lung mask or the lesions; the
    lung mask is 1.3 % below the lung without the fluid, because the 67 mL of compressive
    atelectasis next to it (as dense as the fluid) is left out too."""
    vol, lungs = chest
    ct, fluid, atelectasis = _simulated_effusion(vol, lungs.labels)
    new_lungs, lesions = segment_masks(ct, CFG)
    assert not new_lungs.info["subpleural"]["flagged"]  # excess -1.15 mm (session 14)
    n_fluid = np.count_nonzero(fluid)
    assert np.count_nonzero(fluid & (new_lungs.labels > 0)) <= 0.05 * n_fluid
    assert np.count_nonzero(fluid & (lesions.labels > 0)) <= 0.02 * n_fluid
    truth_lung = np.count_nonzero((lungs.labels > 0) & ~fluid)
    assert abs(np.count_nonzero(new_lungs.labels) - truth_lung) <= 0.03 * truth_lung


def test_an_effusion_beside_a_recovered_subpleural_layer_stays_out(chest):
    """The subpleural step grows the lung towards the ribs by the local excess, up to 15 mm,
    into tissue of -750..+100 HU: fluid qualifies. With the 15 mm band and its 4 mm
    consolidation layer inserted and the right effusion simulated on top, the scan is
    flagged and the layer added (312 mL), but only 9 mL of the 359 mL of fluid comes into
    the lung mask (session 14): the surface against the effusion is not costal lesion-facing
    surface."""
    from lungvol.phantom import insert_subpleural_band

    vol, lungs = chest
    hu, _truth, _ = insert_subpleural_band(vol.hu, lungs.labels, spacing_mm=vol.spacing_mm,
                                           seed=5, depth_mm=15.0, solid_depth_mm=4.0)
    ct, fluid, _ = _simulated_effusion(as_volume(hu, vol.spacing_mm), lungs.labels)
    new_lungs, _lesions = segment_masks(ct, CFG)
    info = new_lungs.info["subpleural"]
    assert info["flagged"], info
    assert info["recovered_ml"] > 200.0, info
    assert np.count_nonzero(fluid & (new_lungs.labels > 0)) <= 0.05 * np.count_nonzero(fluid)


def test_real_chest_inserted_lesions_30pct(chest):
    """Targets: total <= 10 %, solid <= 15 %; measured +2.3 %, -12.6 % (session 16, the
    solid shell; solid -22.3 % before: 22 % of inserted solid lay outside the lung mask where
    dense lesion replaces the lung surface); +3.9 %, -13.4 % with session 17's surface
    threshold; +3.7 %, -13.4 % with session 21's extension width gate; +4.8 %, -8.6 % with
    session 28's dense plaques. The proportion is the strict xfail below."""
    err = _inserted(chest, 30.0, 6.0, seed=13)
    assert abs(err["total_pct"]) <= 10.0, err
    assert abs(err["solid_pct"]) <= 15.0, err


@pytest.mark.xfail(
    strict=True,
    reason="known gap (2026-12-07 session 28): at 30 % lesion / 6 % solid the proportion reads "
    "+1.76 pp (target 1 pp; +1.43 before session 28's dense plaques took back missed solid, "
    "+1.52 before session 21's extension width gate, +1.03 before "
    "session 17's surface threshold, +0.62 before session 16's solid shell; eight seeds: "
    "mean +1.48 pp, 1 of 8 within). The lesion reads "
    "+4.8 %: ground glass along vessel skirts, and in the "
    "half-lung voxels at the pleura next to inserted lesion, which this insertion leaves at "
    "their own HU and out of its truth (docs/segmentation.md, 'Solid shell', 'The lung "
    "surface threshold')",
)
def test_real_chest_inserted_lesions_30pct_proportion(chest):
    err = _inserted(chest, 30.0, 6.0, seed=13)
    assert abs(err["proportion_pp"]) <= 1.0, err


def test_real_chest_inserted_lesions_50pct(chest):
    """Severe diffuse disease (50 % lesion, 10 % solid; session 15): total +3.3 %, solid
    -7.8 % (session 16, the solid shell; +1.5 / -16.8 % before); +4.3 / -12.1 % with session
    17's surface threshold; +4.8 / -10.2 % with session 28's dense plaques. The proportion is
    the strict xfail below."""
    err = _inserted(chest, 50.0, 10.0, seed=14)
    assert abs(err["total_pct"]) <= 10.0, err
    assert abs(err["solid_pct"]) <= 15.0, err


@pytest.mark.xfail(
    strict=True,
    reason="known gap (2026-12-07 session 28): at 50 % lesion / 10 % solid the proportion reads "
    "+3.19 pp (+2.96 before session 28's dense plaques, +2.93 at session 20, +2.22 before "
    "session 17's surface threshold, +1.78 "
    "before session 16's solid shell): the lung mask is 1.5 % short (5307 of 5386 mL) "
    "where lesion replaces the lung surface, and the lesion reads +4.8 % "
    "(docs/segmentation.md, 'Lesion at the lung surface', 'Solid shell', 'The lung surface "
    "threshold')",
)
def test_real_chest_inserted_lesions_50pct_proportion(chest):
    err = _inserted(chest, 50.0, 10.0, seed=14)
    assert abs(err["proportion_pp"]) <= 1.0, err


@pytest.mark.xfail(
    strict=True,
    reason="known gap (2026-12-05 session 7): with lesions inserted as plain blobs "
    "(phantom.insert_blobs, truth = the blob region) instead of insert_lesions, the real chest "
    "at 15 % reads total lesion +18.1 %, proportion +2.79 pp (session 28; +18.6 % / +2.81 pp "
    "with session 21's extension width gate; +21.3 % / +3.22 pp at session 17, +22.9 % / "
    "+3.47 pp at session 16, +20.4 % / "
    "+3.13 pp at session 12, recall 0.98; "
    "+22.5 % before the vessel-segment rule, session 8): ground glass grown "
    "along vessels and into dependent lung next to lesions, plus the scan's own 20 mL "
    "(docs/segmentation.md, 'A second insertion model')",
)
def test_real_chest_inserted_blobs_15pct(chest):
    from lungvol.phantom import insert_blobs

    vol, lungs = chest
    hu, truth, _ = insert_blobs(vol.hu, lungs.labels, spacing_mm=vol.spacing_mm, seed=22,
                                lesion_pct=15.0)
    with_blobs = as_volume(hu, vol.spacing_mm)
    new_lungs, lesion_mask = segment_masks(with_blobs, CFG)
    lesions = lesion_mask.labels
    n_les, t_les = np.count_nonzero(lesions), np.count_nonzero(truth)
    assert abs(n_les - t_les) <= 0.10 * t_les, f"{100 * (n_les - t_les) / t_les:+.1f} %"
    proportion_pp = (100.0 * n_les / np.count_nonzero(new_lungs.labels)
                     - 100.0 * t_les / np.count_nonzero(lungs.labels))
    assert abs(proportion_pp) <= 1.0, f"{proportion_pp:+.2f} pp"


_BANDS: dict = {}


def _band(chest, **kw) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
    """Insert a subpleural band (phantom.insert_subpleural_band), segment as ``lungvol
    segment`` does; truth, lungs, lesions, the truth lungs and the subpleural summary
    (once per case for the module)."""
    from lungvol.phantom import insert_subpleural_band

    key = tuple(sorted(kw.items()))
    if key not in _BANDS:
        vol, lungs = chest
        hu, truth, _ = insert_subpleural_band(vol.hu, lungs.labels, spacing_mm=vol.spacing_mm,
                                              seed=5, **kw)
        new_lungs, lesions = segment_masks(as_volume(hu, vol.spacing_mm), CFG)
        _BANDS[key] = (truth, new_lungs.labels, lesions.labels, lungs.labels,
                       new_lungs.info["subpleural"])
    return _BANDS[key]


def test_real_chest_subpleural_ground_glass_band(chest):
    """A third insertion model (session 13): ground glass along the posterior costal pleura
    of the lower two thirds, 8 mm deep (20 % of the lung). Measured +1.2 %, +0.25 pp;
    -3.0 %, -0.61 pp with session 17's surface threshold."""
    truth, lungs, lesions, lungs0, info = _band(chest, depth_mm=8.0)
    assert not info["flagged"], info  # excess +0.5 mm (session 14)
    n_les, t_les = np.count_nonzero(lesions), np.count_nonzero(truth)
    assert abs(n_les - t_les) <= 0.10 * t_les, f"{100 * (n_les - t_les) / t_les:+.1f} %"
    proportion_pp = 100.0 * n_les / np.count_nonzero(lungs) - 100.0 * t_les / np.count_nonzero(
        lungs0
    )
    assert abs(proportion_pp) <= 1.0, f"{proportion_pp:+.2f} pp"
    assert dice(lungs > 0, lungs0 > 0) >= 0.99


def test_real_chest_subpleural_consolidation_layer_is_recovered(chest):
    """A band 15 mm deep whose outer 4 mm is consolidation, along the posterior lower lung
    (the typical COVID-19 pattern at its most uniform). The lung stage leaves the layer out
    (lung 4746 instead of 5301 mL, lesion -25.5 %, -5.66 pp, solid -93 %: session 13); the
    subpleural step finds the lung surface 4.4 mm further from the ribs where it faces
    lesion and grows it back (session 14: lung 5131 mL, lesion -4.0 %, -0.26 pp; session 17:
    5275 of 5386 mL, -0.4 %, +0.56 pp). Targets:
    lesion 10 %, proportion 1 pp; the solid target is the strict xfail below."""
    truth, lungs, lesions, lungs0, info = _band(chest, depth_mm=15.0, solid_depth_mm=4.0)
    assert info["flagged"], info
    assert info["excess_mm"] > 3.5, info
    n_les, t_les = np.count_nonzero(lesions), np.count_nonzero(truth)
    assert abs(n_les - t_les) <= 0.10 * t_les, f"{100 * (n_les - t_les) / t_les:+.1f} %"
    proportion_pp = 100.0 * n_les / np.count_nonzero(lungs) - 100.0 * t_les / np.count_nonzero(
        lungs0
    )
    assert abs(proportion_pp) <= 1.0, f"{proportion_pp:+.2f} pp"
    assert np.count_nonzero(lungs) >= 0.95 * np.count_nonzero(lungs0)


@pytest.mark.xfail(
    strict=True,
    reason="known gap (2026-12-06 session 21): the subpleural band's 4 mm consolidation "
    "layer reads solid -19.5 % (target 15 %; -19.7 % until 0.6.7, -19.2 % at session 20, "
    "-27.5 % before "
    "session 17's surface threshold, -28.3 % before session 16; -93 % before the "
    "subpleural step). The step grows the mask back only along the costal pleura (the gap "
    "to the ribs); the layer along the diaphragm and the paravertebral surface, 233 mL "
    "more than 20 mm from bone, has nothing to measure against; 127 mL of chest wall comes "
    "in where the natural gap is wider than the patient's median (docs/segmentation.md, "
    "'A subpleural consolidation layer')",
)
def test_real_chest_subpleural_consolidation_layer_solid(chest):
    truth, _lungs, lesions, _lungs0, _info = _band(chest, depth_mm=15.0, solid_depth_mm=4.0)
    n_sol, t_sol = np.count_nonzero(lesions == 2), np.count_nonzero(truth == 2)
    assert abs(n_sol - t_sol) <= 0.15 * t_sol, f"solid {100 * (n_sol - t_sol) / t_sol:+.1f} %"


def test_real_chest_subpleural_consolidation_without_ground_glass_is_flagged(chest):
    """The layer below is lost, but not silently: the posterior costal surface lies 4.2 mm
    further from the ribs than the anterior one (the normal chest: 1.6 mm; session 14)."""
    _truth, _lungs, _lesions, _lungs0, info = _band(chest, depth_mm=5.0, solid_depth_mm=4.0)
    assert info["dependent_flagged"], info
    assert not info["flagged"], info
    assert info["recovered_ml"] == 0.0


@pytest.mark.xfail(
    strict=True,
    reason="known gap (2026-12-06 session 14): a 5 mm band that is consolidation but for its "
    "inner 1 mm, along the posterior lower lung: the lung stage stops at the consolidation "
    "(lung 4863 instead of 5386 mL) and the lesion reads -97.2 % (-12.2 pp; -97.4 % until "
    "0.6.7). The mask's "
    "surface there is aerated lung, so the subpleural step has no lesion-facing surface to "
    "measure (1.4 % of the costal surface) and the wider gap goes into its aerated reference "
    "(5.6 instead of 3.4 mm). The dependent-gap test flags it (posterior costal surface +4.2 "
    "mm against the anterior) but adds nothing (docs/segmentation.md, 'The gap to the ribs')",
)
def test_real_chest_subpleural_consolidation_without_ground_glass(chest):
    truth, lungs, lesions, lungs0, _info = _band(chest, depth_mm=5.0, solid_depth_mm=4.0)
    n_les, t_les = np.count_nonzero(lesions), np.count_nonzero(truth)
    assert abs(n_les - t_les) <= 0.10 * t_les, f"{100 * (n_les - t_les) / t_les:+.1f} %"
    proportion_pp = 100.0 * n_les / np.count_nonzero(lungs) - 100.0 * t_les / np.count_nonzero(
        lungs0
    )
    assert abs(proportion_pp) <= 1.0, f"{proportion_pp:+.2f} pp"


def _label(path) -> np.ndarray:
    return np.asarray(read_ct(path, config=IOConfig(air_hu_max=1e9, min_value_hu_max=1e9)).hu)


def test_real_tumour_is_inside_the_lung_and_solid(real_ct):
    """pyradiomics lung2: a 48 mL tumour; most of it must be solid lesion (measured 92 %
    inside the lung mask, 87 % solid)."""
    folder = real_ct / "chest-ct-tumour-nrrd"
    vol = read_ct(folder / "lung2_image.nrrd")
    tumour = _label(folder / "lung2_label.nrrd") > 0
    lungs = segment_lungs(vol, CFG.lungs)
    lesions = segment_lesions(vol, lungs, CFG.lesions)
    n = np.count_nonzero(tumour)
    assert np.count_nonzero(tumour & (lungs.labels > 0)) >= 0.85 * n
    assert np.count_nonzero(tumour & (lesions.labels == 2)) >= 0.75 * n


def test_heart_is_not_taken_into_the_left_lung_on_a_thick_slice_scan(real_ct):
    """pyradiomics lung1 (5 mm slices, one 1.4 mL nodule): the pleural hull once added the
    heart in the left lung's cardiac notch (65 mL of 0-80 HU tissue in the left lung, 97 mL
    of solid lesion outside the nodule); with the midline-facing gap rule 17 mL and 27 mL
    (session 5). Thresholds sit halfway."""
    folder = real_ct / "chest-ct-tumour-nrrd"
    vol = read_ct(folder / "lung1_image.nrrd")
    nodule = _label(folder / "lung1_label.nrrd") > 0
    lungs = segment_lungs(vol, CFG.lungs)
    lesions = segment_lesions(vol, lungs, CFG.lesions)
    soft_tissue = (vol.hu >= 0) & (vol.hu <= 80)
    left_soft_ml = np.count_nonzero(soft_tissue & (lungs.labels == 2)) * vol.voxel_volume_ml
    solid_elsewhere_ml = np.count_nonzero((lesions.labels == 2) & ~nodule) * vol.voxel_volume_ml
    assert left_soft_ml < 40.0
    assert solid_elsewhere_ml < 60.0
    assert np.count_nonzero(nodule & (lesions.labels == 2)) >= 0.75 * np.count_nonzero(nodule)


def test_pneumothorax_is_flagged(chest):
    """A simulated anterior pneumothorax (right-lung voxels within 15 mm of the anterior
    pleura set to air, 687 mL): it is internal air, so the lung mask takes it in (lung
    volume +15 %); the lung_air_pocket QC flag says so. The plain scan has no such flag."""
    from lungvol.quantification import measure_scan

    vol, lungs = chest
    right = lungs.labels == 1
    depth = _inplane_depth_mm(right, vol.spacing_mm)
    ys = np.nonzero(right)[1]
    anterior = np.arange(right.shape[1])[None, :, None] < 0.5 * (ys.min() + ys.max())
    air = right & (depth <= 15.0) & anterior
    hu = vol.hu.copy()
    hu[air] = -1000 + np.random.default_rng(0).normal(0, 20, np.count_nonzero(air))
    flags = {}
    for name, ct in (("plain", vol), ("pneumothorax", as_volume(hu, vol.spacing_mm))):
        new_lungs = segment_lungs(ct, CFG.lungs)
        lesions = segment_lesions(ct, new_lungs, CFG.lesions)
        metrics = measure_scan(ct, new_lungs, lesions, CFG, timings_s={})
        flags[name] = [f for f in metrics.qc_flags if f.startswith("lung_air_pocket")]
    assert flags["plain"] == []
    assert len(flags["pneumothorax"]) == 1


def test_severely_emphysematous_lungs_are_kept(chest):
    """The real chest with its aerated lung (voxels below -700 HU) lowered by 120 HU: median
    lung -937 HU, 42 % of lung voxels below -950 HU. Before session 15 the gas rule took the
    right lung for gas (flag lung_missing_right); the bronchi enter it, so it is lung."""
    vol, lungs = chest
    lung = lungs.labels > 0
    hu = vol.hu.copy()
    airy = lung & (hu < -700)
    hu[airy] = np.maximum(-1024, hu[airy].astype(np.int32) - 120).astype(hu.dtype)
    emphysema = segment_lungs(as_volume(hu, vol.spacing_mm), CFG.lungs)
    assert emphysema.info["airy_lung_kept_ml"] > 1000, emphysema.info["airy_lung_kept_ml"]
    for label in (1, 2):
        assert dice(emphysema.labels == label, lungs.labels == label) >= 0.99


def test_a_brighter_calibration_keeps_the_airways_out_and_the_scan_normal(chest):
    """The real chest 24 HU brighter everywhere (calibration drift; its tracheal air then
    reads about -936 HU in 2 mm blocks). Before session 15 the trachea seed (-950 HU) was
    not found: trachea and bronchi joined the lungs (+194 mL) and their walls the lesion
    (0.32 -> 1.52 %, no longer a normal CT). Measured now: Dice 0.996, 0.41 %."""
    vol, lungs = chest
    brighter = as_volume((vol.hu.astype(np.int32) + 24).astype(np.int16), vol.spacing_mm)
    new_lungs, lesions = segment_masks(brighter, CFG)
    assert new_lungs.info["trachea_found"]
    assert dice(new_lungs.labels > 0, lungs.labels > 0) >= 0.99
    proportion_pct = 100.0 * np.count_nonzero(lesions.labels) / np.count_nonzero(new_lungs.labels)
    assert proportion_pct < 1.0, proportion_pct


@pytest.mark.parametrize(("blood_gain_hu", "vessel_gain_hu"),
                         [(220.0, 0.0), (220.0, 200.0), (550.0, 200.0)])
def test_a_contrast_enhanced_chest_keeps_its_lungs_and_is_flagged(
    chest, blood_gain_hu, vessel_gain_hu
):
    """The real chest with its blood pool +220 HU (``enhance_contrast``; 614 mL), alone and
    with the lung vessels enhanced. Before session 32 the pool, bridged to the spine by the
    aorta, joined the skeleton's bone component: hila and mediastinum went into the lungs
    (5440 mL, Dice 0.995), lesion 1.28 / 1.40 %, not a normal CT, no flag. Measured now:
    Dice 1.000 / 0.997, 0.31 / 0.43 %, flagged contrast_enhanced (548 mL); with
    lungs.blood_core_min_ml 0 (the old rule) this test fails: 0.995 / 0.992, 1.28 / 1.42 %.
    CT angiography (the pool +550 HU, near 580 HU, whose noise reaches the cortical level):
    until session 33 the pool stayed bone (Dice 0.991, 1.44 %, no flag); now 0.997, 0.44 %,
    flagged (607 mL); with lungs.blood_cortex_margin_hu -.inf (the old rule) it fails again."""
    from lungvol.phantom import enhance_contrast
    from lungvol.quantification import measure_scan

    vol, lungs = chest
    hu, _pool = enhance_contrast(vol.hu, lungs.labels, spacing_mm=vol.spacing_mm,
                                 blood_gain_hu=blood_gain_hu, vessel_gain_hu=vessel_gain_hu)
    ct = as_volume(hu.astype(np.int16), vol.spacing_mm)
    new_lungs, lesions = segment_masks(ct, CFG)
    metrics = measure_scan(ct, new_lungs, lesions, CFG, timings_s={})
    assert dice(new_lungs.labels > 0, lungs.labels > 0) >= 0.995
    assert metrics.normal_ct, metrics.lesion_proportion_pct
    assert any(f.startswith("contrast_enhanced") for f in metrics.qc_flags)
    assert new_lungs.info["enhanced_blood_ml"] >= 400.0


@pytest.mark.parametrize("case", ["dense", "uneven"])
def test_a_contrast_pool_kept_as_bone_is_flagged_and_the_advised_rerun_reads_it(chest, case):
    """Two CT-angiography pools the bone map keeps as bone, so the lung stage takes
    mediastinum in (not a normal CT), silently until session 34:
    - dense: the real chest's blood pool +800 HU (median 833 HU), over lungs.blood_max_hu
      (Dice 0.991, 1.50 %): flagged dense_homogeneous_bone (484 mL, block IQR 22 HU, 26 mm
      deep); the advised rerun (blood_max_hu 950) reads Dice 0.996, 0.47 %;
    - uneven: its front half +600 HU, its back half +240 HU, no wall between (one core, IQR
      ~360 HU: neither uniform nor blood; Dice 0.992, 1.40 %): flagged thick_bone_core (26 mm
      deep; no bone is 20 mm deep); the advised rerun (blood_min_depth_mm 20) reads Dice
      0.995, 0.47 %.
    Both reruns flag contrast_enhanced and not the first flag. Lung vessels +200 HU."""
    import dataclasses

    import yaml

    from lungvol.phantom import enhance_contrast

    vol, lungs = chest
    if case == "dense":
        hu, _pool = enhance_contrast(vol.hu, lungs.labels, spacing_mm=vol.spacing_mm,
                                     blood_gain_hu=800.0, vessel_gain_hu=200.0)
        code = "dense_homogeneous_bone:"
    else:
        base, pool = enhance_contrast(vol.hu, lungs.labels, spacing_mm=vol.spacing_mm,
                                      blood_gain_hu=0.0, vessel_gain_hu=200.0)
        _, pool = enhance_contrast(vol.hu, lungs.labels, spacing_mm=vol.spacing_mm,
                                   blood_gain_hu=1.0, vessel_gain_hu=200.0)
        y = np.indices(vol.shape, sparse=True)[1]
        front = y < np.median(np.nonzero(pool)[1])
        hu = np.where(pool, base + np.where(front, 600, 240), base)
        code = "thick_bone_core:"
    ct = as_volume(np.clip(hu, -1024, 3071).astype(np.int16), vol.spacing_mm)
    first, _ = segment_masks(ct, CFG)
    flagged = [w for w in first.info["warnings"] if w.startswith(code)]
    assert len(flagged) == 1, first.info["warnings"]
    assert first.info["suspect_bone_core_ml"] >= 400.0
    assert first.info["enhanced_blood_ml"] < 50.0  # the pool is bone: the failure flagged
    advice = yaml.safe_load(flagged[0].split("holding ", 1)[1])["lungs"]
    rerun_cfg = dataclasses.replace(CFG, lungs=dataclasses.replace(CFG.lungs, **advice))
    again, lesions = segment_masks(ct, rerun_cfg)
    assert dice(again.labels > 0, lungs.labels > 0) >= 0.994
    proportion_pct = 100.0 * np.count_nonzero(lesions.labels) / np.count_nonzero(again.labels)
    assert proportion_pct < 1.0, proportion_pct
    assert again.info["enhanced_blood_ml"] >= 400.0
    assert not any(w.startswith(code) for w in again.info["warnings"])


def test_the_enhanced_heart_of_the_lidc_slice_is_blood_not_lung(real_ct):
    """The contrast-enhanced LIDC slice of lidc-two-slices-dicom (left ventricle about
    560 HU: CT-angiography blood) repeated into 80 slices of 1 mm (ad hoc: one slice is not
    a chest). Until session 33 the ventricle's noise reached the cortical level, so it was
    bone, and the left lung held a 6-7 mm strip of the heart's border: 1233 of its pixels
    over -100 HU (enhanced_blood_ml 88). Now the ventricle is blood (301 mL, flagged) and
    357 pixels are left over -100 HU, the lung's vessels (the right lung: 1200, unchanged)."""
    vol = read_ct(real_ct / "lidc-two-slices-dicom", config=IOConfig(min_slices=2))
    hu = np.repeat(vol.hu[:1], 80, axis=0)
    lungs, _lesions = segment_masks(as_volume(hu, (1.0, *vol.spacing_mm[1:])), CFG)
    mid, dense = lungs.labels[40], hu[40] > -100
    assert lungs.info["enhanced_blood_ml"] >= 200.0
    assert any(w.startswith("contrast_enhanced") for w in lungs.info["warnings"])
    assert np.count_nonzero((mid == 2) & dense) <= 700
    assert np.count_nonzero(mid == 1) >= 30000


def test_a_field_of_view_that_cuts_the_lungs_is_flagged(chest):
    """Columns cut from both sides of the real chest: through the chest wall only (lungs
    whole: no flag), and 13-14 mm into each lung (125 mL of lung lost, 0.10 % of lung voxels
    on the border: unflagged before session 15, whose flag judges the contact area)."""
    from lungvol.quantification import measure_scan

    vol, _lungs = chest
    flags = {}
    for name, (x0, x1) in {"wall": (70, 441), "lungs": (110, 400)}.items():
        ct = as_volume(np.ascontiguousarray(vol.hu[:, :, x0:x1]), vol.spacing_mm)
        new_lungs, lesions = segment_masks(ct, CFG)
        metrics = measure_scan(ct, new_lungs, lesions, CFG, timings_s={})
        flags[name] = [f for f in metrics.qc_flags if f.startswith("lungs_cut_off_in_plane")]
    assert flags["wall"] == []
    assert len(flags["lungs"]) == 1
    assert "right" in flags["lungs"][0]
    assert "left" in flags["lungs"][0]


def test_dependent_consolidation_left_out_of_the_lungs_is_flagged(chest):
    """The posterior half of both lungs of the real chest raised to consolidation (-300 HU
    and denser), as in severe COVID-19 or ARDS. The lung stage leaves it out: lung 1969 of
    5301 mL, lesion 0.0 %, and before session 15 no flag ("normal CT"). Its posterior surface
    now lies about 100 mm in front of the ribs (normal chest 7.8 / 5.9 mm): flagged. Session
    16: the opacity behind the lungs is estimated (1166 mL, 89 % of it in the original lung
    mask: a lower bound of the 3332 mL left out), and the normal-CT call is withheld."""
    from lungvol.quantification import measure_scan

    vol, lungs = chest
    lung = lungs.labels > 0
    ys = np.flatnonzero(lung.any(axis=(0, 2)))
    posterior = lung & (np.arange(lung.shape[1])[None, :, None] >= (ys[0] + ys[-1]) / 2)
    hu = vol.hu.astype(np.float32)
    noise = np.random.default_rng(0).normal(0.0, 20.0, np.count_nonzero(posterior))
    hu[posterior] = np.maximum(hu[posterior], -300.0 + noise)
    consolidated = as_volume(hu.astype(np.int16), vol.spacing_mm)
    new_lungs, new_lesions = segment_masks(consolidated, CFG)
    summary = new_lungs.info["subpleural"]
    assert summary["posterior_gap_flagged"], summary
    assert min(summary["posterior_gap_right_mm"], summary["posterior_gap_left_mm"]) > 50.0
    estimate = new_lungs.outside_estimate
    assert estimate is not None
    missed = lung & (new_lungs.labels == 0)
    assert np.count_nonzero(estimate & lung) >= 0.8 * np.count_nonzero(estimate)
    assert np.count_nonzero(estimate & missed) >= 0.25 * np.count_nonzero(missed)
    for side in ("right", "left"):
        assert summary[f"dependent_opacity_{side}_ml"] > 300.0, summary
    metrics = measure_scan(consolidated, new_lungs, new_lesions, CFG, timings_s={})
    assert metrics.lesion_proportion_pct < 1.0
    assert not metrics.normal_ct
    assert any(f.startswith("normal_ct_withheld:") for f in metrics.qc_flags)
    plain_lungs, plain_lesions = segment_masks(vol, CFG)
    plain = plain_lungs.info["subpleural"]
    assert not plain["posterior_gap_flagged"], plain
    assert max(plain["posterior_gap_right_mm"], plain["posterior_gap_left_mm"]) < 10.0
    assert plain_lungs.outside_estimate is None
    assert measure_scan(vol, plain_lungs, plain_lesions, CFG, timings_s={}).normal_ct


def test_a_base_consolidated_flat_across_is_flagged(chest):
    """The lower third of the real chest's right lung raised to +30 HU (lobar pneumonia
    against the liver): no slice there has air left, so the lung stage leaves it out (lung
    -740 mL) and what is left reads 0.3 % lesion, a normal CT, unflagged before session 18
    (the posterior-gap test looks at mid-thorax slices). The mask's right base now ends
    square: 0 mm from base to half the largest cross-section (normal chest 46 / 36 mm)."""
    from lungvol.quantification import measure_scan

    vol, lungs = chest
    right = lungs.labels == 1
    zs = np.flatnonzero(right.any(axis=(1, 2)))
    base = right & (np.arange(right.shape[0])[:, None, None] <= zs[0] + (zs[-1] - zs[0]) / 3)
    hu = vol.hu.copy()
    hu[base] = np.rint(30 + np.random.default_rng(0).normal(0, 20, np.count_nonzero(base)))
    consolidated = as_volume(hu, vol.spacing_mm)
    new_lungs, new_lesions = segment_masks(consolidated, CFG)
    metrics = measure_scan(consolidated, new_lungs, new_lesions, CFG, timings_s={})
    lost_ml = np.count_nonzero(right & (new_lungs.labels != 1)) * vol.voxel_volume_ml
    assert lost_ml > 500.0
    assert metrics.lesion_proportion_pct < 1.0
    taper = metrics.lung_base_taper_mm
    assert taper["right"] < CFG.quantification.min_base_taper_mm <= taper["left"], taper
    codes = {f.split(":", 1)[0] for f in metrics.qc_flags}
    assert {"lung_base_truncated", "normal_ct_withheld"} <= codes
    assert not metrics.normal_ct
    plain_lungs, plain_lesions = segment_masks(vol, CFG)
    plain = measure_scan(vol, plain_lungs, plain_lesions, CFG, timings_s={})
    assert min(plain.lung_base_taper_mm.values()) >= 30.0, plain.lung_base_taper_mm
    assert "lung_base_truncated" not in {f.split(":", 1)[0] for f in plain.qc_flags}
    assert plain.normal_ct


def _consolidate_front_of_right_lung(
    chest, z_range: tuple[float, float], front: float, label: int = 1
):
    """The real chest with the right (``label`` 2: left) lung's front ``front`` (fraction of
    its anterior-posterior extent) between ``z_range`` (fractions of its height, 0 = base)
    at +30 HU, segmented and measured. Returns the region, the new lung mask and the
    metrics."""
    from lungvol.quantification import measure_scan

    vol, lungs = chest
    right = lungs.labels == label
    zs = np.flatnonzero(right.any(axis=(1, 2)))
    ys = np.flatnonzero(right.any(axis=(0, 2)))
    z = np.arange(right.shape[0])[:, None, None]
    y = np.arange(right.shape[1])[None, :, None]
    lo, hi = (zs[0] + f * (zs[-1] - zs[0]) for f in z_range)
    region = right & (z >= lo) & (z <= hi) & (y <= ys[0] + front * (ys[-1] - ys[0]))
    hu = vol.hu.copy()
    hu[region] = np.rint(30 + np.random.default_rng(0).normal(0, 20, np.count_nonzero(region)))
    consolidated = as_volume(hu, vol.spacing_mm)
    new_lungs, new_lesions = segment_masks(consolidated, CFG)
    metrics = measure_scan(consolidated, new_lungs, new_lesions, CFG, timings_s={})
    return region, new_lungs, metrics


def test_anterior_consolidation_left_out_of_the_lungs_is_flagged(chest):
    """The anterior upper part of the real chest's right lung (above mid-height, the front
    45 %) at +30 HU: the lung stage leaves it out (about 650 mL) and the rest read a normal
    CT with no flag before session 18. Its anterior surface now lies about 52 mm behind the
    anterior ribs (normal chest 2.0 / 9.8 mm): flagged, normal-CT call withheld."""
    region, new_lungs, metrics = _consolidate_front_of_right_lung(chest, (0.5 + 1e-6, 1.0), 0.45)
    summary = new_lungs.info["subpleural"]
    assert np.count_nonzero(region & (new_lungs.labels == 0)) * chest[0].voxel_volume_ml > 400.0
    assert summary["anterior_gap_flagged"], summary
    assert summary["anterior_gap_right_mm"] > 30.0
    assert summary["anterior_gap_left_mm"] < 15.0
    assert not summary["posterior_gap_flagged"]
    codes = {f.split(":", 1)[0] for f in metrics.qc_flags}
    assert {"anterior_opacity_outside_lung", "normal_ct_withheld"} <= codes
    assert metrics.lesion_proportion_pct < 1.0
    assert not metrics.normal_ct


def test_consolidated_middle_lobe_is_flagged(chest):
    """A middle-lobe-like region (the right lung's front 45 % between 10 and 50 % of its
    height, about 440 mL) at +30 HU, against the heart: the lung stage leaves it out and the
    median anterior gap does not move (3.9 mm); until session 19 a normal CT with no flag.
    The right lung's lower lateral front now lies about 57 mm behind the ribs (normal
    2.0 mm): flagged, normal-CT call withheld."""
    region, new_lungs, metrics = _consolidate_front_of_right_lung(chest, (0.1, 0.5), 0.45)
    summary = new_lungs.info["subpleural"]
    assert np.count_nonzero(region & (new_lungs.labels == 0)) * chest[0].voxel_volume_ml > 300.0
    assert summary["anterior_gap_right_mm"] < CFG.subpleural.max_anterior_gap_mm
    assert summary["anterior_lower_gap_right_mm"] > 40.0, summary
    codes = {f.split(":", 1)[0] for f in metrics.qc_flags}
    assert {"anterior_opacity_outside_lung", "normal_ct_withheld"} <= codes
    assert not metrics.normal_ct


def test_consolidated_lingula_is_a_warning(chest):
    """The left lung's front 40 % between 10 and 50 % of its height (about 120 mL; the
    robustness benchmark's lingula-like case) at +30 HU, against the heart: the lung stage
    leaves it out and until session 25 the scan read a normal CT with no flag. The left
    lung's lower lateral front lies about 49 mm behind the ribs (normal 5.9 mm): warned
    left_anterior_lower_gap, and the normal-CT call kept (an enlarged heart lies there
    too)."""
    region, new_lungs, metrics = _consolidate_front_of_right_lung(chest, (0.1, 0.5), 0.40, 2)
    summary = new_lungs.info["subpleural"]
    assert np.count_nonzero(region & (new_lungs.labels == 0)) * chest[0].voxel_volume_ml > 80.0
    assert summary["anterior_lower_gap_left_mm"] > 40.0, summary
    codes = {f.split(":", 1)[0] for f in metrics.qc_flags}
    assert "left_anterior_lower_gap" in codes
    assert "anterior_opacity_outside_lung" not in codes
    assert metrics.normal_ct


def test_normal_chest_has_no_left_anterior_lower_gap(chest, chest_lesions):
    """The real normal chest's left lower lateral front: 5.9 mm, far under the 30 mm
    warning."""
    vol, lungs = chest
    new_lungs, _ = recover_subpleural_layer(vol, lungs, chest_lesions, CFG)
    summary = new_lungs.info["subpleural"]
    assert summary["anterior_lower_gap_left_mm"] < 10.0, summary
    assert not summary["anterior_lower_gap_left_flagged"]


def test_diffuse_ground_glass_is_flagged_as_dense_lung(chest):
    """The real chest's aerated lung (< -700 HU) raised by 200 HU, evenly: diffuse ground
    glass with no normal lung left. The lesion stage measures above the lung's own level and
    reads it low (session 18); the lung's 10th HU percentile (-691 HU; the plain scan -888)
    raises lung_density_high."""
    from lungvol.quantification import measure_scan

    vol, lungs = chest
    airy = (lungs.labels > 0) & (vol.hu < -700)
    hu = vol.hu.copy()
    hu[airy] += 200
    dense = as_volume(hu, vol.spacing_mm)
    new_lungs, new_lesions = segment_masks(dense, CFG)
    metrics = measure_scan(dense, new_lungs, new_lesions, CFG, timings_s={})
    (flag,) = [f for f in metrics.qc_flags if f.startswith("lung_density_high:")]
    percentile_hu = float(flag.split("percentile is ")[1].split(" HU")[0])
    assert -760.0 < percentile_hu < -650.0
    assert metrics.lesion_proportion_pct < 20.0  # read low, as the flag says
    plain_lungs, plain_lesions = segment_masks(vol, CFG)
    plain = measure_scan(vol, plain_lungs, plain_lesions, CFG, timings_s={})
    assert not any(f.startswith("lung_density_high:") for f in plain.qc_flags)


def test_abdomen_scan_with_only_the_lung_bases_is_refused(real_ct):
    """TotalSegmentator's abdomen example: the lung bases in view are 69 mL; its stomach and
    colon gas (221 mL) and a strip of air outside the body by the table (245 mL) were read as
    a right and a left lung before session 7. Now: no lungs in view, the gas named."""
    from lungvol.errors import SegmentationError

    vol = read_ct(real_ct / "abdomen-lung-bases-nifti" / "example_ct.nii.gz")
    with pytest.raises(SegmentationError, match="no lungs in view.*not lung"):
        segment_lungs(vol, CFG.lungs)


def _enhance_mediastinum(hu: np.ndarray, lungs: np.ndarray, delta_hu: float) -> np.ndarray:
    """Simulated contrast: soft tissue (0-100 HU) between the lungs (per-slice convex hull of
    the lung mask, opened twice) + ``delta_hu``, blurred by 1 voxel; vessels inside the lungs
    (>= -100 HU) + half of it."""

    from lungvol.segmentation.lungs import _convex_hulls_2d

    pool = _convex_hulls_2d(lungs) & ~lungs & (hu >= 0) & (hu <= 100)
    pool = ndimage.binary_opening(pool, iterations=2)
    vessels = lungs & (hu >= -100)
    out = hu.astype(np.float32)
    out += delta_hu * ndimage.gaussian_filter(pool.astype(np.float32), 1.0)
    out += 0.5 * delta_hu * ndimage.gaussian_filter(vessels.astype(np.float32), 0.7)
    return out.astype(np.int16)


def test_enhanced_blood_is_not_taken_for_bone(chest):
    """The normal chest with its mediastinal blood pool raised by 200 HU: the lung mask must
    stay where it was. Before session 5 the enhanced heart and aorta counted as bone for the
    rib tests and the mask took in 72 mL of mediastinum (Dice 0.992); with the cortex rule
    0.5 mL is added (Dice 0.9987)."""
    vol, lungs = chest
    enhanced = as_volume(_enhance_mediastinum(vol.hu, lungs.labels > 0, 200.0), vol.spacing_mm)
    result = segment_lungs(enhanced, CFG.lungs)
    new = result.labels > 0
    added_ml = np.count_nonzero(new & (lungs.labels == 0)) * vol.voxel_volume_ml
    assert added_ml < 10.0
    assert dice(new, lungs.labels > 0) >= 0.995
    # The enhanced scan is flagged (its blood pool: ~350 mL), the plain one is not (< 2 mL).
    assert any(w.startswith("contrast_enhanced:") for w in result.info["warnings"])
    assert result.info["enhanced_blood_ml"] > 200
    assert lungs.info["warnings"] == []
    assert lungs.info["enhanced_blood_ml"] < 10
