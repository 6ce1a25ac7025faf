"""Lesion densitometry rules: bands, background gating (vessels), minimum size in mL."""

from __future__ import annotations

import numpy as np
import pytest
from seg_synthetic import make_chest

from lungvol.config import LesionSegmentationConfig, LungSegmentationConfig
from lungvol.errors import GeometryError
from lungvol.segmentation import segment_lesions, segment_lungs
from lungvol.types import LESION_GGO, LESION_SOLID, CTVolume, LungMask, SourceInfo

# Only the bands: no smoothing, no suppression, no size filter.
BANDS_ONLY = LesionSegmentationConfig(
    smoothing_sigma_mm=0.0,
    background_radius_mm=0.0,
    solid_min_width_mm=0.0,
    min_component_volume_ml=0.0,
)


def _volume(hu: np.ndarray, spacing_mm=(1.0, 1.0, 1.0)) -> CTVolume:
    return CTVolume(
        hu=hu, spacing_mm=spacing_mm, origin_lps_mm=(0.0, 0.0, 0.0), direction=np.eye(3),
        source=SourceInfo(path="synthetic", kind="nifti", sha256=""),
    )


@pytest.fixture(scope="module")
def chest():
    c = make_chest()
    lungs = segment_lungs(c.volume, LungSegmentationConfig())
    return c, lungs, segment_lesions(c.volume, lungs, LesionSegmentationConfig())


def test_ggo_blob_is_found_as_ground_glass(chest):
    c, _, lesions = chest
    found = np.count_nonzero(c.blob & (lesions.labels == LESION_GGO))
    assert found >= 0.75 * np.count_nonzero(c.blob)


def test_thin_vessel_is_not_lesion_but_is_without_suppression(chest):
    c, lungs, lesions = chest
    assert np.count_nonzero(c.vessel & (lesions.labels > 0)) <= 0.05 * c.vessel.sum()
    plain = segment_lesions(c.volume, lungs, BANDS_ONLY)
    assert np.count_nonzero(c.vessel & (plain.labels > 0)) >= 0.5 * c.vessel.sum()


def test_pleural_consolidation_is_solid(chest):
    c, _, lesions = chest
    found = np.count_nonzero(c.consolidation & (lesions.labels == LESION_SOLID))
    assert found >= 0.5 * np.count_nonzero(c.consolidation)


def test_normal_synthetic_lung_has_almost_no_lesion(chest):
    c, lungs, lesions = chest
    false = np.count_nonzero((lesions.labels > 0) & ~c.blob & ~c.consolidation)
    assert false <= 0.005 * np.count_nonzero(lungs.labels)  # < 0.5 % of the lung


def test_info_reports_suppressed_volumes(chest):
    _, _, lesions = chest
    info = lesions.info
    for key in ("background_removed_ml", "small_components_removed_ml", "dense_in_band_ml"):
        assert info[key] >= 0.0
    assert info["dense_in_band_ml"] > info["ggo_ml"] + info["solid_ml"]


def test_hu_band_edges():
    """GGO is [-750, -300), solid is [-300, +50]; values just outside are not lesion."""
    values = [-751, -750, -301, -300, 50, 51]
    expected = [0, LESION_GGO, LESION_GGO, LESION_SOLID, LESION_SOLID, 0]
    hu = np.zeros((len(values), 4, 4), np.int16)
    for i, v in enumerate(values):
        hu[i] = v
    lungs = LungMask(np.ones(hu.shape, np.uint8))
    labels = segment_lesions(_volume(hu), lungs, BANDS_ONLY).labels
    assert [int(labels[i, 2, 2]) for i in range(len(values))] == expected


def test_nothing_outside_the_lung_mask():
    hu = np.full((6, 6, 6), -500, np.int16)
    lung = np.zeros(hu.shape, np.uint8)
    lung[:3] = 1
    labels = segment_lesions(_volume(hu), LungMask(lung), BANDS_ONLY).labels
    assert labels[:3].all()
    assert not labels[3:].any()


@pytest.mark.parametrize(
    ("spacing_mm", "min_ml", "kept"),
    [
        ((1.0, 1.0, 1.0), 0.1, True),  # 125 voxels x 1 mm3 = 0.125 mL >= 0.1
        ((1.0, 1.0, 1.0), 0.2, False),  # 0.125 mL < 0.2
        ((0.5, 0.5, 0.5), 0.1, False),  # same voxels, 0.0156 mL < 0.1
        ((1.0, 1.0, 1.0), 0.125, True),  # exactly the minimum is kept
    ],
)
def test_min_component_size_is_ml_not_voxels(spacing_mm, min_ml, kept):
    hu = np.full((12, 12, 12), -900, np.int16)
    hu[3:8, 3:8, 3:8] = -500  # a 5x5x5 voxel cube of ground glass
    lungs = LungMask(np.ones(hu.shape, np.uint8))
    cfg = LesionSegmentationConfig(
        smoothing_sigma_mm=0.0, background_radius_mm=0.0, solid_min_width_mm=0.0,
        min_component_volume_ml=min_ml,
    )
    labels = segment_lesions(_volume(hu, spacing_mm), lungs, cfg).labels
    assert bool(labels.any()) is kept


def test_lung_mask_on_another_grid_is_refused():
    hu = np.zeros((4, 4, 4), np.int16)
    with pytest.raises(GeometryError):
        segment_lesions(_volume(hu), LungMask(np.ones((4, 4, 5), np.uint8)), BANDS_ONLY)


def test_empty_lung_mask_gives_empty_lesions():
    hu = np.full((4, 4, 4), -500, np.int16)
    out = segment_lesions(_volume(hu), LungMask(np.zeros(hu.shape, np.uint8)), BANDS_ONLY)
    assert not out.labels.any()
    assert out.labels.dtype == np.uint8


def _lung_cube(n=(40, 60, 60), hu=-860):
    return np.full(n, hu, np.float32), LungMask(np.ones(n, np.uint8))


def _fill_box(hu, index, value):
    """Set ``hu[index] = value`` and return the boolean mask of that box."""
    box = np.zeros(hu.shape, bool)
    box[index] = True
    hu[box] = value
    return box


def _noise(shape, seed=0, sd=20.0):
    return np.random.default_rng(seed).normal(0.0, sd, shape).astype(np.float32)


def _noisy_volume(hu, seed=0):
    """``hu`` plus scanner-like noise (SD 20 HU), as an int16 CT volume."""
    return _volume((hu + _noise(hu.shape, seed)).astype(np.int16))


