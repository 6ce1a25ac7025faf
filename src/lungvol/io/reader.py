"""``read_ct`` and ``list_series``: any supported CT input -> one validated HU/LPS CTVolume."""

from __future__ import annotations

import gzip
import hashlib
import logging
import math
import re
import struct
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk  # noqa: N813 (the library's conventional alias)

from lungvol.config import IOConfig
from lungvol.errors import InputError, NotHUError
from lungvol.io.series import (
    SeriesCandidate,
    SliceHeader,
    choose_series,
    scan_dicom,
    selection_reason,
    slice_normal,
)
from lungvol.io.writers import volume_suffix
from lungvol.types import CTVolume, SourceInfo

logger = logging.getLogger(__name__)

_KIND_BY_SUFFIX = {
    ".nii": "nifti",
    ".nii.gz": "nifti",
    ".nrrd": "nrrd",
    ".nhdr": "nrrd",
    ".mha": "mha",
    ".mhd": "mha",
}
_CHUNK_SLICES = 32  # slices decoded per SimpleITK call when values may overflow int16
_HASH_BLOCK_BYTES = 1 << 20
# SliceThickness / position spacing accepted without a warning: from slightly thinner than
# the spacing (rounding) up to 2x (overlapping reconstruction, common and harmless).
_THICKNESS_SPACING_RATIO = (0.9, 2.0)
_INT16 = np.iinfo(np.int16)
# pydicom / pixel-decoder failures on a damaged file; reported as InputError naming the file.
_DECODE_ERRORS = (
    ValueError,
    RuntimeError,
    NotImplementedError,
    EOFError,
    OSError,
    AttributeError,
    KeyError,
    struct.error,
)


def list_series(path: str | Path, *, config: IOConfig | None = None) -> list[SeriesCandidate]:
    """List the DICOM series under ``path``, best candidate first.

    Parameters
    ----------
    path : str or Path
        A DICOM folder (searched recursively) or one DICOM file (its series only).
    config : IOConfig, optional
        Decides ``min_slices`` and the coverage rule; defaults to ``IOConfig()``.

    Returns
    -------
    list of SeriesCandidate
        Usable series in the order ``read_ct`` prefers them, then unusable ones, each with
        ``is_usable`` and ``reason``.

    Raises
    ------
    InputError
        Missing path, empty folder, no DICOM files, or a corrupt DICOM file.
    """
    cfg = config or IOConfig()
    candidates, _ = scan_dicom(Path(path), config=cfg)
    return candidates


