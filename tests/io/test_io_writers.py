"""Writers: volume files keep geometry; DICOM series store HU losslessly in every syntax."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk  # noqa: N813

from lungvol.errors import GeometryError, InputError
from lungvol.io import write_dicom_series, write_label_nifti, write_volume
from lungvol.io.writers import TRANSFER_SYNTAXES
from lungvol.types import CTVolume, SourceInfo


def _volume(shape=(5, 6, 7)) -> CTVolume:
    rng = np.random.default_rng(3)
    return CTVolume(
        hu=rng.integers(-1024, 500, shape).astype(np.int16),
        spacing_mm=(2.5, 0.8, 0.7),
        origin_lps_mm=(-10.0, 20.0, 30.0),
        direction=np.eye(3),
        source=SourceInfo(path="x", kind="nifti", sha256="0"),
    )


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_write_volume_keeps_zyx_spacing_and_origin(tmp_path, suffix):
    arr = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)
    path = write_volume(
        arr, tmp_path / f"v{suffix}", spacing_mm=(3.0, 2.0, 1.0), origin_lps_mm=(1.0, 2.0, 3.0)
    )
    img = sitk.ReadImage(str(path))
    assert img.GetSpacing() == pytest.approx((1.0, 2.0, 3.0))  # sitk order is (x, y, z)
    assert img.GetOrigin() == pytest.approx((1.0, 2.0, 3.0))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), arr)


def test_write_volume_rejects_unknown_suffix(tmp_path):
    with pytest.raises(InputError, match="unsupported suffix"):
        write_volume(np.zeros((2, 2, 2)), tmp_path / "v.png", spacing_mm=(1, 1, 1))


def test_write_label_nifti_uses_ct_geometry_and_uint8(tmp_path):
    vol = _volume()
    labels = (vol.hu > 0).astype(np.int64) * 2
    path = write_label_nifti(labels, vol, tmp_path / "lab.nii.gz")
    img = sitk.ReadImage(str(path))
    assert img.GetPixelID() == sitk.sitkUInt8
    assert img.GetSpacing() == pytest.approx((0.7, 0.8, 2.5))
    assert img.GetOrigin() == pytest.approx(vol.origin_lps_mm)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), labels)


def test_write_label_nifti_refuses_other_grid(tmp_path):
    with pytest.raises(GeometryError, match="shape"):
        write_label_nifti(np.zeros((1, 2, 3), np.uint8), _volume(), tmp_path / "l.nii.gz")


@pytest.mark.parametrize("syntax", sorted(TRANSFER_SYNTAXES))
def test_dicom_series_round_trips_hu_in_every_syntax(tmp_path, syntax):
    vol = _volume((3, 32, 40))
    files = write_dicom_series(
        vol.hu,
        tmp_path,
        spacing_mm=vol.spacing_mm,
        origin_lps_mm=vol.origin_lps_mm,
        transfer_syntax=syntax,
    )
    assert len(files) == 3
    for k, f in enumerate(files):
        ds = pydicom.dcmread(f)
        assert ds.file_meta.TransferSyntaxUID == TRANSFER_SYNTAXES[syntax]
        assert ds.SOPClassUID == pydicom.uid.CTImageStorage
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_array_equal(hu, vol.hu[k])
        assert [float(v) for v in ds.ImagePositionPatient] == pytest.approx(
            [-10.0, 20.0, 30.0 + 2.5 * k]
        )
        assert [float(v) for v in ds.PixelSpacing] == pytest.approx([0.8, 0.7])


def test_dicom_series_stores_round_hu_minus_intercept_over_slope(tmp_path):
    hu = np.full((1, 4, 4), 100.0)
    hu[0, 0, 0] = -1000.0
    f = write_dicom_series(
        hu, tmp_path, spacing_mm=(1, 1, 1), rescale_slope=0.5, rescale_intercept=-1000.0
    )[0]
    ds = pydicom.dcmread(f)
    assert ds.PixelRepresentation == 0
    assert ds.pixel_array[0, 0] == 0
    assert ds.pixel_array[1, 1] == 2200  # (100 + 1000) / 0.5


def test_dicom_series_uses_int16_when_stored_values_are_negative(tmp_path):
    hu = np.full((1, 2, 2), -2048.0)
    f = write_dicom_series(hu, tmp_path, spacing_mm=(1, 1, 1), rescale_intercept=0.0)[0]
    ds = pydicom.dcmread(f)
    assert ds.PixelRepresentation == 1
    assert int(ds.pixel_array.min()) == -2048


def test_dicom_series_options_reach_the_header(tmp_path):
    files = write_dicom_series(
        np.zeros((4, 2, 2)),
        tmp_path,
        spacing_mm=(2, 1, 1),
        drop_slices=[2],
        modality="MR",
        image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
        gantry_tilt_deg=20.0,
        series_uid="1.2.3",
        study_uid="1.2.4",
        series_description="scout",
        patient_id="P01",
    )
    assert len(files) == 3
    ds = pydicom.dcmread(files[2])
    assert ds.InstanceNumber == 4
    assert ds.Modality == "MR"
    assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    assert ds.SeriesInstanceUID == "1.2.3"
    assert ds.StudyInstanceUID == "1.2.4"
    assert float(ds.GantryDetectorTilt) == 20.0
    assert float(ds.ImageOrientationPatient[4]) == pytest.approx(np.cos(np.radians(20)))
    assert str(ds.PatientID) == "P01"


def test_dicom_series_rejects_values_that_do_not_fit_16_bits(tmp_path):
    with pytest.raises(InputError, match="do not fit 16 bits"):
        write_dicom_series(np.full((1, 2, 2), 1e6), tmp_path, spacing_mm=(1, 1, 1))