def test_vessel_inside_ground_glass_is_not_lesion_but_the_patch_is():
    """A 2 mm-wide vessel (+40 HU) crossing a ground-glass slab is neither GGO nor solid."""
    hu, lungs = _lung_cube()
    hu[10:30, 10:50, 10:50] = -620.0  # 20 x 40 x 40 mm ground-glass slab
    # The vessel runs across the slab and into normal lung.
    vessel = _fill_box(hu, np.s_[19:21, 5:55, 29:31], 40.0)
    labels = segment_lesions(_noisy_volume(hu), lungs,
                             LesionSegmentationConfig()).labels
    slab = np.zeros(hu.shape, bool)
    slab[10:30, 10:50, 10:50] = True
    assert np.count_nonzero(labels[vessel] > 0) <= 0.1 * vessel.sum()
    found = np.count_nonzero((labels == LESION_GGO) & slab & ~vessel)
    assert abs(found - np.count_nonzero(slab & ~vessel)) <= 0.08 * np.count_nonzero(slab)


def test_vessel_halo_in_normal_lung_is_not_lesion():
    """A 3 mm vessel in normal lung with a 1.5 mm partial-volume halo: neither is lesion.
    (Around vessels about as wide as the background ball, ~9 mm, the halo can read as GGO:
    see docs/segmentation.md.)"""
    hu, lungs = _lung_cube()
    z, y, x = np.indices(hu.shape)
    r = np.hypot(z - 20.0, x - 30.0)
    hu = np.where(r <= 1.5, 40.0, np.where(r <= 3.0, -600.0, hu)).astype(np.float32)
    labels = segment_lesions(_noisy_volume(hu, seed=1), lungs,
                             LesionSegmentationConfig()).labels
    halo = r <= 3.0
    assert np.count_nonzero(labels[halo] > 0) <= 0.05 * halo.sum()


def test_solid_component_inside_ground_glass_is_solid():
    """An 8 mm solid core inside ground glass stays solid (wider than thin structures):
    the background rules keep what the plain bands (same smoothing) call solid there."""
    hu, lungs = _lung_cube()
    hu[8:32, 12:48, 12:48] = -620.0
    core = _fill_box(hu, np.s_[16:24, 26:34, 26:34], -50.0)
    vol = _noisy_volume(hu, seed=2)
    labels = segment_lesions(vol, lungs, LesionSegmentationConfig()).labels
    plain = segment_lesions(vol, lungs, LesionSegmentationConfig(
        background_radius_mm=0.0, min_component_volume_ml=0.0)).labels
    n_plain = np.count_nonzero(plain[core] == LESION_SOLID)
    assert n_plain >= 0.5 * core.sum()
    assert np.count_nonzero(labels[core] == LESION_SOLID) >= 0.95 * n_plain


def test_background_settings_are_validated():
    from lungvol.errors import ConfigError

    with pytest.raises(ConfigError, match="background_radius_mm"):
        LesionSegmentationConfig(background_radius_mm=-1.0)
    with pytest.raises(ConfigError, match="background_working_spacing_mm"):
        LesionSegmentationConfig(background_working_spacing_mm=0.0)


def test_narrow_solid_patch_enclosed_by_ground_glass_is_solid():
    """A 3 mm solid patch inside ground glass is narrower than the thin-structure opening
    and denser than its background; it is solid because ground glass encloses it (the
    enclosure rule), and is not solid when the rule is disabled."""
    hu, lungs = _lung_cube()
    hu[8:32, 12:48, 12:48] = -620.0
    patch = _fill_box(hu, np.s_[18:22, 28:31, 28:31], -50.0)
    vol = _noisy_volume(hu, seed=3)
    labels = segment_lesions(vol, lungs, LesionSegmentationConfig()).labels
    off = segment_lesions(vol, lungs, LesionSegmentationConfig(
        enclosed_solid_min_ggo_fraction=2.0)).labels
    plain = segment_lesions(vol, lungs, LesionSegmentationConfig(
        background_radius_mm=0.0, min_component_volume_ml=0.0)).labels
    n_plain = np.count_nonzero(plain[patch] == LESION_SOLID)
    assert n_plain >= 0.5 * patch.sum()
    assert np.count_nonzero(labels[patch] == LESION_SOLID) >= 0.95 * n_plain
    assert np.count_nonzero(off[patch] == LESION_SOLID) <= 0.2 * patch.sum()


def test_enclosure_settings_are_validated():
    from lungvol.errors import ConfigError

    with pytest.raises(ConfigError, match="enclosure_shell_mm"):
        LesionSegmentationConfig(enclosure_shell_mm=0.0)
    with pytest.raises(ConfigError, match="enclosed_solid_min_ggo_fraction"):
        LesionSegmentationConfig(enclosed_solid_min_ggo_fraction=-0.1)


def _chest_wall_slab(bone: bool, shape=(40, 60, 60)):
    """Lung at x >= 10 (-860 HU), chest wall (+40 HU) at x < 10 with, if ``bone``, a rib
    column (+700 HU) at x = 3..5. Returns (hu, lungs)."""
    hu = np.full(shape, -860.0, np.float32)
    hu[:, :, :10] = 40.0
    if bone:
        hu[:, :, 3:6] = 700.0
    lab = np.zeros(shape, np.uint8)
    lab[:, :, 10:] = 1
    return hu, LungMask(lab)


@pytest.mark.parametrize("bone", [True, False])
def test_thin_subpleural_band_against_the_ribs_is_ground_glass(bone):
    """A 5 mm ground-glass band along the costal pleura is thinner than the background ball;
    the pleural extrapolation keeps it (ribs within reach), and only there: against
    boneless soft tissue (mediastinum, diaphragm) the exterior stays air."""
    hu, lungs = _chest_wall_slab(bone)
    band = _fill_box(hu, np.s_[8:32, 10:50, 10:15], -620.0)
    vol = _noisy_volume(hu, seed=4)
    on = segment_lesions(vol, lungs, LesionSegmentationConfig()).labels
    off = segment_lesions(vol, lungs, LesionSegmentationConfig(pleural_extrapolation_mm=0.0)).labels
    found_on = np.count_nonzero(on[band] == LESION_GGO) / band.sum()
    found_off = np.count_nonzero(off[band] == LESION_GGO) / band.sum()
    assert found_off <= 0.3
    if bone:
        assert found_on >= 0.8
    else:
        assert found_on <= 0.3
    # Normal lung beside the band stays normal either way.
    assert np.count_nonzero(on[:, :, 20:] > 0) <= 0.002 * on[:, :, 20:].size


