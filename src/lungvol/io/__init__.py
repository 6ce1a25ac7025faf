"""lungvol.io: reading CT scans into HU/LPS volumes and writing volumes, labels and DICOM.

The only package that imports SimpleITK or pydicom.
"""

from lungvol.io.dicom_seg import write_dicom_seg
from lungvol.io.reader import list_series, read_ct
from lungvol.io.series import SeriesCandidate
from lungvol.io.writers import write_dicom_series, write_label_nifti, write_volume

__all__ = [
    "SeriesCandidate",
    "list_series",
    "read_ct",
    "write_dicom_seg",
    "write_dicom_series",
    "write_label_nifti",
    "write_volume",
]
