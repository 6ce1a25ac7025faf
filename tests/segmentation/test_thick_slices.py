"""Thick slices: the wall's partial volume at lung surfaces that face the next slice
(lesions.thick_slice_surface_rule, session 20; lesions.thick_slice_chain_mm, session 29)."""

from __future__ import annotations

import numpy as np
import pytest

from lungvol.config import LesionSegmentationConfig
from lungvol.segmentation import segment_lesions
from lungvol.segmentation.lesions import (
    _slice_facing_partial_volume,
    _slices_beyond_ball,
    _thick_slice_chain_slices,
)
from lungvol.types import LESION_GGO, CTVolume, LungMask, SourceInfo

THICK_MM = (5.0, 1.0, 1.0)
LUNG_HU = -860.0
TISSUE_HU = 40.0
OFF = LesionSegmentationConfig(thick_slice_surface_rule=False)
NO_CHAIN = LesionSegmentationConfig(thick_slice_chain_mm=0.0)


def _volume(hu: np.ndarray, spacing_mm=THICK_MM, slice_thickness_mm=None) -> CTVolume:
    noise = np.random.default_rng(0).normal(0.0, 15.0, hu.shape)
    return CTVolume(
        hu=np.rint(hu + noise).astype(np.int16), spacing_mm=spacing_mm,
        origin_lps_mm=(0.0, 0.0, 0.0), direction=np.eye(3),
        source=SourceInfo(path="synthetic", kind="nifti", sha256="",
                          slice_thickness_mm=slice_thickness_mm),
    )


def _lung_on_a_dome(n_z: int = 12, floor: int = 2) -> tuple[np.ndarray, LungMask]:
    """Lung (-860 HU) in slices ``floor``.. over soft tissue (slices below ``floor``:
    the diaphragm), chest wall around it in-plane."""
    hu = np.full((n_z, 80, 80), TISSUE_HU, np.float32)
    lung = np.zeros(hu.shape, bool)
    lung[floor:, 5:75, 5:75] = True
    hu[lung] = LUNG_HU
    return hu, LungMask(lung.astype(np.uint8))


@pytest.mark.parametrize(
    ("spacing_mm", "flat"),
    [((2.0, 0.98, 0.98), False), ((4.0, 0.98, 0.98), False), ((5.0, 0.7, 0.7), True),
     ((6.0, 0.98, 0.98), True), ((0.8, 0.7, 0.7), False)],
)
def test_the_rule_applies_where_the_ball_is_one_slice_thick(spacing_mm, flat):
    """background_radius_mm 4.5: slices 5 and 6 mm apart are beyond the ball's reach."""
    assert _slices_beyond_ball((40, 64, 64), spacing_mm, LesionSegmentationConfig()) is flat


@pytest.mark.parametrize(("spacing_mm", "thickness_mm", "flat"), [
    ((5.0, 0.7, 0.7), 5.0, True), ((10.0, 0.7, 0.7), 1.0, False),
    ((5.0, 0.7, 0.7), 2.5, False), ((2.5, 0.7, 0.7), 5.0, False),
])
def test_the_header_thickness_decides_with_the_spacing(spacing_mm, thickness_mm, flat):
    """Sequential HRCT (1 mm slices 10 mm apart) averages little across a surface: the rule
    needs slices both far apart and thick (SliceThickness, when the header has it)."""
    assert _slices_beyond_ball(
        (40, 64, 64), spacing_mm, LesionSegmentationConfig(), thickness_mm) is flat


def test_dome_partial_volume_on_a_thick_slice_is_not_lesion():
    """A 5 mm slice cutting the diaphragm dome: a broad patch of lung over it reads -450 HU
    (half lung, half tissue), with aerated lung in the slice above. The one-slice ball
    keeps it as ground glass without the rule; with it, it is not lesion."""
    hu, lungs = _lung_on_a_dome()
    hu[2, 15:65, 15:65] = -450.0
    patch = np.zeros(hu.shape, bool)
    patch[2, 15:65, 15:65] = True
    vol = _volume(hu)
    without = segment_lesions(vol, lungs, OFF)
    assert np.count_nonzero(without.labels[patch]) >= 0.5 * patch.sum()  # a real trap
    out = segment_lesions(vol, lungs, LesionSegmentationConfig())
    assert np.count_nonzero(out.labels[patch]) <= 0.02 * patch.sum()
    assert out.info["slice_facing_partial_volume_removed_ml"] >= 0.5 * patch.sum() * 5e-3