def _patch_with_protrusions(boxes, off_settings):
    """A 20 x 30 x 30 mm ground-glass patch (-620 HU) with protrusions ``(index, hu)``
    leaving it at y = 40, segmented with the default settings and with ``off_settings``.
    Returns ``(on_labels, off_labels, protrusion_masks)``."""
    hu, lungs = _lung_cube()
    hu[10:30, 10:40, 10:40] = -620.0
    masks = [_fill_box(hu, index, value) for index, value in boxes]
    vol = _noisy_volume(hu, seed=5)
    on = segment_lesions(vol, lungs, LesionSegmentationConfig()).labels
    off = segment_lesions(vol, lungs, LesionSegmentationConfig(**off_settings)).labels
    return on, off, masks


def _beyond_patch(protrusion):
    """The part of a protrusion beyond the one-coarse-voxel dilation of the patch's
    background (which the background rules alone may accept)."""
    tip = protrusion.copy()
    tip[:, :42] = False
    return tip


def test_finger_of_ground_glass_narrower_than_the_ball_is_kept_by_the_extension():
    """A 4 mm-thick, 6 mm-long finger leaving a ground-glass patch is lost by the opening and
    recovered by the hysteresis from the patch (lesion_extension_mm)."""
    on, off, (finger,) = _patch_with_protrusions(
        [(np.s_[18:22, 40:46, 23:27], -620.0)], {"lesion_extension_mm": 0.0})
    tip = _beyond_patch(finger)
    assert np.count_nonzero(off[tip] == LESION_GGO) <= 0.3 * tip.sum()
    assert np.count_nonzero(on[finger] == LESION_GGO) >= 0.85 * finger.sum()


def test_extension_does_not_run_along_a_thin_skirt_but_keeps_a_wide_finger():
    """A 2 mm-wide tube at -560 HU (the partial-volume skirt of a vessel too thin for the
    solid band) leaving a ground-glass patch: the hysteresis runs along it unless grown
    lesion must be extension_min_width_mm (3 mm) wide; a 4 mm finger beside it is kept."""
    on, off, (tube, finger) = _patch_with_protrusions(
        [(np.s_[18:20, 40:46, 14:16], -560.0), (np.s_[18:22, 40:46, 30:34], -620.0)],
        {"extension_min_width_mm": 0.0})
    tip = _beyond_patch(tube)
    assert np.count_nonzero(off[tip] > 0) >= 0.7 * tip.sum()  # a real trap
    assert np.count_nonzero(on[tip] > 0) <= 0.2 * tip.sum()
    assert np.count_nonzero(on[finger] == LESION_GGO) >= 0.85 * finger.sum()
    # The patch itself is unchanged by the rule.
    assert np.count_nonzero((on > 0)[10:30, 10:40, 10:40]) == np.count_nonzero(
        (off > 0)[10:30, 10:40, 10:40])


def test_min_width_radius_leaves_coarse_grids_alone():
    from lungvol.segmentation.lesions import _min_width_radius_px

    assert _min_width_radius_px(3.0, (2.0, 0.98, 0.98)) == (1, 1)  # 2.9 mm square
    assert _min_width_radius_px(3.0, (1.0, 0.6, 0.6)) == (2, 2)  # 3.0 mm
    assert _min_width_radius_px(3.0, (1.6, 1.4, 1.4)) == (0, 0)  # a 4.2 mm square is too wide
    assert _min_width_radius_px(0.0, (1.0, 0.6, 0.6)) == (0, 0)


@pytest.mark.parametrize("side", [2, 3, 4, 5])
def test_opening_keeps_a_square_of_its_side_in_place_and_drops_narrower_lines(side):
    """Even squares too: scipy centres an even window after its middle, and an opening
    whose dilation did not undo that would move the mask by a pixel."""
    from lungvol.segmentation.lesions import _opening_in_plane

    mask = np.zeros((2, 20, 20), bool)
    mask[:, 3:3 + side, 5:5 + side] = True  # exactly the square
    mask[:, 14:14 + side - 1, 2:18] = True  # a band one pixel too narrow
    out = _opening_in_plane(mask, (side, side))
    assert np.array_equal(out[:, :12], mask[:, :12])
    assert not out[:, 12:].any()


def test_solid_width_is_one_width_in_mm_on_clinical_grids():
    """Sides of round(width / pixel), at least 2: the 4.5 mm default is 5 pixels on 0.98 mm
    (as the odd squares were), 4 on 1.02-1.05 mm (was 3: 3.1 mm), 3 on 1.46 mm, 2 on
    1.95 mm (was 3: 5.9 mm). Pixels wider than the 2 mm vessel clearance (the 2.8 mm
    phantoms) keep 3, where a vessel is as wide as two pixels."""
    from lungvol.segmentation.lesions import _solid_width_px

    cfg = LesionSegmentationConfig()
    width = cfg.solid_min_width_mm
    sides = {s: _solid_width_px((2.0, s, s), cfg)[0]
             for s in (0.7, 0.98, 1.02, 1.05, 1.46, 1.95, 2.8)}
    assert sides == {0.7: 6, 0.98: 5, 1.02: 4, 1.05: 4, 1.46: 3, 1.95: 2, 2.8: 3}
    for s, n in sides.items():
        if s <= 2.0:
            assert abs(n * s - width) <= 0.65 * s  # the nearest whole number of pixels
    off = LesionSegmentationConfig(solid_min_width_mm=0.0)
    assert _solid_width_px((2.0, 0.98, 0.98), off) == (0, 0)  # the test off
    no_clearance = LesionSegmentationConfig(extension_vessel_clearance_mm=0.0)
    assert _solid_width_px((2.0, 2.8, 2.8), no_clearance) == (2, 2)
    from lungvol.errors import ConfigError

    with pytest.raises(ConfigError, match="solid_min_width_mm"):
        LesionSegmentationConfig(solid_min_width_mm=-1.0)


def _solid_inside_ground_glass(pixel_mm: float, width_px: int) -> tuple[np.ndarray, np.ndarray]:
    """Solid labels and the solid box: a column ``width_px`` square in-plane, 16 mm long,
    at -40 HU inside 48 mm of ground glass, on ``pixel_mm`` pixels (2 mm slices; noise
    SD 20 HU). Enclosure rule off: only the width test can call it solid."""
    sp = (2.0, pixel_mm, pixel_mm)
    n = int(round(64 / pixel_mm))
    hu = np.full((20, n, n), -860.0, np.float32)
    g0, g1 = int(round(8 / pixel_mm)), int(round(56 / pixel_mm))
    hu[2:18, g0:g1, g0:g1] = -620.0
    c = n // 2 - width_px // 2
    core = np.zeros(hu.shape, bool)
    core[6:14, c:c + width_px, c:c + width_px] = True
    hu[core] = -40.0
    vol = _volume((hu + _noise(hu.shape, seed=4)).astype(np.int16), sp)
    labels = segment_lesions(vol, LungMask(np.ones(hu.shape, np.uint8)),
                             LesionSegmentationConfig(enclosed_solid_min_ggo_fraction=2.0)).labels
    return labels == LESION_SOLID, core


