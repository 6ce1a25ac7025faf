"""DICOM series discovery and selection from headers only (pydicom, ``stop_before_pixels``).

Each file's header is read once; pixel data is read later, only for the chosen series.
Classic CT Image Storage has one image per file; an Enhanced (or Legacy Converted Enhanced)
CT file holds every frame of its series, with each frame's position, orientation, pixel
spacing and rescale in its functional groups: such a file contributes one ``SliceHeader``
per frame, so that ordering, spacing, missing-slice and tilt checks are the same for both.
"""

from __future__ import annotations

import logging
import math
import os
import re
import struct
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from lungvol.config import IOConfig
from lungvol.errors import InputError, NotCTError

logger = logging.getLogger(__name__)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
_ENHANCED_CT = {"1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.2.2"}
_LOCALIZER_WORDS = {"LOCALIZER", "SCOUT", "TOPOGRAM", "SURVIEW", "SCANOGRAM"}
_DICM_OFFSET = 128
_MEDIA_DIRECTORY = "1.2.840.10008.1.3.10"  # DICOMDIR: has no series, skipped
_RAW_DICOM_GROUPS = (0x0002, 0x0008)  # first group of a data set written without preamble
# Geometry definitions (not tuning knobs): a series is axial when its slice normal is closer
# to z than to x or y; direction cosines / positions closer than these are the same (they
# differ only by the rounding of DICOM decimal strings).
_AXIAL_MAX_NORMAL_ANGLE_DEG = 45.0
_SAME_DIRECTION_TOLERANCE = 1e-3
_SAME_POSITION_MM = 1e-3
# Reasons that mean "this is not a CT image series at all" (-> NotCTError when nothing else).
NOT_CT_PREFIXES = ("modality", "localizer", "not an image", "secondary capture")
# Failures of pydicom's forced parse of a file without the DICM preamble: such a file is
# treated as "not DICOM" (logged) rather than an error, since folders often hold other files.
_FORCED_PARSE_ERRORS = (
    InvalidDicomError,
    EOFError,
    ValueError,
    KeyError,
    TypeError,
    struct.error,
    OverflowError,
    UnicodeDecodeError,
    IndexError,
)


@dataclass(frozen=True)
class SliceHeader:
    """Header values of one DICOM file needed to select, order and read a series."""

    path: str
    series_uid: str
    study_uid: str | None
    sop_class_uid: str
    modality: str
    image_type: tuple[str, ...]
    description: str
    transfer_syntax_uid: str | None
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, float] | None
    rows: int | None
    columns: int | None
    slope: float
    intercept: float
    slice_thickness_mm: float | None
    gantry_tilt_deg: float | None
    frame_of_reference_uid: str | None
    manufacturer: str | None
    convolution_kernel: str | None
    study_date: str | None
    number_of_frames: int
    bits_stored: int
    is_signed: bool
    pixel_problem: str | None  # e.g. truncated pixel data, found from the file size
    frame: int | None = None  # 0-based frame of a multi-frame (enhanced) file; None: classic
    sop_instance_uid: str | None = None


@dataclass(frozen=True)
class SeriesCandidate:
    """One DICOM series found under a path, with why it can or cannot be used.

    ``files`` are ordered along the slice normal, inferior first (for axial images);
    ``slice_spacing_mm`` is the median distance between slice positions along the normal
    (``None`` for fewer than two positioned slices); ``z_extent_mm`` the distance from first
    to last slice.
    """

    uid: str
    modality: str
    n_slices: int
    slice_spacing_mm: float | None
    z_extent_mm: float
    slice_thickness_mm: float | None
    image_type: tuple[str, ...]
    description: str
    sop_class: str
    is_usable: bool
    reason: str
    files: tuple[str, ...] = field(default=(), repr=False)
    headers: tuple[SliceHeader, ...] = field(default=(), repr=False, compare=False)
    # Files that repeat an image already in ``headers`` (same SOPInstanceUID, frame and
    # position: a second copy in the export), left out.
    duplicate_files: tuple[str, ...] = field(default=(), repr=False, compare=False)

    @property
    def is_original(self) -> bool:
        return bool(self.image_type) and self.image_type[0] == "ORIGINAL"

    @property
    def kernel(self) -> str | None:
        """The reconstruction kernel (ConvolutionKernel) of the series' first image."""
        return self.headers[0].convolution_kernel if self.headers else None

    @property
    def sharpness(self) -> str | None:
        """"sharp", "smooth" or None (unknown): :func:`kernel_sharpness`."""
        return kernel_sharpness(self.kernel, self.description)

    def summary(self) -> str:
        """Short description used in selection reasons (no patient identifiers)."""
        if self.slice_spacing_mm is None:
            return f"{self.modality}, {self.n_slices} image(s)"
        return (
            f"{self.modality}, {self.n_slices} slices, {self.slice_spacing_mm:.2f} mm spacing, "
            f"{self.z_extent_mm:.0f} mm extent"
        )


