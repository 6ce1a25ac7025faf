"""render_qc_png on a synthetic chest: a readable PNG, and refusals for unusable masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lungvol.config import LungvolConfig
from lungvol.errors import GeometryError, SegmentationError
from lungvol.quantification import measure_scan
from lungvol.reporting.qc import most_lesion_slice, render_qc_png
from lungvol.types import LesionMask, LungMask

from ._synthetic import chest


def test_qc_png_is_written_with_the_configured_dpi(tmp_path: Path) -> None:
    vol, lungs, lesions = chest(spacing_mm=(3.0, 0.8, 0.8))
    m = measure_scan(vol, lungs, lesions, LungvolConfig(), timings_s={})
    out = render_qc_png(vol, lungs, lesions, m, tmp_path / "qc.png", dpi=50)
    with Image.open(out) as img:
        assert img.format == "PNG"
        assert img.size == (1000, 310)  # figsize (20, 6.2) inches x 50 dpi
        rgb = np.asarray(img.convert("RGB"))
    # Radiological convention: the right lung (cyan, low x index) is drawn left of the left
    # lung (magenta) in the first axial panel (the left fifth of the image).
    panel = rgb[:, : rgb.shape[1] // 5].astype(int)
    cyan = (panel[..., 0] < 90) & (panel[..., 1] > 170) & (panel[..., 2] > 170)
    magenta = (panel[..., 0] > 170) & (panel[..., 1] < 120) & (panel[..., 2] > 170)
    assert cyan.sum() > 20
    assert magenta.sum() > 20
    assert np.nonzero(cyan)[1].mean() < np.nonzero(magenta)[1].mean()


def test_qc_png_refuses_an_empty_lung_mask_and_a_mask_off_grid(tmp_path: Path) -> None:
    vol, lungs, lesions = chest()
    m = measure_scan(vol, lungs, lesions, LungvolConfig(), timings_s={})
    with pytest.raises(SegmentationError, match="empty"):
        render_qc_png(vol, LungMask(np.zeros(vol.shape, np.uint8)), lesions, m, tmp_path / "a.png")
    with pytest.raises(GeometryError):
        render_qc_png(vol, LungMask(lungs.labels[:, 1:]), lesions, m, tmp_path / "b.png")
    assert not list(tmp_path.iterdir())


def _yellow_or_red(rgb: np.ndarray) -> np.ndarray:
    r, g, b = (rgb[..., i].astype(int) for i in range(3))
    yellow = (r > 150) & (g > 130) & (b < 90)
    red = (r > 150) & (g < 80) & (b < 80)
    return yellow | red


def test_most_lesion_slice_is_the_slice_with_the_most_lesion_voxels() -> None:
    labels = np.zeros((6, 5, 5), np.uint8)
    assert most_lesion_slice(labels) is None
    labels[1, :2, :2] = 1  # 4 voxels
    labels[4, :3, :3] = 2  # 9 voxels
    labels[5, :3, :3] = 1  # 9 voxels: a tie goes to the lower slice
    assert most_lesion_slice(labels) == 4


def test_a_lesion_away_from_the_fixed_slices_is_shown_in_the_most_lesion_panel(
    tmp_path: Path,
) -> None:
    vol, lungs, _ = chest(spacing_mm=(3.0, 0.8, 0.8))
    # One ground-glass lesion on slice 33 only: the 30/50/70 % slices (13, 20, 27) miss it.
    labels = np.zeros(vol.shape, np.uint8)
    labels[33, 20:34, 8:20] = 1
    lesions = LesionMask(labels, {})
    m = measure_scan(vol, lungs, lesions, LungvolConfig(), timings_s={})
    out = render_qc_png(vol, lungs, lesions, m, tmp_path / "qc.png", dpi=50)
    with Image.open(out) as img:
        rgb = np.asarray(img.convert("RGB"))
    panels = rgb[int(rgb.shape[0] * 0.08) : int(rgb.shape[0] * 0.75)]  # below the legend
    width = rgb.shape[1] / 5
    fill = [
        _yellow_or_red(panels[:, int(i * width) : int((i + 1) * width)]).sum() for i in range(5)
    ]
    assert fill[3] > 30, fill  # the most-lesion panel shows it
    assert max(fill[:3]) == 0, fill  # the fixed axial slices do not


def test_a_scan_without_lesion_says_so_in_the_most_lesion_panel(tmp_path: Path) -> None:
    vol, lungs, _ = chest()
    lesions = LesionMask(np.zeros(vol.shape, np.uint8), {})
    m = measure_scan(vol, lungs, lesions, LungvolConfig(), timings_s={})
    out = render_qc_png(vol, lungs, lesions, m, tmp_path / "qc.png", dpi=50)
    with Image.open(out) as img:
        rgb = np.asarray(img.convert("RGB"))
    panels = rgb[int(rgb.shape[0] * 0.08) : int(rgb.shape[0] * 0.75)]
    width = rgb.shape[1] / 5
    fourth = panels[:, int(3 * width) : int(4 * width)].astype(int)
    assert _yellow_or_red(fourth).sum() == 0
    # Black panel with white text: no CT drawn (the CT panels are mostly grey).
    grey = (np.abs(fourth[..., 0] - fourth[..., 1]) < 8) & (fourth[..., 0] > 60)
    assert grey.mean() < 0.05


def _panels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        rgb = np.asarray(img.convert("RGB")).astype(int)
    return rgb[int(rgb.shape[0] * 0.08) : int(rgb.shape[0] * 0.75)]


def test_the_subpleural_layer_the_step_added_is_outlined(tmp_path: Path) -> None:
    """A reader must see the estimated layer: a dashed white outline and a legend entry."""
    vol, lungs, lesions = chest(spacing_mm=(3.0, 0.8, 0.8))
    m = measure_scan(vol, lungs, lesions, LungvolConfig(), timings_s={})
    plain = render_qc_png(vol, lungs, lesions, m, tmp_path / "plain.png", dpi=50)
    # The outer 3 voxels of the lung mask, as if the step had added them.
    inner = np.zeros(vol.shape, bool)
    inner[:, 3:-3, 3:-3] = True
    recovered = (lungs.labels > 0) & ~(np.roll(lungs.labels > 0, 3, axis=2)
                                       & np.roll(lungs.labels > 0, -3, axis=2)) & inner
    assert recovered.any()
    shown = LungMask(lungs.labels, lungs.info, recovered=recovered)
    outlined = render_qc_png(vol, shown, lesions, m, tmp_path / "outlined.png", dpi=50)
    # Pixels the outline whitens (all channels brighter): the dashed contour.
    whiter = (_panels(outlined) - _panels(plain)).min(axis=-1) > 40
    assert np.count_nonzero(whiter) > 20
    with pytest.raises(GeometryError, match="recovered subpleural layer"):
        render_qc_png(vol, LungMask(lungs.labels, {}, recovered=recovered[:, 1:]), lesions, m,
                      tmp_path / "bad.png")


def test_qc_png_outlines_the_dependent_opacity_estimate(tmp_path: Path) -> None:
    """Session 16: the subpleural step's estimate of opacity outside the lungs (not in the
    mask) is outlined dotted in orange, with a legend entry; off the grid it is refused."""
    vol, lungs, lesions = chest(spacing_mm=(3.0, 0.8, 0.8))
    m = measure_scan(vol, lungs, lesions, LungvolConfig(), timings_s={})
    estimate = np.zeros(vol.shape, bool)
    zs, ys, xs = np.nonzero(lungs.labels)
    estimate[zs.min():zs.max() + 1, ys.max() + 2:ys.max() + 12, xs.min():xs.max() + 1] = True
    marked = LungMask(lungs.labels, lungs.info, outside_estimate=estimate)

    def orange_pixels(mask: LungMask, name: str) -> int:
        out = render_qc_png(vol, mask, lesions, m, tmp_path / name, dpi=50)
        with Image.open(out) as img:
            rgb = np.asarray(img.convert("RGB")).astype(int)
        r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
        # Orange (#ffa040) and its anti-aliased blends: red high, blue low, green between.
        return int(((r > 200) & (r - b > 90) & (r - g >= 40) & (g >= 100) & (g <= 200)).sum())

    assert orange_pixels(marked, "with.png") > 4 * max(1, orange_pixels(lungs, "without.png"))
    with pytest.raises(GeometryError, match="dependent opacity"):
        render_qc_png(vol, LungMask(lungs.labels, outside_estimate=estimate[:, 1:]), lesions, m,
                      tmp_path / "c.png")