@pytest.mark.parametrize(("pixel_mm", "width_px"),
                         [(0.7, 8), (0.98, 6), (1.02, 6), (1.46, 4), (1.95, 2)])
def test_solid_core_wider_than_the_square_inside_ground_glass_is_solid(pixel_mm, width_px):
    """5.6-5.9 mm cores, and 3.9 mm on 1.95 mm pixels: the odd squares of 0.6.5 were
    5.9 mm wide there, and a two-pixel core was not solid."""
    solid, core = _solid_inside_ground_glass(pixel_mm, width_px)
    assert np.count_nonzero(solid[core]) >= 0.9 * core.sum()


@pytest.mark.parametrize("pixel_mm", [0.7, 0.98, 1.02, 1.05, 1.46])
def test_vessel_three_mm_wide_inside_ground_glass_is_not_solid_on_fine_grids(pixel_mm):
    """The odd squares of 0.6.5 were 3.1 mm wide on 1.02-1.05 mm pixels: a 3 mm vessel
    there was solid. (On 1.95 mm pixels and coarser a 3 mm vessel is two pixels, as wide as
    the narrowest square: it cannot be told from a 4 mm solid core.)"""
    solid, core = _solid_inside_ground_glass(pixel_mm, int(round(3.0 / pixel_mm)))
    assert np.count_nonzero(solid[core]) <= 0.1 * core.sum()


def test_width_gate_per_grid():
    """Clinical CT gets the 3 mm square; voxels coarser than the 2 mm vessel clearance (the
    3 mm phantoms, where the clearance box is one voxel) the two-voxel gate; 1-2 mm voxels,
    where the clearance acts, none."""
    from lungvol.segmentation.lesions import _width_gate

    cfg = LesionSegmentationConfig()
    assert _width_gate((2.0, 0.98, 0.98), cfg) == "square"
    assert _width_gate((3.0, 2.8, 2.8), cfg) == "pair"
    assert _width_gate((1.6, 1.4, 1.4), cfg) == "none"
    assert _width_gate((3.0, 2.8, 2.8), LesionSegmentationConfig(
        extension_min_width_mm=0.0)) == "none"
    assert _width_gate((3.0, 2.8, 2.8), LesionSegmentationConfig(
        extension_vessel_clearance_mm=0.0)) == "none"
    assert _width_gate((2.0, 0.98, 0.98), LesionSegmentationConfig(
        lesion_extension_mm=0.0)) == "none"


def test_pair_gate_drops_one_voxel_lines_beyond_the_first_ring():
    """A one-voxel line leaving accepted lesion keeps its first voxel (in-plane next to the
    lesion) and loses the rest; a two-voxel-wide finger, a one-voxel rim row along the
    accepted block (the first ring) and an isolated 2 x 2 square are kept whole."""
    from lungvol.segmentation.lesions import _pair_gate

    accepted = np.zeros((3, 20, 20), bool)
    accepted[:, 5:10, 5:10] = True
    lesion = accepted.copy()
    lesion[1, 7, 10:16] = True  # one-voxel line along x
    lesion[1, 10:16, 5:7] = True  # two-voxel finger along y
    lesion[0, 4, 5:10] = True  # a rim row on top of the block
    lesion[2, 3:5, 12:14] = True  # an isolated 2 x 2 (a neighbour slice's growth)
    kept = _pair_gate(lesion, accepted)
    assert kept[1, 7, 10]
    assert not kept[1, 7, 11:16].any()
    assert kept[1, 10:16, 5:7].all()
    assert kept[0, 4, 5:10].all()
    assert kept[2, 3:5, 12:14].all()
    assert (kept & ~lesion).sum() == 0
    assert kept[accepted].all()


def test_on_coarse_voxels_the_extension_stops_at_a_one_voxel_tube():
    """3 x 2.8 x 2.8 mm voxels (the simulated trial's): a one-voxel tube at -560 HU leaving
    a ground-glass patch is grown into beyond the first ring without the gate, and not with
    it; the patch itself is whole either way."""
    spacing = (3.0, 2.8, 2.8)
    hu, lungs = _lung_cube(n=(20, 32, 32))
    patch = _fill_box(hu, np.s_[5:15, 8:20, 8:20], -620.0)
    _fill_box(hu, np.s_[6:14, 20:27, 14], -560.0)  # leaves the patch at y = 20
    vol = _volume(_noisy_volume(hu, seed=5).hu, spacing_mm=spacing)
    on = segment_lesions(vol, lungs, LesionSegmentationConfig())
    off = segment_lesions(vol, lungs, LesionSegmentationConfig(extension_min_width_mm=0.0))
    assert on.info["extension_width_gate"] == "pair"
    # y = 20 is next to the patch (accepted on its background) and y = 21 is in-plane next
    # to that: the first ring. Further out only the ungated growth goes.
    beyond = np.zeros(hu.shape, bool)
    beyond[6:14, 22:27, 14] = True
    assert np.count_nonzero(off.labels[beyond]) >= 6  # a real trap
    assert np.count_nonzero(on.labels[beyond]) == 0
    assert (on.labels[patch] > 0).all()
    assert (off.labels[patch] > 0).all()


def test_extension_reaches_further_only_where_a_width_gate_acts():
    from lungvol.segmentation.lesions import _extension_reach_mm

    cfg = LesionSegmentationConfig()
    assert _extension_reach_mm((2.0, 0.98, 0.98), cfg) == cfg.extension_gated_mm == 6.5
    assert _extension_reach_mm((3.0, 2.8, 2.8), cfg) == 6.5  # the two-voxel gate
    # The 1.4 mm phantoms: no gate, the reach of lungvol 0.6.0.
    assert _extension_reach_mm((1.6, 1.4, 1.4), cfg) == cfg.lesion_extension_mm == 5.0
    assert _extension_reach_mm((2.0, 0.98, 0.98), LesionSegmentationConfig(
        extension_min_width_mm=0.0)) == 5.0
    assert _extension_reach_mm((2.0, 0.98, 0.98), LesionSegmentationConfig(
        lesion_extension_mm=0.0)) == 0.0