def _floats(value: object, n: int) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        out = tuple(float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None
    return out if len(out) == n else None


def _float(value: object, default: float | None) -> float | None:
    if value is None or value == "":
        return default
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return default


def _has_dicm_magic(path: Path) -> bool:
    with path.open("rb") as fp:
        fp.seek(_DICM_OFFSET)
        return fp.read(4) == b"DICM"


def _may_be_raw_dicom(path: Path) -> bool:
    """Whether a file without the DICM preamble starts like a bare DICOM data set.

    Such files (old exports) begin with a group 0x0002 or 0x0008 tag, little endian. Other
    files are not force-parsed at all: pydicom would read arbitrary bytes as lengths.
    """
    with path.open("rb") as fp:
        head = fp.read(2)
    return len(head) == 2 and int.from_bytes(head, "little") in _RAW_DICOM_GROUPS


def _pixel_problem(
    ds: pydicom.Dataset, pixel_offset: int, file_size: int, path: Path
) -> str | None:
    """Detect truncated or absent uncompressed pixel data from the file size (no pixel read)."""
    if "SOPClassUID" in ds and str(ds.SOPClassUID) not in {CT_IMAGE_STORAGE, *_ENHANCED_CT}:
        return None
    if pixel_offset >= file_size:
        return f"{path.name} has no pixel data"
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is not None and UID(str(ts)).is_compressed:
        return None  # encapsulated: truncation shows up when decoding
    rows, cols = ds.get("Rows"), ds.get("Columns")
    bits = ds.get("BitsAllocated")
    if not (rows and cols and bits):
        return None
    frames = int(_float(ds.get("NumberOfFrames"), 1.0) or 1)
    expected = frames * int(rows) * int(cols) * int(ds.get("SamplesPerPixel", 1)) * int(bits) // 8
    encoding = getattr(ds, "original_encoding", None)  # (implicit VR, little endian) as read
    implicit = bool(encoding[0]) if encoding else ts is not None and str(ts) == "1.2.840.10008.1.2"
    element_header = 8 if implicit else 12
    available = file_size - pixel_offset - element_header
    if available < expected:
        return f"{path.name} is truncated: pixel data has {max(available, 0)} of {expected} bytes"
    return None


def read_header(path: Path, *, strict: bool) -> SliceHeader | None:
    """Read one file's header; None when the file is not DICOM (or not a series member).

    For an enhanced multi-frame CT file this is the first frame's header
    (:func:`read_headers` gives every frame).

    Parameters
    ----------
    strict : bool
        Raise InputError instead of returning None when the file is not readable DICOM
        (used when the user pointed at this very file).

    Raises
    ------
    InputError
        A file with the DICOM preamble whose header cannot be parsed (corrupt/truncated).
    """
    headers = read_headers(path, strict=strict)
    return headers[0] if headers else None


def read_headers(path: Path, *, strict: bool) -> list[SliceHeader]:
    """Headers of the images in one file: one for a classic file, one per frame for an
    enhanced multi-frame CT file, none when the file is not DICOM (see :func:`read_header`
    for ``strict`` and the errors raised)."""
    has_magic = _has_dicm_magic(path)
    if not has_magic and not _may_be_raw_dicom(path):
        if strict:
            raise InputError(
                f"{path} is neither DICOM nor a supported volume file "
                "(.nii, .nii.gz, .nrrd, .nhdr, .mha, .mhd); pass a CT DICOM file/folder or volume"
            )
        logger.debug("skipping %s: not DICOM", path)
        return []
    try:
        with path.open("rb") as fp:
            ds = pydicom.dcmread(fp, stop_before_pixels=True, force=not has_magic)
            pixel_offset = fp.tell()
        # Touch the elements we need now, so lazy parsing errors surface here.
        uid = ds.get("SeriesInstanceUID")
        sop_class = ds.get("SOPClassUID")
    except _FORCED_PARSE_ERRORS as err:
        if strict and not has_magic:
            raise InputError(
                f"{path} is neither DICOM nor a supported volume file "
                "(.nii, .nii.gz, .nrrd, .nhdr, .mha, .mhd); pass a CT DICOM file/folder or volume"
            ) from err
        if has_magic:
            raise InputError(
                f"{path} is a corrupt or truncated DICOM file ({err.__class__.__name__}: "
                f"{str(err)[:80]}); re-export or remove it"
            ) from err
        logger.debug("skipping %s: not DICOM (%s)", path, err.__class__.__name__)
        return []
    meta_class = str(getattr(ds, "file_meta", {}).get("MediaStorageSOPClassUID", "") or "")
    if sop_class is None and has_magic and meta_class and meta_class != _MEDIA_DIRECTORY:
        # The file meta announces an object, but the data set ends before its SOP Class UID.
        raise InputError(
            f"{path} is a corrupt or truncated DICOM file (header ends early); "
            "re-export or remove it"
        )
    if uid is None or sop_class is None:
        if strict:
            what = "is not a DICOM image" if has_magic else "is neither DICOM nor a volume file"
            raise InputError(
                f"{path} {what} (no SeriesInstanceUID/SOPClassUID); pass a CT DICOM file or "
                "folder, or a .nii/.nii.gz/.nrrd/.nhdr/.mha/.mhd volume"
            )
        logger.debug("skipping %s: no SeriesInstanceUID/SOPClassUID", path)
        return []
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    modality = str(ds.get("Modality", "") or "")
    if not modality and str(sop_class) == CT_IMAGE_STORAGE:
        modality = "CT"  # some anonymised exports drop Modality; the SOP class says CT
    spacing = _floats(ds.get("PixelSpacing"), 2)
    header = SliceHeader(
        path=str(path),
        series_uid=str(uid),
        study_uid=str(ds.StudyInstanceUID) if "StudyInstanceUID" in ds else None,
        sop_class_uid=str(sop_class),
        modality=modality.upper(),
        image_type=tuple(str(v).upper() for v in (ds.get("ImageType") or ())),
        description=str(ds.get("SeriesDescription", "") or ""),
        transfer_syntax_uid=str(ts) if ts is not None else None,
        position=_floats(ds.get("ImagePositionPatient"), 3),  # type: ignore[arg-type]
        orientation=_floats(ds.get("ImageOrientationPatient"), 6),
        pixel_spacing=spacing,  # type: ignore[arg-type]
        rows=int(ds.Rows) if "Rows" in ds else None,
        columns=int(ds.Columns) if "Columns" in ds else None,
        slope=_float(ds.get("RescaleSlope"), 1.0),  # type: ignore[arg-type]
        intercept=_float(ds.get("RescaleIntercept"), 0.0),  # type: ignore[arg-type]
        slice_thickness_mm=_float(ds.get("SliceThickness"), None),
        gantry_tilt_deg=_float(ds.get("GantryDetectorTilt"), None),
        frame_of_reference_uid=(
            str(ds.FrameOfReferenceUID) if "FrameOfReferenceUID" in ds else None
        ),
        manufacturer=str(ds.get("Manufacturer")) if ds.get("Manufacturer") else None,
        convolution_kernel=_kernel(ds.get("ConvolutionKernel")),
        study_date=str(ds.get("StudyDate")) if ds.get("StudyDate") else None,
        number_of_frames=int(_float(ds.get("NumberOfFrames"), 1.0) or 1),
        bits_stored=int(ds.get("BitsStored", 16) or 16),
        is_signed=bool(int(ds.get("PixelRepresentation", 0) or 0)),
        pixel_problem=_pixel_problem(ds, pixel_offset, path.stat().st_size, path),
        sop_instance_uid=str(ds.SOPInstanceUID) if "SOPInstanceUID" in ds else None,
    )
    if str(sop_class) in _ENHANCED_CT:
        return _frame_headers(ds, header)
    return [header]


def _group_item(ds: pydicom.Dataset, frame: int, keyword: str) -> pydicom.Dataset | None:
    """The item of a functional group macro (e.g. ``PlanePositionSequence``) for one frame:
    the per-frame group's if present, else the shared one (PS3.3 C.7.6.16)."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or ()
    shared = ds.get("SharedFunctionalGroupsSequence") or ()
    for item in (per_frame[frame] if frame < len(per_frame) else None,
                 shared[0] if shared else None):
        seq = item.get(keyword) if item is not None else None
        if seq:
            return seq[0]
    return None


def frame_geometry(ds: pydicom.Dataset) -> list[tuple[tuple[float, ...] | None, ...]]:
    """Per frame of an enhanced multi-frame image: (ImagePositionPatient,
    ImageOrientationPatient, PixelSpacing), each None when absent."""
    n = int(_float(ds.get("NumberOfFrames"), 1.0) or 1)
    out = []
    for k in range(n):
        position = _group_item(ds, k, "PlanePositionSequence")
        orientation = _group_item(ds, k, "PlaneOrientationSequence")
        measures = _group_item(ds, k, "PixelMeasuresSequence")
        out.append((
            _floats(position.get("ImagePositionPatient"), 3) if position else None,
            _floats(orientation.get("ImageOrientationPatient"), 6) if orientation else None,
            _floats(measures.get("PixelSpacing"), 2) if measures else None,
        ))
    return out


def _frame_headers(ds: pydicom.Dataset, file_header: SliceHeader) -> list[SliceHeader]:
    """One header per frame of an enhanced multi-frame CT: geometry, slice thickness and
    rescale from the frame's functional groups (frame type too, for localizers).

    Read by hand from pydicom: highdicom builds whole volumes, but lungvol's series checks
    (missing slices, uneven spacing, tilt, duplicated positions) work on per-image headers.
    """
    headers = []
    for k, (position, orientation, spacing) in enumerate(frame_geometry(ds)):
        measures = _group_item(ds, k, "PixelMeasuresSequence")
        rescale = _group_item(ds, k, "PixelValueTransformationSequence")
        frame_type = _group_item(ds, k, "CTImageFrameTypeSequence")
        frame_type_values = frame_type.get("FrameType") if frame_type else None
        headers.append(replace(
            file_header,
            position=position,
            orientation=orientation,
            pixel_spacing=spacing,  # type: ignore[arg-type]
            slice_thickness_mm=_float(measures.get("SliceThickness"), None) if measures else None,
            slope=_float(rescale.get("RescaleSlope"), 1.0) if rescale else 1.0,  # type: ignore[arg-type]
            intercept=_float(rescale.get("RescaleIntercept"), 0.0) if rescale else 0.0,  # type: ignore[arg-type]
            image_type=tuple(str(v).upper() for v in frame_type_values)
            if frame_type_values else file_header.image_type,
            frame=k,
        ))
    return headers


# Reconstruction kernels by sharpness. Vendors name them differently; this knows the common
# names, and anything else is unknown (ranked between the preferred kind and the other).
# Written by hand: no library maps kernel names across vendors.
_SIEMENS_KERNEL = re.compile(r"^(?:B|BR|BL|BV|BF|I|IR|Q|QR|HR|J)(\d{2})")  # B70f, Br64, I31f
_CANON_KERNEL = re.compile(r"^FC(\d{2})")  # FC51 (lung), FC13 (body)
_SHARP_WORDS = ("LUNG", "BONE", "EDGE", "DETAIL", "SHARP", "HRCT")
_SMOOTH_WORDS = ("STANDARD", "SOFT", "SMOOTH", "MEDIASTIN")


def kernel_sharpness(kernel: str | None, description: str = "") -> str | None:
    """"sharp", "smooth" or None for a ConvolutionKernel value (falling back on the series
    description's words).

    Siemens B/Br/Bl/I/Q/Hr/J kernels with a number of 50 or more are sharp, below 50 smooth;
    Canon/Toshiba FC50 and above sharp, below FC30 smooth; GE LUNG, BONE, BONEPLUS, EDGE,
    DETAIL sharp, STANDARD, SOFT smooth; Philips L (lung) sharp. Words in the description:
    LUNG or HRCT sharp, MEDIASTINUM or SOFT smooth.
    """
    text = (kernel or "").upper().replace(" ", "")
    match = _SIEMENS_KERNEL.match(text)
    if match:
        return "sharp" if int(match.group(1)) >= 50 else "smooth"
    match = _CANON_KERNEL.match(text)
    if match:
        number = int(match.group(1))
        return "sharp" if number >= 50 else ("smooth" if number < 30 else None)
    if text == "L":
        return "sharp"
    for words in (text, (description or "").upper()):
        if any(w in words for w in _SHARP_WORDS):
            return "sharp"
        if any(w in words for w in _SMOOTH_WORDS):
            return "smooth"
    return None


def _kernel(value: object) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value
    return "\\".join(str(v) for v in value)  # type: ignore[union-attr]


def slice_normal(orientation: Sequence[float]) -> np.ndarray:
    """Unit normal row x col of an ImageOrientationPatient, flipped to point superior (+z)."""
    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    n = np.cross(row, col)
    n /= np.linalg.norm(n)
    return -n if n[2] < 0 else n


def _sop_class_reason(sop_class: str) -> str | None:
    if sop_class == CT_IMAGE_STORAGE or sop_class in _ENHANCED_CT:
        return None
    name = UID(sop_class).name
    if "Secondary Capture" in name:
        return f"secondary capture ({name})"
    return f"not an image series lungvol can read ({name or sop_class})"


def _without_copies(headers: list[SliceHeader]) -> tuple[list[SliceHeader], list[str]]:
    """Headers with second copies of one image left out (same SOPInstanceUID, frame and
    position: an export that wrote a file twice), and the paths left out. Images that share
    only a position are not copies (two acquisitions): they are kept, and refused later."""
    seen: set[tuple] = set()
    kept: list[SliceHeader] = []
    copies: list[str] = []
    for h in headers:
        key = (h.sop_instance_uid, h.frame, h.position)
        if h.sop_instance_uid and key in seen:
            copies.append(h.path)
            continue
        seen.add(key)
        kept.append(h)
    return kept, copies


def _build_candidate(uid: str, headers: list[SliceHeader], config: IOConfig) -> SeriesCandidate:
    headers, copies = _without_copies(headers)
    first = headers[0]
    reasons: list[str] = []
    modality = first.modality or "?"
    sop_reason = _sop_class_reason(first.sop_class_uid)
    if modality != "CT":
        reasons.append(f"modality {modality}, not CT")
    elif sop_reason:
        reasons.append(sop_reason)
    if _LOCALIZER_WORDS & set(first.image_type):
        reasons.append("localizer/scout image")
    ordered = headers
    spacing: float | None = None
    extent = 0.0
    orientations = {h.orientation for h in headers}
    positioned = all(h.position is not None and h.orientation is not None for h in headers)
    if not reasons and not positioned:
        reasons.append("images lack ImagePositionPatient/ImageOrientationPatient")
    if not reasons and positioned:
        o = np.array([h.orientation for h in headers], float)
        if np.abs(o - o[0]).max() > _SAME_DIRECTION_TOLERANCE:
            reasons.append(f"{len(orientations)} different slice orientations in one series")
        elif len({(h.rows, h.columns) for h in headers}) > 1:
            reasons.append("images of different sizes in one series")
        else:
            normal = slice_normal(first.orientation)  # type: ignore[arg-type]
            tilt_from_axial = math.degrees(math.acos(min(1.0, abs(float(normal[2])))))
            proj = np.array([np.dot(h.position, normal) for h in headers])  # type: ignore[arg-type]
            order = np.argsort(proj, kind="stable")
            ordered = [headers[i] for i in order]
            proj = proj[order]
            gaps = np.diff(proj)
            extent = float(proj[-1] - proj[0]) if len(proj) else 0.0
            if gaps.size:
                spacing = float(np.median(gaps))
            if tilt_from_axial > _AXIAL_MAX_NORMAL_ANGLE_DEG and len(headers) < config.min_slices:
                reasons.append(
                    f"localizer/scout image ({len(headers)} non-axial slice(s), "
                    f"normal {tilt_from_axial:.0f} degrees from the z axis)"
                )
            elif tilt_from_axial > _AXIAL_MAX_NORMAL_ANGLE_DEG:
                reasons.append(
                    f"non-axial slices (normal {tilt_from_axial:.0f} degrees from the z axis)"
                )
            elif gaps.size and float(gaps.min()) < _SAME_POSITION_MM:
                n_dup = int(np.count_nonzero(gaps < _SAME_POSITION_MM))
                reasons.append(
                    f"{n_dup} slice position(s) occur twice (several acquisitions or phases in "
                    "one series); split the series before analysis"
                )
            elif len(headers) < config.min_slices:
                reasons.append(
                    f"only {len(headers)} slice(s); volumetry needs >= {config.min_slices} "
                    "(io.min_slices)"
                )
    elif not reasons and len(headers) < config.min_slices:
        reasons.append(f"only {len(headers)} slice(s); volumetry needs >= {config.min_slices}")
    return SeriesCandidate(
        uid=uid,
        modality=modality,
        n_slices=len(headers),
        slice_spacing_mm=spacing,
        z_extent_mm=extent,
        slice_thickness_mm=first.slice_thickness_mm,
        image_type=first.image_type,
        description=first.description,
        sop_class=UID(first.sop_class_uid).name or first.sop_class_uid,
        is_usable=not reasons,
        reason="; ".join(reasons) if reasons else "usable",
        files=tuple(h.path for h in ordered),
        headers=tuple(ordered),
        duplicate_files=tuple(copies),
    )


def _walk_files(root: Path) -> list[Path]:
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        files.extend(Path(dirpath) / f for f in sorted(filenames) if not f.startswith("."))
    return files


def scan_dicom(path: Path, *, config: IOConfig) -> tuple[list[SeriesCandidate], str | None]:
    """Group the DICOM files under ``path`` into series candidates.

    A folder is searched recursively. A single file stands for its series: the files of the
    same folder (not recursive) with its SeriesInstanceUID. Returns the candidates and, for a
    single file, that file's series UID.

    Raises
    ------
    InputError
        Missing path, empty folder, no DICOM files, or a corrupt DICOM file.
    """
    if not path.exists():
        raise InputError(f"input path {path} does not exist; check the path")
    wanted_uid: str | None = None
    if path.is_file():
        own = read_header(path, strict=True)
        if own is None:  # pragma: no cover - strict=True raises instead
            raise InputError(f"{path} is not a DICOM image; pass a CT DICOM file or folder")
        wanted_uid = own.series_uid
        files = sorted(p for p in path.parent.iterdir() if p.is_file())
    else:
        files = _walk_files(path)
        if not files:
            raise InputError(f"folder {path} is empty; point to a folder with the CT's DICOM files")
    by_series: dict[str, list[SliceHeader]] = defaultdict(list)
    for f in files:
        for header in read_headers(f, strict=False):
            if wanted_uid is None or header.series_uid == wanted_uid:
                by_series[header.series_uid].append(header)
    if not by_series:
        raise InputError(
            f"no DICOM files found in {path} ({len(files)} file(s) checked); point to a DICOM "
            "folder or a .nii/.nii.gz/.nrrd/.mha volume"
        )
    candidates = [_build_candidate(uid, hs, config) for uid, hs in by_series.items()]
    logger.debug("found %d series under %s", len(candidates), path)
    return rank_candidates(candidates, config), wanted_uid


def rank_candidates(
    candidates: Sequence[SeriesCandidate], config: IOConfig
) -> list[SeriesCandidate]:
    """Order candidates best first (see ``choose_series``); unusable ones last, by UID."""
    usable = [c for c in candidates if c.is_usable]
    rest = sorted((c for c in candidates if not c.is_usable), key=lambda c: c.uid)
    if not usable:
        return rest
    originals = [c for c in usable if c.is_original]
    pool = originals or usable
    max_extent = max(c.z_extent_mm for c in pool)

    def key(c: SeriesCandidate) -> tuple:
        covers = c.z_extent_mm >= config.series_coverage_fraction * max_extent
        return (
            c not in pool,
            not covers,
            c.slice_spacing_mm if c.slice_spacing_mm is not None else math.inf,
            _kernel_rank(c, config),
            -c.n_slices,
            c.uid,
        )

    return sorted(usable, key=key) + rest


def _kernel_rank(candidate: SeriesCandidate, config: IOConfig) -> int:
    """0 for the preferred kernel kind (``io.prefer_kernel``), 1 unknown, 2 the other kind."""
    if config.prefer_kernel == "none":
        return 0
    sharpness = candidate.sharpness
    if sharpness is None:
        return 1
    return 0 if sharpness == config.prefer_kernel else 2


def selection_reason(
    chosen: SeriesCandidate, candidates: Sequence[SeriesCandidate], *, explicit: str | None
) -> str:
    """One line saying which series was chosen and why the others were not.

    ``explicit`` is how the user named the series (e.g. "requested with series_uid"), or None
    when the selection rule chose it.
    """
    why = explicit or "thinnest series covering the scan"
    if len(candidates) == 1:
        return f"1 series found; using {chosen.uid} ({chosen.summary()})"
    others = []
    for c in candidates:
        if c.uid == chosen.uid:
            continue
        if not c.is_usable:
            others.append(f"{c.uid} ({c.reason})")
        elif explicit:
            others.append(f"{c.uid} ({c.summary()})")
        elif not c.is_original and chosen.is_original:
            others.append(f"{c.uid} ({c.summary()}: derived images)")
        elif (c.slice_spacing_mm or math.inf) > (chosen.slice_spacing_mm or math.inf):
            others.append(f"{c.uid} ({c.summary()}: thicker slice spacing)")
        elif (
            c.slice_spacing_mm == chosen.slice_spacing_mm and c.sharpness != chosen.sharpness
            and chosen.sharpness is not None
        ):
            others.append(
                f"{c.uid} ({c.summary()}: kernel {c.kernel or 'unknown'}, "
                f"{chosen.sharpness} kernel {chosen.kernel} preferred by io.prefer_kernel)"
            )
        else:
            others.append(f"{c.uid} ({c.summary()}: covers less of the scan)")
    return (
        f"{len(candidates)} series found; chose {chosen.uid} ({chosen.summary()}, {why}); "
        f"ignored {', '.join(others)}"
    )


def choose_series(
    candidates: Sequence[SeriesCandidate], *, series_uid: str | None, config: IOConfig
) -> SeriesCandidate:
    """Pick the series to read.

    Rule (``candidates`` ranked by ``rank_candidates``): among usable series (CT modality,
    CT Image Storage, not a localizer, axial, consistent geometry, >= io.min_slices slices),
    ORIGINAL images are preferred over DERIVED ones; among those, a series *covers* the scan
    when its z extent is >= ``io.series_coverage_fraction`` x the largest extent; the covering
    series with the smallest slice spacing wins; ties go to more slices, then the smaller UID.
    ``series_uid`` overrides the rule.

    Raises
    ------
    InputError
        Unknown ``series_uid`` (the message lists the available UIDs), or no usable series.
    NotCTError
        No series is a CT image series (MR, localizers, secondary captures, reports only).
    """
    if series_uid is not None:
        match = [c for c in candidates if c.uid == series_uid]
        if not match:
            available = ", ".join(f"{c.uid} ({c.summary()})" for c in candidates)
            raise InputError(f"series {series_uid} not found; available series: {available}")
        chosen = match[0]
        if not chosen.is_usable:
            cls = NotCTError if chosen.reason.startswith(NOT_CT_PREFIXES) else InputError
            raise cls(f"series {chosen.uid} cannot be used: {chosen.reason}")
        return chosen
    usable = [c for c in candidates if c.is_usable]
    if usable:
        return usable[0]
    listing = "; ".join(f"{c.uid}: {c.reason}" for c in candidates)
    if all(c.reason.startswith(NOT_CT_PREFIXES) for c in candidates):
        raise NotCTError(
            f"no CT image series found ({listing}); lungvol needs an axial chest CT series"
        )
    raise InputError(f"no usable CT series ({listing}); pass a complete axial chest CT series")