def read_ct(
    path: str | Path, *, series_uid: str | None = None, config: IOConfig | None = None
) -> CTVolume:
    """Read a CT scan into a validated HU volume in LPS orientation, arrays (z, y, x).

    Parameters
    ----------
    path : str or Path
        A DICOM folder (recursive, possibly several series), one DICOM file (its whole series
        from the same folder), or a .nii/.nii.gz/.nrrd/.nhdr/.mha/.mhd volume.
    series_uid : str, optional
        SeriesInstanceUID to read; by default the series is chosen by
        ``lungvol.io.series.choose_series``: usable CT series only, ORIGINAL before DERIVED,
        then among the series whose z extent is >= ``io.series_coverage_fraction`` x the largest,
        the thinnest slice spacing (ties: more slices, then smaller UID).
    config : IOConfig, optional
        Validation thresholds; defaults to ``IOConfig()``.

    Returns
    -------
    CTVolume
        ``hu`` is int16 when every RescaleSlope/Intercept is an integer and values fit,
        float32 otherwise; ``spacing_mm`` is (z, y, x) with z measured from
        ImagePositionPatient (never SliceThickness).

    Notes
    -----
    Validation policy for DICOM series, in slice order along the slice normal:

    - A gap larger than ``io.missing_slice_gap_factor`` x the median gap means missing
      slices: InputError.
    - Otherwise, gaps spreading more than ``io.uneven_spacing_tolerance_fraction`` x the
      median are resampled onto the median spacing by linear interpolation along z (values
      rounded back to int16), with a warning in ``source.warnings``.
    - Gantry tilt (slice stack sheared in-plane by more than ``io.tilt_shear_tolerance_px``):
      with ``io.gantry_tilt_policy = "resample"`` the volume is resampled (linear) onto an
      axis-aligned LPS grid covering the whole tilted stack, outside filled with the scan's
      lowest value, and a warning is recorded; with ``"refuse"``, or a tilt above
      ``io.max_gantry_tilt_deg``, InputError.
    - Fewer than ``io.min_slices`` slices: InputError.
    - Not HU (lowest value above ``io.min_value_hu_max``, or no air: no value in
      (``io.padding_hu_max``, ``io.air_hu_max``]): NotHUError.

    Raises
    ------
    InputError
        Missing path, empty folder, no DICOM, corrupt or truncated files, unsupported suffix,
        unknown ``series_uid``, missing slices, too few slices, refused gantry tilt.
    NotCTError
        MR or another modality, or only localizers / secondary captures / reports.
    NotHUError
        Intensities that are not Hounsfield units.
    """
    cfg = config or IOConfig()
    p = Path(path)
    if not p.exists():
        raise InputError(f"input path {p} does not exist; check the path")
    suffix = volume_suffix(p) if p.is_file() else None
    if suffix is not None:
        if series_uid is not None:
            logger.warning("series_uid is ignored for the volume file %s", p.name)
        return _read_volume_file(p, suffix, cfg)
    return _read_dicom(p, series_uid, cfg)


# --------------------------------------------------------------------------- volume files


def _data_files(path: Path, suffix: str) -> list[Path]:
    """The header file plus the detached data file of .mhd/.nhdr volumes (for hashing)."""
    files = [path]
    if suffix in (".mhd", ".nhdr"):
        pattern = r"^ElementDataFile\s*=\s*(.+)$" if suffix == ".mhd" else r"^data ?file:\s*(.+)$"
        text = path.read_text(errors="replace")
        match = re.search(pattern, text, flags=re.MULTILINE | re.IGNORECASE)
        if match and (path.parent / match.group(1).strip()).is_file():
            files.append(path.parent / match.group(1).strip())
    return files


def _nifti_problem(path: Path, suffix: str) -> str | None:
    """Check a NIfTI file holds all its voxel bytes.

    Hand-written because ITK zero-fills the missing voxels of a truncated .nii/.nii.gz
    without an error (NRRD and MetaImage readers do raise).
    """
    try:
        opener = gzip.open if suffix == ".nii.gz" else open
        with opener(path, "rb") as fp:
            header = fp.read(540)
    except (OSError, EOFError, zlib.error) as err:
        return f"header unreadable ({err.__class__.__name__})"
    if len(header) < 348:
        return f"header has {len(header)} of 348 bytes"
    endian = "<" if struct.unpack("<i", header[:4])[0] in (348, 540) else ">"
    if struct.unpack(endian + "i", header[:4])[0] == 540:
        dims = struct.unpack(endian + "8q", header[16:80])
        bitpix = struct.unpack(endian + "h", header[14:16])[0]
        vox_offset = struct.unpack(endian + "q", header[168:176])[0]
    else:
        dims = struct.unpack(endian + "8h", header[40:56])
        bitpix = struct.unpack(endian + "h", header[72:74])[0]
        vox_offset = int(struct.unpack(endian + "f", header[108:112])[0])
    n_dims = min(max(int(dims[0]), 0), 7)
    expected = int(vox_offset) + int(np.prod(dims[1 : n_dims + 1], dtype=np.int64)) * bitpix // 8
    if suffix == ".nii.gz":
        actual, complete = _gunzip_size(path)
        if not complete:
            return "the gzip stream ends early"
    else:
        actual = path.stat().st_size
    if actual < expected:
        return f"{actual} of {expected} bytes of voxel data"
    return None