def test_lesion_info_records_the_gate_and_reach_used_on_the_grid():
    hu, lungs = _lung_cube()
    hu[10:30, 10:40, 10:40] = -620.0
    # 1 mm voxels: a 3 x 3 square is 3 mm wide, the gate acts.
    info = segment_lesions(_noisy_volume(hu), lungs, LesionSegmentationConfig()).info
    assert (info["extension_width_gate"], info["extension_reach_mm"]) == ("square", 6.5)
    coarse = _volume(_noisy_volume(hu).hu, spacing_mm=(1.6, 1.4, 1.4))
    info = segment_lesions(coarse, lungs, LesionSegmentationConfig()).info
    assert (info["extension_width_gate"], info["extension_reach_mm"]) == ("none", 5.0)


def test_dependent_density_is_not_lesion_but_ground_glass_on_it_is():
    """Posterior (dependent) lung at -780 HU with a 12 mm strip at -690 HU (inside the GGO
    band, above the region floor): the region test relative to the local parenchyma
    rejects the strip; a -600 HU patch on the same dependent lung is ground glass."""
    hu, lungs = _lung_cube(n=(40, 80, 60))
    hu[:, 40:, :] = -780.0  # dependent half (higher y = posterior)
    strip = _fill_box(hu, np.s_[5:35, 66:78, 5:55], -690.0)
    patch = _fill_box(hu, np.s_[12:28, 45:60, 20:40], -600.0)
    vol = _noisy_volume(hu, seed=6)
    labels = segment_lesions(vol, lungs, LesionSegmentationConfig()).labels
    plain_floor = segment_lesions(vol, lungs, LesionSegmentationConfig(
        region_above_parenchyma_hu=-1000.0)).labels
    assert np.count_nonzero(plain_floor[strip] > 0) >= 0.5 * strip.sum()  # a real trap
    assert np.count_nonzero(labels[strip] > 0) <= 0.05 * strip.sum()
    assert np.count_nonzero(labels[patch] == LESION_GGO) >= 0.9 * patch.sum()


def test_new_lesion_settings_are_validated():
    from lungvol.errors import ConfigError

    for key in ("pleural_extrapolation_mm", "lesion_extension_mm",
                "extension_vessel_clearance_mm", "extension_min_width_mm",
                "extension_gated_mm"):
        with pytest.raises(ConfigError, match=key):
            LesionSegmentationConfig(**{key: -1.0})
    with pytest.raises(ConfigError, match="parenchyma_block_mm"):
        LesionSegmentationConfig(parenchyma_block_mm=0.0)


def test_diffuse_ground_glass_with_no_normal_lung_left_is_lesion():
    """Severe disease: every block of the lung is ground glass (-620 HU), so no normal lung
    gives the parenchyma level; the level falls back to parenchyma_default_hu, not to a
    value that would lift the region floor above the ground glass."""
    hu, lungs = _lung_cube(hu=-620)
    labels = segment_lesions(_noisy_volume(hu, seed=7), lungs,
                             LesionSegmentationConfig()).labels
    assert np.count_nonzero(labels == LESION_GGO) >= 0.95 * labels.size


@pytest.mark.parametrize(
    "spacing_mm", [(1.44, 1.4, 1.4), (2.0, 1.95, 1.95), (5.0, 1.71, 1.71), (0.5, 3.0, 0.7)]
)
def test_hand_written_opening_equals_scipy_grey_opening(spacing_mm):
    """The background opening (rows of the ball as shifted 1-D filters) is bit-identical to
    scipy's, also at the edges (mode "nearest") and on volumes thinner than the ball."""
    from scipy import ndimage

    from lungvol.segmentation.opening import ball, grey_opening

    rng = np.random.default_rng(5)
    footprint = ball(4.5, spacing_mm)
    for shape in [(2, 9, 30), (21, 17, 31)]:
        coarse = rng.normal(-700.0, 150.0, shape).astype(np.float32)
        coarse[rng.random(shape) < 0.3] = -1000.0
        expected = ndimage.grey_opening(coarse, footprint=footprint, mode="nearest")
        assert np.array_equal(grey_opening(coarse, footprint), expected)


