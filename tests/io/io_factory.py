"""Small synthetic chest-like CT volumes and DICOM fixtures for the io tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

AIR_HU = -1000
BODY_HU = 40
LUNG_HU = -850


def chest_like(shape: tuple[int, int, int] = (20, 32, 32), seed: int = 0) -> np.ndarray:
    """int16 HU volume: air outside, a soft-tissue body, two air-filled 'lungs', noise."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    cy, cx = (shape[1] - 1) / 2, (shape[2] - 1) / 2
    hu = np.full(shape, AIR_HU, np.float64)
    body = ((y - cy) / (0.45 * shape[1])) ** 2 + ((x - cx) / (0.45 * shape[2])) ** 2 <= 1
    hu[body] = BODY_HU
    for side in (-1, 1):
        lung = ((y - cy) / (0.25 * shape[1])) ** 2 + (
            (x - cx - side * 0.2 * shape[2]) / (0.12 * shape[2])
        ) ** 2 <= 1
        hu[lung] = LUNG_HU
    hu += rng.normal(0, 10, shape)
    # Unique marker per slice so ordering errors are visible.
    hu[:, 0, 0] = np.arange(shape[0]) * 10 - 500
    return np.rint(hu).astype(np.int16)


def write_non_image(path: Path, *, sop_class: str, modality: str, series_uid: str | None = None):
    """A minimal DICOM object without pixels (SR dose report, RT structure set, ...)."""
    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.Modality = modality
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_secondary_capture(path: Path) -> Path:
    """A secondary capture image (e.g. a dose screen) with CT modality."""
    from lungvol.io import write_dicom_series

    f = write_dicom_series(np.zeros((1, 8, 8)), path.parent / "sc_tmp", spacing_mm=(1, 1, 1))[0]
    ds = pydicom.dcmread(f)
    ds.SOPClassUID = pydicom.uid.SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.SecondaryCaptureImageStorage
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.SeriesInstanceUID = generate_uid()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    f.unlink()
    f.parent.rmdir()
    return path
