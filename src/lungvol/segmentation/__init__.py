"""Lung and lesion segmentation (classical, no learned weights).

- :func:`segment_lungs` -> :class:`~lungvol.types.LungMask` (1 right, 2 left lung).
- :func:`segment_lesions` -> :class:`~lungvol.types.LesionMask` (1 ground-glass, 2 solid).
- :func:`recover_subpleural_layer`: a consolidation layer along the costal pleura that the
  lung mask left out, found by its distance from the ribs.
- :func:`segment_masks`: the three in order.
"""

from lungvol.segmentation.chain import segment_masks
from lungvol.segmentation.lesions import segment_lesions
from lungvol.segmentation.lungs import segment_lungs
from lungvol.segmentation.subpleural import recover_subpleural_layer

__all__ = ["recover_subpleural_layer", "segment_lesions", "segment_lungs", "segment_masks"]
