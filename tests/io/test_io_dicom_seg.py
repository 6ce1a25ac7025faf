"""write_dicom_seg: a BINARY highdicom Segmentation that round-trips onto the source frames."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
import pytest
from io_factory import chest_like

from lungvol.errors import GeometryError, InputError
from lungvol.io import read_ct, write_dicom_series, write_volume
from lungvol.io.dicom_seg import write_dicom_seg
from lungvol.types import LesionMask, LungMask


def _masks(shape):
    lungs = np.zeros(shape, np.uint8)
    lungs[2:12, 6:20, 3:13] = 1
    lungs[3:14, 6:22, 18:29] = 2
    lesions = np.zeros(shape, np.uint8)
    lesions[5:8, 9:12, 5:9] = 1
    lesions[6, 10, 6] = 2
    return lungs, lesions


def _source_frames(seg, volume, segment):
    """Segment pixels in the order of volume.source.files (missing frames are empty)."""
    uids = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in volume.source.files]
    arr = seg.get_pixels_by_source_instance(uids, segment_numbers=[segment])
    return arr[..., 0]


def test_dicom_seg_round_trips_segments_and_references(tmp_path):
    write_dicom_series(chest_like(), tmp_path / "ct", spacing_mm=(2.0, 0.8, 0.8))
    vol = read_ct(tmp_path / "ct")
    lungs, lesions = _masks(vol.shape)
    write_dicom_seg(LungMask(lungs), LesionMask(lesions), vol, tmp_path / "seg.dcm")
    seg = hd.seg.segread(tmp_path / "seg.dcm")
    assert seg.number_of_segments == 4
    assert seg.SegmentationType == "BINARY"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == vol.source.series_uid
    assert seg.FrameOfReferenceUID == vol.source.frame_of_reference_uid
    labels = [s.SegmentLabel for s in seg.SegmentSequence]
    assert labels == ["Right lung", "Left lung", "Ground-glass opacity", "Solid component"]
    np.testing.assert_array_equal(_source_frames(seg, vol, 1), lungs == 1)
    np.testing.assert_array_equal(_source_frames(seg, vol, 2), lungs == 2)
    np.testing.assert_array_equal(_source_frames(seg, vol, 3), lesions == 1)
    np.testing.assert_array_equal(_source_frames(seg, vol, 4), lesions == 2)
    # Empty frames are omitted: lungs span slices 2..13 only.
    assert int(seg.NumberOfFrames) < 4 * vol.shape[0]


def test_dicom_seg_maps_frames_back_through_a_flipped_orientation(tmp_path):
    hu = chest_like()
    files = write_dicom_series(hu, tmp_path / "ct", spacing_mm=(2.0, 1.0, 1.0))
    for f in files:
        ds = pydicom.dcmread(f)
        ds.ImageOrientationPatient = [-1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [31.0, 0.0, float(ds.ImagePositionPatient[2])]
        ds.save_as(f)
    vol = read_ct(tmp_path / "ct")
    lungs, lesions = _masks(vol.shape)
    write_dicom_seg(LungMask(lungs), LesionMask(lesions), vol, tmp_path / "seg.dcm")
    seg = hd.seg.segread(tmp_path / "seg.dcm")
    # Source frames run right-to-left in x: the volume was flipped on reading.
    np.testing.assert_array_equal(_source_frames(seg, vol, 1), (lungs == 1)[:, :, ::-1])


def test_dicom_seg_needs_a_dicom_input(tmp_path):
    path = write_volume(chest_like(), tmp_path / "ct.nii.gz", spacing_mm=(2, 1, 1))
    vol = read_ct(path)
    lungs, lesions = _masks(vol.shape)
    with pytest.raises(InputError, match="DICOM-SEG needs a DICOM input"):
        write_dicom_seg(LungMask(lungs), LesionMask(lesions), vol, tmp_path / "seg.dcm")


def test_dicom_seg_refuses_masks_of_another_shape(tmp_path):
    write_dicom_series(chest_like(), tmp_path / "ct", spacing_mm=(2.0, 1.0, 1.0))
    vol = read_ct(tmp_path / "ct")
    lungs, lesions = _masks(vol.shape)
    with pytest.raises(GeometryError, match="lesion mask has shape"):
        write_dicom_seg(LungMask(lungs), LesionMask(lesions[:-1]), vol, tmp_path / "seg.dcm")


def test_dicom_seg_refuses_a_resampled_volume(tmp_path):
    hu = chest_like()
    files = write_dicom_series(hu, tmp_path / "ct", spacing_mm=(2.0, 1.0, 1.0))
    for k, f in enumerate(files):  # uneven gaps -> resampled on reading
        ds = pydicom.dcmread(f)
        ds.ImagePositionPatient[2] = 2.0 * k + (0.2 if k % 3 == 1 else 0.0)
        ds.save_as(f)
    vol = read_ct(tmp_path / "ct")
    lungs, lesions = _masks(vol.shape)
    with pytest.raises(InputError, match="resampled on reading"):
        write_dicom_seg(LungMask(lungs), LesionMask(lesions), vol, tmp_path / "seg.dcm")
