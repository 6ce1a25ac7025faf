"""measure_scan and its parts on synthetic volumes with known analytic answers."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from lungvol.config import LungvolConfig, QuantificationConfig
from lungvol.errors import ConfigError, GeometryError, SegmentationError
from lungvol.quantification import measure_scan, measure_volumes
from lungvol.quantification.hu_stats import lung_hu_stats
from lungvol.quantification.qc_flags import (
    as_flag,
    edge_flags,
    flag_code,
    solid_at_surface_ml,
)
from lungvol.types import LesionMask, LungMask

from ._synthetic import chest, make_volume

CFG = LungvolConfig()


def _codes(flags: list[str]) -> set[str]:
    return {flag_code(f) for f in flags}


def test_box_volumes_are_voxel_count_times_anisotropic_voxel_volume() -> None:
    vol, lungs, lesions = chest(spacing_mm=(2.5, 0.7, 0.8))
    m = measure_scan(vol, lungs, lesions, CFG, timings_s={"read": 0.1})
    voxel_ml = 2.5 * 0.7 * 0.8 / 1000.0
    n_right = int((lungs.labels == 1).sum())
    n_left = int((lungs.labels == 2).sum())
    assert m.lung_volume_right_ml == pytest.approx(n_right * voxel_ml)
    assert m.lung_volume_left_ml == pytest.approx(n_left * voxel_ml)
    assert m.lung_volume_ml == pytest.approx((n_right + n_left) * voxel_ml)
    assert m.ggo_volume_ml == pytest.approx(4 * 10 * 10 * voxel_ml)
    assert m.solid_volume_ml == pytest.approx(2 * 5 * 5 * voxel_ml)
    assert m.lesion_volume_ml == pytest.approx(m.ggo_volume_ml + m.solid_volume_ml)
    assert m.lesion_proportion_pct == pytest.approx(100 * 450 / (n_right + n_left))
    assert m.solid_proportion_pct == pytest.approx(100 * 50 / (n_right + n_left))
    assert m.ggo_proportion_pct + m.solid_proportion_pct == pytest.approx(m.lesion_proportion_pct)


def test_lesion_voxels_outside_the_lungs_are_not_counted_and_flagged() -> None:
    vol, lungs, lesions = chest()
    labels = lesions.labels.copy()
    labels[0, 0, :5] = 2  # outside the lung mask
    m = measure_scan(vol, lungs, LesionMask(labels), CFG, timings_s={})
    ref = measure_scan(vol, lungs, lesions, CFG, timings_s={})
    assert m.solid_volume_ml == pytest.approx(ref.solid_volume_ml)
    assert "lesions_outside_lungs" in _codes(m.qc_flags)


def test_empty_lung_mask_raises_segmentation_error_not_zero_division() -> None:
    vol, _, lesions = chest()
    empty = LungMask(np.zeros(vol.shape, np.uint8))
    with pytest.raises(SegmentationError, match="empty"):
        measure_scan(vol, empty, lesions, CFG, timings_s={})


def test_masks_off_the_ct_grid_or_with_unknown_labels_raise_geometry_error() -> None:
    vol, lungs, lesions = chest()
    with pytest.raises(GeometryError, match="shape"):
        measure_scan(vol, LungMask(lungs.labels[1:]), lesions, CFG, timings_s={})
    bad = lungs.labels.copy()
    bad[20, 30, 30] = 7
    with pytest.raises(GeometryError, match="0, 1, 2"):
        measure_scan(vol, LungMask(bad), lesions, CFG, timings_s={})


def test_normal_ct_rule_is_strictly_below_the_configured_lesion_pct() -> None:
    vol, lungs, lesions = chest()
    m = measure_scan(vol, lungs, lesions, CFG, timings_s={})
    pct = m.lesion_proportion_pct
    at = dataclasses.replace(
        CFG, quantification=QuantificationConfig(normal_ct_max_lesion_pct=pct)
    )
    above = dataclasses.replace(
        CFG, quantification=QuantificationConfig(normal_ct_max_lesion_pct=pct + 0.01)
    )
    assert measure_scan(vol, lungs, lesions, at, timings_s={}).normal_ct is False
    assert measure_scan(vol, lungs, lesions, above, timings_s={}).normal_ct is True
    no_lesions = LesionMask(np.zeros(vol.shape, np.uint8))
    clean = measure_scan(vol, lungs, no_lesions, CFG, timings_s={})
    assert clean.normal_ct is True
    assert clean.lesion_volume_ml == 0.0


@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_lung_hu_percentiles_equal_numpy_linear_percentiles(dtype: type) -> None:
    rng = np.random.default_rng(3)
    hu = rng.integers(-1024, 200, size=(7, 13, 11)).astype(dtype)
    if dtype is np.float32:
        hu = hu + rng.random(hu.shape).astype(np.float32)
    mask = rng.random(hu.shape) < 0.4
    q = (0.0, 2.5, 5.0, 25.0, 50.0, 75.0, 95.0, 100.0)
    stats = lung_hu_stats(hu, mask, percentiles=q)
    expected = np.percentile(hu[mask].astype(np.float64), q)
    got = [stats[f"p{v:g}_hu"] for v in q]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-3)
    assert stats["mean_hu"] == pytest.approx(float(hu[mask].astype(np.float64).mean()))
    assert stats["std_hu"] == pytest.approx(float(hu[mask].astype(np.float64).std()))


def test_lung_hu_keys_carry_units_and_follow_the_configured_percentiles() -> None:
    vol, lungs, lesions = chest()
    m = measure_scan(vol, lungs, lesions, CFG, timings_s={})
    assert set(m.lung_hu) == {"mean_hu", "std_hu", "p5_hu", "p25_hu", "p50_hu", "p75_hu", "p95_hu"}
    assert m.lung_hu["p50_hu"] == -850.0


@settings(max_examples=25, deadline=None)
@given(
    perm=st.permutations([0, 1, 2]),
    flips=st.lists(st.booleans(), min_size=3, max_size=3),
    scale=st.floats(0.3, 3.0),
)
def test_volume_is_invariant_to_flips_and_transposes_and_linear_in_voxel_volume(
    perm: list[int], flips: list[bool], scale: float
) -> None:
    rng = np.random.default_rng(0)
    lungs = rng.integers(0, 3, size=(6, 7, 8)).astype(np.uint8)
    lesions = (rng.integers(0, 3, size=lungs.shape) * (lungs > 0)).astype(np.uint8)
    spacing = (2.0, 0.9, 0.6)
    ref = measure_volumes(lungs, lesions, spacing_mm=spacing)
    axes = tuple(i for i, f in enumerate(flips) if f)
    lungs2 = np.transpose(np.flip(lungs, axes), perm)
    lesions2 = np.transpose(np.flip(lesions, axes), perm)
    spacing2 = tuple(spacing[i] * scale for i in perm)
    got = measure_volumes(lungs2, lesions2, spacing_mm=spacing2)  # type: ignore[arg-type]
    factor = scale**3
    assert got.lung_volume_ml == pytest.approx(ref.lung_volume_ml * factor)
    assert got.solid_volume_ml == pytest.approx(ref.solid_volume_ml * factor)
    assert got.lesion_proportion_pct == pytest.approx(ref.lesion_proportion_pct)
    assert 0.0 <= got.lesion_proportion_pct <= 100.0


def test_lungs_on_the_last_slice_are_flagged_cut_off_superior_only() -> None:
    vol, lungs, lesions = chest()
    labels = lungs.labels.copy()
    labels[-4:] = labels[20]  # extend the lungs up to the top slice
    hu = vol.hu.copy()
    hu[labels > 0] = -850
    m = measure_scan(make_volume(hu, vol.spacing_mm), LungMask(labels), lesions, CFG, timings_s={})
    codes = _codes(m.qc_flags)
    assert "lungs_cut_off_superior" in codes
    assert "lungs_cut_off_inferior" not in codes
    assert "lungs_cut_off_in_plane" not in codes


def test_lungs_touching_the_in_plane_border_are_flagged_with_the_side() -> None:
    vol, lungs, _ = chest()
    labels = lungs.labels.copy()
    labels[5:30, 10:50, 0:6] = 1  # right lung reaches x = 0 (patient right edge)
    flags = edge_flags(labels, vol.spacing_mm, config=QuantificationConfig())
    assert _codes(flags) == {"lungs_cut_off_in_plane"}
    assert "right" in flags[0]
    assert "left" not in flags[0].split("(")[1]


def test_in_plane_contact_is_judged_by_area_not_by_voxel_fraction() -> None:
    """A one-voxel border column is thin: the fraction of lung voxels on it stays tiny even
    where the field of view cuts a lung (session 15: 0.10 % for 125 mL of the real chest's
    lungs cut off). The contact area is what tells."""
    vol, lungs, _ = chest()
    sz, sy, _sx = vol.spacing_mm
    assert sz * sy == 2.0
    labels = lungs.labels.copy()
    labels[10:25, 20:25, -3:] = 2  # 15 x 5 border voxels of 2 mm2: 1.5 cm2 on the left
    fraction = np.count_nonzero(labels[:, :, -1]) / np.count_nonzero(labels)
    assert fraction < QuantificationConfig().edge_touch_min_fraction
    flags = edge_flags(labels, vol.spacing_mm, config=QuantificationConfig())
    assert _codes(flags) == {"lungs_cut_off_in_plane"}
    assert "left 1.5 cm2" in flags[0]
    # A touch below the area (a few partial-volume voxels) is not a cut.
    labels = lungs.labels.copy()
    labels[10:11, 20:22, -1:] = 2
    assert edge_flags(labels, vol.spacing_mm, config=QuantificationConfig()) == []


def test_clean_synthetic_chest_has_only_the_expected_flags() -> None:
    vol, lungs, lesions = chest()
    m = measure_scan(vol, lungs, lesions, CFG, timings_s={})
    # The toy lungs are tiny, so only the implausible-volume flag is expected.
    assert _codes(m.qc_flags) == {"lung_volume_implausible"}


def test_thick_slices_imbalance_and_io_warnings_become_flags() -> None:
    warnings = (
        "uneven slice spacing (1.00..1.30 mm); resampled to the median 1.10 mm",
        "gantry tilt of 15.0 degrees; resampled onto an axial LPS grid",
        "scanner_note: already coded",
        "something the reader said",
    )
    vol, lungs, lesions = chest(spacing_mm=(6.0, 1.0, 1.0), warnings=warnings)
    labels = lungs.labels.copy()
    labels[labels == 2] = 0
    labels[5:30, 10:50, 36:40] = 2  # small left lung
    m = measure_scan(vol, LungMask(labels), lesions, CFG, timings_s={})
    codes = _codes(m.qc_flags)
    assert {"slice_spacing_large", "lung_right_left_imbalance", "uneven_spacing_resampled",
            "gantry_tilt_resampled", "scanner_note", "io_warning"} <= codes
    assert "io_warning: something the reader said" in m.qc_flags


@pytest.mark.parametrize(
    ("spacing_z_mm", "thickness_mm", "flagged"),
    [(2.0, None, False), (2.5, None, False), (2.6, None, True), (2.0, 3.0, True),
     (2.0, 1.0, False)],
)
def test_slices_thicker_than_the_lesion_bias_limit_are_flagged(
    spacing_z_mm: float, thickness_mm: float | None, flagged: bool
) -> None:
    """Spacing or the header's SliceThickness above ``lesion_bias_slice_mm`` (2.5 mm) flags
    the lesion over-read; exactly the limit does not."""
    vol, lungs, lesions = chest(spacing_mm=(spacing_z_mm, 1.0, 1.0))
    source = dataclasses.replace(vol.source, slice_thickness_mm=thickness_mm)
    vol = dataclasses.replace(vol, source=source)
    m = measure_scan(vol, lungs, lesions, CFG, timings_s={})
    assert ("thick_slices_lesion_bias" in _codes(m.qc_flags)) is flagged
    if flagged:
        (flag,) = [f for f in m.qc_flags if f.startswith("thick_slices_lesion_bias")]
        assert f"{max(spacing_z_mm, thickness_mm or 0):g} mm" in flag


@pytest.mark.parametrize(("pocket_hu", "flagged"), [(-1000, True), (-960, False), (None, False)])
def test_air_without_lung_tissue_in_the_lung_mask_is_flagged(pocket_hu, flagged) -> None:
    """A pneumothorax is internal air and lands in the lung mask: 2 mm blocks below -970 HU
    (pure air; lung parenchyma, even emphysematous at -960, stays above) are flagged from
    30 mL, with their volume."""
    vol, lungs, lesions = chest(shape=(40, 96, 96))
    hu = vol.hu.copy()
    if pocket_hu is not None:
        hu[6:34, 12:84, 8:40] = pocket_hu  # 28 x 72 x 32 voxels x 2 uL = 129 mL
    hu = hu + np.random.default_rng(0).normal(0, 15, hu.shape).astype(np.int16)
    m = measure_scan(dataclasses.replace(vol, hu=hu), lungs, lesions, CFG, timings_s={})
    flags = [f for f in m.qc_flags if f.startswith("lung_air_pocket")]
    assert bool(flags) is flagged
    if flagged:
        volume_ml = float(flags[0].split(": ")[1].split(" mL")[0])
        assert 110 <= volume_ml <= 130


def _subpleural_solid(wall_hu: int) -> tuple:
    """chest() plus a 10 x 20 x 4-voxel solid slab on the right lung's lateral face (x = 6),
    with the voxels beyond that face (x = 5) set to ``wall_hu``."""
    vol, lungs, lesions = chest()
    hu, labels = vol.hu.copy(), lesions.labels.copy()
    labels[10:20, 20:40, 6:10] = 2
    hu[10:20, 20:40, 6:10] = -30
    hu[:, :, 5] = wall_hu
    return dataclasses.replace(vol, hu=hu), lungs, LesionMask(labels, {})


FLAG_SMALL = dataclasses.replace(CFG, quantification=dataclasses.replace(
    CFG.quantification, surface_solid_flag_min_ml=0.1))


def test_solid_against_soft_tissue_is_measured_and_flagged() -> None:
    """Solid in the lung mask's outer layer next to tissue (x = 6, 10 x 20 voxels of
    2 uL = 0.4 mL) is reported; with 24 % of the 1.7 mL solid there, it is flagged."""
    vol, lungs, lesions = _subpleural_solid(wall_hu=40)
    m = measure_scan(vol, lungs, lesions, FLAG_SMALL, timings_s={})
    assert m.solid_at_surface_ml == pytest.approx(200 * 0.002)
    assert m.solid_volume_ml == pytest.approx(850 * 0.002)
    (flag,) = [f for f in m.qc_flags if flag_code(f) == "solid_at_lung_surface"]
    assert "0 mL of the 2 mL" in flag
    # The default minimum (10 mL) keeps such a small contact unflagged.
    m = measure_scan(vol, lungs, lesions, CFG, timings_s={})
    assert "solid_at_lung_surface" not in _codes(m.qc_flags)
    assert m.solid_at_surface_ml == pytest.approx(0.4)


def test_solid_against_air_or_deep_in_the_lung_is_not_at_the_surface() -> None:
    """Air beyond the lung face (a cut field of view) hides no boundary; the solid box of
    chest() lies 4 voxels deep."""
    vol, lungs, lesions = _subpleural_solid(wall_hu=-1000)
    m = measure_scan(vol, lungs, lesions, FLAG_SMALL, timings_s={})
    assert m.solid_at_surface_ml == 0.0
    assert "solid_at_lung_surface" not in _codes(m.qc_flags)
    vol, lungs, lesions = chest()
    m = measure_scan(vol, lungs, lesions, FLAG_SMALL, timings_s={})
    assert m.solid_at_surface_ml == 0.0


def test_small_share_of_solid_at_the_surface_is_not_flagged() -> None:
    """Above the volume minimum but under surface_solid_flag_min_fraction of the solid."""
    vol, lungs, lesions = _subpleural_solid(wall_hu=40)
    labels = lesions.labels.copy()
    labels[20:34, 10:50, 12:26] = 2  # 7840 voxels deep in the lung: contact now 2.3 %
    cfg = dataclasses.replace(FLAG_SMALL, quantification=dataclasses.replace(
        FLAG_SMALL.quantification, surface_solid_flag_min_fraction=0.15))
    m = measure_scan(vol, lungs, LesionMask(labels, {}), cfg, timings_s={})
    assert m.solid_at_surface_ml == pytest.approx(0.4)
    assert "solid_at_lung_surface" not in _codes(m.qc_flags)


@pytest.mark.parametrize("seed", range(4))
def test_solid_at_surface_counts_as_the_26_neighbourhood_dilation(seed: int) -> None:
    """The gathered count equals the definition (a solid voxel with a tissue voxel in its
    3x3x3 neighbourhood, none beyond the array), written as a maximum filter; random masks
    put solid voxels on every face and edge of the array, and some outside the lung."""
    rng = np.random.default_rng(seed)
    shape = (7, 9, 11)
    hu = rng.integers(-1000, 100, shape).astype(np.int16)
    lung = rng.integers(0, 3, shape).astype(np.uint8)
    lesion = np.where(rng.random(shape) < 0.3, 2, rng.integers(0, 2, shape)).astype(np.uint8)
    lesion[0], lesion[-1], lesion[:, :, 0] = 2, 2, 2
    q = CFG.quantification
    tissue = (lung == 0) & (hu >= q.surface_tissue_min_hu)
    near = ndimage.maximum_filter(tissue.view(np.uint8), size=3, mode="constant") > 0
    expected = np.count_nonzero((lesion == 2) & near) * 0.002
    got = solid_at_surface_ml(hu, lung, lesion, (2.0, 1.0, 1.0), config=q)
    assert got == pytest.approx(expected)
    assert got > 0.0


@pytest.mark.parametrize(("field", "value"), [("surface_solid_flag_min_ml", -1.0),
                                              ("surface_solid_flag_min_fraction", 1.5)])
def test_surface_solid_settings_are_validated(field, value) -> None:
    with pytest.raises(ConfigError, match=field):
        QuantificationConfig(**{field: value})


def test_quantification_config_refuses_non_positive_slice_limits() -> None:
    with pytest.raises(ConfigError, match="lesion_bias_slice_mm"):
        QuantificationConfig(lesion_bias_slice_mm=0.0)


def test_as_flag_keeps_an_existing_code_and_collapses_to_one_line() -> None:
    assert as_flag("a_b: x\n y", default_code="c") == "a_b: x y"
    assert as_flag("Tilt: 3", default_code="io_warning") == "io_warning: Tilt: 3"


def test_provenance_is_json_serialisable_and_holds_versions_timings_and_input() -> None:
    vol, lungs, lesions = chest()
    m = measure_scan(vol, lungs, lesions, CFG, timings_s={"read": 0.5}, device="cpu")
    d = json.loads(json.dumps(m.to_dict(), allow_nan=False))
    p = d["provenance"]
    assert p["config_hash"] == CFG.hash
    assert p["input"]["series_uid"] == "1.2.3"
    assert p["input"]["study_date"] == "20200101"
    assert p["input"]["sha256"] == "0" * 64
    assert set(p["timings_s"]) == {"read", "quantification"}
    assert p["device"] == "cpu"
    assert p["versions"]["numpy"] == np.__version__
    assert p["created_utc"].endswith("+00:00")
    text = json.dumps(d).lower()
    for ident in ("patientname", "patientid", "birthdate", "patient_name", "patient_id"):
        assert ident not in text


def test_segmentation_warnings_become_flags_even_as_a_bare_string() -> None:
    vol, lungs, lesions = chest()
    m = measure_scan(
        vol,
        LungMask(lungs.labels, {"warnings": "trachea not found"}),
        LesionMask(lesions.labels, {"warnings": ["vesselness skipped"]}),
        CFG,
        timings_s={},
    )
    assert "lung_segmentation: trachea not found" in m.qc_flags
    assert "lesion_segmentation: vesselness skipped" in m.qc_flags


def _volumes_with(lesion_ml: float, lung_ml: float):
    from lungvol.quantification.volumes import Volumes

    return Volumes(
        lung_volume_ml=lung_ml, lung_volume_right_ml=lung_ml / 2, lung_volume_left_ml=lung_ml / 2,
        lesion_volume_ml=lesion_ml, ggo_volume_ml=lesion_ml, solid_volume_ml=0.0,
        lesion_proportion_pct=100.0 * lesion_ml / lung_ml, solid_proportion_pct=0.0,
        ggo_proportion_pct=100.0 * lesion_ml / lung_ml, n_lesion_voxels_outside_lungs=0,
    )


@pytest.mark.parametrize(
    ("lesion_ml", "outside", "normal", "withheld"),
    [
        (10.0, {}, True, False),  # no estimate: the plain rule (0.5 %)
        (10.0, {"dependent_opacity_right_ml": None, "dependent_opacity_left_ml": None},
         True, False),
        # 10 + 5 of 2005 mL = 0.75 %: still below 1 %, the call stands.
        (10.0, {"dependent_opacity_right_ml": 5.0, "dependent_opacity_left_ml": None},
         True, False),
        # 10 + 12 + 2 of 2014 mL = 1.19 %: withheld.
        (10.0, {"dependent_opacity_right_ml": 12.0, "dependent_opacity_left_ml": 2.0},
         False, True),
        (30.0, {"dependent_opacity_right_ml": 500.0}, False, False),  # not normal anyway
    ],
)
def test_normal_ct_is_withheld_when_the_opacity_outside_the_mask_would_pass_the_rule(
    lesion_ml, outside, normal, withheld
) -> None:
    """Session 16: dependent consolidation the lung mask left out leaves a mask that reads
    normal; counted as lesion, the subpleural step's lower-bound estimate decides."""
    from lungvol.quantification.qc_flags import normal_ct_call

    call, flags = normal_ct_call(
        _volumes_with(lesion_ml, 2000.0), {"subpleural": outside}, config=QuantificationConfig()
    )
    assert call is normal
    assert bool(flags) is withheld
    if withheld:
        (flag,) = flags
        assert flag_code(flag) == "normal_ct_withheld"
        assert "0.50 %" in flag
        assert "at least 1.2 %" in flag
        assert "14 mL" in flag


