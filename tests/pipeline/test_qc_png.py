"""render_qc_png on a synthetic chest: a readable PNG, and refusals for unusable masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lungvol.config import LungvolConfig
from lungvol.errors import GeometryError, SegmentationError
from lungvol.quantification import measure_scan
from lungvol.reporting.qc import render_qc_png
from lungvol.types import LungMask

from ._synthetic import chest


def test_qc_png_is_written_with_the_configured_dpi(tmp_path: Path) -> None:
    vol, lungs, lesions = chest(spacing_mm=(3.0, 0.8, 0.8))
    m = measure_scan(vol, lungs, lesions, LungvolConfig(), timings_s={})
    out = render_qc_png(vol, lungs, lesions, m, tmp_path / "qc.png", dpi=50)
    with Image.open(out) as img:
        assert img.format == "PNG"
        assert img.size == (800, 310)  # figsize (16, 6.2) inches x 50 dpi
        rgb = np.asarray(img.convert("RGB"))
    # Radiological convention: the right lung (cyan, low x index) is drawn left of the left
    # lung (magenta) in the first axial panel (the left quarter of the image).
    panel = rgb[:, : rgb.shape[1] // 4].astype(int)
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
