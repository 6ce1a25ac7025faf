"""enhance_contrast: the blood pool between the lungs raised, lung vessels by their fraction."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from lungvol.errors import GeometryError
from lungvol.phantom import enhance_contrast

SPACING_MM = (2.0, 1.0, 1.0)


def _chest() -> tuple[np.ndarray, np.ndarray]:
    """8 slices of 100 x 120: soft tissue (40 HU) holding two lungs (-850 HU) with a vessel
    (40 HU) deep in the right one, a mediastinum between them and a spine (700 HU) behind."""
    yy, xx = np.mgrid[:100, :120]
    hu = np.where(((yy - 50) / 46) ** 2 + ((xx - 60) / 57) ** 2 <= 1, 40, -1000)
    labels = np.zeros(hu.shape, np.uint8)
    for label, cx in ((1, 30), (2, 90)):
        lung = ((yy - 45) / 25) ** 2 + ((xx - cx) / 18) ** 2 <= 1
        hu[lung], labels[lung] = -850, label
    hu[44:47, 28:31] = 40  # a lung vessel, 3 x 3 mm
    hu[(yy - 85) ** 2 + (xx - 60) ** 2 <= 8**2] = 700  # vertebral body
    return np.repeat(hu[None], 8, axis=0).astype(np.int16), np.repeat(labels[None], 8, axis=0)


def test_the_blood_pool_between_the_lungs_is_raised_and_nothing_else() -> None:
    hu, labels = _chest()
    out, pool = enhance_contrast(hu, labels, spacing_mm=SPACING_MM, blood_gain_hu=220.0)
    assert out.dtype == np.int32
    assert pool.any()
    assert np.array_equal(out[pool], hu[pool].astype(np.int32) + 220)
    assert np.array_equal(out[~pool], hu[~pool])
    # Between the lungs' medial edges, in front of the spine (its front at row 77, less
    # 5 mm), at least 4 mm from the lungs: the chest wall beside the lungs and the spine
    # stay as they are.
    ys, xs = np.nonzero(pool.any(axis=0))
    assert ys.max() < 77 - 5
    assert xs.min() > 30
    assert xs.max() < 90
    from_lung_mm = ndimage.distance_transform_edt(labels[0] == 0, sampling=SPACING_MM[1:])
    assert from_lung_mm[pool[0]].min() >= 4.0
    assert not pool[:, 77:].any()


def test_lung_vessels_gain_by_their_vessel_fraction_away_from_the_pleura() -> None:
    hu, labels = _chest()
    out, pool = enhance_contrast(
        hu, labels, spacing_mm=SPACING_MM, blood_gain_hu=0.0, vessel_gain_hu=200.0
    )
    vessel = np.zeros(hu.shape, bool)
    vessel[:, 44:47, 28:31] = True
    assert np.all(out[vessel] == 240)  # 40 HU: all vessel
    lung = labels > 0
    assert np.array_equal(out[lung & ~vessel], hu[lung & ~vessel])  # -850 HU: none
    assert np.array_equal(out[~lung], hu[~lung])


def test_a_lung_mask_of_another_shape_is_refused() -> None:
    hu, labels = _chest()
    with pytest.raises(GeometryError, match="lung labels of its shape"):
        enhance_contrast(hu, labels[:-1], spacing_mm=SPACING_MM, blood_gain_hu=220.0)
