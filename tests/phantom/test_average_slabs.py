"""lungvol.phantom.average_slabs: a thick-slice reconstruction of a thin-slice volume."""

from __future__ import annotations

import numpy as np
import pytest

from lungvol.phantom import average_slabs


def test_slabs_are_means_of_1mm_slices():
    """2 mm slices of 0 and 100 alternating: at 1 mm (linear) 0, 50, 100, 50, ...; 4 mm
    slabs average four of them to 50; a remainder under one slab is dropped."""
    a = np.zeros((10, 3, 4), np.int16)
    a[1::2] = 100
    out = average_slabs(a, 4, 2.0)
    assert out.shape == (5, 3, 4)  # 20 slices at 1 mm -> 5 slabs of 4 mm
    assert out.dtype == np.float32
    assert np.allclose(out[:4], 50.0)


def test_a_mask_becomes_its_slab_fraction():
    """A mask's slab means are the fraction of each slab it fills (at 1 mm, linear)."""
    mask = np.zeros((12, 2, 2), bool)
    mask[:6] = True  # the lower 12 mm of 24 mm
    frac = average_slabs(mask, 6, 2.0)
    assert frac.shape == (4, 2, 2)
    assert frac[0].min() == 1.0
    assert frac[-1].max() == 0.0
    assert frac.mean() == pytest.approx(0.5, abs=0.05)  # the mask's share is kept


@pytest.mark.parametrize(("slab_mm", "slice_mm"), [(0, 2.0), (3, 0.0)])
def test_bad_arguments_are_refused(slab_mm, slice_mm):
    with pytest.raises(ValueError, match="slab_mm"):
        average_slabs(np.zeros((4, 2, 2)), slab_mm, slice_mm)
