"""read_ct on NIfTI / NRRD / MetaImage files: LPS reorientation, dtype, validation."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813
from io_factory import chest_like

from lungvol.errors import InputError, NotHUError
from lungvol.io import read_ct, write_volume

SPACING = (2.5, 0.9, 0.8)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_volume_files_load_with_geometry(tmp_path, chest, suffix):
    path = write_volume(
        chest, tmp_path / f"ct{suffix}", spacing_mm=SPACING, origin_lps_mm=(-5.0, 6.0, -70.0)
    )
    vol = read_ct(path)
    np.testing.assert_array_equal(vol.hu, chest)
    assert vol.hu.dtype == np.int16
    assert vol.spacing_mm == pytest.approx(SPACING)
    assert vol.origin_lps_mm == pytest.approx((-5.0, 6.0, -70.0))
    assert (
        vol.source.kind
        == {".nii.gz": "nifti", ".nii": "nifti", ".nrrd": "nrrd", ".mha": "mha"}[suffix]
    )
    assert vol.source.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_nifti_in_ras_and_lps_give_the_same_array(tmp_path, chest):
    nz, ny, nx = chest.shape
    lps = write_volume(chest, tmp_path / "lps.nii.gz", spacing_mm=SPACING)
    # The same scan stored RAS-style (as nibabel/FSL write it): x and y run the other way.
    far_corner = ((nx - 1) * SPACING[2], (ny - 1) * SPACING[1], 0.0)
    ras = write_volume(
        chest[:, ::-1, ::-1],
        tmp_path / "ras.nii.gz",
        spacing_mm=SPACING,
        origin_lps_mm=far_corner,
        direction=np.diag([-1.0, -1.0, 1.0]),
    )
    assert sitk.ReadImage(str(ras)).GetDirection()[0] == -1.0
    a, b = read_ct(lps), read_ct(ras)
    np.testing.assert_array_equal(a.hu, b.hu)
    assert a.origin_lps_mm == pytest.approx(b.origin_lps_mm, abs=1e-4)  # float32 in NIfTI
    np.testing.assert_allclose(b.direction, np.eye(3))


def test_int32_volume_becomes_int16_and_float_stays_float(tmp_path, chest):
    vol = read_ct(write_volume(chest.astype(np.int32), tmp_path / "a.nii.gz", spacing_mm=SPACING))
    assert vol.hu.dtype == np.int16
    vol = read_ct(write_volume(chest + np.float32(0.5), tmp_path / "b.nii.gz", spacing_mm=SPACING))
    assert vol.hu.dtype == np.float32


def test_volume_of_stored_values_is_not_hu(tmp_path):
    arr = np.random.default_rng(0).integers(0, 4096, (20, 16, 16)).astype(np.int16)
    with pytest.raises(NotHUError, match="lowest value is 0"):
        read_ct(write_volume(arr, tmp_path / "raw.nii.gz", spacing_mm=SPACING))


def test_volume_with_too_few_slices(tmp_path):
    with pytest.raises(InputError, match=r"has 3 slice\(s\)"):
        read_ct(write_volume(chest_like((3, 16, 16)), tmp_path / "t.nrrd", spacing_mm=SPACING))


def test_four_d_volume_is_refused(tmp_path):
    image = sitk.GetImageFromArray(np.zeros((2, 20, 8, 8), np.int16) - 1000, isVector=False)
    sitk.WriteImage(image, str(tmp_path / "4d.nii.gz"))
    with pytest.raises(InputError, match="4-D"):
        read_ct(tmp_path / "4d.nii.gz")


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd", ".mha"])
def test_truncated_volume_file_is_refused_not_zero_filled(tmp_path, chest, suffix):
    path = write_volume(chest, tmp_path / f"ct{suffix}", spacing_mm=SPACING)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(InputError, match=f"ct{suffix}"):
        read_ct(path)
