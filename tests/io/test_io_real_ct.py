"""Real chest CT from ../shared/data/real-ct (skipped when absent): geometry as in SOURCES.md."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from lungvol.config import IOConfig
from lungvol.errors import InputError
from lungvol.io import list_series, read_ct

pytestmark = pytest.mark.slow


def test_full_chest_dicom_series_matches_sources_md(real_ct):
    vol = read_ct(real_ct / "chest-ct-full-dicom" / "dicom")
    assert vol.shape == (141, 512, 512)
    assert vol.spacing_mm == pytest.approx((2.0, 0.9765625, 0.9765625))
    assert vol.hu.dtype == np.int16
    assert int(vol.hu.min()) == -1024
    assert int(vol.hu.max()) == 2976
    assert float(np.median(vol.hu)) == pytest.approx(-949, abs=2)
    np.testing.assert_allclose(vol.direction, np.eye(3))
    assert vol.source.manufacturer == "Philips"
    assert vol.source.warnings == ()
    assert len(vol.source.files) == 141
    # Files are in slice order, inferior first, and the origin is the first file's position.
    z = [
        float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2])
        for f in vol.source.files
    ]
    assert z == sorted(z)
    assert vol.origin_lps_mm[2] == pytest.approx(z[0])
    assert np.diff(z) == pytest.approx(2.0)


def test_lidc_two_slices_without_file_meta(real_ct):
    folder = real_ct / "lidc-two-slices-dicom"
    with pytest.raises(InputError, match=r"only 2 slice\(s\); volumetry needs >= 16"):
        read_ct(folder)
    # With the minimum lowered, the header-only (no file meta) files load, read with force.
    vol = read_ct(folder, config=IOConfig(min_slices=2))
    assert vol.shape == (2, 512, 512)
    assert vol.spacing_mm[0] == pytest.approx(1.0)
    assert vol.spacing_mm[1] == pytest.approx(0.625)
    assert vol.source.modality == "CT"
    np.testing.assert_array_equal(vol.hu[0], vol.hu[1])  # SOURCES.md: identical pixel data
    assert int(vol.hu.min()) == -2048


@pytest.mark.parametrize(
    ("name", "shape", "spacing"),
    [
        ("lung1_image.nrrd", (48, 512, 512), (5.0, 0.5703, 0.5703)),
        ("lung2_image.nrrd", (61, 512, 512), (5.0, 0.627, 0.627)),
    ],
)
def test_nrrd_tumour_cases_load(real_ct, name, shape, spacing):
    vol = read_ct(real_ct / "chest-ct-tumour-nrrd" / name)
    assert vol.shape == shape
    assert vol.spacing_mm == pytest.approx(spacing, abs=1e-3)
    assert vol.hu.dtype == np.int16
    assert int(vol.hu.min()) == -1024
    assert vol.source.kind == "nrrd"


def test_nsclc_dicom_equals_its_nifti_and_ignores_the_rtstruct(real_ct):
    root = real_ct / "nsclc-crop-dicom-rtstruct"
    dicom = read_ct(root / "dicom")
    nifti = read_ct(root / "nifti" / "image" / "phantom.nii.gz")
    assert dicom.shape == (60, 201, 204)
    np.testing.assert_array_equal(dicom.hu, nifti.hu)
    np.testing.assert_allclose(dicom.origin_lps_mm, nifti.origin_lps_mm, atol=1e-3)
    assert "RTSTRUCT" in dicom.source.selection_reason
    assert [s.is_usable for s in list_series(root / "dicom")] == [True, False]


def test_abdomen_nifti_int32_in_ras_loads_as_int16_lps(real_ct):
    vol = read_ct(real_ct / "abdomen-lung-bases-nifti" / "example_ct.nii.gz")
    assert vol.shape == (112, 101, 122)
    assert vol.spacing_mm == pytest.approx((3.0, 3.0, 3.0))
    assert vol.hu.dtype == np.int16
    assert (int(vol.hu.min()), int(vol.hu.max())) == (-1207, 3382)
    np.testing.assert_allclose(vol.direction, np.eye(3), atol=1e-6)
