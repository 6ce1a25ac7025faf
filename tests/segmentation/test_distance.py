"""The distance transform is scipy's, value for value."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from lungvol.segmentation import distance
from lungvol.segmentation.distance import distance_transform_edt


def _random_mask(shape: tuple[int, ...], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    smooth = ndimage.gaussian_filter(rng.standard_normal(shape), 2.0)
    return smooth > 0.0


@pytest.mark.parametrize(
    ("shape", "sampling"),
    [
        ((23, 31, 29), (1.6, 1.4, 1.4)),
        ((23, 31, 29), None),
        ((23, 31, 29), 0.7),
        ((40, 37), (0.98, 0.98)),
        ((9, 11, 13), (3.0, 2.8, 2.8)),
        ((101,), 0.5),
    ],
)
def test_matches_scipy_bit_for_bit(shape, sampling, monkeypatch):
    # Small slabs, so that the slab loop runs many times with a ragged last slab.
    monkeypatch.setattr(distance, "_SLAB_VOXELS", 500)
    mask = _random_mask(shape, seed=len(shape))
    want_d, want_ft = ndimage.distance_transform_edt(mask, sampling, return_indices=True)
    got_d, got_ft = distance_transform_edt(mask, sampling, return_indices=True)
    assert got_d.dtype == np.float64
    assert got_ft.dtype == np.int32
    assert np.array_equal(got_d, want_d)
    assert np.array_equal(got_ft, want_ft)
    assert np.array_equal(distance_transform_edt(mask, sampling=sampling), want_d)


def test_known_distances():
    mask = np.ones((1, 1, 7), bool)
    mask[0, 0, 0] = False
    d = distance_transform_edt(mask, (1.0, 1.0, 0.5))
    assert d[0, 0].tolist() == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]


def test_all_foreground_and_all_background_as_scipy():
    for mask in (np.ones((4, 5, 6), bool), np.zeros((4, 5, 6), bool)):
        assert np.array_equal(
            distance_transform_edt(mask, (2.0, 1.0, 1.0)),
            ndimage.distance_transform_edt(mask, (2.0, 1.0, 1.0)),
        )