def test_ground_glass_that_continues_into_the_next_slice_is_kept():
    """Ground glass lying on the diaphragm three slices deep (15 mm) is lesion, its lowest
    slice included."""
    hu, lungs = _lung_on_a_dome()
    hu[2:5, 15:65, 15:65] = -600.0
    layer = np.zeros(hu.shape, bool)
    layer[2:5, 15:65, 15:65] = True
    out = segment_lesions(_volume(hu), lungs, LesionSegmentationConfig())
    assert np.count_nonzero(out.labels[layer] == LESION_GGO) >= 0.9 * layer.sum()
    assert np.count_nonzero(out.labels[2, 15:65, 15:65] == LESION_GGO) >= 0.9 * 50 * 50
    assert out.info["slice_facing_partial_volume_removed_ml"] == 0.0


def test_the_apex_side_is_judged_alike():
    """The same partial volume on the lung's top surface (tissue in the slice above)."""
    hu, lungs = _lung_on_a_dome()
    hu, lungs = hu[::-1].copy(), LungMask(lungs.labels[::-1].copy())
    hu[-3, 15:65, 15:65] = -450.0
    out = segment_lesions(_volume(hu), lungs, LesionSegmentationConfig())
    assert np.count_nonzero(out.labels[-3, 15:65, 15:65]) <= 0.02 * 50 * 50


def test_a_lung_cut_off_by_the_scan_end_is_not_a_surface():
    """Where the lung reaches the first slice, what lies below is unknown: ground glass
    there is kept."""
    hu, lungs = _lung_on_a_dome(floor=0)
    hu[0, 15:65, 15:65] = -450.0
    out = segment_lesions(_volume(hu), lungs, LesionSegmentationConfig())
    assert np.count_nonzero(out.labels[0, 15:65, 15:65] == LESION_GGO) >= 0.9 * 50 * 50


def test_thin_slices_far_apart_keep_their_surface_lesion():
    """1 mm slices every 5 mm (SliceThickness 1): a dense patch on the dome's slice is not
    the dome's partial volume, and the rule leaves it as it is."""
    hu, lungs = _lung_on_a_dome()
    hu[2, 15:65, 15:65] = -450.0
    vol = _volume(hu, slice_thickness_mm=1.0)
    on = segment_lesions(vol, lungs, LesionSegmentationConfig())
    off = segment_lesions(vol, lungs, OFF)
    assert (on.labels == off.labels).all()
    assert on.info["slice_facing_partial_volume_removed_ml"] == 0.0


def test_thin_slices_are_left_to_the_ball():
    """At 2 mm slices the rule is off: the result is the same with it disabled."""
    hu, lungs = _lung_on_a_dome(n_z=30, floor=4)
    hu[4, 15:65, 15:65] = -450.0
    vol = _volume(hu, spacing_mm=(2.0, 1.0, 1.0))
    on = segment_lesions(vol, lungs, LesionSegmentationConfig())
    off = segment_lesions(vol, lungs, OFF)
    assert (on.labels == off.labels).all()
    assert on.info["slice_facing_partial_volume_removed_ml"] == 0.0


def test_solid_partial_volume_is_counted_once_in_info():
    """The dome's denser partial volume (solid band, -200 HU) goes too, and `info` counts it
    under the rule's entry only, not again as rejected by the background rules."""
    hu, lungs = _lung_on_a_dome()
    hu[2, 15:65, 15:65] = -200.0
    vol = _volume(hu)
    off = segment_lesions(vol, lungs, OFF)
    on = segment_lesions(vol, lungs, LesionSegmentationConfig())
    assert np.count_nonzero(off.labels[2, 15:65, 15:65]) >= 0.5 * 50 * 50  # a real trap
    assert np.count_nonzero(on.labels[2, 15:65, 15:65]) <= 0.02 * 50 * 50
    assert on.info["slice_facing_partial_volume_removed_ml"] >= 0.5 * 50 * 50 * 5e-3
    assert on.info["background_removed_ml"] <= off.info["background_removed_ml"] + 0.1