@pytest.mark.parametrize("pool_busy_s", [0.0, 0.3])
def test_grow_enclosed_solid_in_threaded_slabs_equals_whole_volume(pool_busy_s):
    """The enclosed-solid and plaque rules count each component's surroundings in z-slabs
    shared by two threads (also while the pool is still busy with earlier work); with 16-bit
    labels the result equals counting on the whole volume with int32 labels. Plaques off
    the costal side count when dense (mean HU), and come back as their own mask."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    from scipy import ndimage

    from lungvol.segmentation import lesions
    from lungvol.segmentation.grid import CoarseGrid

    rng = np.random.default_rng(11)
    shape = (80, 48, 44)  # three slabs of at least 8 halos (3 slices)
    smooth = ndimage.gaussian_filter(rng.normal(0.0, 1.0, shape), 1.5)
    smooth_hu = (2000.0 * smooth).astype(np.float32)  # 0.15 -> 300 HU
    hu = smooth_hu - 500.0 + rng.normal(0.0, 40.0, shape).astype(np.float32)
    ggo_band = (smooth > 0.05) & (smooth < 0.15)
    solid_band = smooth >= 0.15
    ggo = ggo_band & (rng.random(shape) < 0.8)
    solid = solid_band & (rng.random(shape) < 0.5)
    lung = np.ones(shape, dtype=bool)
    lung[:, :6] = False
    config = LesionSegmentationConfig(
        enclosed_solid_min_ggo_fraction=0.3, plaque_min_wall_contact=0.1,
        plaque_min_volume_ml=0.0, plaque_dense_min_hu=-100.0,
    )
    spacing_mm = (1.0, 0.8, 0.8)
    grid = CoarseGrid.for_volume(shape, spacing_mm, working_spacing_mm=1.5)
    near_bone = rng.random(grid.shape) < 0.4  # the costal side, per background block

    def reference() -> tuple[np.ndarray, int, np.ndarray]:
        """The rules on the whole volume at once, int32 labels."""
        out = solid.copy()
        lab, n = ndimage.label(solid_band & ~out, structure=np.ones((3, 3, 3), dtype=bool))
        size = tuple(2 * max(1, round(config.enclosure_shell_mm / s)) + 1 for s in spacing_mm)
        near = ndimage.maximum_filter(lab, size=size, mode="constant")
        around = (near > 0) & (lab == 0)
        shell = around & lung & ~(ggo_band & ~ggo) & ~out
        total = np.bincount(near[shell], minlength=n + 1)
        on_ggo = np.bincount(near[shell & ggo], minlength=n + 1)
        accept = (total > 0) & (on_ggo >= config.enclosed_solid_min_ggo_fraction * total)
        outside = ~lung & (smooth_hu >= config.solid_band_hu[0])
        z, y, x = np.indices(shape)
        f = grid.factors
        costal_side = near_bone[z // f[0], y // f[1], x // f[2]]
        n_around = np.bincount(near[around], minlength=n + 1)
        on_wall = np.bincount(near[around & outside], minlength=n + 1)
        costal = np.bincount(near[around & outside & costal_side], minlength=n + 1)
        sizes = np.maximum(np.bincount(lab.ravel(), minlength=n + 1), 1)
        dense = np.bincount(lab.ravel(), weights=hu.ravel(), minlength=n + 1) / sizes >= -100.0
        costal_ok = costal >= 0.5 * on_wall
        on_wall_ok = (on_wall > 0) & (on_wall >= 0.1 * n_around)
        # Both kinds occur off the costal side: dense ones (plaques) and light ones (not).
        assert (on_wall_ok & ~costal_ok & ~dense)[1:].any()
        plaque = on_wall_ok & (costal_ok | dense)
        off_costal = plaque & ~costal_ok & ~accept
        accept |= plaque
        accept[0] = False
        for i, o in enumerate(ndimage.find_objects(lab), start=1):
            length = max((b.stop - b.start) * s for b, s in zip(o, spacing_mm, strict=True))
            if length > config.enclosed_solid_max_length_mm:
                accept[i] = False
        off_costal &= accept
        off_costal[0] = False
        return out | accept[lab], int(np.count_nonzero((plaque & accept)[lab])), off_costal[lab]

    expected, n_plaque, expected_off_costal = reference()
    assert np.count_nonzero(expected & ~solid) > n_plaque > np.count_nonzero(expected_off_costal)
    assert expected_off_costal.any()
    out = solid.copy()
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(time.sleep, pool_busy_s)
        _grown, _plaque, off_costal = lesions._grow_enclosed_solid(
            ggo, out, ggo_band, solid_band, lung, smooth_hu, hu, (grid, near_bone), spacing_mm,
            config, pool,
        )
    assert np.array_equal(out, expected)
    assert off_costal is not None
    assert np.array_equal(off_costal, expected_off_costal)


def test_ground_glass_background_input_in_slabs_equals_one_full_copy(monkeypatch):
    """The ground-glass background's block means are computed slab by slab (memory); with
    partial edge blocks and several slabs they equal those of one full-box copy."""
    from lungvol.segmentation import lesions
    from lungvol.segmentation.grid import CoarseGrid

    rng = np.random.default_rng(2)
    hu = rng.normal(-600.0, 300.0, (23, 19, 17)).astype(np.float32)
    smooth = hu + rng.normal(0.0, 30.0, hu.shape).astype(np.float32)
    grid = CoarseGrid.for_volume(hu.shape, (0.8, 0.7, 0.7), working_spacing_mm=1.5)
    monkeypatch.setattr(lesions, "_SLAB_VOXELS", 2 * 19 * 17)
    out = lesions._air_above(grid, hu, smooth, -300.0)
    expected = grid.downsample_mean(np.where(smooth >= -300.0, lesions._OUTSIDE_HU, hu))
    assert np.array_equal(out, expected)


def _tube(shape, centre_zx, radius_mm, y_range, value, hu):
    """Paint a cylinder along y (1 mm voxels) into ``hu``; return its mask."""
    z, y, x = np.indices(shape)
    mask = (np.hypot(z - centre_zx[0], x - centre_zx[1]) <= radius_mm) & (
        (y >= y_range[0]) & (y < y_range[1])
    )
    hu[mask] = value
    return mask


def _vessel_tree_cube():
    """Normal lung with a 12 mm-wide vessel segment (wider than the background ball) that
    continues at both ends as 8 mm vessels (narrower than the ball), with 5 mm side
    branches every 10 mm, like a hilar or lobar vessel."""
    hu, lungs = _lung_cube(n=(40, 80, 80))
    thin = _tube(hu.shape, (20, 40), 4.0, (0, 80), 40.0, hu)
    z, y, x = np.indices(hu.shape)
    for y0, side in ((25, 1), (35, -1), (45, 1)):
        branch = (np.hypot(z - 20.0, y - y0) <= 2.5) & (side * (x - 40) >= 0)
        hu[branch] = 40.0
        thin |= branch
    thick = _tube(hu.shape, (20, 40), 6.0, (15, 55), 40.0, hu)
    return hu, lungs, thick, thin


def test_vessel_segment_wider_than_the_ball_is_not_solid():
    hu, lungs, thick, _ = _vessel_tree_cube()
    vol = _noisy_volume(hu, seed=3)
    out = segment_lesions(vol, lungs, LesionSegmentationConfig())
    kept = segment_lesions(vol, lungs, LesionSegmentationConfig(vessel_max_radius_mm=0.0))
    # Without the rule the wide segment passes the background rules as solid ...
    assert np.count_nonzero(kept.labels[thick] == LESION_SOLID) >= 0.5 * thick.sum()
    # ... with it, neither the segment nor its partial-volume skirt is lesion.
    assert np.count_nonzero(out.labels) <= 0.02 * thick.sum()
    removed_ml = out.info["vessel_segments_removed_ml"]
    assert removed_ml >= 0.5 * thick.sum() * vol.voxel_volume_ml
    assert kept.info["vessel_segments_removed_ml"] == 0.0


def test_round_nodule_on_a_vessel_stays_solid():
    """A 14 mm nodule with a vessel through it is round (elongation ~1): solid."""
    hu, lungs = _lung_cube(n=(40, 80, 80))
    _tube(hu.shape, (20, 40), 2.0, (0, 80), 40.0, hu)
    z, y, x = np.indices(hu.shape)
    nodule = np.sqrt((z - 20.0) ** 2 + (y - 40.0) ** 2 + (x - 40.0) ** 2) <= 7.0
    hu[nodule] = 20.0
    labels = segment_lesions(_noisy_volume(hu, seed=4), lungs, LesionSegmentationConfig()).labels
    assert np.count_nonzero(labels[nodule] == LESION_SOLID) >= 0.8 * nodule.sum()


def test_thick_elongated_tumour_stays_solid():
    """An elongated mass thicker than vessel_max_radius_mm (radius 11 mm) is not a vessel."""
    hu, lungs = _lung_cube(n=(40, 80, 80))
    _tube(hu.shape, (20, 40), 2.0, (0, 80), 40.0, hu)
    mass = _tube(hu.shape, (20, 40), 11.0, (10, 70), 30.0, hu)
    labels = segment_lesions(_noisy_volume(hu, seed=5), lungs, LesionSegmentationConfig()).labels
    assert np.count_nonzero(labels[mass] == LESION_SOLID) >= 0.8 * mass.sum()


def test_elongated_solid_band_inside_ground_glass_stays_solid():
    """A vessel-wide solid band inside ground glass is a lesion's solid part, not a vessel."""
    hu, lungs, thick, _ = _vessel_tree_cube()
    z, y, x = np.indices(hu.shape)
    ggo = (np.abs(z - 20) <= 12) & (np.abs(x - 40) <= 20) & (y >= 8) & (y < 62) & ~thick
    hu[ggo & (hu < -300)] = -620.0
    labels = segment_lesions(_noisy_volume(hu, seed=6), lungs, LesionSegmentationConfig()).labels
    assert np.count_nonzero(labels[thick] == LESION_SOLID) >= 0.8 * thick.sum()


