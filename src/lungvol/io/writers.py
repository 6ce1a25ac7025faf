"""Writers: volume files (NIfTI/NRRD/MHA) and synthetic CT DICOM series.

``write_dicom_series`` is used by the phantom and as the factory for (deliberately bad) DICOM
test fixtures, so it exposes compression, gantry tilt, missing slices, modality and image type.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk  # noqa: N813 (the library's conventional alias)
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from lungvol.errors import InputError
from lungvol.io._jpeg_lossless import encode_jpeg_lossless_sv1
from lungvol.types import CTVolume, check_same_grid

logger = logging.getLogger(__name__)

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")

TRANSFER_SYNTAXES = {
    "explicit_vr_little_endian": ExplicitVRLittleEndian,
    "jpeg_lossless": JPEGLosslessSV1,  # process 14 SV1, lungvol's own encoder
    "jpeg_ls_lossless": JPEGLSLossless,  # pyjpegls
    "jpeg2000_lossless": JPEG2000Lossless,  # pylibjpeg-openjpeg
    "rle_lossless": RLELossless,  # pylibjpeg-rle or pydicom's native encoder
}
_J2K_MIN_SIDE = 32  # openjpeg's fixed 6 DWT resolutions need 2**5 pixels per side
_PYDICOM_ENCODED = {"jpeg_ls_lossless", "jpeg2000_lossless", "rle_lossless"}


def volume_suffix(path: str | Path) -> str | None:
    """Return the recognised volume suffix of ``path`` (e.g. ``".nii.gz"``) or None."""
    name = str(path).lower()
    for suffix in sorted(VOLUME_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    return None


def write_volume(
    array: np.ndarray,
    path: str | Path,
    *,
    spacing_mm: Sequence[float],
    origin_lps_mm: Sequence[float] = (0.0, 0.0, 0.0),
    direction: np.ndarray | None = None,
) -> Path:
    """Write a 3-D array as NIfTI, NRRD or MetaImage, chosen by the file suffix.

    Parameters
    ----------
    array : ndarray, shape (Z, Y, X)
        Voxel values; bool is written as uint8.
    path : str or Path
        Output file ending in .nii, .nii.gz, .nrrd, .nhdr, .mha or .mhd.
    spacing_mm : tuple of 3 float, (z, y, x) order
    origin_lps_mm : tuple of 3 float
        LPS world position (x, y, z) of voxel [0, 0, 0], in mm.
    direction : ndarray, shape (3, 3), optional
        ITK direction matrix (columns = index axes x, y, z in LPS); identity when omitted.

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    InputError
        Unsupported suffix, or an array that is not 3-D.
    """
    out = Path(path)
    if volume_suffix(out) is None:
        raise InputError(
            f"cannot write {out.name}: unsupported suffix; use one of {', '.join(VOLUME_SUFFIXES)}"
        )
    arr = np.asarray(array)
    if arr.ndim != 3:
        raise InputError(f"write_volume needs a 3-D (z, y, x) array, got shape {arr.shape}")
    if len(spacing_mm) != 3 or not all(float(s) > 0 for s in spacing_mm):
        raise InputError(f"spacing_mm must be 3 positive values (z, y, x), got {spacing_mm}")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    image = sitk.GetImageFromArray(np.ascontiguousarray(arr))
    image.SetSpacing([float(s) for s in reversed(tuple(spacing_mm))])
    image.SetOrigin([float(v) for v in origin_lps_mm])
    d = np.eye(3) if direction is None else np.asarray(direction, dtype=float)
    image.SetDirection([float(v) for v in d.ravel()])
    out.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(out), useCompression=True)
    return out


def write_label_nifti(labels: np.ndarray, volume: CTVolume, path: str | Path) -> Path:
    """Write a uint8 label map on the CT's grid (same spacing, origin and direction).

    Raises
    ------
    GeometryError
        ``labels`` does not have the volume's shape.
    InputError
        Label values outside 0..255 or an unsupported suffix.
    """
    check_same_grid(labels, volume, name="label map")
    lab = np.asarray(labels)
    if lab.dtype != np.uint8:
        if lab.size and (lab.min() < 0 or lab.max() > 255):
            raise InputError(
                f"label values span {lab.min()}..{lab.max()}; a uint8 label map needs 0..255"
            )
        lab = lab.astype(np.uint8)
    return write_volume(
        lab,
        path,
        spacing_mm=volume.spacing_mm,
        origin_lps_mm=volume.origin_lps_mm,
        direction=volume.direction,
    )


def _to_stored(hu_slice: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """round((hu - intercept) / slope) for one slice, in float64 (exact for 16-bit ranges)."""
    return np.rint((hu_slice.astype(np.float64) - intercept) / slope)


def _stored_format(hu: np.ndarray, slope: float, intercept: float) -> tuple[type, int, int]:
    """(numpy dtype, PixelRepresentation, BitsStored) for the stored values of ``hu``.

    The range comes from the extreme HU values only, so no full-volume float copy is made.
    uint16 when no stored value is negative, int16 otherwise; 12 bits stored when the values
    allow it (as CT scanners write), 16 otherwise.
    """
    if hu.size == 0:
        return np.uint16, 0, 12
    ends = _to_stored(np.array([hu.min(), hu.max()]), slope, intercept)
    lo, hi = float(ends.min()), float(ends.max())
    if lo >= 0 and hi <= np.iinfo(np.uint16).max:
        return np.uint16, 0, 12 if hi < 4096 else 16
    if lo >= np.iinfo(np.int16).min and hi <= np.iinfo(np.int16).max:
        return np.int16, 1, 12 if (lo >= -2048 and hi < 2048) else 16
    raise InputError(
        f"stored values span {lo:.0f}..{hi:.0f} with slope {slope} and intercept {intercept}; "
        "they do not fit 16 bits, choose another rescale slope/intercept"
    )


def write_dicom_series(
    hu: np.ndarray,
    out_dir: str | Path,
    *,
    spacing_mm: Sequence[float],
    origin_lps_mm: Sequence[float] = (0.0, 0.0, 0.0),
    series_uid: str | None = None,
    study_uid: str | None = None,
    modality: str = "CT",
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    series_description: str = "",
    transfer_syntax: str = "explicit_vr_little_endian",
    rescale_slope: float = 1.0,
    rescale_intercept: float = -1024.0,
    gantry_tilt_deg: float = 0.0,
    drop_slices: Iterable[int] = (),
    study_date: str = "20200101",
    patient_id: str = "PHANTOM",
    slice_thickness_mm: float | None = None,
    frame_of_reference_uid: str | None = None,
    series_number: int = 1,
) -> list[Path]:
    """Write an axial CT volume as a DICOM series, one CT Image Storage file per slice.

    Slice ``k`` of ``hu`` (axis 0, inferior first) is written with ImagePositionPatient
    ``origin + k * spacing_z * (0, 0, 1)`` and ImageOrientationPatient ``[1,0,0, 0,1,0]``
    (rows along +x, columns along +y, LPS). Stored values are
    ``round((hu - rescale_intercept) / rescale_slope)`` as uint16, or int16 when negative,
    with BitsStored 12 when they fit (as CT scanners write) and 16 otherwise.

    Parameters
    ----------
    hu : ndarray, shape (Z, Y, X)
        Hounsfield units.
    out_dir : str or Path
        Folder to create; files are named ``slice_0001.dcm`` ... by original slice index.
    spacing_mm : tuple of 3 float, (z, y, x) order
        ``z`` is the table increment between slices; the written SliceThickness equals it
        unless ``slice_thickness_mm`` is given (to write a header that disagrees).
    origin_lps_mm : tuple of 3 float
        LPS position (x, y, z) of the first pixel of slice 0, in mm.
    transfer_syntax : str
        ``explicit_vr_little_endian``, ``jpeg_lossless`` (process 14 SV1, lungvol's encoder),
        ``jpeg_ls_lossless`` (pyjpegls), ``jpeg2000_lossless`` (pylibjpeg-openjpeg) or
        ``rle_lossless``.
    gantry_tilt_deg : float
        Tilt of the image planes about the patient x axis: the column direction becomes
        ``(0, cos t, sin t)`` while positions still advance along z (the table), so the stack
        is sheared along y relative to the slice normal, as on a tilted gantry. The pixels of
        ``hu`` are taken to be sampled on that tilted grid. GantryDetectorTilt is set to ``t``.
    drop_slices : iterable of int
        Slice indices not to write (makes a series with missing slices).
    modality, image_type, series_description, study_date, patient_id
        Header values; ``patient_id`` is a pseudonym and is also used as PatientName.

    Returns
    -------
    list of Path
        Written files in slice order (dropped slices omitted).

    Raises
    ------
    InputError
        Bad array, unknown transfer syntax, or values that do not fit 16 bits.
    """
    arr = np.asarray(hu)
    if arr.ndim != 3:
        raise InputError(f"write_dicom_series needs a 3-D (z, y, x) array, got shape {arr.shape}")
    if transfer_syntax not in TRANSFER_SYNTAXES:
        raise InputError(
            f"unknown transfer_syntax {transfer_syntax!r}; use one of {sorted(TRANSFER_SYNTAXES)}"
        )
    if rescale_slope == 0:
        raise InputError("rescale_slope is 0; use a non-zero slope such as 1.0")
    if transfer_syntax == "jpeg2000_lossless" and min(arr.shape[1:]) < _J2K_MIN_SIDE:
        raise InputError(
            f"JPEG 2000 encoding needs slices of at least {_J2K_MIN_SIDE}x{_J2K_MIN_SIDE} pixels "
            f"(openjpeg uses 6 wavelet levels), got {arr.shape[1]}x{arr.shape[2]}; "
            "write a larger array or another syntax"
        )
    dz, dy, dx = (float(s) for s in spacing_mm)
    stored_dtype, pixel_representation, bits_stored = _stored_format(
        arr, rescale_slope, rescale_intercept
    )
    ts_uid = TRANSFER_SYNTAXES[transfer_syntax]
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_uid = frame_of_reference_uid or generate_uid()
    tilt = math.radians(float(gantry_tilt_deg))
    row_dir = (1.0, 0.0, 0.0)
    col_dir = (0.0, math.cos(tilt), math.sin(tilt))
    dropped = {int(i) for i in drop_slices}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for k in range(arr.shape[0]):
        if k in dropped:
            continue
        sop_uid = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.PatientName = f"{patient_id}^"  # family-name component only
        ds.PatientID = patient_id
        ds.PatientBirthDate = ""
        ds.PatientSex = ""
        ds.StudyDate = study_date
        ds.SeriesDate = study_date
        ds.ContentDate = study_date
        ds.StudyTime = "120000"
        ds.StudyID = "1"
        ds.AccessionNumber = ""
        ds.ReferringPhysicianName = ""
        ds.Modality = modality
        ds.Manufacturer = "lungvol"
        ds.ImageType = list(image_type)
        ds.SeriesDescription = series_description
        ds.SeriesNumber = int(series_number)
        ds.InstanceNumber = k + 1
        ds.PositionReferenceIndicator = ""
        ds.ImagePositionPatient = [
            float(origin_lps_mm[0]),
            float(origin_lps_mm[1]),
            float(origin_lps_mm[2]) + k * dz,
        ]
        ds.ImageOrientationPatient = [*row_dir, *col_dir]
        ds.SliceLocation = float(origin_lps_mm[2]) + k * dz
        ds.PixelSpacing = [dy, dx]
        ds.SliceThickness = float(slice_thickness_mm if slice_thickness_mm is not None else dz)
        ds.GantryDetectorTilt = float(gantry_tilt_deg)
        ds.KVP = 120
        ds.ConvolutionKernel = "STANDARD"
        ds.RescaleSlope = float(rescale_slope)
        ds.RescaleIntercept = float(rescale_intercept)
        ds.RescaleType = "HU"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = int(arr.shape[1]), int(arr.shape[2])
        ds.BitsAllocated = 16
        ds.BitsStored = bits_stored
        ds.HighBit = bits_stored - 1
        ds.PixelRepresentation = pixel_representation
        frame = _to_stored(arr[k], rescale_slope, rescale_intercept).astype(stored_dtype)
        ds.PixelData = frame.tobytes()
        if transfer_syntax == "jpeg_lossless":
            ds.PixelData = encapsulate([encode_jpeg_lossless_sv1(frame)])
            ds["PixelData"].VR = "OB"
            ds.file_meta.TransferSyntaxUID = ts_uid
        elif transfer_syntax in _PYDICOM_ENCODED:
            ds.compress(ts_uid, frame, generate_instance_uid=False)
        path = out / f"slice_{k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        written.append(path)
    logger.debug("wrote %d DICOM slices to %s (%s)", len(written), out, transfer_syntax)
    return written


__all__ = [
    "TRANSFER_SYNTAXES",
    "VOLUME_SUFFIXES",
    "volume_suffix",
    "write_dicom_series",
    "write_label_nifti",
    "write_volume",
]
