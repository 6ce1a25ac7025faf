"""Lung segmentation rules on a small synthetic chest."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from seg_synthetic import (
    AIR_HU,
    LUNG_HU,
    SHAPE,
    SPACING_MM,
    TISSUE_HU,
    dice,
    make_chest,
    make_volume,
)

from lungvol.config import LungSegmentationConfig
from lungvol.errors import ConfigError, SegmentationError
from lungvol.segmentation import segment_lungs
from lungvol.segmentation.grid import CoarseGrid, coarse_mean
from lungvol.types import LUNG_LEFT, LUNG_RIGHT

CFG = LungSegmentationConfig()


@pytest.fixture(scope="module")
def chest():
    c = make_chest()
    return c, segment_lungs(c.volume, CFG)


def test_labels_are_uint8_on_the_ct_grid(chest):
    c, mask = chest
    assert mask.labels.dtype == np.uint8
    assert mask.labels.shape == c.volume.shape
    assert set(np.unique(mask.labels)) <= {0, LUNG_RIGHT, LUNG_LEFT}


def test_right_lung_is_low_x_and_matches_the_truth(chest):
    c, mask = chest
    assert dice(mask.labels == LUNG_RIGHT, c.right_lung) > 0.98
    assert dice(mask.labels == LUNG_LEFT, c.left_lung) > 0.98
    xs_right = np.nonzero(mask.labels == LUNG_RIGHT)[2].mean()
    xs_left = np.nonzero(mask.labels == LUNG_LEFT)[2].mean()
    assert xs_right < xs_left


def test_labels_follow_the_side_when_the_scan_is_mirrored():
    c = make_chest(flip_x=True)
    labels = segment_lungs(c.volume, CFG).labels
    assert dice(labels == LUNG_RIGHT, c.right_lung) > 0.98
    assert dice(labels == LUNG_LEFT, c.left_lung) > 0.98


def test_lungs_joined_at_an_anterior_junction_are_split_at_the_junction():
    """Lungs that touch in front of the mediastinum (the anterior junction line thinner than a
    voxel, common in thin patients) form one air component; the distance-transform erosion
    + watershed of ``_pick_lungs`` splits it where the bridge is narrowest."""
    c = make_chest()
    zz, yy, xx = np.meshgrid(
        *((np.arange(n) - n / 2) * s for n, s in zip(SHAPE, SPACING_MM, strict=True)),
        indexing="ij", sparse=True,
    )
    bridge = (np.abs(xx) <= 20.0) & (yy >= -40.0) & (yy <= -30.0) & (np.abs(zz) <= 15.0)
    bridge = bridge & ~(c.right_lung | c.left_lung)
    hu = c.volume.hu.copy()
    hu[bridge] = LUNG_HU
    mask = segment_lungs(make_volume(hu), CFG)
    assert mask.info["split_connected_pair"]
    right = c.right_lung | (bridge & (xx < 0))
    left = c.left_lung | (bridge & (xx >= 0))
    assert dice(mask.labels == LUNG_RIGHT, right) > 0.98
    assert dice(mask.labels == LUNG_LEFT, left) > 0.98
    # The cut runs across the bridge near the midline, not into either lung.
    cut_x = xx[0, 0][np.flatnonzero(
        np.any((mask.labels == LUNG_RIGHT) & bridge, axis=(0, 1))
    ).max()]
    assert abs(cut_x) <= 5.0


def test_trachea_and_main_bronchi_are_excluded(chest):
    c, mask = chest
    assert mask.info["trachea_found"]
    inside = np.count_nonzero(c.airway & (mask.labels > 0))
    assert inside <= 0.02 * np.count_nonzero(c.airway)


@pytest.mark.parametrize("lumen_hu", [-935.0, -925.0])
def test_a_trachea_brighter_than_the_seed_threshold_is_still_found(lumen_hu):
    """Tracheal air reads above -1000 HU (beam hardening, kernel, calibration): -950..-970 HU
    in 2 mm blocks on the real chest, whose trachea was lost with a 24 HU offset, taking
    trachea and bronchi into the lung and its lesion proportion 0.32 -> 1.52 % (session 15).
    The seed search ramps its threshold up to lungs.trachea_seed_max_hu."""
    c = make_chest()
    hu = c.volume.hu.astype(np.float32).copy()
    hu[c.airway] = lumen_hu + np.random.default_rng(5).normal(0.0, 4.0, np.count_nonzero(c.airway))
    mask = segment_lungs(make_volume(hu), CFG)
    assert mask.info["trachea_found"]
    assert mask.info["trachea_seed_threshold_hu"] > CFG.airway_max_hu
    inside = np.count_nonzero(c.airway & (mask.labels > 0))
    assert inside <= 0.02 * np.count_nonzero(c.airway)
    # Control: seeded at airway_max_hu only, the trachea is not found and the airway joins
    # the lungs.
    fixed = segment_lungs(make_volume(hu), LungSegmentationConfig(trachea_seed_max_hu=-950.0))
    assert not fixed.info["trachea_found"]
    assert np.count_nonzero(c.airway & (fixed.labels > 0)) > 0.3 * np.count_nonzero(c.airway)


def test_trachea_seed_cap_is_validated():
    with pytest.raises(ConfigError, match="trachea_seed_max_hu"):
        LungSegmentationConfig(trachea_seed_max_hu=-800.0)


def test_pleural_consolidation_is_inside_the_lung(chest):
    c, mask = chest
    covered = np.count_nonzero(c.consolidation & (mask.labels == LUNG_RIGHT))
    assert covered >= 0.8 * np.count_nonzero(c.consolidation)


def _chest_wall_beside_consolidation(c) -> np.ndarray:
    """Body tissue 2-8 mm outside the true lungs, within 10 mm of the consolidation."""
    outside_mm = ndimage.distance_transform_edt(~(c.right_lung | c.left_lung), sampling=SPACING_MM)
    near = ndimage.distance_transform_edt(~c.consolidation, sampling=SPACING_MM) <= 10.0
    return (outside_mm > 2.0) & (outside_mm <= 8.0) & near


def test_pleural_consolidation_reaches_the_chest_wall(chest):
    """The lesion rim keeps the outer 1-3 mm of consolidation against the pleura (the air
    threshold and the closing stop short of it), and no chest wall beyond it, although the
    wall (40 HU) is as dense as the consolidation (20 HU)."""
    c, mask = chest
    covered = np.count_nonzero(c.consolidation & (mask.labels == LUNG_RIGHT))
    assert covered >= 0.97 * np.count_nonzero(c.consolidation)
    wall = _chest_wall_beside_consolidation(c)
    assert np.count_nonzero(wall & (mask.labels > 0)) <= 0.03 * np.count_nonzero(wall)


def test_chest_wall_beside_consolidation_stays_out_without_the_envelope_tolerance():
    """With no tolerance on the envelope, not even the first voxels of the wall come in."""
    c = make_chest()
    labels = segment_lungs(c.volume, LungSegmentationConfig(rim_envelope_tolerance_mm=0.0)).labels
    wall = _chest_wall_beside_consolidation(c)
    assert np.count_nonzero(wall & (labels > 0)) <= 0.002 * np.count_nonzero(wall)


def test_pleural_consolidation_rim_is_cut_without_the_lesion_rim():
    """Control: without the rim the outer part of the consolidation is lost."""
    c = make_chest()
    labels = segment_lungs(c.volume, LungSegmentationConfig(rim_max_mm=0.0)).labels
    covered = np.count_nonzero(c.consolidation & (labels == LUNG_RIGHT))
    assert covered < 0.9 * np.count_nonzero(c.consolidation)


def test_medial_slab_lies_between_the_lung_centroids():
    from lungvol.segmentation.lungs import _medial_slab

    labels = np.zeros((4, 6, 20), np.uint8)
    labels[:, :, 2:6] = LUNG_RIGHT  # centroid x = 3.5
    labels[:, :, 14:18] = LUNG_LEFT  # centroid x = 15.5
    slab = _medial_slab(labels)
    assert slab[:, :, 4:16].all()
    assert not slab[:, :, :4].any()
    assert not slab[:, :, 16:].any()
    assert not _medial_slab(np.where(labels == LUNG_LEFT, 0, labels)).any()  # one lung only


def _crescent_hull_case(bone_rows: slice | list[slice]):
    """One axial slice (2 mm pixels): a crescent lung whose concavity opens to low x, ribs
    (``bone_near``) only in the given rows. Returns the arguments of ``_pleural_hull``
    without the midline."""
    yy, xx = np.mgrid[:80, :80]
    outer = (yy - 40) ** 2 + (xx - 40) ** 2 <= 30**2
    notch = (yy - 40) ** 2 + (xx - 18) ** 2 <= 22**2
    lung = (outer & ~notch)[None]
    bone_near = np.zeros_like(lung)
    for rows in bone_rows if isinstance(bone_rows, list) else [bone_rows]:
        bone_near[0, rows] = True
    free = np.ones_like(lung)
    return lung, np.zeros_like(lung), free, bone_near


def test_hull_leaves_out_a_notch_that_faces_the_midline_across_soft_tissue():
    """The chord across the notch (x = 19.5 px, rows 18-62) is about 88 mm; ribs near its
    two ends cover over half of it (the fraction test passes), but its middle 40 mm has no
    bone and it faces the midline (the heart in the left lung's cardiac notch, pyradiomics
    lung1). Pixel-sized deficits along the outer arc near the ribs may still be added."""
    from lungvol.segmentation.lungs import _pleural_hull

    lung, other, free, bone = _crescent_hull_case([slice(0, 30), slice(51, 80)])
    cfg = LungSegmentationConfig()
    notch = (slice(None), slice(18, 63), slice(19, 41))
    facing = _pleural_hull(lung, other, free, bone, 0.0, (2.0, 2.0, 2.0), cfg)
    assert not facing[notch].any()
    # Without the gap rule (the old behaviour) the whole notch was added.
    old = _pleural_hull(lung, other, free, bone, 0.0, (2.0, 2.0, 2.0),
                        LungSegmentationConfig(pleural_max_gap_mm=1e6))
    assert old[notch].sum() > 300


def test_hull_keeps_a_notch_that_faces_away_from_the_midline():
    """The same notch with the midline on the other side: a pleura-based opacity between
    ribs; the fraction test alone decides (kept)."""
    from lungvol.segmentation.lungs import _pleural_hull

    lung, other, free, bone = _crescent_hull_case([slice(0, 30), slice(51, 80)])
    added = _pleural_hull(lung, other, free, bone, 79.0, (2.0, 2.0, 2.0),
                          LungSegmentationConfig())
    assert added.sum() > 300
    assert not (added & lung).any()


def test_hull_keeps_a_midline_facing_notch_whose_chord_has_short_rib_gaps():
    """Ribs along the chord with 10 mm gaps (paravertebral gutter): the notch is added even
    though it faces the midline."""
    from lungvol.segmentation.lungs import _pleural_hull

    rows = [slice(0, 20), slice(25, 35), slice(40, 50), slice(55, 80)]
    lung, other, free, bone = _crescent_hull_case(rows)
    added = _pleural_hull(lung, other, free, bone, 0.0, (2.0, 2.0, 2.0),
                          LungSegmentationConfig())
    assert added.sum() > 300


def test_hull_bridges_two_pieces_of_lung_only_along_the_ribs():
    """The crescent facing away from the midline (kept above: ribs along half its chord)
    cut into an upper and a lower piece by a 6 mm band of dense tissue, as the dome's
    stomach and spleen cut a basal slice of pyradiomics lung2: the deficit between the
    pieces touches both and needs three quarters of its chord along the ribs. With ribs
    along the whole chord (a tumour between pieces of a lung cut by the field of view) it
    is added; so it is when the bridging rule is relaxed to the ordinary fraction."""
    from lungvol.segmentation.lungs import _pleural_hull

    def split(bone_rows):
        lung, other, free, bone = _crescent_hull_case(bone_rows)
        lung, free = lung.copy(), free.copy()
        lung[0, 38:41] = False
        free[0, 38:41, 41:] = False  # the band is dense organ (above pathology_max_hu)
        return lung, other, free, bone

    notch = (slice(None), slice(18, 63), slice(19, 41))
    sp = (2.0, 2.0, 2.0)
    half = split([slice(0, 30), slice(51, 80)])
    assert not _pleural_hull(*half, 79.0, sp, LungSegmentationConfig())[notch].any()
    loose = LungSegmentationConfig(pleural_bridge_min_bone_fraction=0.5)
    assert _pleural_hull(*half, 79.0, sp, loose)[notch].sum() > 300
    along_ribs = split(slice(0, 80))
    assert _pleural_hull(*along_ribs, 79.0, sp, LungSegmentationConfig())[notch].sum() > 300


def test_hull_adds_no_skin_to_a_digitised_convex_lung_along_the_ribs():
    """A digitised disc is convex: the pleural hull must add nothing to it, even with ribs
    all round. skimage's default hull of pixel CORNERS took every staircase step of its
    border (a half-pixel skin of chest wall along the whole costal surface)."""
    from skimage.morphology import convex_hull_image

    from lungvol.segmentation.lungs import _pleural_hull

    yy, xx = np.mgrid[:80, :80]
    lung = ((yy - 40.3) ** 2 + (xx - 39.6) ** 2 <= 30.5**2)[None]
    rib_near = np.ones_like(lung)
    args = (lung, np.zeros_like(lung), np.ones_like(lung), rib_near, 79.0, (2.0, 2.0, 2.0),
            LungSegmentationConfig())
    assert not _pleural_hull(*args).any()
    # What the corner hull would add to the same disc: a skin of tens of pixels.
    assert np.count_nonzero(convex_hull_image(lung[0]) & ~lung[0]) > 20


def test_costal_consolidation_keeps_its_rim_when_the_medial_rim_needs_bone():
    """rim_medial_requires_bone only restricts the mediastinal side: the lateral pleural
    consolidation of the synthetic chest still reaches the chest wall."""
    c = make_chest()
    labels = segment_lungs(c.volume, LungSegmentationConfig(rim_medial_requires_bone=True)).labels
    covered = np.count_nonzero(c.consolidation & (labels == LUNG_RIGHT))
    assert covered >= 0.97 * np.count_nonzero(c.consolidation)


def test_pleural_consolidation_is_left_out_without_pathology_steps():
    """The inclusion steps do the work: a plain air threshold misses the consolidation."""
    c = make_chest()
    cfg = LungSegmentationConfig(fill_closing_radius_mm=2.0, pleural_hull=False)
    labels = segment_lungs(c.volume, cfg).labels
    covered = np.count_nonzero(c.consolidation & (labels > 0))
    assert covered < 0.5 * np.count_nonzero(c.consolidation)


def test_hilar_vessels_are_left_out_but_pleural_consolidation_stays():
    """Soft tissue entering the lung at the hilum (vessels beside the main bronchi) is not
    lung, although the pathology closing bridges it; pleura-based consolidation stays."""
    c = make_chest(hilar_vessels=True)
    mask = segment_lungs(c.volume, CFG)
    n_hilar = np.count_nonzero(c.hilar)
    assert n_hilar > 300
    assert np.count_nonzero(c.hilar & (mask.labels > 0)) <= 0.2 * n_hilar
    assert mask.info["mediastinal_additions_dropped_ml"] > 0
    covered = np.count_nonzero(c.consolidation & (mask.labels == LUNG_RIGHT))
    assert covered >= 0.8 * np.count_nonzero(c.consolidation)
    assert dice(mask.labels == LUNG_RIGHT, c.right_lung) > 0.98
    assert dice(mask.labels == LUNG_LEFT, c.left_lung) > 0.98


def test_hilar_vessels_are_bridged_without_the_hilar_rule():
    """Control: the hilar rule does the work (without it the closing adds the hilum)."""
    c = make_chest(hilar_vessels=True)
    labels = segment_lungs(c.volume, LungSegmentationConfig(hilar_exclusion_mm=0.0)).labels
    assert np.count_nonzero(c.hilar & (labels > 0)) >= 0.5 * np.count_nonzero(c.hilar)


def test_info_reports_method_and_timings(chest):
    _, mask = chest
    assert "method" in mask.info
    assert mask.info["timings_s"]["total"] > 0
    assert mask.info["right_ml"] > 500
    assert mask.info["left_ml"] > 500


def test_soft_tissue_volume_has_no_lungs():
    z, y, x = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij", sparse=True)
    hu = np.full(SHAPE, AIR_HU, np.float32)
    body = ((y - SHAPE[1] / 2) / 70.0) ** 2 + ((x - SHAPE[2] / 2) / 100.0) ** 2 <= 1.0
    hu[np.broadcast_to(body, SHAPE)] = TISSUE_HU
    with pytest.raises(SegmentationError, match="no lungs in view"):
        segment_lungs(make_volume(hu), CFG)


def test_small_air_pocket_is_not_a_lung():
    """Bowel-gas-sized air inside the body (< min_lung_volume_ml) is refused."""
    hu = np.full(SHAPE, TISSUE_HU, np.float32)
    hu[30:40, 80:100, 100:120] = AIR_HU  # 10x20x20 voxels x 3.125 mm3 = 12.5 mL
    with pytest.raises(SegmentationError, match="min_lung_volume_ml"):
        segment_lungs(make_volume(hu), CFG)


def _abdomen_with_gas(seed: int = 0) -> np.ndarray:
    """A body of soft tissue holding 600 mL of bowel gas (-1000 HU, noise SD 15 HU) and no
    lung."""
    z, y, x = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij", sparse=True)
    hu = np.full(SHAPE, AIR_HU, np.float32)
    body = ((y - SHAPE[1] / 2) / 70.0) ** 2 + ((x - SHAPE[2] / 2) / 100.0) ** 2 <= 1.0
    hu[np.broadcast_to(body, SHAPE)] = TISSUE_HU
    hu[10:70, 60:100, 80:160] = AIR_HU  # 60 x 40 x 80 voxels x 3.125 mm3 = 600 mL
    hu += np.random.default_rng(seed).normal(0.0, 15.0, SHAPE).astype(np.float32)
    return hu


def test_bowel_gas_is_not_a_lung():
    """Gas is mostly pure air; lung blocks average parenchyma and vessels (-950..-700 HU).
    Before session 7 an abdomen scan's colon and stomach were read as a 356 mL lung."""
    with pytest.raises(SegmentationError, match="no lungs in view.*600 mL of air that is not lung"):
        segment_lungs(make_volume(_abdomen_with_gas()), CFG)
    # Control: without the gas rule the same pocket passes for a lung.
    labels = segment_lungs(make_volume(_abdomen_with_gas()),
                           LungSegmentationConfig(lung_max_air_fraction=1.0)).labels
    assert np.count_nonzero(labels) * 3.125e-3 > 500


