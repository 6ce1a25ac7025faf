"""insert_metal: metal painted saturated, streaks only in the slices that hold it."""

from __future__ import annotations

import numpy as np
import pytest

from lungvol.errors import GeometryError
from lungvol.phantom import MAX_STORED_HU, insert_metal


def _slab() -> np.ndarray:
    """6 slices of 96 x 96: a water disc (0 HU) holding a lung-like square (-850 HU)."""
    yy, xx = np.mgrid[:96, :96]
    body = (yy - 48) ** 2 + (xx - 48) ** 2 <= 44**2
    hu = np.where(body, 0, -1000).astype(np.int16)
    hu[40:70, 25:70] = -850
    return np.repeat(hu[None], 6, axis=0)


def test_metal_is_saturated_and_streaks_stay_in_its_slices() -> None:
    hu = _slab()
    out, metal = insert_metal(hu, spacing_mm=(2.0, 2.0, 2.0), centre_zyx=(2, 14, 48),
                              semi_axes_mm=(2.0, 4.0, 16.0), metal_mu_per_mm=0.6,
                              photons=2e4)
    assert out.dtype == np.int16
    assert metal[2].any()
    assert not metal[4:].any()
    assert np.all(out[metal] == MAX_STORED_HU)
    # Slices without metal are untouched; the lung square in the metal's slice is streaked.
    assert np.array_equal(out[4:], hu[4:])
    lung = np.zeros(hu.shape[1:], bool)
    lung[42:68, 27:68] = True
    assert float(np.std(hu[2][lung])) == 0.0
    assert float(np.std(out[2][lung])) > 30.0


def test_same_seed_same_streaks_and_rectangular_slices_are_refused() -> None:
    hu = _slab()
    kw = {"spacing_mm": (2.0, 2.0, 2.0), "centre_zyx": (2, 14, 48),
          "semi_axes_mm": (2.0, 4.0, 16.0)}
    a, _ = insert_metal(hu, seed=3, **kw)
    b, _ = insert_metal(hu, seed=3, **kw)
    assert np.array_equal(a, b)
    with pytest.raises(GeometryError, match="square"):
        insert_metal(hu[:, :, :90], **kw)
