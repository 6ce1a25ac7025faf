"""Noise index of the aerated lung and the noise adaptation of the lesion stage."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from lungvol.config import LesionSegmentationConfig
from lungvol.errors import ConfigError
from lungvol.segmentation import segment_lesions
from lungvol.segmentation.noise import (
    _BISECTION_STEPS,
    _search_sigma,
    adapt_to_noise,
    lung_noise_hu,
    opening_bias_hu,
)
from lungvol.types import CTVolume, LungMask, SourceInfo

SHAPE = (40, 60, 60)
SPACING_MM = (1.0, 1.0, 1.0)
KW = {"block_mm": 1.5, "aerated_max_hu": -700.0}
BIAS_KW = {**KW, "radius_mm": 4.5, "level_mm": 8.0}
ADAPT_KW = {**BIAS_KW, "bias_target_hu": 36.0, "target_hu": 21.0, "max_sigma_mm": 2.0}


def _noisy_lung(sd_hu: float, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0.0, sd_hu, SHAPE)
    return (np.full(SHAPE, -860.0) + noise).astype(np.float32)


@pytest.mark.parametrize("sd_hu", [20.0, 40.0, 80.0, 160.0])
def test_index_of_white_noise_is_the_sd_of_a_block_mean(sd_hu):
    """1 mm voxels in 1.5 mm working blocks = 2 x 2 x 2 voxels: a block mean of white
    noise has SD sd / sqrt(8)."""
    index = lung_noise_hu(_noisy_lung(sd_hu), np.ones(SHAPE, bool), SPACING_MM, **KW)
    assert index == pytest.approx(sd_hu / np.sqrt(8.0), rel=0.05)


def test_index_needs_enough_aerated_lung():
    lung = np.zeros(SHAPE, bool)
    lung[15:25, 20:40, 20:40] = True  # 4 mL: too few interior blocks
    assert lung_noise_hu(_noisy_lung(40.0), lung, SPACING_MM, **KW) is None
    dense = np.full(SHAPE, -500.0, np.float32)  # no aerated lung at all
    assert lung_noise_hu(dense, np.ones(SHAPE, bool), SPACING_MM, **KW) is None


def test_quiet_scan_is_not_smoothed():
    out = adapt_to_noise(_noisy_lung(40.0), np.ones(SHAPE, bool), SPACING_MM, **ADAPT_KW)
    assert out.smoothing_sigma_mm == 0.0
    assert out.lung_noise_hu == pytest.approx(14.1, abs=0.5)
    assert out.measure == "opening_bias"
    assert out.opening_bias_hu == pytest.approx(21.9, abs=1.0)


@pytest.mark.parametrize("pixel_mm", [1.0, 1.02])
def test_noisy_scan_is_smoothed_just_down_to_the_bias_target(pixel_mm):
    """The least sigma that brings the opening bias to the target: 0.1 mm less leaves it
    above. On single-pixel blocks (pixels over 1.0 mm) the same noise biases the opening
    further than the noise index says, so the scan is smoothed more than the index target
    would (the real chest with noise read 30 % low at 1.02 mm by the index, session 23)."""
    from scipy import ndimage

    hu, lung, spacing = _noisy_lung(160.0), np.ones(SHAPE, bool), (1.0, pixel_mm, pixel_mm)
    out = adapt_to_noise(hu, lung, spacing, **ADAPT_KW)
    assert out.measure == "opening_bias"
    assert out.opening_bias_hu == pytest.approx(87.3 if pixel_mm == 1.0 else 210.0, rel=0.05)
    assert 0.0 < out.smoothing_sigma_mm < 2.0
    assert out.smoothed_hu <= 36.0
    less = ndimage.gaussian_filter(
        hu, [(out.smoothing_sigma_mm - 0.1) / s for s in spacing], mode="nearest"
    )
    assert opening_bias_hu(less, lung, spacing, **BIAS_KW) > 36.0
    by_index = adapt_to_noise(hu, lung, spacing, **{**ADAPT_KW, "bias_target_hu": 0.0})
    assert by_index.measure == "noise_index"
    assert by_index.smoothed_hu <= 21.0
    if pixel_mm > 1.0:
        assert out.smoothing_sigma_mm > by_index.smoothing_sigma_mm + 0.1
    disabled = adapt_to_noise(hu, lung, spacing, **{**ADAPT_KW, "bias_target_hu": 0.0,
                                                    "target_hu": 0.0})
    assert disabled.smoothing_sigma_mm == 0.0


def test_without_lung_deep_inside_the_noise_index_decides():
    """A 12 mm thick lung has interior blocks for the noise index but too few that a 4.5 mm
    ball fits around: the index is brought to noise_target_hu instead (the fallback)."""
    hu, lung = _noisy_lung(160.0), np.zeros(SHAPE, bool)
    lung[14:26] = True
    assert opening_bias_hu(hu, lung, SPACING_MM, **BIAS_KW) is None
    out = adapt_to_noise(hu, lung, SPACING_MM, **ADAPT_KW)
    assert (out.measure, out.opening_bias_hu) == ("noise_index", None)
    assert out.lung_noise_hu > 21.0 >= out.smoothed_hu
    assert out.smoothing_sigma_mm > 0.0


@pytest.mark.parametrize("case", ["quiet", "noisy", "index fallback", "no index"])
def test_the_noise_index_on_a_second_thread_gives_the_same_adaptation(case, monkeypatch):
    """With ``pool`` the noise index runs beside the search and the search's Gaussians run
    in two z-slabs: every outcome is the one without it, including those where the index
    ends the adaptation (too little lung for the index, the index deciding when the bias
    cannot be measured)."""
    from concurrent.futures import ThreadPoolExecutor

    from lungvol.segmentation import slabs

    split = []
    real_slabs = slabs.shared_slabs

    def counted(*args, **kwargs):
        split.append(args[0])
        return real_slabs(*args, **kwargs)

    monkeypatch.setattr(slabs, "shared_slabs", counted)

    hu, lung = _noisy_lung(40.0 if case == "quiet" else 160.0), np.ones(SHAPE, bool)
    if case == "index fallback":
        lung = np.zeros(SHAPE, bool)
        lung[14:26] = True
    elif case == "no index":
        lung = np.zeros(SHAPE, bool)
        lung[15:25, 20:40, 20:40] = True
    alone = adapt_to_noise(hu, lung, SPACING_MM, **ADAPT_KW)
    with ThreadPoolExecutor(max_workers=1) as pool:
        beside = adapt_to_noise(hu, lung, SPACING_MM, **ADAPT_KW, pool=pool)
    assert beside == alone
    # Only a search smooths, and only with the pool does it split (40 slices: four halos
    # of the largest sigma fit).
    assert bool(split) == (case in ("noisy", "index fallback"))
    expected = {
        "quiet": ("opening_bias", False), "noisy": ("opening_bias", True),
        "index fallback": ("noise_index", True), "no index": ("noise_index", False),
    }[case]
    assert (alone.measure, alone.smoothing_sigma_mm > 0) == expected
    if case == "no index":
        assert alone.lung_noise_hu is None


def _bisection(noise_at, target_hu, max_sigma_mm):
    """The plain bisection the grid search replaces (the reference answer)."""
    lo, hi = 0.0, max_sigma_mm
    hi_noise = noise_at(hi)
    if hi_noise > target_hu:
        return hi, hi_noise
    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        if noise_at(mid) <= target_hu:
            hi, hi_noise = mid, noise_at(mid)
        else:
            lo = mid
    return round(hi, 3), hi_noise


@pytest.mark.parametrize("floor_hu", [0.0, 10.0, 15.0, 19.0])
@pytest.mark.parametrize("noise_hu", [22.0, 30.0, 60.0, 120.0, 400.0])
def test_sigma_search_gives_the_bisection_answer_in_fewer_evaluations(noise_hu, floor_hu):
    """Texture floor + white noise falling with smoothing: log noise is far from linear in
    sigma near the floor, the case the interpolation must not creep on."""
    def noise_at(sigma_mm):
        calls.append(sigma_mm)
        return float(np.hypot(floor_hu, noise_hu / (1.0 + (sigma_mm / 0.3) ** 2) ** 0.75))

    calls: list[float] = []
    out = _search_sigma(noise_at, noise_hu, 21.0, 2.0)
    used = len(calls)
    calls.clear()
    assert out == _bisection(noise_at, 21.0, 2.0)
    assert used < 8, calls  # the bisection always takes 8


def test_sigma_search_without_enough_lung_after_smoothing_adapts_nothing():
    assert _search_sigma(lambda sigma_mm: None, 50.0, 21.0, 2.0) == (0.0, 50.0)


def _faint_ground_glass_in_noise(seed: int = 1):
    """Normal lung (-860 HU) with a 20 x 40 x 40 mm ground-glass slab (-660 HU), white
    noise of SD 120 HU (a sharp-kernel or low-dose scan)."""
    hu = np.full(SHAPE, -860.0, np.float32)
    slab = np.zeros(SHAPE, bool)
    slab[10:30, 10:50, 10:50] = True
    hu[slab] = -660.0
    hu += np.random.default_rng(seed).normal(0.0, 120.0, SHAPE).astype(np.float32)
    volume = CTVolume(
        hu=hu.astype(np.int16), spacing_mm=SPACING_MM, origin_lps_mm=(0.0, 0.0, 0.0),
        direction=np.eye(3), source=SourceInfo(path="synthetic", kind="nifti", sha256=""),
    )
    return volume, LungMask(np.ones(SHAPE, np.uint8)), slab


def test_faint_ground_glass_in_a_noisy_scan_is_found():
    """Noise biases the background opening (a local minimum) downward, under the lesion
    region floor; the adaptation smooths the scan first. Without it (control) a sixth of
    the slab is lost."""
    volume, lungs, slab = _faint_ground_glass_in_noise()
    lesions = segment_lesions(volume, lungs, LesionSegmentationConfig())
    found = np.count_nonzero((lesions.labels > 0) & slab) / slab.sum()
    false = np.count_nonzero((lesions.labels > 0) & ~slab) / np.count_nonzero(~slab)
    assert found >= 0.95
    assert false <= 0.002
    assert lesions.info["noise_smoothing_sigma_mm"] > 0
    assert lesions.info["lung_noise_hu"] > 21.0
    assert [w.split(":")[0] for w in lesions.info["warnings"]] == ["noisy_scan_smoothed"]
    plain = segment_lesions(
        volume, lungs, LesionSegmentationConfig(opening_bias_target_hu=0.0, noise_target_hu=0.0)
    )
    assert np.count_nonzero((plain.labels > 0) & slab) / slab.sum() < 0.9
    assert plain.info["warnings"] == []


@pytest.mark.parametrize(
    "key",
    [
        "opening_bias_target_hu", "noise_target_hu", "noise_max_smoothing_mm",
        "soft_image_noise_floor_hu", "noise_band_fraction",
    ],
)
def test_noise_settings_are_validated(key):
    with pytest.raises(ConfigError, match=key):
        LesionSegmentationConfig(**{key: -1.0})


def test_faint_ground_glass_on_coarse_pixels_is_found_as_on_fine_ones():
    """On pixels wider than 2/3 of the background working spacing (1.0 mm at 1.5 mm) the
    background grid is single pixels and the ball holds about four times as many blocks: the
    same noise index leaves the opening biased further down. Smoothed by the opening bias,
    the faint slab at 1.02 mm pixels is found as at 1.0 mm; smoothed by the noise index (the
    fallback, and lungvol before 0.6.5) a sixth of it is lost, and that is flagged
    noisy_coarse_pixels. 1.0 mm pixels still get blocks of two."""
    volume, lungs, slab = _faint_ground_glass_in_noise()
    coarse = CTVolume(
        hu=volume.hu, spacing_mm=(1.0, 1.02, 1.02), origin_lps_mm=(0.0, 0.0, 0.0),
        direction=np.eye(3), source=volume.source,
    )
    lesions = segment_lesions(coarse, lungs, LesionSegmentationConfig())
    assert np.count_nonzero((lesions.labels > 0) & slab) / slab.sum() >= 0.95
    assert np.count_nonzero((lesions.labels > 0) & ~slab) / np.count_nonzero(~slab) <= 0.002
    assert [w.split(":")[0] for w in lesions.info["warnings"]] == ["noisy_scan_smoothed"]
    assert lesions.info["noise_smoothing_measure"] == "opening_bias"
    by_index = segment_lesions(
        coarse, lungs, LesionSegmentationConfig(opening_bias_target_hu=0.0)
    )
    assert np.count_nonzero((by_index.labels > 0) & slab) / slab.sum() < 0.9
    codes = [w.split(":")[0] for w in by_index.info["warnings"]]
    assert codes == ["noisy_scan_smoothed", "noisy_coarse_pixels"]
    assert "1.02 mm pixels" in by_index.info["warnings"][1]
    quiet = CTVolume(
        hu=_noisy_lung(20.0).astype(np.int16), spacing_mm=(1.0, 1.02, 1.02),
        origin_lps_mm=(0.0, 0.0, 0.0), direction=np.eye(3), source=volume.source,
    )
    assert segment_lesions(quiet, lungs, LesionSegmentationConfig()).info["warnings"] == []


def _lung_volume(sd_hu: float, kernel: str | None = None) -> tuple[CTVolume, LungMask]:
    source = SourceInfo(path="synthetic", kind="dicom", sha256="", convolution_kernel=kernel)
    volume = CTVolume(
        hu=np.rint(_noisy_lung(sd_hu)).astype(np.int16), spacing_mm=SPACING_MM,
        origin_lps_mm=(0.0, 0.0, 0.0), direction=np.eye(3), source=source,
    )
    return volume, LungMask(np.ones(SHAPE, np.uint8))


@pytest.mark.parametrize(
    ("sd_hu", "codes"),
    [
        (20.0, ["soft_image_lesion_bias"]),  # index 20 / sqrt(8) = 7.1 HU
        (40.0, []),  # 14.1 HU: the calibrated range
        (120.0, ["noisy_scan_smoothed"]),  # 42 HU: smoothed, and not soft
    ],
)
def test_a_smooth_image_is_flagged_by_its_noise_index(sd_hu, codes):
    """An index below lesions.soft_image_noise_floor_hu (10 HU) is a soft kernel or an
    interpolated volume, where lesion reads high (session 24): flagged, nothing changed."""
    volume, lungs = _lung_volume(sd_hu)
    lesions = segment_lesions(volume, lungs, LesionSegmentationConfig())
    assert [w.split(":")[0] for w in lesions.info["warnings"]] == codes
    if codes == ["soft_image_lesion_bias"]:
        assert f"{lesions.info['lung_noise_hu']:.1f} HU (< " in lesions.info["warnings"][0]
        assert "(reconstruction kernel" not in lesions.info["warnings"][0]
        off = segment_lesions(
            volume, lungs, LesionSegmentationConfig(soft_image_noise_floor_hu=0.0)
        )
        assert off.info["warnings"] == []
        assert np.array_equal(off.labels, lesions.labels)  # a flag only


def test_the_soft_image_flag_names_the_kernel_when_known():
    volume, lungs = _lung_volume(20.0, kernel="B30f")
    (warning,) = segment_lesions(volume, lungs, LesionSegmentationConfig()).info["warnings"]
    assert "(reconstruction kernel B30f)" in warning


def test_too_little_lung_to_measure_is_not_called_soft():
    volume, _ = _lung_volume(0.0)
    lung = np.zeros(SHAPE, np.uint8)
    lung[15:25, 20:40, 20:40] = 1  # too few interior blocks: no index
    lesions = segment_lesions(volume, LungMask(lung), LesionSegmentationConfig())
    assert lesions.info["lung_noise_hu"] is None
    assert lesions.info["warnings"] == []


def test_a_lung_that_is_mostly_air_is_not_called_soft():
    """Severe emphysema: lung near -1000 HU has little texture whatever the kernel (the
    real chest's aerated lung darkened by 200 HU read an index under 10 HU and 0.27 %
    lesion): below lesions.soft_image_min_lung_hu (-950 HU) the index is not read."""
    volume, lungs = _lung_volume(20.0)
    airy = dataclasses.replace(volume, hu=(volume.hu - 140).astype(np.int16))  # -1000 HU
    lesions = segment_lesions(airy, lungs, LesionSegmentationConfig())
    assert lesions.info["lung_noise_hu"] < 10.0
    assert lesions.info["warnings"] == []
    lower = LesionSegmentationConfig(soft_image_min_lung_hu=-1010.0)
    codes = [w.split(":")[0] for w in segment_lesions(airy, lungs, lower).info["warnings"]]
    assert codes == ["soft_image_lesion_bias"]