def test_a_lung_sized_gas_region_beside_the_lungs_is_flagged():
    """Gas the size of a lung (a pneumothorax joined to a lung is rejected with it) gets the
    gas_not_lung warning; the lungs themselves are kept."""
    from seg_synthetic import make_chest

    c = make_chest()
    hu = c.volume.hu.astype(np.float32).copy()
    gas = np.zeros(hu.shape, bool)
    gas[0:7, 56:136, 88:168] = True  # below the lungs: 7 x 80 x 80 voxels x 3.125 mm3 = 140 mL
    hu[gas] = AIR_HU
    vol = make_volume(hu)
    quiet = segment_lungs(vol, CFG)
    assert quiet.info["gas_largest_ml"] > 100
    assert not any(w.startswith("gas_not_lung") for w in quiet.info["warnings"])
    flagged = segment_lungs(vol, LungSegmentationConfig(gas_warning_min_ml=100.0))
    assert any(w.startswith("gas_not_lung: a 1") for w in flagged.info["warnings"])
    assert dice(flagged.labels == LUNG_RIGHT, c.right_lung) > 0.98


def _emphysematous_chest():
    """The synthetic chest with one lung's parenchyma at -1000 HU (a severely emphysematous
    or bullous lung: its blocks read like gas) and the bronchi still entering it."""
    c = make_chest()
    hu = c.volume.hu.astype(np.float32).copy()
    airy = c.right_lung & (hu < -700)
    hu[airy] = AIR_HU + np.random.default_rng(3).normal(0.0, 8.0, np.count_nonzero(airy))
    return c, make_volume(hu)