def _gunzip_size(path: Path) -> tuple[int, bool]:
    """Uncompressed size of a gzip file and whether its stream ended properly (streamed)."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    size = 0
    with open(path, "rb") as fp:
        while (block := fp.read(_HASH_BLOCK_BYTES)) and not inflater.eof:
            while block and not inflater.eof:  # bounded output per step: no large buffers
                try:
                    size += len(inflater.decompress(block, _HASH_BLOCK_BYTES))
                except zlib.error:
                    return size, False
                block = inflater.unconsumed_tail
    return size, inflater.eof


def _read_volume_file(path: Path, suffix: str, cfg: IOConfig) -> CTVolume:
    if suffix in (".nii", ".nii.gz"):
        problem = _nifti_problem(path, suffix)
        if problem:
            raise InputError(
                f"{path.name} is truncated or corrupt ({problem}); re-export or copy it again"
            )
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise InputError(
            f"cannot read {path.name} as a {suffix} volume ({str(err).strip().splitlines()[-1]}); "
            "check the file is complete"
        ) from err
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{path.name} has {image.GetNumberOfComponentsPerPixel()} values per voxel; "
            "a CT needs one (grey-scale)"
        )
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
    if image.GetDimension() != 3:
        raise InputError(
            f"{path.name} is {image.GetDimension()}-D (size {image.GetSize()}); "
            "lungvol needs one 3-D CT volume"
        )
    if image.GetSize()[2] < cfg.min_slices:
        raise InputError(
            f"{path.name} has {image.GetSize()[2]} slice(s); volumetry needs >= "
            f"{cfg.min_slices} (io.min_slices); check it is a full chest CT"
        )
    direction = np.asarray(image.GetDirection(), float).reshape(3, 3)
    if not _is_lps_aligned(direction):
        image = sitk.DICOMOrient(image, "LPS")
    hu = _hu_dtype(sitk.GetArrayFromImage(image))
    _check_hu(hu, cfg, where=path.name)
    spacing_xyz = image.GetSpacing()
    source = SourceInfo(
        path=str(path),
        kind=_KIND_BY_SUFFIX[suffix],
        sha256=_sha256(_data_files(path, suffix)),
        files=(str(path),),
        selection_reason=f"volume file {path.name}",
    )
    return CTVolume(
        hu=hu,
        spacing_mm=(float(spacing_xyz[2]), float(spacing_xyz[1]), float(spacing_xyz[0])),
        origin_lps_mm=tuple(float(v) for v in image.GetOrigin()),  # type: ignore[arg-type]
        direction=np.asarray(image.GetDirection(), float).reshape(3, 3),
        source=source,
    )


def _hu_dtype(arr: np.ndarray) -> np.ndarray:
    """int16 for integer data that fits, float32 otherwise."""
    if np.issubdtype(arr.dtype, np.integer):
        if arr.dtype == np.int16:
            return arr
        if arr.size == 0 or (arr.min() >= _INT16.min and arr.max() <= _INT16.max):
            return arr.astype(np.int16)
    return arr.astype(np.float32, copy=False)


# --------------------------------------------------------------------------- DICOM


def _read_dicom(path: Path, series_uid: str | None, cfg: IOConfig) -> CTVolume:
    candidates, file_uid = scan_dicom(path, config=cfg)
    chosen = choose_series(candidates, series_uid=series_uid or file_uid, config=cfg)
    reason = selection_reason(
        chosen,
        candidates,
        explicit="requested with series_uid"
        if series_uid is not None
        else ("series of the given file" if file_uid is not None else None),
    )
    logger.info("%s", reason)
    headers = list(chosen.headers)
    for h in headers:
        if h.pixel_problem:
            raise InputError(f"{h.pixel_problem} ({h.path}); re-export or replace this file")
    warnings: list[str] = []
    if chosen.duplicate_files:
        # A count only: file names may carry patient identifiers.
        warnings.append(
            f"duplicate_images_ignored: {len(chosen.duplicate_files)} file(s) repeat an image "
            "of the series (same SOPInstanceUID and position) and were read once"
        )
    geometry = _SeriesGeometry(headers, cfg, warnings)
    # The files' hash (provenance) is computed on one thread and the upper half of the
    # pixels decoded on another while this one decodes the lower half: hashlib and GDCM
    # release the GIL.
    with ThreadPoolExecutor(max_workers=2) as pool:
        sha256 = pool.submit(_sha256, [Path(f) for f in dict.fromkeys(h.path for h in headers)])
        # ITK would print its own "non uniform sampling" warning; lungvol records a clearer
        # one.
        hu = _read_pixels(headers, quiet=geometry.is_uneven or geometry.is_tilted, pool=pool)
    if geometry.is_tilted:
        hu, origin, spacing_zyx, direction = _resample_tilted(hu, geometry)
    else:
        if geometry.is_uneven:
            hu = _resample_uneven(hu, geometry.positions_mm, geometry.spacing_mm)
        origin = geometry.origin
        spacing_zyx = (geometry.spacing_mm, geometry.pixel_spacing[0], geometry.pixel_spacing[1])
        direction = geometry.direction
        if not _is_lps_aligned(direction):
            hu, origin, spacing_zyx, direction = _orient_lps(hu, origin, spacing_zyx, direction)
    _check_hu(hu, cfg, where=f"series {chosen.uid}")
    first = headers[0]
    source = SourceInfo(
        path=str(path),
        kind="dicom",
        sha256=sha256.result(),
        series_uid=chosen.uid,
        study_uid=first.study_uid,
        frame_of_reference_uid=first.frame_of_reference_uid,
        modality=first.modality,
        manufacturer=first.manufacturer,
        convolution_kernel=first.convolution_kernel,
        slice_thickness_mm=first.slice_thickness_mm,
        study_date=first.study_date,
        transfer_syntax_uid=first.transfer_syntax_uid,
        files=tuple(h.path for h in headers),
        frames=tuple(h.frame for h in headers) if headers[0].frame is not None else (),
        selection_reason=reason,
        warnings=tuple(warnings),
    )
    for w in warnings:
        logger.warning("%s", w)
    return CTVolume(
        hu=hu,
        spacing_mm=tuple(float(s) for s in spacing_zyx),  # type: ignore[arg-type]
        origin_lps_mm=tuple(float(v) for v in origin),  # type: ignore[arg-type]
        direction=np.asarray(direction, float),
        source=source,
    )


class _SeriesGeometry:
    """Slice geometry from ImagePositionPatient/ImageOrientationPatient, validated."""

    def __init__(self, headers: Sequence[SliceHeader], cfg: IOConfig, warnings: list[str]):
        first = headers[0]
        if first.orientation is None or first.pixel_spacing is None:
            raise InputError(
                f"series {first.series_uid} lacks ImageOrientationPatient or PixelSpacing; "
                "lungvol needs complete CT geometry"
            )
        self.n_slices = len(headers)
        if self.n_slices < 2:
            raise InputError(
                f"series {first.series_uid} has a single slice; slice spacing cannot be measured, "
                "pass a full CT series"
            )
        self.rows, self.columns = int(first.rows or 0), int(first.columns or 0)
        self.row_dir = np.asarray(first.orientation[:3], float)
        self.col_dir = np.asarray(first.orientation[3:], float)
        self.row_dir /= np.linalg.norm(self.row_dir)
        self.col_dir /= np.linalg.norm(self.col_dir)
        self.normal = slice_normal(first.orientation)
        # PixelSpacing = (spacing between rows, i.e. along y; between columns, along x).
        self.pixel_spacing = (float(first.pixel_spacing[0]), float(first.pixel_spacing[1]))
        positions = np.array([h.position for h in headers], float)
        self.first_position = positions[0]
        self.positions_mm = positions @ self.normal
        gaps = np.diff(self.positions_mm)
        self.spacing_mm = float(np.median(gaps))
        uid = first.series_uid
        worst = int(np.argmax(gaps))
        if gaps[worst] > cfg.missing_slice_gap_factor * self.spacing_mm:
            n_missing = max(1, round(gaps[worst] / self.spacing_mm) - 1)
            raise InputError(
                f"series {uid} has a {gaps[worst]:.2f} mm gap between slices {worst + 1} and "
                f"{worst + 2} (median {self.spacing_mm:.2f} mm): about {n_missing} slice(s) "
                "missing; re-export the complete series"
            )
        spread = float(gaps.max() - gaps.min()) / self.spacing_mm
        self.is_uneven = spread > cfg.uneven_spacing_tolerance_fraction
        if self.is_uneven:
            warnings.append(
                "uneven_spacing_resampled: uneven slice spacing "
                f"({gaps.min():.2f}..{gaps.max():.2f} mm); resampled to the "
                f"median {self.spacing_mm:.2f} mm by linear interpolation along z"
            )
        thickness = first.slice_thickness_mm
        # Overlapping reconstructions (thickness up to twice the spacing) are normal; thinner
        # slices than their spacing leave tissue unsampled, and thicker ones smear along z.
        ratio = thickness / self.spacing_mm if thickness else 1.0
        if not _THICKNESS_SPACING_RATIO[0] <= ratio <= _THICKNESS_SPACING_RATIO[1]:
            warnings.append(
                f"slice_thickness_mismatch: SliceThickness {thickness:.2f} mm differs from the "
                f"{self.spacing_mm:.2f} mm spacing of the slice positions; the positions are used"
            )
        # Gantry tilt: the stack advances with an in-plane component (shear).
        travel = positions[-1] - positions[0]
        along = float(travel @ self.normal)
        inplane = travel - along * self.normal
        shear_px = float(np.linalg.norm(inplane)) / min(self.pixel_spacing)
        self.tilt_deg = math.degrees(math.atan2(float(np.linalg.norm(inplane)), along))
        self.is_tilted = shear_px > cfg.tilt_shear_tolerance_px
        self.gap_vector = travel / (self.n_slices - 1)
        if self.is_tilted:
            if self.tilt_deg > cfg.max_gantry_tilt_deg:
                raise InputError(
                    f"series {uid} has a gantry tilt of {self.tilt_deg:.1f} degrees, above "
                    f"io.max_gantry_tilt_deg = {cfg.max_gantry_tilt_deg}; use an untilted series"
                )
            if cfg.gantry_tilt_policy == "refuse":
                raise InputError(
                    f"series {uid} has a gantry tilt of {self.tilt_deg:.1f} degrees and "
                    "io.gantry_tilt_policy is 'refuse'; set it to 'resample' or use another series"
                )
            if self.is_uneven:
                raise InputError(
                    f"series {uid} is gantry-tilted ({self.tilt_deg:.1f} degrees) and unevenly "
                    "spaced; lungvol cannot correct both, re-export a regular series"
                )
            warnings.append(
                f"gantry_tilt_resampled: gantry tilt of {self.tilt_deg:.1f} degrees; resampled "
                "onto an axial LPS grid"
            )
        self.origin = tuple(float(v) for v in self.first_position)
        self.direction = np.column_stack([self.row_dir, self.col_dir, self.normal])


def _integer_rescale(headers: Sequence[SliceHeader]) -> bool:
    return all(float(h.slope).is_integer() and float(h.intercept).is_integer() for h in headers)


def _fits_int16(headers: Sequence[SliceHeader]) -> bool:
    """Whether every storable value, rescaled, fits int16 (then no overflow check is needed)."""
    for h in headers:
        bits = min(max(h.bits_stored, 1), 16)
        lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if h.is_signed else (0, 2**bits - 1)
        ends = (lo * h.slope + h.intercept, hi * h.slope + h.intercept)
        if min(ends) < _INT16.min or max(ends) > _INT16.max:
            return False
    return True


def _read_pixels(
    headers: Sequence[SliceHeader],
    *,
    quiet: bool = False,
    pool: ThreadPoolExecutor | None = None,
) -> np.ndarray:
    """Decode the series' pixels in the given order as HU, (z, y, x).

    SimpleITK (GDCM) applies each file's RescaleSlope/Intercept; with ``pool``, the upper
    half of the files is decoded there beside the lower one here (GDCM releases the GIL).
    Files GDCM cannot decode are read with pydicom and its pixel plugins (pylibjpeg,
    pyjpegls) instead, and so are the frames of enhanced multi-frame files (GDCM's series
    reader takes one image per file).
    """
    files = [h.path for h in headers]
    integer = _integer_rescale(headers)
    if any(h.frame is not None for h in headers):
        return _pydicom_read(headers, integer)
    shape = (len(files), headers[0].rows or 0, headers[0].columns or 0)
    show_warnings = sitk.ProcessObject.GetGlobalWarningDisplay()
    if quiet:  # restored below; ITK's warning switch is process-wide
        sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        if integer and _fits_int16(headers):
            return _sitk_decode(files, shape, sitk.sitkInt16, np.int16, pool)
        if not integer:
            return _sitk_decode(files, shape, sitk.sitkFloat32, np.float32, pool)
        # Rescaled values may overflow int16: decode as int32 in chunks, each checked and
        # stored as int16 (no full int32 copy), else the whole series as float32.
        hu = _sitk_decode(files, shape, sitk.sitkInt32, np.int16, pool, chunk=_CHUNK_SLICES)
        if hu is None:
            logger.debug("HU values exceed int16; reading as float32")
            return _sitk_decode(files, shape, sitk.sitkFloat32, np.float32, pool)
        return hu
    except RuntimeError as err:
        logger.info(
            "SimpleITK could not decode the series (%s); decoding with pydicom",
            str(err).strip().splitlines()[-1] if str(err).strip() else err.__class__.__name__,
        )
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(show_warnings)
    return _pydicom_read(headers, integer)


def _sitk_decode(
    files: Sequence[str],
    shape: tuple[int, int, int],
    pixel_type: int,
    dtype: type[np.generic],
    pool: ThreadPoolExecutor | None,
    *,
    chunk: int | None = None,
) -> np.ndarray | None:
    """The files' pixels as one ``dtype`` array of ``shape``, decoded by SimpleITK as
    ``pixel_type`` in chunks of ``chunk`` files (default: the lower and upper half).

    With ``pool``, the upper half's chunks are decoded there while this thread decodes the
    lower half's. Returns None when a value does not fit ``dtype`` (decoded wider). Raises
    RuntimeError when SimpleITK fails or a file's image is not ``shape[1:]``.
    """
    out = np.empty(shape, dtype)
    n = len(files)
    half = (n + 1) // 2
    step = chunk or max(half, 1)
    limits = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None

    def decode(lo: int, hi: int) -> bool:
        for start in range(lo, hi, step):
            stop = min(start + step, hi)
            image = _sitk_image(files[start:stop], pixel_type)
            # A view, not a copy of the decoded chunk; used only while ``image`` is alive.
            values = sitk.GetArrayViewFromImage(image)
            if values.shape != out[start:stop].shape:
                raise RuntimeError(f"image shape {values.shape[1:]} is not {shape[1:]}")
            if (
                limits is not None
                and values.dtype != out.dtype
                and values.size
                and (values.min() < limits.min or values.max() > limits.max)
            ):
                return False
            out[start:stop] = values
            del values, image
        return True

    # The halves split on chunk boundaries, so the chunks are those of a serial decode.
    split = min(-(-half // step) * step, n)
    if pool is None or split in (0, n):
        return out if decode(0, n) else None
    upper = pool.submit(decode, split, n)
    try:
        lower_ok = decode(0, split)
    finally:
        wait([upper])  # never leave the pool writing into ``out`` after an error here
    return out if lower_ok and upper.result() else None


def _sitk_image(files: Sequence[str], pixel_type: int) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(files))
    reader.SetOutputPixelType(pixel_type)
    return reader.Execute()


def _pydicom_read(headers: Sequence[SliceHeader], integer: bool) -> np.ndarray:
    """Decode with pydicom, slice by slice in ``headers`` order, applying each slice's
    (each frame's) rescale. A multi-frame file is decoded once for all its frames."""
    first = headers[0]
    out = np.empty((len(headers), first.rows or 0, first.columns or 0), np.float32)
    decoded_path, decoded = None, None
    for k, h in enumerate(headers):
        if h.path != decoded_path:
            decoded_path, decoded = h.path, None  # release the previous file's frames first
            try:
                decoded = pydicom.dcmread(h.path, force=True).pixel_array
            except _DECODE_ERRORS as err:
                raise InputError(
                    f"{h.path}: pixel data cannot be decoded ({err.__class__.__name__}: "
                    f"{str(err)[:80]}); the file is truncated, corrupt or uses an unsupported "
                    "compression"
                ) from err
        stored = decoded if h.frame is None or decoded.ndim == 2 else decoded[h.frame]
        if stored.shape != out.shape[1:]:
            raise InputError(
                f"{h.path}: pixel data has shape {stored.shape}, header says {out.shape[1:]}; "
                "re-export the series"
            )
        out[k] = stored * np.float32(h.slope) + np.float32(h.intercept)
    return _hu_dtype(np.rint(out).astype(np.int32)) if integer else out


def _resample_uneven(hu: np.ndarray, positions_mm: np.ndarray, spacing_mm: float) -> np.ndarray:
    """Linear interpolation along axis 0 from ``positions_mm`` to a regular grid.

    Hand-written (one weighted sum of two slices per output slice) because the grid is only
    irregular along z; a full 3-D resampler would need a per-slice displacement field.
    """
    s = positions_mm - positions_mm[0]
    n_out = int(math.floor(s[-1] / spacing_mm + 1e-6)) + 1
    t = np.arange(n_out) * spacing_mm
    idx = np.clip(np.searchsorted(s, t, side="right") - 1, 0, len(s) - 2)
    weight = (t - s[idx]) / (s[idx + 1] - s[idx])
    out = np.empty((n_out, *hu.shape[1:]), hu.dtype)
    for k in range(n_out):
        value = hu[idx[k]] * (1.0 - weight[k]) + hu[idx[k] + 1] * weight[k]
        out[k] = np.rint(value) if np.issubdtype(hu.dtype, np.integer) else value
    return out


def _resample_tilted(
    hu: np.ndarray, geo: _SeriesGeometry
) -> tuple[np.ndarray, tuple[float, ...], tuple[float, float, float], np.ndarray]:
    """Resample a gantry-tilted stack onto an axis-aligned LPS grid (SimpleITK, linear).

    Voxel (i, j, k) of the stack lies at ``P0 + i*dx*row + j*dy*col + k*g`` (g = mean step
    between slice positions). The output grid has the in-plane pixel spacing, the table step
    ``|g_z|`` along z, and covers the bounding box of the whole stack.
    """
    dy, dx = geo.pixel_spacing
    m = np.column_stack([dx * geo.row_dir, dy * geo.col_dir, geo.gap_vector])
    m_inv = np.linalg.inv(m)
    p0 = geo.first_position
    src = sitk.GetImageFromArray(hu.astype(np.float32))  # index space == physical space
    transform = sitk.AffineTransform(3)
    transform.SetMatrix([float(v) for v in m_inv.ravel()])
    transform.SetTranslation([float(v) for v in (-m_inv @ p0)])
    nz, ny, nx = hu.shape
    corners = np.array(
        [[i, j, k] for i in (0, nx - 1) for j in (0, ny - 1) for k in (0, nz - 1)], float
    )
    world = p0 + corners @ m.T
    lo, hi = world.min(axis=0), world.max(axis=0)
    spacing_xyz = np.array([dx, dy, abs(float(geo.gap_vector[2]))])
    size = np.floor((hi - lo) / spacing_xyz + 1e-6).astype(int) + 1
    ref = sitk.Image([int(v) for v in size], sitk.sitkFloat32)
    ref.SetOrigin([float(v) for v in lo])
    ref.SetSpacing([float(v) for v in spacing_xyz])
    fill = float(hu.min())
    out = sitk.Resample(src, ref, transform, sitk.sitkLinear, fill, sitk.sitkFloat32)
    arr = sitk.GetArrayFromImage(out)
    if np.issubdtype(hu.dtype, np.integer):
        arr = np.rint(arr).astype(hu.dtype)
    spacing_zyx = (float(spacing_xyz[2]), float(spacing_xyz[1]), float(spacing_xyz[0]))
    return arr, tuple(float(v) for v in lo), spacing_zyx, np.eye(3)


def _is_lps_aligned(direction: np.ndarray) -> bool:
    """True when index axes x, y, z already run along +L, +P, +S (DICOMOrient would be a no-op)."""
    d = np.asarray(direction, float).reshape(3, 3)
    return all(int(np.argmax(np.abs(d[:, j]))) == j and d[j, j] > 0 for j in range(3))


def _orient_lps(
    hu: np.ndarray,
    origin: Sequence[float],
    spacing_zyx: Sequence[float],
    direction: np.ndarray,
) -> tuple[np.ndarray, tuple[float, ...], tuple[float, float, float], np.ndarray]:
    """Permute/flip axes to LPS with ``sitk.DICOMOrient`` (no interpolation)."""
    image = sitk.GetImageFromArray(hu)
    image.SetOrigin([float(v) for v in origin])
    image.SetSpacing([float(v) for v in reversed(tuple(spacing_zyx))])
    image.SetDirection([float(v) for v in np.asarray(direction, float).ravel()])
    image = sitk.DICOMOrient(image, "LPS")
    s = image.GetSpacing()
    return (
        sitk.GetArrayFromImage(image),
        tuple(float(v) for v in image.GetOrigin()),
        (float(s[2]), float(s[1]), float(s[0])),
        np.asarray(image.GetDirection(), float).reshape(3, 3),
    )


def _check_hu(hu: np.ndarray, cfg: IOConfig, *, where: str) -> None:
    """Raise NotHUError unless the volume contains air near -1000 HU.

    Values below ``io.padding_hu_max`` (padding outside the field of view, often -2048 or
    -3024) are not counted as air: a 0..4095 export padded with -2000 is still not HU.
    """
    lowest = float(hu.min())
    if lowest > cfg.min_value_hu_max:
        raise NotHUError(
            f"{where}: lowest value is {lowest:.0f}, but a CT in HU has air near -1000 "
            f"(io.min_value_hu_max = {cfg.min_value_hu_max}); these look like stored values or "
            "a display export; check RescaleSlope/Intercept or export in HU"
        )
    # Slice by slice with an early exit: air is found in the first slices of any real CT.
    has_air = any(
        bool(np.any((plane > cfg.padding_hu_max) & (plane <= cfg.air_hu_max))) for plane in hu
    )
    if not has_air:
        raise NotHUError(
            f"{where}: no value between {cfg.padding_hu_max} and {cfg.air_hu_max} HU (no air "
            f"anywhere, only padding down to {lowest:.0f}); export the scan in Hounsfield units"
        )


def _sha256(files: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fp:
            while block := fp.read(_HASH_BLOCK_BYTES):
                digest.update(block)
    return digest.hexdigest()
