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
    thin_structure_radius_mm=0.0,
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
        smoothing_sigma_mm=0.0, background_radius_mm=0.0, thin_structure_radius_mm=0.0,
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