def test_an_airy_lung_that_the_bronchi_enter_is_lung_not_gas():
    """Session 15: the real chest with its aerated lung lowered by 120 HU (42 % of lung voxels
    below -950 HU) lost its whole right lung to the gas rule (flagged lung_missing_right).
    Gut and outside air never touch the bronchi; a lung does."""
    c, vol = _emphysematous_chest()
    mask = segment_lungs(vol, CFG)
    assert dice(mask.labels == LUNG_RIGHT, c.right_lung) > 0.97
    assert mask.info["airy_lung_kept_ml"] > 100
    assert mask.info["gas_not_lung_ml"] == 0.0
    assert dice(mask.labels == LUNG_LEFT, c.left_lung) > 0.97
    # Control: without the airway exception the airy lung is gas, and with it the normal
    # one (the airway growth leaks into the airy lung, so the two join through the
    # trachea): the scan is refused.
    with pytest.raises(SegmentationError, match="no lungs in view.*air that is not lung"):
        segment_lungs(vol, LungSegmentationConfig(gas_airway_contact_min_mm2=1e9))


def test_gas_apart_from_the_airways_stays_gas_with_the_exception():
    """The bowel-gas pocket touches no bronchus: the airway exception leaves it gas."""
    with pytest.raises(SegmentationError, match="no lungs in view"):
        segment_lungs(make_volume(_abdomen_with_gas()), CFG)


