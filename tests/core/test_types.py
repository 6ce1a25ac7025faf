"""Core types validate themselves when built."""

from __future__ import annotations

import numpy as np
import pytest

from lungvol.errors import GeometryError
from lungvol.types import CTVolume, SourceInfo

SRC = SourceInfo(path="x", kind="nifti", sha256="0" * 64)


def _vol(**kw):
    args = {
        "hu": np.zeros((4, 5, 6), np.int16),
        "spacing_mm": (2.0, 0.5, 0.5),
        "origin_lps_mm": (0.0, 0.0, 0.0),
        "direction": np.eye(3),
        "source": SRC,
    }
    args.update(kw)
    return CTVolume(**args)


def test_valid_volume_reports_voxel_volume_in_ml() -> None:
    v = _vol()
    assert v.shape == (4, 5, 6)
    assert v.voxel_volume_ml == pytest.approx(2.0 * 0.5 * 0.5 / 1000.0)


@pytest.mark.parametrize(
    "kw",
    [
        {"hu": np.zeros((4, 5), np.int16)},
        {"spacing_mm": (0.0, 1.0, 1.0)},
        {"direction": np.ones((3, 3))},
    ],
)
def test_invalid_geometry_is_refused(kw) -> None:
    with pytest.raises(GeometryError):
        _vol(**kw)


def test_source_info_dict_has_no_file_list_but_a_count() -> None:
    s = SourceInfo(path="p", kind="dicom", sha256="a", files=("a.dcm", "b.dcm"))
    d = s.to_dict()
    assert d["n_files"] == 2
    assert "files" not in d
