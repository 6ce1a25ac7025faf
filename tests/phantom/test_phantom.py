"""make_phantom: determinism, truth targets, anatomy conventions, HU plausibility."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from lungvol.errors import GeometryError, InputError
from lungvol.phantom import (
    CARINA_MM,
    GGO_RANGE_HU,
    PRESETS,
    SOLID_RANGE_HU,
    Phantom,
    make_phantom,
    resolve_size,
)
from lungvol.types import LESION_GGO, LESION_SOLID, LUNG_LEFT, LUNG_RIGHT

TINY = (48, 64, 64)  # default field of view, ~6 x 5.6 x 5.6 mm voxels, < 1 s


@pytest.fixture(scope="module")
def ph() -> Phantom:
    return make_phantom(shape=TINY, seed=11, lesion_pct=20.0, solid_pct=5.0)


def _world_index(ph: Phantom, point_xyz_mm: tuple[float, float, float]) -> tuple[int, int, int]:
    """Voxel (z, y, x) of a body-centred point; the phantom's origin centres the body."""
    x, y, z = point_xyz_mm
    ox, oy, oz = ph.origin_lps_mm
    sz, sy, sx = ph.spacing_mm
    return round((z - oz) / sz), round((y - oy) / sy), round((x - ox) / sx)


def test_same_seed_gives_identical_phantom() -> None:
    a = make_phantom(shape=TINY, seed=5, lesion_pct=10.0, solid_pct=2.0)
    b = make_phantom(shape=TINY, seed=5, lesion_pct=10.0, solid_pct=2.0)
    assert np.array_equal(a.hu, b.hu)
    assert np.array_equal(a.lungs, b.lungs)
    assert np.array_equal(a.lesions, b.lesions)
    assert a.truth == b.truth


def test_different_seed_gives_different_lesions_and_noise() -> None:
    a = make_phantom(shape=TINY, seed=5, lesion_pct=10.0, solid_pct=2.0)
    b = make_phantom(shape=TINY, seed=6, lesion_pct=10.0, solid_pct=2.0)
    assert not np.array_equal(a.hu, b.hu)
    assert not np.array_equal(a.lesions, b.lesions)


def test_one_seed_at_two_burdens_is_one_subject_with_nested_lesions() -> None:
    """Anatomy and the lesion field depend on the seed only: a lower burden keeps the lungs
    and shrinks the lesions in place (simulate-trial's visits)."""
    before = make_phantom(shape=TINY, seed=5, lesion_pct=20.0, solid_pct=4.0)
    after = make_phantom(shape=TINY, seed=5, lesion_pct=8.0, solid_pct=1.0)
    assert np.array_equal(before.lungs, after.lungs)
    shrunk = after.lesions > 0
    assert np.count_nonzero(shrunk) < 0.6 * np.count_nonzero(before.lesions)
    assert np.count_nonzero(shrunk & (before.lesions > 0)) >= 0.95 * np.count_nonzero(shrunk)
    assert np.array_equal(before.hu[before.lungs == 0], after.hu[after.lungs == 0])


def test_noise_seed_changes_only_the_noise() -> None:
    a = make_phantom(shape=TINY, seed=5, lesion_pct=10.0, solid_pct=2.0, noise_seed=1)
    b = make_phantom(shape=TINY, seed=5, lesion_pct=10.0, solid_pct=2.0, noise_seed=2)
    assert np.array_equal(a.lungs, b.lungs)
    assert np.array_equal(a.lesions, b.lesions)
    diff = a.hu.astype(np.float32) - b.hu.astype(np.float32)
    # Two independent draws of 20 HU noise (PSF-correlated, clipped at the stored range).
    assert 15.0 < float(np.std(diff[a.lungs > 0])) < 40.0
    assert (a.truth["noise_seed"], b.truth["noise_seed"]) == (1, 2)
    default = make_phantom(shape=TINY, seed=5, lesion_pct=10.0, solid_pct=2.0)
    assert "noise_seed" not in default.truth


def test_types_shapes_and_labels(ph: Phantom) -> None:
    assert ph.hu.dtype == np.int16
    assert ph.lungs.dtype == np.uint8
    assert ph.lesions.dtype == np.uint8
    assert ph.hu.shape == ph.lungs.shape == ph.lesions.shape == TINY
    assert set(np.unique(ph.lungs)) == {0, LUNG_RIGHT, LUNG_LEFT}
    assert set(np.unique(ph.lesions)) == {0, LESION_GGO, LESION_SOLID}


@pytest.mark.parametrize(
    ("lesion_pct", "solid_pct"),
    [(0.0, 0.0), (0.5, 0.1), (2.0, 0.5), (15.0, 3.0), (30.0, 0.0), (40.0, 10.0), (60.0, 20.0),
     (25.0, 25.0)],
)
def test_truth_proportions_hit_targets_within_10_percent(
    lesion_pct: float, solid_pct: float
) -> None:
    t = make_phantom(shape=TINY, seed=3, lesion_pct=lesion_pct, solid_pct=solid_pct).truth
    assert t["lesion_proportion_pct"] == pytest.approx(lesion_pct, rel=0.10, abs=1e-9)
    assert t["solid_proportion_pct"] == pytest.approx(solid_pct, rel=0.10, abs=1e-9)