def test_the_synthetic_lungs_are_not_gas(chest):
    _, mask = chest
    assert mask.info["gas_not_lung_ml"] == 0.0


def test_gas_airway_contact_is_validated():
    with pytest.raises(ConfigError, match="gas_airway_contact_min_mm2"):
        LungSegmentationConfig(gas_airway_contact_min_mm2=-1.0)


@pytest.mark.parametrize("key", ["gas_min_fraction", "lung_max_air_fraction"])
def test_gas_rule_fractions_are_validated(key):
    with pytest.raises(ConfigError, match=key):
        LungSegmentationConfig(**{key: 1.5})


def test_coarse_grid_roundtrip_keeps_block_means():
    grid = CoarseGrid.for_volume((5, 7, 9), (1.0, 0.5, 0.5), working_spacing_mm=1.0)
    assert grid.factors == (1, 2, 2)
    assert grid.shape == (5, 4, 5)
    rng = np.random.default_rng(3)
    coarse = rng.integers(0, 3, grid.shape).astype(np.uint8)
    full = grid.upsample_nearest(coarse)
    assert full.shape == (5, 7, 9)
    # Each complete block is constant and its mean gives back the coarse value.
    assert np.array_equal(grid.downsample_mean(full)[:, :3, :4], coarse[:, :3, :4])


