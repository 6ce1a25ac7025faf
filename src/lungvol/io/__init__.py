"""lungvol.io: reading CT scans into HU/LPS volumes and writing volumes, labels and DICOM.

The only package that imports SimpleITK or pydicom.
"""

from lungvol.io.writers import write_dicom_series, write_label_nifti, write_volume

__all__ = ["write_dicom_series", "write_label_nifti", "write_volume"]