def _branching_tree(hu):
    """Three 10 mm-wide vessels meeting at right angles (a hilar junction: not elongated as
    a whole), each continuing to the cube's edges as an 8 mm vessel (narrower than the
    ball). Returns the wide part."""
    z, y, x = np.indices(hu.shape)
    c = np.array(hu.shape) // 2
    wide = np.zeros(hu.shape, bool)
    for axis in range(3):
        others = [a for a in range(3) if a != axis]
        coords = (z, y, x)
        r = np.hypot(coords[others[0]] - c[others[0]], coords[others[1]] - c[others[1]])
        along = coords[axis] - c[axis]
        hu[r <= 4.0] = 40.0
        arm = (r <= 5.0) & (np.abs(along) <= 16)
        hu[arm] = 40.0
        wide |= arm
    return wide


def test_branching_vessel_tree_in_normal_lung_is_not_solid():
    """A junction of vessels wider than the ball is round as a whole (elongation ~1), so
    the elongation test misses it; at >= vessel_tree_min_volume_ml with no contact with the
    chest wall it is a vessel tree."""
    hu, lungs = _lung_cube(n=(60, 60, 60))
    wide = _branching_tree(hu)
    vol = _noisy_volume(hu, seed=8)
    out = segment_lesions(vol, lungs, LesionSegmentationConfig())
    kept = segment_lesions(vol, lungs, LesionSegmentationConfig(vessel_tree_min_volume_ml=0.0))
    assert np.count_nonzero(kept.labels[wide] == LESION_SOLID) >= 0.5 * wide.sum()
    assert np.count_nonzero(out.labels[wide]) <= 0.02 * wide.sum()
    assert out.info["vessel_segments_removed_ml"] >= 0.5 * wide.sum() * vol.voxel_volume_ml


def test_solid_plaque_on_the_chest_wall_with_a_vessel_stays_solid():
    """Pleura-based consolidation as thin as a vessel, with vessels leaving it, in normal
    lung: not elongated, large, but a quarter of its surroundings is chest wall, so not a
    tree (control: with any wall contact allowed it would be removed)."""
    hu = np.full((50, 60, 60), -860.0, np.float32)
    lung = np.ones(hu.shape, np.uint8)
    lung[:, :, :8] = 0
    hu[:, :, :8] = 40.0  # chest wall
    plaque = _fill_box(hu, (slice(15, 35), slice(15, 45), slice(8, 20)), 20.0)
    z, y, x = np.indices(hu.shape)
    for z0, y0 in ((25, 30), (20, 20), (30, 40)):  # vessels leaving it
        hu[(np.hypot(z - z0, y - y0) <= 4.0) & (x >= 20)] = 40.0
    vol = _noisy_volume(hu, seed=9)
    out = segment_lesions(vol, LungMask(lung), LesionSegmentationConfig())
    assert np.count_nonzero(out.labels[plaque] == LESION_SOLID) >= 0.8 * plaque.sum()
    always = segment_lesions(
        vol, LungMask(lung), LesionSegmentationConfig(vessel_tree_max_wall_contact=1.0)
    )
    assert np.count_nonzero(always.labels[plaque] == LESION_SOLID) <= 0.2 * plaque.sum()


def _costal_plaque(rib: bool, plaque_hu: float = 0.0):
    """Normal lung (x >= 12) against a chest wall (40 HU), with a rib (700 HU) 3-7 mm out
    when ``rib``; a solid plaque (``plaque_hu``) 3 mm thick on the pleura, thinner than the
    background ball, and a 3 mm vessel (40 HU) that ends on the pleura with its tip.
    Returns (volume, lung mask, plaque, vessel)."""
    hu = np.full((40, 60, 60), -860.0, np.float32)
    lung = np.ones(hu.shape, np.uint8)
    lung[:, :, :12] = 0
    hu[:, :, :12] = 40.0
    if rib:
        hu[:, :, 5:9] = 700.0
    plaque = _fill_box(hu, (slice(10, 26), slice(8, 30), slice(12, 15)), plaque_hu)
    z, y, x = np.indices(hu.shape)
    vessel = (np.hypot(z - 20, y - 45) <= 1.5) & (x >= 12)
    hu[vessel] = 40.0
    return _noisy_volume(hu, seed=4), LungMask(lung), plaque, vessel


def test_thin_solid_plaque_on_the_costal_pleura_is_solid():
    """Subpleural consolidation thinner than the ball has a normal-lung background and is
    rejected by the background rules; lying on the costal pleura (half its surroundings is
    chest wall, ribs within pleural_bone_distance_mm) it is solid. A vessel touching the
    pleura with its tip stays out, and so does the plaque with the rule off."""
    vol, lungs, plaque, vessel = _costal_plaque(rib=True)
    out = segment_lesions(vol, lungs, LesionSegmentationConfig())
    assert np.count_nonzero(out.labels[plaque] == LESION_SOLID) >= 0.8 * plaque.sum()
    assert out.info["pleural_plaques_added_ml"] >= 0.5 * plaque.sum() * vol.voxel_volume_ml
    assert out.info["dense_wall_plaques_added_ml"] == 0.0  # costal: the old rule's
    assert np.count_nonzero(out.labels[vessel]) <= 0.1 * vessel.sum()
    off = segment_lesions(vol, lungs, LesionSegmentationConfig(plaque_min_wall_contact=2.0))
    assert np.count_nonzero(off.labels[plaque]) <= 0.2 * plaque.sum()
    assert off.info["pleural_plaques_added_ml"] == 0.0