def test_truth_volumes_are_voxel_counts(ph: Phantom) -> None:
    voxel_ml = float(np.prod(ph.spacing_mm)) / 1000.0
    t = ph.truth
    assert t["lung_volume_ml"] == pytest.approx(np.count_nonzero(ph.lungs) * voxel_ml)
    assert t["lung_volume_right_ml"] == pytest.approx(np.count_nonzero(ph.lungs == 1) * voxel_ml)
    assert t["ggo_volume_ml"] == pytest.approx(np.count_nonzero(ph.lesions == 1) * voxel_ml)
    assert t["solid_volume_ml"] == pytest.approx(np.count_nonzero(ph.lesions == 2) * voxel_ml)
    assert t["lesion_volume_ml"] == pytest.approx(t["ggo_volume_ml"] + t["solid_volume_ml"])
    expected_pct = 100 * np.count_nonzero(ph.lesions) / np.count_nonzero(ph.lungs)
    assert t["lesion_proportion_pct"] == pytest.approx(expected_pct)
    assert t["seed"] == 11
    assert t["target_lesion_pct"] == 20.0


def test_zero_lesion_pct_gives_normal_lungs(ph_small: Phantom, normal_small: Phantom) -> None:
    normal = normal_small
    assert not normal.lesions.any()
    assert normal.truth["lesion_volume_ml"] == 0.0
    # Same seed: identical anatomy and lungs with or without lesions.
    assert np.array_equal(normal.lungs, ph_small.lungs)
    # Away from the pleura, GGO-band voxels of a normal lung are thin partial-volume rims
    # of vessels and airway walls, never blob-like opacities (none survive an erosion).
    interior = ndimage.binary_erosion(normal.lungs > 0)
    in_ggo_band = (normal.hu >= -750) & (normal.hu < -300) & interior
    blobs = ndimage.binary_erosion(in_ggo_band)
    assert np.count_nonzero(blobs) / np.count_nonzero(interior) < 0.001
    with_lesions = (ph_small.hu >= -750) & (ph_small.hu < -300) & interior
    assert np.count_nonzero(ndimage.binary_erosion(with_lesions)) > 100 * max(
        1, np.count_nonzero(blobs)
    )


def test_lung_volume_is_adult_sized_on_any_grid(ph: Phantom, ph_small: Phantom) -> None:
    for p in (ph, ph_small):
        assert 3800.0 <= p.truth["lung_volume_ml"] <= 6000.0
    assert ph.truth["lung_volume_ml"] == pytest.approx(ph_small.truth["lung_volume_ml"], rel=0.03)


def test_right_lung_is_low_x_index_and_larger(ph_small: Phantom) -> None:
    _, _, xs_right = np.nonzero(ph_small.lungs == LUNG_RIGHT)
    _, _, xs_left = np.nonzero(ph_small.lungs == LUNG_LEFT)
    nx = ph_small.shape[2]
    assert xs_right.max() < nx / 2 < xs_left.min()
    assert ph_small.truth["lung_volume_right_ml"] > ph_small.truth["lung_volume_left_ml"]


def test_lesions_lie_inside_the_truth_lungs(ph: Phantom, ph_small: Phantom) -> None:
    for p in (ph, ph_small):
        assert not np.any((p.lesions > 0) & (p.lungs == 0))


def test_some_lesions_touch_the_pleura(ph_small: Phantom) -> None:
    lung = ph_small.lungs > 0
    outside = ~lung
    # Pleural surface: lung voxels next to chest wall / diaphragm / mediastinum.
    next_to_outside = ndimage.binary_dilation(outside) & lung
    touching = np.count_nonzero(next_to_outside & (ph_small.lesions > 0))
    assert touching > 50
    assert ph_small.truth["n_pleural_lesion_components"] >= 1
    # Solid consolidation reaches the pleura too (dense patches inside the truth lung).
    assert np.count_nonzero(next_to_outside & (ph_small.lesions == LESION_SOLID)) > 0


def test_lesions_prefer_the_periphery(ph_small: Phantom) -> None:
    lung = ph_small.lungs > 0
    depth = ndimage.distance_transform_edt(lung, sampling=ph_small.spacing_mm)
    lesion = ph_small.lesions > 0
    assert np.median(depth[lesion]) < np.median(depth[lung & ~lesion])


def test_trachea_and_main_bronchi_are_excluded_from_the_lungs(ph_small: Phantom) -> None:
    lumen = ph_small.hu < -950
    iz, iy, ix = _world_index(ph_small, CARINA_MM)
    assert ph_small.lungs[iz, iy, ix] == 0
    # Trachea above the carina: air, not lung.
    iz_up = iz + round(30.0 / ph_small.spacing_mm[0])
    assert lumen[iz_up, iy, ix]
    assert ph_small.lungs[iz_up, iy, ix] == 0
    # Main bronchi: halfway between the carina and each bronchus end.
    for end in ((-46.0, 22.0, 14.0), (46.0, 26.0, 2.0)):
        mid = tuple((a + b) / 2 for a, b in zip(CARINA_MM, end, strict=True))
        jz, jy, jx = _world_index(ph_small, mid)  # type: ignore[arg-type]
        assert lumen[jz, jy, jx]
        assert ph_small.lungs[jz, jy, jx] == 0