def test_measure_scan_reports_the_withheld_normal_ct_call() -> None:
    vol, lungs, lesions = chest()
    plain = measure_scan(vol, lungs, lesions, CFG, timings_s={})
    assert plain.normal_ct is (plain.lesion_proportion_pct < 1.0)
    info = {**lungs.info, "subpleural": {"dependent_opacity_right_ml": plain.lung_volume_ml}}
    m = measure_scan(vol, LungMask(lungs.labels, info), lesions, CFG, timings_s={})
    assert not m.normal_ct
    assert "normal_ct_withheld" in _codes(m.qc_flags)
    assert m.lesion_proportion_pct == plain.lesion_proportion_pct  # the numbers are unchanged


def _domed_lungs(base_cut_slices: int = 0) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Two half-ellipsoid lungs on 2 mm slices whose cross-section grows from the base over
    about 40 mm (a dome under them), with the lowest ``base_cut_slices`` slices removed
    (a base consolidated flat across: the mask then starts at a full cross-section)."""
    shape, spacing = (60, 80, 100), (2.0, 2.0, 2.0)
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    labels = np.zeros(shape, np.uint8)
    # Lung cross-section radius grows as sqrt of the height above the base (z = 5).
    height = np.clip(z - 5, 0, None) / 50.0
    for label, cx in ((1, 25), (2, 75)):
        r = 18.0 * np.sqrt(np.clip(height, 0, 1))
        inside = ((x - cx) ** 2 + (y - 40) ** 2 <= r**2) & (z >= 5) & (z < 55)
        labels[inside] = label
    labels[: 5 + base_cut_slices] = 0
    return labels, spacing


def test_a_domed_base_tapers_and_a_base_cut_flat_does_not() -> None:
    """Session 18: a base consolidated flat across (no air left to segment) leaves the mask
    cut off square; the dome of a normal base makes the cross-section grow over centimetres."""
    from lungvol.quantification.qc_flags import base_flags, base_taper_mm

    cfg = QuantificationConfig()
    labels, spacing = _domed_lungs()
    taper = base_taper_mm(labels, spacing, config=cfg)
    # Area grows linearly with height: half at 25 of 50 slices; 1 % at 0.5 slices.
    assert taper["right"] == pytest.approx(48.0, abs=2.1)
    assert taper == {"right": taper["right"], "left": taper["left"]}
    assert base_flags(taper, [], config=cfg) == []
    cut, _ = _domed_lungs(base_cut_slices=30)  # the lower 60 mm gone: 60 % of the area left
    cut[:, :, 50:] = labels[:, :, 50:]  # the left lung keeps its dome
    taper = base_taper_mm(cut, spacing, config=cfg)
    assert taper["right"] < cfg.min_base_taper_mm <= taper["left"]
    (flag,) = base_flags(taper, [], config=cfg)
    assert flag_code(flag) == "lung_base_truncated"
    assert f"right {taper['right']:.0f} mm" in flag
    assert "left" not in flag.split("(")[1].split(";")[0]
    # A scan range that ends above the base names its own cause: no second flag.
    assert base_flags(taper, ["lungs_cut_off_inferior: 2% ..."], config=cfg) == []


def test_base_taper_is_none_for_an_empty_lung_and_scales_with_slice_spacing() -> None:
    from lungvol.quantification.qc_flags import base_taper_mm

    labels, spacing = _domed_lungs()
    labels[labels == 2] = 0
    cfg = QuantificationConfig()
    taper = base_taper_mm(labels, spacing, config=cfg)
    assert taper["left"] is None
    doubled = base_taper_mm(labels, (4.0, 2.0, 2.0), config=cfg)
    assert doubled["right"] == pytest.approx(2 * taper["right"])


def test_measure_scan_flags_a_flat_base_and_withholds_the_normal_ct_call() -> None:
    """A lung cut off square at the base reads low lesion in what is left: no normal CT."""
    labels, spacing = _domed_lungs(base_cut_slices=30)
    hu = np.where(labels > 0, -850, 40).astype(np.int16)
    vol = make_volume(hu, spacing)
    no_lesion = LesionMask(np.zeros(labels.shape, np.uint8), {})
    m = measure_scan(vol, LungMask(labels), no_lesion, CFG, timings_s={})
    assert m.lesion_proportion_pct == 0.0
    assert m.normal_ct is False
    assert {"lung_base_truncated", "normal_ct_withheld"} <= _codes(m.qc_flags)
    assert m.lung_base_taper_mm is not None
    assert m.lung_base_taper_mm["right"] < 10
    assert json.loads(json.dumps(m.to_dict()))["lung_base_taper_mm"] == m.lung_base_taper_mm
    domed, _ = _domed_lungs()
    m = measure_scan(make_volume(np.where(domed > 0, -850, 40).astype(np.int16), spacing),
                     LungMask(domed), no_lesion, CFG, timings_s={})
    assert m.normal_ct is True
    assert not {"lung_base_truncated", "normal_ct_withheld"} & _codes(m.qc_flags)


@pytest.mark.parametrize(("field", "value"), [
    ("base_min_area_fraction", 0.0), ("base_min_area_fraction", 0.6),
    ("base_half_area_fraction", 1.5), ("min_base_taper_mm", -1.0),
])
def test_base_taper_settings_are_validated(field, value) -> None:
    with pytest.raises(ConfigError, match=field):
        QuantificationConfig(**{field: value})


def test_normal_ct_is_withheld_when_anterior_opacity_outside_the_mask_is_flagged() -> None:
    """Session 18: the anterior gap flags opacity it does not estimate; the call is withheld.
    Other flags leave it alone."""
    from lungvol.quantification.qc_flags import normal_ct_call

    cfg = QuantificationConfig()
    anterior = "anterior_opacity_outside_lung: the lungs' anterior surface lies ... 52 mm"
    call, flags = normal_ct_call(_volumes_with(10.0, 2000.0), {}, config=cfg, flags=[anterior])
    assert call is False
    (flag,) = flags
    assert flag_code(flag) == "normal_ct_withheld"
    assert "anterior_opacity_outside_lung" in flag
    other = ["thick_slices_lesion_bias: slices are 3 mm apart"]
    call, flags = normal_ct_call(_volumes_with(10.0, 2000.0), {}, config=cfg, flags=other)
    assert (call, flags) == (True, [])


@pytest.mark.parametrize(("aerated_hu", "flagged"), [(-860, False), (-835, False), (-800, True)])
def test_lung_without_normally_aerated_parenchyma_is_flagged(aerated_hu, flagged) -> None:
    """Session 18: the lesion stage measures ground glass above the lung's own level, so
    ground glass spread evenly over the whole lung reads low (the real chest shifted up by
    200 HU: 7.4 % lesion). The 10th percentile of lung HU above -830 HU says so."""
    vol, lungs, lesions = chest()
    hu = vol.hu.copy()
    hu[(lungs.labels > 0) & (lesions.labels == 0)] = aerated_hu
    m = measure_scan(make_volume(hu, vol.spacing_mm), lungs, lesions, CFG, timings_s={})
    flags = [f for f in m.qc_flags if flag_code(f) == "lung_density_high"]
    assert bool(flags) is flagged
    if flagged:
        assert f"10th HU percentile is {aerated_hu} HU" in flags[0]
    # The flag's percentile is not added to the reported ones.
    assert set(m.lung_hu) == {"mean_hu", "std_hu", "p5_hu", "p25_hu", "p50_hu", "p75_hu", "p95_hu"}


def test_density_percentile_is_validated() -> None:
    with pytest.raises(ConfigError, match="density_percentile"):
        QuantificationConfig(density_percentile=120.0)


@pytest.mark.parametrize(
    ("where", "flagged"),
    [
        ("beside the lungs", True),  # 0.1 mL in 3 of the lungs' slices
        ("above the lungs", False),  # no lung in its slices (lung1's dental fillings)
        ("a speck", False),  # 0.016 mL: an ECG electrode's size, under metal_min_component_ml
    ],
)
def test_metal_in_the_lungs_slices_is_flagged(where, flagged) -> None:
    """Metal streaks cross the whole axial slice: metal_near_lungs says how much lung shares
    its slices (the most the streaks can move the lesion proportion, in pp)."""
    vol, lungs, lesions = chest()
    hu = vol.hu.copy()
    nx = hu.shape[2]
    if where == "beside the lungs":
        hu[20:23, 30:34, nx // 2 - 2 : nx // 2 + 2] = 3071
    elif where == "above the lungs":
        hu[37:40, 30:34, nx // 2 - 2 : nx // 2 + 2] = 3071
    else:
        hu[20:22, 30:32, nx // 2 - 1 : nx // 2 + 1] = 3071
    m = measure_scan(make_volume(hu, vol.spacing_mm), lungs, lesions, CFG, timings_s={})
    flags = [f for f in m.qc_flags if flag_code(f) == "metal_near_lungs"]
    assert bool(flags) is flagged
    if flagged:
        share = 100.0 * np.count_nonzero(lungs.labels[20:23]) / np.count_nonzero(lungs.labels)
        assert "0.10 mL of metal" in flags[0]
        assert f"holding {share:.1f} % of the lung" in flags[0]


def test_metal_share_is_the_lung_in_its_slices() -> None:
    from lungvol.quantification.qc_flags import metal_in_lung_slices

    vol, lungs, lesions = chest()
    qcfg = CFG.quantification
    assert metal_in_lung_slices(vol.hu, lungs.labels, lesions.labels, vol.spacing_mm,
                                config=qcfg) is None
    hu = vol.hu.copy()
    hu[16:18, 2:6, 30:34] = 3000  # in the solid lesion's slices, in front of the lungs
    got = metal_in_lung_slices(hu, lungs.labels, lesions.labels, vol.spacing_mm, config=qcfg)
    voxel_ml = float(np.prod(vol.spacing_mm)) / 1000.0
    assert got["metal_ml"] == pytest.approx(32 * voxel_ml, abs=0.005)
    assert got["lung_ml"] == pytest.approx(np.count_nonzero(lungs.labels[16:18]) * voxel_ml,
                                           abs=0.05)
    assert got["lesion_ml"] == pytest.approx(np.count_nonzero(lesions.labels[16:18]) * voxel_ml,
                                             abs=0.05)
    with pytest.raises(ConfigError, match="metal_min_component_ml"):
        QuantificationConfig(metal_min_component_ml=-1.0)