def test_thin_plaque_away_from_ribs_is_solid_only_when_dense():
    """The same plaque on soft tissue with no bone near (mediastinum, diaphragm, spine) is
    solid when dense (its mean HU >= plaque_dense_min_hu, session 28); a lighter strip
    there, as the partial volume along an aerated lung's edge (-130 to -240 HU on the real
    normal chest), is not, nor is the dense one with the density test off. The vessel's tip
    stays out either way."""
    vol, lungs, plaque, vessel = _costal_plaque(rib=False)
    out = segment_lesions(vol, lungs, LesionSegmentationConfig())
    assert np.count_nonzero(out.labels[plaque] == LESION_SOLID) >= 0.8 * plaque.sum()
    assert np.count_nonzero(out.labels[vessel]) <= 0.1 * vessel.sum()
    dense_ml = out.info["dense_wall_plaques_added_ml"]
    assert 0.5 * plaque.sum() * vol.voxel_volume_ml <= dense_ml
    assert dense_ml <= out.info["pleural_plaques_added_ml"]
    off = segment_lesions(vol, lungs, LesionSegmentationConfig(plaque_dense_min_hu=100.0))
    assert off.info["dense_wall_plaques_added_ml"] == 0.0
    assert np.count_nonzero(off.labels[plaque]) <= 0.2 * plaque.sum()
    # Pixels coarser than plaque_dense_max_pixel_mm: the density test is off.
    coarse = segment_lesions(vol, lungs, LesionSegmentationConfig(
        plaque_dense_max_pixel_mm=0.5 * min(vol.spacing_mm[1:])))
    assert np.count_nonzero(coarse.labels[plaque]) <= 0.2 * plaque.sum()
    vol, lungs, strip, _ = _costal_plaque(rib=False, plaque_hu=-200.0)
    light = segment_lesions(vol, lungs, LesionSegmentationConfig())
    assert np.count_nonzero(light.labels[strip]) <= 0.2 * strip.sum()


def test_vessel_settings_are_validated():
    from lungvol.errors import ConfigError

    with pytest.raises(ConfigError, match="vessel_max_radius_mm"):
        LesionSegmentationConfig(vessel_max_radius_mm=-1.0)
    with pytest.raises(ConfigError, match="vessel_min_elongation"):
        LesionSegmentationConfig(vessel_min_elongation=0.5)
    with pytest.raises(ConfigError, match="vessel_shell_mm"):
        LesionSegmentationConfig(vessel_shell_mm=0.0)
    with pytest.raises(ConfigError, match="vessel_max_ggo_fraction"):
        LesionSegmentationConfig(vessel_max_ggo_fraction=1.5)
    with pytest.raises(ConfigError, match="vessel_tree_min_volume_ml"):
        LesionSegmentationConfig(vessel_tree_min_volume_ml=-1.0)
    with pytest.raises(ConfigError, match="vessel_tree_max_wall_contact"):
        LesionSegmentationConfig(vessel_tree_max_wall_contact=1.5)
    with pytest.raises(ConfigError, match="plaque_min_wall_contact"):
        LesionSegmentationConfig(plaque_min_wall_contact=-0.1)
    with pytest.raises(ConfigError, match="plaque_dense_max_pixel_mm"):
        LesionSegmentationConfig(plaque_dense_max_pixel_mm=0.0)
    with pytest.raises(ConfigError, match="plaque_min_costal_fraction"):
        LesionSegmentationConfig(plaque_min_costal_fraction=1.5)


def test_component_labels_are_uint16_where_they_fit_and_int32_beyond():
    """The lesion stage's 26-connected labels (enclosed solid, vessel rule, minimum size):
    uint16 halves their memory; past 65535 components they stay int32 with the same
    numbering."""
    from scipy import ndimage

    from lungvol.segmentation.lesions import _CONN26, _label_26

    specks = np.zeros((2, 600, 600), bool)
    specks[0, ::2, ::2] = True  # 90000 isolated voxels
    for mask, dtype in ((specks[:, :100, :100], np.uint16), (specks, np.int32)):
        lab, n = _label_26(mask)
        ref, n_ref = ndimage.label(mask, structure=_CONN26)
        assert (lab.dtype, n) == (np.dtype(dtype), n_ref)
        np.testing.assert_array_equal(lab, ref)


@pytest.mark.parametrize(
    "spacing_mm", [(0.8, 0.7, 0.7), (2.0, 0.98, 0.98), (3.0, 2.8, 2.8)],
)
def test_extension_in_slabs_equals_one_piece(spacing_mm, monkeypatch):
    """The hysteresis from the cores runs in z-slabs shared with the pool; each slab's halo
    (the growth's z reach and the vessel clearance) makes it the growth of the whole box,
    whichever gate acts on the grid, also while the pool is busy at first."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    from scipy import ndimage

    from lungvol.segmentation import lesions

    config = LesionSegmentationConfig()
    rng = np.random.default_rng(5)
    shape = (70, 40, 44)

    def blobs(level_sd: float, sigma: float) -> np.ndarray:
        field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
        return field / field.std() > level_sd

    band = blobs(-0.3, 3.0)  # ground-glass band: where the growth may run
    solid_band = blobs(1.0, 1.5)
    solid = solid_band & blobs(0.0, 2.0)
    seeds = band & blobs(1.2, 3.0)
    ggo = seeds.copy()
    deep = blobs(-0.5, 3.0)  # where rejected solid counts as a vessel for the clearance
    box = (slice(3, 67), slice(2, 38), slice(1, 43))
    candidates = (box, band[box].copy(), deep[box].copy())
    without_clearance = lesions._extend_from_cores(
        ggo.copy(), solid, seeds, solid_band, (box, band[box].copy(), None), spacing_mm, config
    )

    def run(pieces: int, pool) -> tuple[np.ndarray, int]:
        monkeypatch.setattr(lesions, "_GROW_SLABS", pieces)
        out = ggo.copy()
        box_, cand, dp = candidates
        added = lesions._extend_from_cores(
            out, solid, seeds, solid_band, (box_, cand.copy(), dp), spacing_mm, config, pool
        )
        return out, added

    expected, n_expected = run(1, None)
    assert 0 < n_expected < without_clearance  # both the growth and the clearance act
    assert lesions._geodesic_steps(
        spacing_mm, lesions._extension_reach_mm(spacing_mm, config)
    )[1] >= 1
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(time.sleep, 0.05)
        got, n_got = run(6, pool)
    assert n_got == n_expected
    assert np.array_equal(got, expected)
