"""Lung and lesion segmentation (classical, no learned weights).

- :func:`segment_lungs` -> :class:`~lungvol.types.LungMask` (1 right, 2 left lung).
- :func:`segment_lesions` -> :class:`~lungvol.types.LesionMask` (1 ground-glass, 2 solid).
"""

from lungvol.segmentation.lesions import segment_lesions
from lungvol.segmentation.lungs import segment_lungs

__all__ = ["segment_lesions", "segment_lungs"]
