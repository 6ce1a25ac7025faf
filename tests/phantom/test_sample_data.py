"""The committed sample phantoms are exactly what the generator makes from their truth.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813

from lungvol.io import read_ct
from lungvol.phantom import make_phantom

REGENERATE = "rerun the commands in sample_data/README.md and commit the result"


def _labels(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.mark.parametrize(("folder", "ct"), [("phantom_small", "dicom"),
                                            ("phantom_small_normal", "ct.nii.gz")])
def test_regenerating_with_the_same_seed_gives_identical_truth(
    sample_data: Path, folder: str, ct: str
) -> None:
    root = sample_data / folder
    truth = json.loads((root / "truth.json").read_text())
    ph = make_phantom(
        shape=tuple(truth["shape"]),
        spacing_mm=tuple(truth["spacing_mm"]),
        seed=truth["seed"],
        lesion_pct=truth["target_lesion_pct"],
        solid_pct=truth["target_solid_pct"],
        noise_hu=truth["noise_hu"],
        psf_fwhm_mm=truth["psf_fwhm_mm"],
    )
    assert np.array_equal(_labels(root / "truth_lungs.nii.gz"), ph.lungs), REGENERATE
    assert np.array_equal(_labels(root / "truth_lesions.nii.gz"), ph.lesions), REGENERATE
    stored = {k: v for k, v in truth.items() if k != "format"}
    assert stored == json.loads(json.dumps(ph.truth)), REGENERATE
    volume = read_ct(root / ct)
    assert np.array_equal(volume.hu, ph.hu), REGENERATE
    assert volume.spacing_mm == pytest.approx(ph.spacing_mm)


def test_sample_phantoms_have_the_documented_burden(sample_data: Path) -> None:
    small = json.loads((sample_data / "phantom_small" / "truth.json").read_text())
    normal = json.loads((sample_data / "phantom_small_normal" / "truth.json").read_text())
    assert small["lesion_proportion_pct"] == pytest.approx(15.0, abs=0.1)
    assert small["solid_proportion_pct"] == pytest.approx(3.0, abs=0.1)
    assert normal["lesion_proportion_pct"] == 0.0
    total_bytes = sum(p.stat().st_size for p in sample_data.rglob("*") if p.is_file())
    assert total_bytes < 6_000_000