def _odd_grid_and_blocks(dtype, seed: int, true_fraction: float):
    """A (7, 9, 10) array on a grid with factors (3, 2, 4) (partial edge blocks), and its
    blocks as a (cz, 3, cy, 2, cx, 4) float64 reshape of the edge-padded array."""
    grid = CoarseGrid.for_volume((7, 9, 10), (0.7, 1.0, 0.5), working_spacing_mm=2.0)
    assert grid.factors == (3, 2, 4)
    rng = np.random.default_rng(seed)
    if dtype is bool:
        full = rng.random((7, 9, 10)) > 1.0 - true_fraction
    else:
        full = rng.integers(-1024, 3000, (7, 9, 10)).astype(dtype)
    cz, cy, cx = grid.shape
    padded = np.pad(full.astype(np.float64), ((0, cz * 3 - 7), (0, cy * 2 - 9), (0, cx * 4 - 10)),
                    mode="edge")
    return grid, full, padded.reshape(cz, 3, cy, 2, cx, 4)


@pytest.mark.parametrize("dtype", [np.int16, np.float32, bool])
def test_block_mean_equals_the_reshape_mean_with_partial_blocks(dtype):
    grid, full, blocks = _odd_grid_and_blocks(dtype, seed=5, true_fraction=0.5)
    assert np.allclose(grid.downsample_mean(full), blocks.mean(axis=(1, 3, 5)), atol=1e-3)


@pytest.mark.parametrize("dtype", [np.int16, np.float32, bool])
def test_block_max_equals_the_reshape_max_with_partial_blocks(dtype):
    grid, full, blocks = _odd_grid_and_blocks(dtype, seed=6, true_fraction=0.2)
    assert np.array_equal(grid.downsample_max(full), blocks.max(axis=(1, 3, 5)))


def test_bone_map_keeps_cortical_bone_and_drops_enhanced_blood():
    """A rib-like rod (cortex 900 HU around 300 HU marrow) is bone; a blood pool of 300 HU
    (contrast-enhanced heart) is not, though its block mean passes ``bone_min_hu``; a
    calcified spot inside the pool does not make the pool bone."""
    from lungvol.segmentation.lungs import bone_map

    grid = CoarseGrid.for_volume((12, 30, 60), (1.0, 1.0, 1.0), working_spacing_mm=2.0)
    hu = np.full((12, 30, 60), 40.0, np.float32)
    hu[:, 5:15, 5:15] = 900.0  # rib: cortex ...
    hu[:, 7:13, 7:13] = 300.0  # ... and marrow
    hu[:, 5:25, 30:55] = 300.0  # enhanced blood
    hu[6, 15, 40] = 800.0  # one calcified voxel in it
    cfg = LungSegmentationConfig()
    bone, blood_voxels = bone_map(
        grid.downsample_mean(hu), grid.downsample_max(hu), cfg, grid.voxel_volume_ml
    )
    assert bone[:, 3:6, 3:6].all()
    assert 500 <= blood_voxels <= 800  # the pool: 12 x 20 x 25 mm, ~750 blocks of 2 mm
    assert not bone[:, 3:12, 16:27].any()
    # Without the cortex requirement the pool would be bone.
    loose, _ = bone_map(grid.downsample_mean(hu), grid.downsample_max(hu),
                         LungSegmentationConfig(cortical_min_fraction=0.0), grid.voxel_volume_ml)
    assert loose[:, 3:12, 16:27].all()