def test_hu_ranges_are_plausible(ph_small: Phantom) -> None:
    hu = ph_small.hu.astype(float)
    corner = hu[:, :8, :8]
    assert -1010 <= corner.mean() <= -985  # air outside the body
    assert 12.0 <= corner[corner > -1020].std() <= 28.0  # noise ~20 HU
    lung = ph_small.lungs > 0
    parenchyma = lung & (ph_small.lesions == 0) & (hu < -700)
    assert -880 <= np.median(hu[parenchyma]) <= -815
    assert GGO_RANGE_HU[0] - 30 <= np.median(hu[ph_small.lesions == LESION_GGO]) <= GGO_RANGE_HU[1]
    solid_core = ndimage.binary_erosion(ph_small.lesions == LESION_SOLID)
    assert SOLID_RANGE_HU[0] - 30 <= np.median(hu[solid_core]) <= SOLID_RANGE_HU[1]
    assert hu.max() >= 600  # cortical bone
    assert hu.min() >= -1024
    body = hu > -300
    assert 0.3 < np.count_nonzero(body) / body.size < 0.8


def test_dependent_lung_is_denser_than_non_dependent(ph_small: Phantom) -> None:
    hu = ph_small.hu.astype(float)
    parenchyma = (ph_small.lungs > 0) & (ph_small.lesions == 0) & (hu < -780)
    ys = np.nonzero(parenchyma)[1]
    y_mid = np.median(ys)
    anterior = np.median(hu[parenchyma][ys < y_mid])
    posterior = np.median(hu[parenchyma][ys >= y_mid])
    assert posterior > anterior + 10


def test_lesion_hu_sits_inside_the_default_bands(ph_small: Phantom) -> None:
    """A perfect densitometry reproduces the truth up to borders: most lesion voxels fall
    in their band (GGO -750..-300, solid -300..+50)."""
    hu = ph_small.hu
    ggo = ph_small.lesions == LESION_GGO
    solid = ph_small.lesions == LESION_SOLID
    interior = ndimage.binary_erosion(ph_small.lesions > 0)
    in_ggo_band = (hu >= -750) & (hu < -300)
    in_solid_band = (hu >= -300) & (hu <= 50)
    assert np.count_nonzero(in_ggo_band & ggo & interior) / np.count_nonzero(ggo & interior) > 0.9
    solid_core = solid & ndimage.binary_erosion(solid)
    assert np.count_nonzero(in_solid_band & solid_core) / np.count_nonzero(solid_core) > 0.9


def test_vessels_branch_and_cross_ground_glass(ph_small: Phantom) -> None:
    lung = ph_small.lungs > 0
    vessel = lung & (ph_small.hu > -150) & (ph_small.lesions != LESION_SOLID)
    labels, n = ndimage.label(vessel)
    assert n > 5  # several vessel pieces in each lung
    # Vessels inside ground-glass stay visible and are not GGO truth.
    assert not np.any(vessel & (ph_small.lesions == LESION_GGO) & (ph_small.hu > 0))


def test_solid_above_total_is_refused() -> None:
    with pytest.raises(InputError, match="solid_pct"):
        make_phantom(shape=TINY, lesion_pct=5.0, solid_pct=6.0)


def test_out_of_range_lesion_pct_is_refused() -> None:
    with pytest.raises(InputError, match="lesion_pct"):
        make_phantom(shape=TINY, lesion_pct=95.0, solid_pct=0.0)


def test_field_of_view_too_small_for_a_chest_is_refused() -> None:
    with pytest.raises(GeometryError, match="field of view"):
        make_phantom(shape=(48, 64, 64), spacing_mm=(2.0, 2.0, 2.0))


def test_resolve_size_presets_and_custom() -> None:
    assert resolve_size("small") == PRESETS["small"]
    assert resolve_size("FULL") == PRESETS["full"]
    shape, spacing = resolve_size("64x96x96")
    assert shape == (64, 96, 96)
    assert spacing == pytest.approx((4.5, 358 / 96, 358 / 96), rel=1e-3)
    with pytest.raises(InputError, match="preset"):
        resolve_size("medium")
    with pytest.raises(InputError, match="16"):
        resolve_size("8x8x8")


def test_to_ct_volume_keeps_geometry_and_intensities(ph: Phantom) -> None:
    volume = ph.to_ct_volume()
    assert volume.hu is ph.hu
    assert volume.spacing_mm == ph.spacing_mm
    assert volume.origin_lps_mm == ph.origin_lps_mm
    assert np.array_equal(volume.direction, np.eye(3))
    assert volume.source.kind == "phantom"
    assert len(volume.source.sha256) == 64
