"""Block grids anchored to patient coordinates: the same scan cropped differently is cut
into the same blocks, so it gives the same masks."""

from __future__ import annotations

import numpy as np
import pytest
from seg_synthetic import make_chest

from lungvol.config import LungvolConfig
from lungvol.segmentation import segment_lesions, segment_lungs
from lungvol.segmentation.grid import CoarseGrid, patient_index, patient_phase
from lungvol.types import CTVolume, SourceInfo

FACTORS = (2, 3, 2)
PHASE = (1, 2, 1)


def _padded_blocks(full: np.ndarray, grid: CoarseGrid) -> np.ndarray:
    """``full`` edge-padded by the phase before and to whole blocks after, as blocks."""
    pad = [
        (p, c * f - n - p)
        for p, c, f, n in zip(grid.phase, grid.shape, grid.factors, full.shape, strict=True)
    ]
    padded = np.pad(full.astype(np.float64), pad, mode="edge")
    (cz, cy, cx), (fz, fy, fx) = grid.shape, grid.factors
    return padded.reshape(cz, fz, cy, fy, cx, fx)


def test_phase_pads_the_first_blocks():
    full = np.random.default_rng(1).integers(-1024, 600, (7, 11, 13)).astype(np.int16)
    grid = CoarseGrid(full.shape, FACTORS, (1.0, 0.5, 0.7), PHASE)  # type: ignore[arg-type]
    assert grid.shape == (4, 5, 7)  # ceil((n + phase) / factor)
    blocks = _padded_blocks(full, grid)
    np.testing.assert_allclose(grid.downsample_mean(full), blocks.mean(axis=(1, 3, 5)), atol=1e-3)
    np.testing.assert_array_equal(grid.downsample_max(full), blocks.max(axis=(1, 3, 5)))
    # CT voxel 0 lies in block 0 at offset ``phase``: voxels [0, f - phase) share it.
    zi, yi, xi = grid.index_maps()
    assert list(yi[:5]) == [0, 1, 1, 1, 2]
    coarse = np.arange(np.prod(grid.shape)).reshape(grid.shape)
    up = grid.upsample_nearest(coarse)
    assert up.shape == full.shape
    np.testing.assert_array_equal(up, coarse[np.ix_(zi, yi, xi)])
    idx = np.nonzero(np.ones(full.shape, bool))
    np.testing.assert_array_equal(coarse[grid.coarse_index(idx)].reshape(full.shape), up)


def test_phase_outside_the_block_is_refused():
    with pytest.raises(ValueError, match="phase"):
        CoarseGrid((4, 4, 4), (2, 2, 2), (1.0, 1.0, 1.0), (0, 2, 0))


def test_patient_index_follows_a_crop():
    spacing = (2.0, 0.8, 0.8)
    origin = (-200.4, -180.0, -312.0)  # (x, y, z) mm; x is half a voxel off the lattice
    first = patient_index(origin, np.eye(3), spacing)
    assert first == (-156, -225, -250)
    # Cropping (1, 3, 5) voxels moves the origin by as many voxels: same lattice, +crop.
    cropped = (origin[0] + 5 * 0.8, origin[1] + 3 * 0.8, origin[2] + 1 * 2.0)
    assert patient_index(cropped, np.eye(3), spacing) == (first[0] + 1, first[1] + 3, first[2] + 5)
    assert patient_phase((-156, -225, -250), (1, 3, 2)) == (0, 0, 0)
    assert patient_phase((-155, -224, -249), (1, 3, 2)) == (0, 1, 1)


def _volume(hu: np.ndarray, crop: tuple[int, int, int], *, move_origin: bool) -> CTVolume:
    origin = (float(crop[2]), float(crop[1]), float(crop[0])) if move_origin else (0.0, 0.0, 0.0)
    return CTVolume(
        hu=np.ascontiguousarray(hu[tuple(slice(c, None) for c in crop)]),
        spacing_mm=(1.0, 1.0, 1.0), origin_lps_mm=origin, direction=np.eye(3),
        source=SourceInfo(path="synthetic", kind="nifti", sha256=""),
    )


def test_a_cropped_scan_gives_the_same_masks():
    # The synthetic chest read at 1 mm voxels: blocks of 2 CT voxels on every axis in both
    # stages, so a one-voxel crop changes every block boundary unless they are anchored.
    hu = make_chest().volume.hu
    cfg = LungvolConfig()

    def masks(volume: CTVolume) -> tuple[np.ndarray, np.ndarray]:
        lungs = segment_lungs(volume, cfg.lungs)
        assert lungs.info["block_factors"] == [2, 2, 2]
        return lungs.labels, segment_lesions(volume, lungs, cfg.lesions).labels

    lungs0, lesions0 = masks(_volume(hu, (0, 0, 0), move_origin=True))
    assert np.count_nonzero(lesions0 == 1) > 500
    assert np.count_nonzero(lesions0 == 2) > 500
    crop = (1, 1, 1)
    part = tuple(slice(c, None) for c in crop)
    lungs1, lesions1 = masks(_volume(hu, crop, move_origin=True))
    np.testing.assert_array_equal(lungs1, lungs0[part])
    np.testing.assert_array_equal(lesions1, lesions0[part])
    # Control: the same crop with the origin left behind (blocks re-cut) changes the masks,
    # so the equality above is the anchoring's doing.
    lungs2, lesions2 = masks(_volume(hu, crop, move_origin=False))
    assert not np.array_equal(lungs2, lungs0[part])
    assert not np.array_equal(lesions2, lesions0[part])