def _column(values_hu: list[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One voxel column along z: tissue (outside the lung) below, then ``values_hu``."""
    smooth = np.array([TISSUE_HU, *values_hu], np.float32).reshape(-1, 1, 1)
    lung = np.ones(smooth.shape, bool)
    lung[0] = False
    band = lung & (smooth >= -750.0) & (smooth <= 50.0)
    return band, smooth, lung


@pytest.mark.parametrize(("values_hu", "k", "marked"), [
    ([-450, -860, -860], 1, [1]),              # the session-20 rule: aerated right behind
    ([-450, -600, -860, -860], 1, []),         # partial volume two slices deep: not at k = 1
    ([-450, -600, -860, -860], 2, [1, 2]),     # ... at k = 2, both slices
    ([-450, -600, -680, -860], 2, []),         # three slices deep: beyond k = 2
    ([-450, -600, -680, -860], 3, [1, 2, 3]),
    ([-600, -450, -860, -860], 2, []),         # denser inward: a lesion, not the wall's share
    ([-600, -600, -600, -600], 3, []),         # a layer that goes on inward: lesion
])
def test_a_partial_volume_chain_falls_from_the_surface_into_aerated_lung(values_hu, k, marked):
    band, smooth, lung = _column(values_hu)
    out = _slice_facing_partial_volume(band, smooth, lung, -750.0, max_slices=k)
    assert list(np.flatnonzero(out[:, 0, 0])) == marked


@pytest.mark.parametrize(("spacing_z_mm", "thickness_mm", "chain_mm", "slices"), [
    (3.0, None, 6.0, 2), (4.0, None, 6.0, 1), (2.5, None, 6.0, 0), (2.0, None, 6.0, 0),
    (3.0, 1.0, 6.0, 0),   # thin slices 3 mm apart: little averaged across the surface
    (3.0, None, 0.0, 0),  # disabled
    (2.0, 3.0, 6.0, 3),
])
def test_the_chain_spans_whole_slices_on_slices_thicker_than_the_minimum(
    spacing_z_mm, thickness_mm, chain_mm, slices
):
    config = LesionSegmentationConfig(thick_slice_chain_mm=chain_mm)
    assert _thick_slice_chain_slices((spacing_z_mm, 0.98, 0.98), config, thickness_mm) == slices


def test_growth_does_not_run_along_the_domes_partial_volume_on_3mm_slices():
    """3 mm slices: the dome's partial volume spans two slices (-430 and -600 HU over the
    whole lung floor), and a ground-glass patch sits on it. Without the chain rule the
    hysteresis grows from the patch into the sheet around it; with it the sheet is left
    out, and the patch itself stays."""
    hu, lungs = _lung_on_a_dome(n_z=20, floor=3)
    hu[3, 10:70, 10:70] = -430.0
    hu[4, 10:70, 10:70] = -600.0
    patch = np.zeros(hu.shape, bool)
    patch[3:9, 30:50, 30:50] = True
    hu[patch] = -560.0
    sheet = np.zeros(hu.shape, bool)
    sheet[3:5, 10:70, 10:70] = True
    sheet &= ~patch
    vol = _volume(hu, spacing_mm=(3.0, 1.0, 1.0))
    without = segment_lesions(vol, lungs, NO_CHAIN)
    out = segment_lesions(vol, lungs, LesionSegmentationConfig())
    grown_without = np.count_nonzero(without.labels[sheet])
    grown = np.count_nonzero(out.labels[sheet])
    assert grown_without >= 200, grown_without  # a real trap: growth along the sheet
    assert grown <= 0.5 * grown_without, (grown, grown_without)
    assert np.count_nonzero(out.labels[patch]) >= 0.9 * patch.sum()
    assert out.info["slice_facing_growth_withheld_ml"] > 0
    assert without.info["slice_facing_growth_withheld_ml"] == 0.0


@pytest.mark.parametrize("key", ["thick_slice_chain_mm", "thick_slice_chain_min_mm"])
def test_negative_chain_settings_are_refused_by_name(key):
    from lungvol.errors import ConfigError

    with pytest.raises(ConfigError, match=key):
        LesionSegmentationConfig(**{key: -1.0})
