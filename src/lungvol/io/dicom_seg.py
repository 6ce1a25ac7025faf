"""DICOM Segmentation (highdicom) of the lung and lesion label maps, on the source CT's grid."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import SimpleITK as sitk  # noqa: N813 (the library's conventional alias)
from pydicom.sr.codedict import codes

from lungvol import __version__
from lungvol.errors import InputError
from lungvol.io.series import frame_geometry, slice_normal
from lungvol.types import (
    LESION_GGO,
    LESION_SOLID,
    LUNG_LEFT,
    LUNG_RIGHT,
    CTVolume,
    LesionMask,
    LungMask,
    SourceInfo,
    check_same_grid,
)

logger = logging.getLogger(__name__)

_ANATOMY = codes.SCT.AnatomicalStructure  # SCT 91723000 (CID 7150)
_ABNORMAL = codes.SCT.MorphologicallyAbnormalStructure  # SCT 49755003 (CID 7150)
RIGHT_LUNG = hd.sr.CodedConcept("3341006", "SCT", "Right lung")
LEFT_LUNG = hd.sr.CodedConcept("44029006", "SCT", "Left lung")
GROUND_GLASS = hd.sr.CodedConcept("112120", "DCM", "Ground glass opacity")  # CID 6104
CONSOLIDATION = hd.sr.CodedConcept("95436008", "SCT", "Lung consolidation")

# (segment label, category, type, source label map, label value), segment numbers 1..4.
SEGMENTS = (
    ("Right lung", _ANATOMY, RIGHT_LUNG, "lungs", LUNG_RIGHT),
    ("Left lung", _ANATOMY, LEFT_LUNG, "lungs", LUNG_LEFT),
    ("Ground-glass opacity", _ABNORMAL, GROUND_GLASS, "lesions", LESION_GGO),
    ("Solid component", _ABNORMAL, CONSOLIDATION, "lesions", LESION_SOLID),
)


def _source_grid_masks(
    volume: CTVolume, labels: np.ndarray, shape: tuple[int, int],
    orientation: Sequence[float], expected: np.ndarray,
) -> np.ndarray:
    """Map a (z, y, x) LPS label map back onto the source images (slice order, rows, cols).

    read_ct only permutes/flips axes (DICOMOrient) for untilted, evenly spaced series, so the
    inverse is the reorientation to the source images' own ``orientation``
    (ImageOrientationPatient). The result is checked slice by slice against the source
    ImagePositionPatient (``expected``, one row per slice in slice order), which catches
    volumes that were resampled on reading (gantry tilt, uneven spacing).
    """
    rows, cols = shape
    image = sitk.GetImageFromArray(labels)
    image.SetSpacing([float(s) for s in reversed(volume.spacing_mm)])
    image.SetOrigin([float(v) for v in volume.origin_lps_mm])
    image.SetDirection([float(v) for v in np.asarray(volume.direction).ravel()])
    source_direction = _source_direction(orientation)
    if not np.allclose(volume.direction, source_direction, atol=1e-4):
        code = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(
            [float(v) for v in source_direction.ravel()]
        )
        image = sitk.DICOMOrient(image, code)
    on_grid = sitk.GetArrayFromImage(image)
    if on_grid.shape == (len(expected), rows, cols):
        k = np.arange(len(expected))[:, None]
        d = np.asarray(image.GetDirection(), float).reshape(3, 3)
        positions = np.asarray(image.GetOrigin()) + k * image.GetSpacing()[2] * d[:, 2]
        tolerance_mm = 0.1 * min(image.GetSpacing())
        if np.abs(positions - expected).max() <= tolerance_mm:
            return on_grid
    raise InputError(
        "the CT was resampled on reading (e.g. gantry tilt or uneven slice spacing), so the "
        "masks are not on the source images' grid; DICOM-SEG needs that grid, use NIfTI labels"
    )


def _source_direction(orientation: Sequence[float]) -> np.ndarray:
    o = [float(v) for v in orientation]
    return np.column_stack([o[:3], o[3:], slice_normal(o)])


def _source_images(
    source: SourceInfo,
) -> tuple[list[pydicom.Dataset], Sequence[float], np.ndarray]:
    """The source datasets (no pixels), the images' ImageOrientationPatient and each slice's
    ImagePositionPatient in slice order. An enhanced multi-frame source is one file whose
    frames (``source.frames``) must all belong to the volume."""
    if not source.frames:
        datasets = [pydicom.dcmread(f, stop_before_pixels=True) for f in source.files]
        expected = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
        return datasets, datasets[0].ImageOrientationPatient, expected
    files = list(dict.fromkeys(source.files))
    if len(files) != 1:
        raise InputError(
            f"the CT was read from {len(files)} multi-frame files; DICOM-SEG is written for a "
            "series in one multi-frame file or in single-frame files; use NIfTI labels"
        )
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    geometry = frame_geometry(ds)
    if sorted(source.frames) != list(range(len(geometry))):
        raise InputError(
            f"{files[0]} holds {len(geometry)} frames, {len(source.frames)} of them in the CT "
            "volume; DICOM-SEG must cover every source frame, use NIfTI labels"
        )
    expected = np.array([geometry[f][0] for f in source.frames], float)
    return [ds], geometry[source.frames[0]][1], expected


def write_dicom_seg(
    lungs: LungMask, lesions: LesionMask, volume: CTVolume, path: str | Path
) -> None:
    """Write lungs and lesions as one BINARY DICOM Segmentation referencing the source CT.

    Four segments: 1 right lung, 2 left lung (SCT anatomical structure), 3 ground-glass
    opacity (DCM 112120), 4 solid component (SCT 95436008 lung consolidation). Frame ``k`` of
    the label maps (z ascending) belongs to ``volume.source.files[k]`` (frame
    ``volume.source.frames[k]`` of an enhanced multi-frame file), re-read here; empty
    frames are omitted.

    Raises
    ------
    InputError
        The volume did not come from DICOM, its files are gone, or it was resampled on
        reading (no longer on the source images' grid).
    GeometryError
        Label maps that do not match the volume's shape.
    """
    if volume.source.kind != "dicom" or not volume.source.files:
        raise InputError(
            f"DICOM-SEG needs a DICOM input; this volume came from a {volume.source.kind} file, "
            "write NIfTI labels instead"
        )
    check_same_grid(lungs.labels, volume, name="lung mask")
    check_same_grid(lesions.labels, volume, name="lesion mask")
    missing = [f for f in volume.source.files if not Path(f).is_file()]
    if missing:
        raise InputError(
            f"{len(missing)} source DICOM file(s) are gone (first: {missing[0]}); "
            "DICOM-SEG must reference the files the CT was read from"
        )
    datasets, orientation, expected = _source_images(volume.source)
    shape = (int(datasets[0].Rows), int(datasets[0].Columns))
    maps = {"lungs": np.asarray(lungs.labels), "lesions": np.asarray(lesions.labels)}
    frames = np.stack(
        [
            _source_grid_masks(
                volume, (maps[name] == value).astype(np.uint8), shape, orientation, expected
            )
            for _, _, _, name, value in SEGMENTS
        ],
        axis=-1,
    )
    if volume.source.frames:  # slice order -> the multi-frame file's frame order
        in_file = np.empty_like(frames)
        in_file[list(volume.source.frames)] = frames
        frames = in_file
    algorithm = hd.AlgorithmIdentificationSequence(
        name="lungvol", family=codes.DCM.AnalyticalAlgorithm, version=__version__
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=label,
            segmented_property_category=category,
            segmented_property_type=kind,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for number, (label, category, kind, _, _) in enumerate(SEGMENTS, start=1)
    ]
    seg = hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=900,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="lungvol",
        manufacturer_model_name="lungvol",
        software_versions=__version__,
        device_serial_number="0",
        series_description="lungvol lungs and lesions",
        omit_empty_frames=True,
    )
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(out)
    logger.debug("wrote DICOM-SEG with %d frames to %s", int(seg.NumberOfFrames), out)
