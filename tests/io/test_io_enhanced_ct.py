"""Enhanced multi-frame CT: read frame by frame from the functional groups, checked like a
classic series, and referenced frame by frame in DICOM-SEG.

Fixtures are Legacy Converted Enhanced CT objects (highdicom) made from a classic series
written by lungvol; the reading path (shared/per-frame functional groups) is the one of
Enhanced CT Image Storage too.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
import pytest
from io_factory import chest_like
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

from lungvol.errors import InputError, NotCTError
from lungvol.io import list_series, read_ct, write_dicom_series
from lungvol.io.dicom_seg import write_dicom_seg
from lungvol.types import LesionMask, LungMask

SPACING_MM = (2.0, 0.8, 0.8)


def _classic(tmp_path, hu=None) -> list[pydicom.Dataset]:
    files = write_dicom_series(
        chest_like() if hu is None else hu, tmp_path / "classic", spacing_mm=SPACING_MM
    )
    return [pydicom.dcmread(f) for f in files]


def _enhanced(datasets, path, transfer_syntax=ExplicitVRLittleEndian):
    lce = hd.legacy.LegacyConvertedEnhancedCTImage(
        legacy_datasets=datasets, series_instance_uid=hd.UID(), series_number=7,
        sop_instance_uid=hd.UID(), instance_number=1, transfer_syntax_uid=transfer_syntax,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    lce.save_as(path)
    return path


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, RLELossless])
def test_enhanced_ct_reads_like_its_classic_series(tmp_path, syntax):
    path = _enhanced(_classic(tmp_path), tmp_path / "e" / "ct.dcm", syntax)
    classic = read_ct(tmp_path / "classic")
    for target in (path, path.parent):  # the file itself, or its folder
        vol = read_ct(target)
        np.testing.assert_array_equal(vol.hu, classic.hu)
        assert vol.hu.dtype == np.int16
        assert vol.spacing_mm == pytest.approx(classic.spacing_mm)
        assert vol.origin_lps_mm == pytest.approx(classic.origin_lps_mm)
        np.testing.assert_allclose(vol.direction, classic.direction)
        assert vol.source.files == (str(path),) * vol.shape[0]
        assert sorted(vol.source.frames) == list(range(vol.shape[0]))
        assert vol.source.to_dict()["n_files"] == 1
        assert vol.source.to_dict()["n_frames"] == vol.shape[0]


def test_enhanced_frames_are_ordered_by_position_not_by_frame_number(tmp_path):
    datasets = _classic(tmp_path)
    shuffled = [datasets[i] for i in np.random.default_rng(0).permutation(len(datasets))]
    vol = read_ct(_enhanced(shuffled, tmp_path / "e.dcm"))
    np.testing.assert_array_equal(vol.hu, read_ct(tmp_path / "classic").hu)


def test_enhanced_ct_with_a_missing_frame_is_refused(tmp_path):
    datasets = _classic(tmp_path)
    path = _enhanced(datasets[:9] + datasets[10:], tmp_path / "e.dcm")
    with pytest.raises(InputError, match="slice\\(s\\) missing"):
        read_ct(path)


def test_enhanced_ct_with_two_stacks_at_the_same_positions_is_not_usable(tmp_path):
    datasets = _classic(tmp_path)
    again = []
    for ds in datasets:
        twin = pydicom.dcmread(ds.filename)
        twin.SOPInstanceUID = hd.UID()
        again.append(twin)
    path = _enhanced(datasets + again, tmp_path / "e.dcm")
    (candidate,) = list_series(path)
    assert not candidate.is_usable
    assert "occur twice" in candidate.reason


def test_enhanced_localizer_is_not_a_ct_series(tmp_path):
    path = _enhanced(_classic(tmp_path), tmp_path / "e.dcm")
    ds = pydicom.dcmread(path)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER", "NONE"]
    ds.SharedFunctionalGroupsSequence[0].CTImageFrameTypeSequence[0].FrameType = [
        "ORIGINAL", "PRIMARY", "LOCALIZER", "NONE"]
    ds.save_as(path)
    with pytest.raises(NotCTError, match="localizer"):
        read_ct(path)


def test_truncated_enhanced_ct_is_refused_with_the_file_named(tmp_path):
    path = _enhanced(_classic(tmp_path), tmp_path / "e.dcm")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 5000])
    with pytest.raises(InputError, match="e.dcm.*truncated"):
        read_ct(path)


def test_dicom_seg_of_an_enhanced_source_references_its_frames(tmp_path):
    datasets = _classic(tmp_path)
    shuffled = [datasets[i] for i in np.random.default_rng(1).permutation(len(datasets))]
    vol = read_ct(_enhanced(shuffled, tmp_path / "e.dcm"))
    lungs = np.zeros(vol.shape, np.uint8)
    lungs[2:12, 6:20, 3:13] = 1
    lungs[3:14, 6:22, 18:29] = 2
    lesions = np.zeros(vol.shape, np.uint8)
    lesions[5:8, 9:12, 5:9] = 1
    lesions[6, 10, 6] = 2
    write_dicom_seg(LungMask(lungs), LesionMask(lesions), vol, tmp_path / "seg.dcm")
    seg = hd.seg.segread(tmp_path / "seg.dcm")
    source = pydicom.dcmread(vol.source.files[0], stop_before_pixels=True)
    (ref,) = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    assert ref.ReferencedSOPInstanceUID == source.SOPInstanceUID
    # Source frame numbers (1-based) of the volume's slices, in slice order.
    numbers = [f + 1 for f in vol.source.frames]
    for segment, mask in ((1, lungs == 1), (2, lungs == 2), (3, lesions == 1), (4, lesions == 2)):
        pixels = seg.get_pixels_by_source_frame(
            source.SOPInstanceUID, numbers, segment_numbers=[segment],
            assert_missing_frames_are_empty=True,
        )[..., 0]
        np.testing.assert_array_equal(pixels, mask)