def _vertebra_and_aorta_blocks(bridge: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Block means and maxima (2 mm blocks): a vertebral body (a shell of cortex around
    cancellous bone whose blocks hold no cortical voxel) and, beside it, an enhanced aorta
    (300 HU), joined by a bridge one block wide (wall and cortex averaged) or apart."""
    shape = (12, 30, 50)
    z, y, x = np.indices(shape)
    mean = np.full(shape, 40.0, np.float32)
    peak = np.full(shape, 80.0, np.float32)
    r_vert = np.hypot(y - 15, x - 12)
    mean[r_vert <= 8], peak[r_vert <= 8] = 600.0, 1100.0  # cortex shell
    mean[r_vert <= 7], peak[r_vert <= 7] = 260.0, 420.0  # cancellous bone
    aorta = np.hypot(y - 15, x - 29) <= 7
    mean[aorta], peak[aorta] = 300.0, 360.0
    if bridge:  # the block between them: cortex, wall and blood averaged
        mean[:, 15, 21], peak[:, 15, 21] = 230.0, 700.0
    return mean, peak, aorta


@pytest.mark.parametrize("bridge", [True, False])
def test_bone_map_separates_enhanced_blood_that_touches_bone(bridge):
    """An enhanced aorta lying on a vertebra joins it in one component of block means >=
    200 HU: the component passes the cortex test, but the aorta's core has no cortex with
    its surface and is not bone; the vertebra, whose cancellous core holds no cortical
    voxel but whose surface does, stays bone. With the rule off (blood_core_min_ml 0) the
    joined aorta is bone, as before session 32."""
    from lungvol.segmentation.lungs import bone_map

    mean, peak, aorta = _vertebra_and_aorta_blocks(bridge)
    vertebra = np.broadcast_to(
        np.hypot(*np.indices(mean.shape[1:]) - np.array([15, 12])[:, None, None]) <= 8,
        mean.shape,
    )
    voxel_ml = 0.008  # 2 mm blocks
    bone, blood_voxels = bone_map(mean, peak, LungSegmentationConfig(), voxel_ml)
    assert bone[vertebra].all()
    # Beyond the vertebra at most the bridge (it holds cortex) and a block beside it.
    assert np.count_nonzero(bone & ~vertebra) <= (2 * mean.shape[0] if bridge else 0)
    assert np.count_nonzero(bone & aorta) <= 2  # beside the bridge in the end slices
    assert blood_voxels >= np.count_nonzero(aorta) - 2
    old, old_blood = bone_map(mean, peak, LungSegmentationConfig(blood_core_min_ml=0.0), voxel_ml)
    if bridge:
        assert old[aorta].all()
        assert old_blood == 0.0
    else:  # apart, the component rule alone found the blood
        assert np.array_equal(old, bone)
    # A cortex-free core smaller than blood_core_min_ml stays bone (the aorta: ~12 mL).
    big, _ = bone_map(mean, peak, LungSegmentationConfig(blood_core_min_ml=50.0), voxel_ml)
    assert np.array_equal(big, old)


def test_bone_map_separates_angiography_blood_whose_noise_reaches_the_cortex_level():
    """CT angiography: the aorta's blood reads ~600 HU and its noise puts most blocks over
    the cortical level, so it "holds cortex" by the absolute test (blood_cortex_margin_hu
    -inf, lungvol 0.6.10) and stays bone. Its cortical blocks are no denser than its median,
    though, while a vertebra's cortex is far denser than its cancellous core: the aorta is
    blood, the vertebra bone. A homogeneous core denser than blood_max_hu (compact bone) is
    not blood."""
    from lungvol.segmentation.lungs import bone_map

    mean, peak, aorta = _vertebra_and_aorta_blocks(bridge=True)
    rng = np.random.default_rng(0)
    noise = rng.normal(0.0, 15.0, mean.shape).astype(np.float32)
    mean[aorta] = 600.0 + noise[aorta]
    peak[aorta] = mean[aorta] + 40.0
    assert np.mean(peak[aorta] >= 600.0) > 0.5
    vertebra = np.broadcast_to(
        np.hypot(*np.indices(mean.shape[1:]) - np.array([15, 12])[:, None, None]) <= 8,
        mean.shape,
    )
    voxel_ml = 0.008
    bone, blood_voxels = bone_map(mean, peak, LungSegmentationConfig(), voxel_ml)
    assert bone[vertebra].all()
    assert np.count_nonzero(bone & aorta) <= 2
    assert blood_voxels >= np.count_nonzero(aorta) - 2
    absolute, absolute_blood = bone_map(
        mean, peak, LungSegmentationConfig(blood_cortex_margin_hu=-np.inf), voxel_ml
    )
    assert absolute[aorta].all()
    assert absolute_blood == 0.0
    # The same core at 900 HU is compact bone: above blood_max_hu (650 HU) it stays bone.
    mean[aorta], peak[aorta] = 900.0 + noise[aorta], 940.0 + noise[aorta]
    dense, _ = bone_map(mean, peak, LungSegmentationConfig(), voxel_ml)
    assert dense[aorta].all()
    lifted, _ = bone_map(mean, peak, LungSegmentationConfig(blood_max_hu=1000.0), voxel_ml)
    assert np.count_nonzero(lifted & aorta) <= 2


def test_a_deep_uniform_dense_core_is_reported_and_a_thin_plate_or_real_bone_is_not():
    """suspect_bone_core (the QC flag dense_homogeneous_bone): a blood pool denser than
    blood_max_hu (900 HU, 14 mm radius: a CT-angiography aorta) stays bone in bone_map and
    is reported as uniform; a plate of the same HU 8 mm thick (the phantoms' sternum) and a
    vertebra (cortex around cancellous bone, 16 mm radius) are not; depth 0 turns the check
    off."""
    from lungvol.segmentation.lungs import bone_map, suspect_bone_core

    shape = (30, 40, 80)
    z, y, x = np.indices(shape)
    rng = np.random.default_rng(1)
    mean = np.full(shape, 40.0, np.float32)
    aorta = (np.hypot(y - 20, x - 20) <= 7) & (z >= 3) & (z < 27)
    plate = (np.abs(y - 20) <= 1.5) & (np.abs(x - 45) <= 6) & (z >= 3) & (z < 27)
    r_vert = np.hypot(y - 20, x - 66)
    mean[aorta | plate] = 900.0 + rng.normal(0.0, 15.0, np.count_nonzero(aorta | plate))
    peak = mean + 40.0
    vert = (r_vert <= 8) & (z >= 3) & (z < 27)
    mean[vert], peak[vert] = 600.0, 1100.0  # cortex shell
    core = (r_vert <= 7) & (z >= 3) & (z < 27)
    mean[core], peak[core] = 260.0, 420.0  # cancellous bone
    cfg, voxel_ml, spacing = LungSegmentationConfig(), 0.008, (2.0, 2.0, 2.0)
    bone, _ = bone_map(mean, peak, cfg, voxel_ml)
    assert bone[aorta | plate | vert].all()  # all three are bone to bone_map
    found = suspect_bone_core(mean, bone, spacing, cfg, voxel_ml)
    assert found is not None
    assert found.uniform
    assert 880.0 <= found.median_hu <= 920.0
    assert found.iqr_hu <= 40.0
    assert found.depth_mm >= 12.0
    # The aorta's core: one erosion of its 36 mL (the plate and the vertebra not counted).
    assert 0.5 * np.count_nonzero(aorta) * voxel_ml <= found.volume_ml <= np.count_nonzero(
        aorta) * voxel_ml
    # Without the aorta nothing is reported: the plate is too thin, the vertebra not uniform
    # and under thick_core_flag_min_depth_mm (20 mm) deep.
    without = bone & ~aorta
    assert suspect_bone_core(mean, without, spacing, cfg, voxel_ml) is None
    off = LungSegmentationConfig(dense_core_flag_min_depth_mm=0.0)
    assert suspect_bone_core(mean, bone, spacing, off, voxel_ml) is None
    # Under blood_max_hu the same aorta is not "dense": bone_map's blood rule judges it.
    assert suspect_bone_core(
        mean, bone, spacing, LungSegmentationConfig(blood_max_hu=1000.0), voxel_ml
    ) is None
    # Metal of that shape (a prosthesis, 3000 HU) is not blood: not reported.
    metal = mean.copy()
    metal[aorta] = 3000.0
    assert suspect_bone_core(metal, bone, spacing, cfg, voxel_ml) is None


def test_a_core_too_thick_for_bone_is_reported_whatever_its_hu():
    """suspect_bone_core (the QC flag thick_bone_core): a pool 25 mm in radius whose front
    half is enhanced to 620 HU and its back half to 260 HU, with no wall between (CT
    pulmonary angiography): not uniform, so bone_map's blood rule passes it by, and its
    bright half holds cortex-level voxels, so it is bone. No bone is 20 mm deep: reported,
    not as uniform; with thick_core_flag_min_depth_mm 0 it is not. The advised rerun
    (blood_min_depth_mm 20) takes the pool for blood and leaves a vertebra bone."""
    from lungvol.segmentation.lungs import bone_map, suspect_bone_core

    shape = (40, 60, 60)
    z, y, x = np.indices(shape)
    rng = np.random.default_rng(2)
    mean = np.full(shape, 40.0, np.float32)
    pool = np.sqrt((z - 20.0) ** 2 + (y - 30.0) ** 2 + (x - 30.0) ** 2) <= 12.5
    noise = rng.normal(0.0, 15.0, np.count_nonzero(pool))
    mean[pool] = np.where(y[pool] < 30, 620.0, 260.0) + noise
    peak = mean + 40.0
    cfg, voxel_ml, spacing = LungSegmentationConfig(), 0.008, (2.0, 2.0, 2.0)
    bone, _ = bone_map(mean, peak, cfg, voxel_ml)
    assert np.count_nonzero(bone & pool) >= 0.9 * np.count_nonzero(pool)
    found = suspect_bone_core(mean, bone, spacing, cfg, voxel_ml)
    assert found is not None
    assert not found.uniform
    assert found.iqr_hu > cfg.blood_max_iqr_hu
    assert found.depth_mm >= 20.0
    off = LungSegmentationConfig(thick_core_flag_min_depth_mm=0.0)
    assert suspect_bone_core(mean, bone, spacing, off, voxel_ml) is None
    # The rerun the flag advises (blood_min_depth_mm 20) reads it as blood; without the
    # blocks' spacing the depth rule cannot act.
    deep = LungSegmentationConfig(blood_min_depth_mm=20.0)
    rerun, blood_voxels = bone_map(mean, peak, deep, voxel_ml, spacing)
    # All but its outermost block layer (the bright half's surface holds cortex-level
    # voxels, and stays bone as the rim of any blood does).
    inside = ndimage.binary_erosion(pool, iterations=2)
    assert not (rerun & inside).any()
    assert np.count_nonzero(rerun & pool) <= 0.12 * np.count_nonzero(pool)
    assert blood_voxels >= 0.5 * np.count_nonzero(pool)
    unchanged, _ = bone_map(mean, peak, deep, voxel_ml)
    assert np.array_equal(unchanged, bone)
    # A vertebra 16 mm in radius stays bone under the rule.
    r_vert = np.hypot(y - 30, x - 30)
    mean2, peak2 = np.full(shape, 40.0, np.float32), np.full(shape, 80.0, np.float32)
    vert = (r_vert <= 8) & (z >= 5) & (z < 35)
    mean2[vert], peak2[vert] = 600.0, 1100.0
    inner = (r_vert <= 7) & (z >= 5) & (z < 35)
    mean2[inner], peak2[inner] = 260.0, 420.0
    plain, _ = bone_map(mean2, peak2, LungSegmentationConfig(), voxel_ml, spacing)
    assert np.array_equal(bone_map(mean2, peak2, deep, voxel_ml, spacing)[0], plain)
    assert plain[vert].all()
    # Metal of the pool's shape (a prosthesis, 3000 HU) is not blood under the rule either.
    metal, metal_peak = np.full(shape, 40.0, np.float32), np.full(shape, 80.0, np.float32)
    metal[pool], metal_peak[pool] = 3000.0, 3071.0
    assert bone_map(metal, metal_peak, deep, voxel_ml, spacing)[0][pool].all()


def test_coarse_mean_is_computed_once_per_array_and_grid():
    grid = CoarseGrid.for_volume((6, 8, 8), (1.0, 1.0, 1.0), working_spacing_mm=2.0)
    a = np.arange(6 * 8 * 8, dtype=np.int16).reshape(6, 8, 8)
    first = coarse_mean(a, grid)
    assert coarse_mean(a, grid) is first
    assert not first.flags.writeable
    b = a.copy()  # equal values, another array: computed again, same numbers
    again = coarse_mean(b, grid)
    assert again is not first
    assert np.array_equal(again, first)


def test_air_pocket_in_the_top_slice_is_not_taken_for_the_trachea():
    """Oesophageal air in the top slice (round, central, ending at once) is not a trachea."""
    c = make_chest()
    hu = c.volume.hu.copy()
    z, y, x = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij", sparse=True)
    pocket = (z >= SHAPE[0] - 2) & ((y - 110) ** 2 + (x - SHAPE[2] // 2) ** 2 <= 5**2)
    hu[np.broadcast_to(pocket, SHAPE)] = AIR_HU
    mask = segment_lungs(make_volume(hu), CFG)
    assert mask.info["trachea_found"]
    assert mask.info["airway_removed_ml"] > 5.0
    inside = np.count_nonzero(c.airway & (mask.labels > 0))
    assert inside <= 0.02 * np.count_nonzero(c.airway)


def _partial_volume_layer_case(layer_hu: float):
    """The synthetic chest with the in-plane voxel layer just outside the right lung set to
    ``layer_hu`` (a pleural partial-volume voxel); returns the volume and the layer."""
    c = make_chest()
    plane = np.zeros((1, 3, 3), bool)
    plane[0, 1, :] = plane[0, :, 1] = True
    layer = ndimage.binary_dilation(c.right_lung, structure=plane) & ~c.right_lung
    hu = c.volume.hu.astype(np.float32)
    layer &= np.abs(hu - TISSUE_HU) < 100  # soft tissue only: not ribs, airways, lesions
    hu[layer] = layer_hu
    return make_volume(hu), layer


def test_a_surface_voxel_that_is_half_lung_is_lung():
    """lungs.surface_threshold_hu (-400, session 17): a pleural voxel that is 55 % aerated
    lung (-860 HU) and 45 % soft tissue (+40 HU) reads about -455 HU; it is lung. The air
    threshold (-500) used before left that layer out."""
    volume, layer = _partial_volume_layer_case(0.55 * -860.0 + 0.45 * 40.0)
    kept = segment_lungs(volume, CFG).labels[layer] > 0
    assert kept.mean() >= 0.9, kept.mean()
    old = LungSegmentationConfig(surface_threshold_hu=-500.0)
    assert (segment_lungs(volume, old).labels[layer] > 0).mean() <= 0.1


def test_a_surface_voxel_that_is_mostly_tissue_is_not_lung():
    volume, layer = _partial_volume_layer_case(0.4 * -860.0 + 0.6 * 40.0)  # -320 HU
    assert (segment_lungs(volume, CFG).labels[layer] > 0).mean() <= 0.1


@pytest.mark.parametrize("value", [-600.0, -200.0])
def test_surface_threshold_is_validated(value):
    with pytest.raises(ConfigError, match="surface_threshold_hu"):
        LungSegmentationConfig(surface_threshold_hu=value)


def test_rim_growth_reads_a_box_of_the_ct_in_place_as_a_copy_would():
    """The rim rule's growth reads HU from a box of the CT (a strided view) by flat index in
    the CT's own strides; the labels equal those grown on a contiguous copy of the box."""
    from lungvol.segmentation.lungs import _flat_view, _grow_by_continuity

    rng = np.random.default_rng(4)
    ct = rng.integers(-200, 100, (12, 30, 40)).astype(np.int16)
    box = (slice(2, 10), slice(5, 25), slice(3, 37))
    flat, steps = _flat_view(ct[box])
    assert steps == (1200, 40, 1)
    assert flat[3 * 1200 + 4 * 40 + 5] == ct[box][3, 4, 5]
    labels = np.zeros(ct[box].shape, np.uint8)
    labels[:, :, :10] = 1
    labels[:, :, 25:] = 2
    cand = (labels == 0) & (rng.random(labels.shape) < 0.7)
    config = LungSegmentationConfig()
    grown = []
    for hu in (ct[box], np.ascontiguousarray(ct[box])):
        out, dense = labels.copy(), labels > 0
        _grow_by_continuity(out, hu, cand, dense, 9, 2, config)
        grown.append(out)
    assert 20 <= np.count_nonzero(grown[0] != labels) < np.count_nonzero(cand)
    np.testing.assert_array_equal(grown[0], grown[1])
