"""insert_lesions: known lesions added to an existing scan inside its lung mask."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from lungvol.errors import GeometryError, InputError
from lungvol.phantom import GGO_RANGE_HU, Phantom, insert_lesions
from lungvol.types import LESION_GGO, LESION_SOLID


@pytest.fixture(scope="module")
def base(normal_small: Phantom) -> Phantom:
    """A normal (lesion-free) scan playing the part of a real one."""
    return normal_small


@pytest.fixture(scope="module")
def inserted(base: Phantom) -> tuple[np.ndarray, np.ndarray, dict]:
    return insert_lesions(
        base.hu, base.lungs, spacing_mm=base.spacing_mm, seed=2, lesion_pct=12.0, solid_pct=3.0
    )


def test_truth_proportions_hit_targets(inserted: tuple) -> None:
    _, labels, truth = inserted
    assert truth["lesion_proportion_pct"] == pytest.approx(12.0, rel=0.05)
    assert truth["solid_proportion_pct"] == pytest.approx(3.0, rel=0.05)
    assert truth["solid_volume_ml"] + truth["ggo_volume_ml"] == pytest.approx(
        truth["lesion_volume_ml"]
    )
    assert set(np.unique(labels)) == {0, LESION_GGO, LESION_SOLID}


def test_lesions_stay_inside_the_lung_mask(base: Phantom, inserted: tuple) -> None:
    new_hu, labels, _ = inserted
    assert not np.any((labels > 0) & (base.lungs == 0))
    changed = new_hu != base.hu
    assert not np.any(changed & (ndimage.binary_dilation(base.lungs > 0, iterations=2) == 0))


def test_only_density_is_added_and_vessels_are_preserved(base: Phantom, inserted: tuple) -> None:
    new_hu, labels, _ = inserted
    assert np.all(new_hu.astype(int) >= base.hu.astype(int))
    vessel_core = (base.lungs > 0) & (base.hu > 0)
    away_from_solid = ~ndimage.binary_dilation(labels == LESION_SOLID, iterations=2)
    keep = vessel_core & away_from_solid
    assert np.array_equal(new_hu[keep], base.hu[keep])
    # Vessels crossing ground-glass are not GGO truth.
    assert not np.any(vessel_core & (labels == LESION_GGO))


def test_inserted_lesions_have_lesion_density_and_keep_the_scan_noise(
    base: Phantom, inserted: tuple
) -> None:
    new_hu, labels, _ = inserted
    ggo_core = ndimage.binary_erosion(labels == LESION_GGO)
    assert GGO_RANGE_HU[0] - 30 <= np.median(new_hu[ggo_core]) <= GGO_RANGE_HU[1] + 30
    solid_core = ndimage.binary_erosion(labels == LESION_SOLID)
    in_solid_band = (new_hu[solid_core] >= -300) & (new_hu[solid_core] <= 50)
    assert in_solid_band.mean() > 0.85
    # The residual noise inside inserted GGO matches the scan's own noise level.
    def residual_sd(img: np.ndarray, mask: np.ndarray) -> float:
        f = img.astype(np.float32)
        return float((f - ndimage.gaussian_filter(f, 1.0))[mask].std())

    parenchyma = (base.lungs > 0) & (base.hu < -800) & ~ndimage.binary_dilation(labels > 0)
    ratio = residual_sd(new_hu, ggo_core) / residual_sd(base.hu, parenchyma)
    assert 0.7 < ratio < 1.4


def test_same_seed_same_insertion(base: Phantom, inserted: tuple) -> None:
    again = insert_lesions(
        base.hu, base.lungs, spacing_mm=base.spacing_mm, seed=2, lesion_pct=12.0, solid_pct=3.0
    )
    assert np.array_equal(again[0], inserted[0])
    assert np.array_equal(again[1], inserted[1])


def test_zero_lesion_pct_leaves_the_scan_unchanged(base: Phantom) -> None:
    new_hu, labels, truth = insert_lesions(
        base.hu, base.lungs, spacing_mm=base.spacing_mm, seed=0, lesion_pct=0.0, solid_pct=0.0
    )
    assert np.array_equal(new_hu, base.hu)
    assert not labels.any()
    assert truth["lesion_volume_ml"] == 0.0


def test_bad_inputs_are_refused(base: Phantom) -> None:
    with pytest.raises(GeometryError, match="shape"):
        insert_lesions(base.hu, base.lungs[1:], spacing_mm=base.spacing_mm, seed=0,
                       lesion_pct=5.0, solid_pct=1.0)
    with pytest.raises(InputError, match="empty"):
        insert_lesions(base.hu, np.zeros_like(base.lungs), spacing_mm=base.spacing_mm, seed=0,
                       lesion_pct=5.0, solid_pct=1.0)
    with pytest.raises(InputError, match="solid_pct"):
        insert_lesions(base.hu, base.lungs, spacing_mm=base.spacing_mm, seed=0,
                       lesion_pct=5.0, solid_pct=7.0)


def _threshold_lungs(hu: np.ndarray) -> np.ndarray:
    """A crude lung mask (air inside the body, two largest components), independent of
    lungvol.segmentation so this test checks insertion only."""
    air = ndimage.binary_opening(hu < -400, iterations=1)
    labels, _ = ndimage.label(air)
    edge = np.unique(np.concatenate([labels[:, 0].ravel(), labels[:, -1].ravel(),
                                     labels[:, :, 0].ravel(), labels[:, :, -1].ravel()]))
    air[np.isin(labels, edge)] = False
    labels, n = ndimage.label(air)
    sizes = ndimage.sum_labels(air, labels, index=np.arange(1, n + 1))
    keep = np.argsort(sizes)[-2:] + 1
    return np.isin(labels, keep).astype(np.uint8)


@pytest.mark.slow
def test_insertion_into_the_real_chest_ct(real_ct) -> None:
    """The 141-slice real series (no pneumonia) with 20 % / 4 % inserted lesions."""
    from lungvol.io import read_ct

    volume = read_ct(real_ct / "chest-ct-full-dicom" / "dicom")
    # Every second row and column (~2 mm voxels) keeps the test fast; anatomy stays real.
    hu = np.ascontiguousarray(volume.hu[:, ::2, ::2])
    spacing_mm = (volume.spacing_mm[0], 2 * volume.spacing_mm[1], 2 * volume.spacing_mm[2])
    lungs = _threshold_lungs(hu)
    assert 2000 < np.count_nonzero(lungs) * np.prod(spacing_mm) / 1000 < 8000
    new_hu, labels, truth = insert_lesions(
        hu, lungs, spacing_mm=spacing_mm, seed=7, lesion_pct=20.0, solid_pct=4.0
    )
    assert truth["lesion_proportion_pct"] == pytest.approx(20.0, rel=0.02)
    assert truth["solid_proportion_pct"] == pytest.approx(4.0, rel=0.02)
    assert truth["n_pleural_lesion_components"] >= 1
    assert not np.any((labels > 0) & (lungs == 0))
    ggo_core = ndimage.binary_erosion(labels == LESION_GGO)
    assert -750 <= np.median(new_hu[ggo_core]) <= -300
    solid_core = ndimage.binary_erosion(labels == LESION_SOLID)
    assert -300 <= np.median(new_hu[solid_core]) <= 50
    # Changes stay at the inserted lesions (and their partial-volume rim); a few lesion
    # voxels with no truth label (dense partial volume at the lung base) may change too.
    changed = new_hu != hu
    far = ~ndimage.binary_dilation(labels > 0, iterations=3)
    assert np.count_nonzero(changed & far) < 0.002 * np.count_nonzero(changed)



def _lung_cube_with_vessel(shape=(40, 60, 60)):
    hu = np.full(shape, -850, np.int16)
    hu[:, 28:31, 28:31] = 40  # a 3 mm vessel along z
    return hu, np.ones(shape, np.uint8)


def test_insert_blobs_reaches_the_burden_raises_parenchyma_and_keeps_vessels():
    from lungvol.phantom import insert_blobs

    hu, lungs = _lung_cube_with_vessel()
    out, labels, truth = insert_blobs(hu, lungs, spacing_mm=(1.0, 1.0, 1.0), seed=3,
                                      lesion_pct=20.0)
    covered = np.count_nonzero(labels) / labels.size
    assert 0.20 <= covered <= 0.40  # the last blob may overshoot the target
    assert truth["lesion_proportion_pct"] == pytest.approx(100 * covered, rel=1e-6)
    ggo = (labels == LESION_GGO) & (hu == -850)
    assert abs(float(np.median(out[ggo])) + 600) <= 30  # ground glass at -600 +/- texture
    vessel = hu == 40
    np.testing.assert_array_equal(out[vessel], 40)  # denser voxels keep their value
    # Truth is the region: vessel voxels inside a blob are lesion.
    assert np.count_nonzero(vessel & (labels == LESION_GGO)) > 0
    # Voxels more than 2 mm from every blob are untouched.
    far = ndimage.distance_transform_edt(labels == 0) > 2.0
    np.testing.assert_array_equal(out[far], hu[far])
    again = insert_blobs(hu, lungs, spacing_mm=(1.0, 1.0, 1.0), seed=3, lesion_pct=20.0)
    np.testing.assert_array_equal(again[0], out)
    np.testing.assert_array_equal(again[1], labels)


def test_insert_blobs_solid_cores_are_solid_density():
    from lungvol.phantom import insert_blobs

    hu, lungs = _lung_cube_with_vessel()
    out, labels, _ = insert_blobs(hu, lungs, spacing_mm=(1.0, 1.0, 1.0), seed=4,
                                  lesion_pct=15.0, solid_chance=1.0)
    core = (labels == LESION_SOLID) & (hu == -850)
    assert np.count_nonzero(core) > 0
    assert abs(float(np.median(out[core])) + 20) <= 40


def test_insert_blobs_refuses_bad_input():
    from lungvol.phantom import insert_blobs

    hu, lungs = _lung_cube_with_vessel()
    with pytest.raises(InputError, match="empty"):
        insert_blobs(hu, np.zeros_like(lungs), spacing_mm=(1.0, 1.0, 1.0), seed=0,
                     lesion_pct=10.0)
    with pytest.raises(GeometryError):
        insert_blobs(hu, lungs[:-1], spacing_mm=(1.0, 1.0, 1.0), seed=0, lesion_pct=10.0)
    with pytest.raises(InputError, match="semi_axes_mm"):
        insert_blobs(hu, lungs, spacing_mm=(1.0, 1.0, 1.0), seed=0, lesion_pct=10.0,
                     semi_axes_mm=(6.0, 3.0))


def test_insert_blobs_draws_the_requested_sizes():
    """Small ellipsoids (semi-axes 3-5 mm) give many more, smaller components than the
    default 8-25 mm, at the same burden; the truth records the range."""
    from lungvol.phantom import insert_blobs

    hu = np.full((60, 80, 80), -850, np.int16)
    lungs = np.ones(hu.shape, np.uint8)
    counts = {}
    for axes in ((3.0, 5.0), (8.0, 25.0)):
        _, labels, truth = insert_blobs(hu, lungs, spacing_mm=(1.0, 1.0, 1.0), seed=5,
                                        lesion_pct=5.0, semi_axes_mm=axes)
        assert truth["semi_axes_mm"] == list(axes)
        _, counts[axes] = ndimage.label(labels > 0)
        largest = ndimage.distance_transform_edt(labels > 0).max()
        assert largest <= axes[1] + 1.0  # no component is thicker than the largest semi-axis
    assert counts[(3.0, 5.0)] >= 5 * counts[(8.0, 25.0)]


def test_insert_subpleural_band_lies_along_the_posterior_inferior_pleura():
    from lungvol.phantom import insert_subpleural_band

    hu = np.full((40, 60, 60), 40, np.int16)  # soft tissue around a box of lung
    lungs = np.zeros(hu.shape, np.uint8)
    lungs[2:38, 5:55, 5:55] = 1
    hu[lungs > 0] = -850
    hu[2:38, 28:31, 28:31] = 40  # a vessel along z
    out, labels, truth = insert_subpleural_band(
        hu, lungs, spacing_mm=(1.0, 1.0, 1.0), seed=2, depth_mm=8.0, solid_depth_mm=3.0,
        posterior_fraction=0.5, inferior_fraction=0.5,
    )
    depth = ndimage.distance_transform_edt(lungs > 0)
    band = labels > 0
    assert band.any()
    assert depth[band].max() <= 8.5  # no deeper than the band
    assert depth[labels == LESION_SOLID].max() <= 3.5  # the solid layer is the outer part
    z, y, _ = np.nonzero(band)
    assert z.max() <= 2 + 0.5 * 35 + 1  # inferior half of the lung's z extent
    assert y.min() >= 54 - 0.5 * 49 - 1  # posterior half (axis 1 runs anterior -> posterior)
    assert np.count_nonzero(band & (lungs == 0)) == 0
    ggo = (labels == LESION_GGO) & (hu == -850)
    assert abs(float(np.median(out[ggo])) + 620) <= 30
    solid = (labels == LESION_SOLID) & (hu == -850)
    assert abs(float(np.median(out[solid])) + 40) <= 40
    vessel = hu == 40
    np.testing.assert_array_equal(out[vessel], 40)
    assert truth["solid_proportion_pct"] > 0
    assert truth["lesion_proportion_pct"] == pytest.approx(
        100 * np.count_nonzero(band) / np.count_nonzero(lungs), rel=1e-6
    )
    with pytest.raises(InputError, match="solid_depth_mm"):
        insert_subpleural_band(hu, lungs, spacing_mm=(1.0, 1.0, 1.0), seed=2, depth_mm=3.0,
                               solid_depth_mm=3.0)
    with pytest.raises(InputError, match="empty"):
        insert_subpleural_band(hu, np.zeros_like(lungs), spacing_mm=(1.0, 1.0, 1.0), seed=2)


def test_partial_volume_insertion_fills_the_lung_part_of_mixed_voxels():
    """``tissue_hu`` (session 18, evaluation option): a voxel between parenchyma and tissue
    is the parenchyma fraction f = (tissue - HU) / (tissue - level) of lung. The lesion fills
    that part (gain f x (lesion - level)) and the voxel is truth at f >= 0.5. Without it,
    every voxel denser than parenchyma_max_hu keeps its value and is not truth."""
    shape = (30, 40, 40)
    hu = np.full(shape, -850, np.int16)
    lungs = np.ones(shape, np.uint8)
    hu[:, 20, 20] = -300  # f = 340 / 890 = 0.38: mostly vessel
    hu[:, 10, 10] = -500  # f = 540 / 890 = 0.61: mostly lung (a vessel's skirt, the pleura)
    kw = {"spacing_mm": (2.0, 2.0, 2.0), "seed": 3, "lesion_pct": 90.0, "solid_pct": 0.0}
    plain_hu, plain, _ = insert_lesions(hu, lungs, **kw)
    pv_hu, pv, _ = insert_lesions(hu, lungs, tissue_hu=40.0, **kw)
    # Slices where the lesion covers the mixed voxel's neighbourhood in both models.
    def covered(labels, y, x):  # the lesion covers every neighbour of (y, x), z +- 1 too
        ring = labels[:, y - 1 : y + 2, x - 1 : x + 2].copy()
        ring[:, 1, 1] = LESION_GGO
        inside = np.all(ring == LESION_GGO, axis=(1, 2))
        return inside & np.roll(inside, 1) & np.roll(inside, -1)

    z = np.flatnonzero(covered(plain, 10, 10) & covered(pv, 10, 10))
    assert len(z) > 5
    assert np.all(plain[z, 10, 10] == 0)
    assert np.all(plain_hu[z, 10, 10] == -500)
    assert np.all(pv[z, 10, 10] == LESION_GGO)
    gain = pv_hu[z, 10, 12].astype(float) + 850.0  # the lesion's gain on pure parenchyma
    expected = -500.0 + (540.0 / 890.0) * gain
    assert np.all(np.abs(pv_hu[z, 10, 10] - expected) <= 0.15 * gain + 5.0)
    zv = np.flatnonzero(covered(pv, 20, 20))
    assert len(zv) > 5
    assert np.all(pv[zv, 20, 20] == 0)  # mostly vessel: not truth in either model
    assert np.all(plain[zv, 20, 20] == 0)
