"""write_phantom (atomic, round trip through lungvol.io) and the ``lungvol phantom`` command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813
from typer.testing import CliRunner

import lungvol.io
from lungvol.cli import app
from lungvol.errors import InputError
from lungvol.io import read_ct
from lungvol.phantom import Phantom, make_phantom, write_phantom

TINY = (48, 64, 64)


@pytest.fixture(scope="module")
def ph() -> Phantom:
    return make_phantom(shape=TINY, seed=8, lesion_pct=10.0, solid_pct=2.0)


def _read_labels(path: Path) -> tuple[np.ndarray, tuple[float, ...], tuple[float, ...]]:
    img = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(img), img.GetSpacing()[::-1], img.GetOrigin()


@pytest.mark.parametrize("fmt", ["dicom", "nifti"])
def test_write_read_round_trip(ph: Phantom, tmp_path: Path, fmt: str) -> None:
    paths = write_phantom(ph, tmp_path / "out", fmt=fmt)
    assert (paths["ct"].name == "dicom") is (fmt == "dicom")
    volume = read_ct(paths["ct"])
    assert np.array_equal(volume.hu, ph.hu)
    assert volume.spacing_mm == pytest.approx(ph.spacing_mm)
    assert volume.origin_lps_mm == pytest.approx(ph.origin_lps_mm)
    lungs, spacing, origin = _read_labels(paths["truth_lungs"])
    lesions, _, _ = _read_labels(paths["truth_lesions"])
    assert lungs.dtype == np.uint8
    assert np.array_equal(lungs, ph.lungs)
    assert np.array_equal(lesions, ph.lesions)
    assert spacing == pytest.approx(ph.spacing_mm)
    assert origin == pytest.approx(ph.origin_lps_mm)
    truth = json.loads(paths["truth_json"].read_text())
    assert truth["lesion_proportion_pct"] == pytest.approx(ph.truth["lesion_proportion_pct"])
    assert truth["format"] == fmt


def test_dicom_has_no_real_identifiers(ph: Phantom, tmp_path: Path) -> None:
    import pydicom

    paths = write_phantom(ph, tmp_path / "out", fmt="dicom")
    files = sorted(paths["ct"].iterdir())
    assert len(files) == TINY[0]
    ds = pydicom.dcmread(files[0])
    assert ds.PatientID == "PHANTOM"
    assert ds.StudyDate == "20200101"


def test_existing_non_empty_folder_is_refused(ph: Phantom, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(InputError, match="not empty"):
        write_phantom(ph, out, fmt="nifti")
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    write_phantom(ph, out, fmt="nifti", overwrite=True)
    assert (out / "ct.nii.gz").is_file()
    assert not (out / "keep.txt").exists()


def test_failure_while_writing_leaves_nothing(
    ph: Phantom, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"n": 0}
    real_write = lungvol.io.write_volume

    def flaky(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_write(*args, **kwargs)

    monkeypatch.setattr(lungvol.io, "write_volume", flaky)
    with pytest.raises(KeyboardInterrupt):
        write_phantom(ph, tmp_path / "out", fmt="nifti")
    assert list(tmp_path.iterdir()) == []


def test_cli_writes_a_phantom_and_prints_the_truth(tmp_path: Path) -> None:
    out = tmp_path / "ph"
    runner = CliRunner()
    args = ["phantom", str(out), "--seed", "3", "--size", "48x64x64", "--format", "nifti",
            "--lesion-pct", "8", "--solid-pct", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "lesions" in result.output
    assert "8.00 %" in result.output
    truth = json.loads((out / "truth.json").read_text())
    assert truth["seed"] == 3
    assert truth["shape"] == [48, 64, 64]
    assert truth["lesion_proportion_pct"] == pytest.approx(8.0, rel=0.1)
    assert {p.name for p in out.iterdir()} == {
        "ct.nii.gz", "truth_lungs.nii.gz", "truth_lesions.nii.gz", "truth.json"
    }
    # A second run into the same folder is refused with a one-line error, exit code 1.
    again = runner.invoke(app, args)
    assert again.exit_code == 1
    assert "not empty" in again.output
    assert "--overwrite" in again.output
    overwritten = runner.invoke(app, [*args, "--overwrite", "--json"])
    assert overwritten.exit_code == 0, overwritten.output
    assert json.loads(overwritten.stdout)["seed"] == 3  # --json: stdout only


def test_cli_noise_seed_rescans_the_same_chest(tmp_path: Path) -> None:
    """Same --seed, two --noise-seed values: identical truth masks, different CT voxels."""
    runner = CliRunner()
    outs = [tmp_path / "scan", tmp_path / "rescan"]
    for out, noise_seed in zip(outs, ("1", "2"), strict=True):
        result = runner.invoke(app, ["phantom", str(out), "--seed", "3", "--size", "48x64x64",
                                     "--format", "nifti", "--noise-seed", noise_seed])
        assert result.exit_code == 0, result.output
    first, second = (json.loads((o / "truth.json").read_text()) for o in outs)
    assert (first["noise_seed"], second["noise_seed"]) == (1, 2)
    assert first["lesion_volume_ml"] == second["lesion_volume_ml"]
    for name in ("truth_lungs.nii.gz", "truth_lesions.nii.gz"):
        assert np.array_equal(_read_labels(outs[0] / name)[0], _read_labels(outs[1] / name)[0])
    scans = [_read_labels(o / "ct.nii.gz")[0] for o in outs]
    assert not np.array_equal(*scans)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--size", "huge"], "preset"),
        (["--format", "png"], "format"),
        (["--lesion-pct", "5", "--solid-pct", "9"], "solid_pct"),
    ],
)
def test_cli_bad_options_give_one_line_errors(tmp_path: Path, extra: list, message: str) -> None:
    out = tmp_path / "ph"
    result = CliRunner().invoke(app, ["phantom", str(out), "--size", "48x64x64", *extra])
    assert result.exit_code == 1
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not out.exists()
