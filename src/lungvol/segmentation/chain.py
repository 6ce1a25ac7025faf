"""The segmentation stages in order, for callers that need the masks and not the timings."""

from __future__ import annotations

from lungvol.config import LungvolConfig
from lungvol.segmentation.lesions import segment_lesions
from lungvol.segmentation.lungs import segment_lungs
from lungvol.segmentation.subpleural import recover_subpleural_layer
from lungvol.types import CTVolume, LesionMask, LungMask


def segment_masks(volume: CTVolume, config: LungvolConfig) -> tuple[LungMask, LesionMask]:
    """Lungs, lesions, then the subpleural-layer step: the masks ``lungvol segment`` reports.

    Raises
    ------
    SegmentationError
        When no lungs are found.
    """
    lungs = segment_lungs(volume, config.lungs)
    lesions = segment_lesions(volume, lungs, config.lesions)
    return recover_subpleural_layer(volume, lungs, lesions, config)
