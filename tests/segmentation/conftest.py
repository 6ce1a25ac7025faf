"""Fixtures of the slow accuracy tests: the real normal chest, segmented once per module."""

from __future__ import annotations

import pytest
from real_chest import CFG

from lungvol.io import read_ct
from lungvol.segmentation import segment_lesions, segment_lungs


@pytest.fixture(scope="module")
def chest(real_ct):
    """The real chest CT (../shared) and its lung mask."""
    vol = read_ct(real_ct / "chest-ct-full-dicom" / "dicom")
    lungs = segment_lungs(vol, CFG.lungs)
    return vol, lungs


@pytest.fixture(scope="module")
def chest_lesions(chest):
    """The normal chest's lesion mask, segmented once for the tests that read it."""
    vol, lungs = chest
    return segment_lesions(vol, lungs, CFG.lesions)
