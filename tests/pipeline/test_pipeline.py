"""segment_scan with the read/segment stages replaced by fakes on a synthetic chest.

These tests pin the pipeline's own contract (outputs, atomic writes, refusal/overwrite,
clean-up on errors and Ctrl-C) independently of the real io/segmentation stages.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NoReturn

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813 - tests read the written NIfTI back directly

import lungvol.io as lio
import lungvol.pipeline as pipeline
import lungvol.segmentation as lseg
from lungvol.config import LungvolConfig, config_from_dict
from lungvol.errors import InputError
from lungvol.pipeline import segment_scan
from lungvol.types import CTVolume

from ._synthetic import chest

CFG = LungvolConfig()


@pytest.fixture
def fake_stages(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Replace read_ct/segment_lungs/segment_lesions; return a fake input file path."""
    vol, lungs, lesions = chest(spacing_mm=(2.0, 0.8, 0.7))
    calls: dict[str, int] = {"read": 0}

    def read_ct(path: object, *, series_uid: object = None, config: object = None) -> CTVolume:
        calls["read"] += 1
        return vol

    monkeypatch.setattr(lio, "read_ct", read_ct, raising=False)
    monkeypatch.setattr(lseg, "segment_lungs", lambda v, c: lungs, raising=False)
    monkeypatch.setattr(lseg, "segment_lesions", lambda v, lm, c: lesions, raising=False)
    src = tmp_path / "input" / "ct.nii.gz"
    src.parent.mkdir()
    src.write_bytes(b"not read by the fake reader")
    return src


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def test_writes_every_output_and_no_temp_folder(fake_stages: Path, tmp_path: Path) -> None:
    out = tmp_path / "res" / "scan1"
    metrics = segment_scan(fake_stages, out, config=CFG)
    names = {p.name for p in out.iterdir()}
    assert names == {"lungs.nii.gz", "lesions.nii.gz", "metrics.json", "qc.png", "run.json"}
    assert _leftovers(out.parent) == []
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == json.loads(pipeline.metrics_json(metrics))
    assert on_disk["lung_volume_ml"] == pytest.approx(metrics.lung_volume_ml)
    timings = on_disk["provenance"]["timings_s"]
    assert {"read", "lungs", "lesions", "quantification", "write", "total"} <= set(timings)
    run = json.loads((out / "run.json").read_text())
    # The recorded config rebuilds the very config that ran (same hash).
    assert config_from_dict(run["config"]).hash == CFG.hash
    assert run["config_hash"] == CFG.hash
    assert run["command"]["dicom_seg"] is False
    assert run["device"]["device"] == "cpu"
    assert run["input"]["series_uid"] == "1.2.3"
    assert run["outputs"]["metrics"] == "metrics.json"
    assert set(run["cpu_s"]) == {
        "read", "lungs", "lesions", "subpleural", "quantification", "write"
    }


def test_label_maps_keep_the_ct_geometry_and_labels(fake_stages: Path, tmp_path: Path) -> None:
    out = tmp_path / "scan"
    segment_scan(fake_stages, out, config=CFG)
    vol, lungs, lesions = chest(spacing_mm=(2.0, 0.8, 0.7))
    for name, ref in (("lungs.nii.gz", lungs.labels), ("lesions.nii.gz", lesions.labels)):
        img = sitk.ReadImage(str(out / name))
        arr = sitk.GetArrayFromImage(img)
        assert arr.dtype == np.uint8
        np.testing.assert_array_equal(arr, ref)
        np.testing.assert_allclose(img.GetSpacing()[::-1], vol.spacing_mm)


def test_existing_output_is_refused_and_left_untouched(fake_stages: Path, tmp_path: Path) -> None:
    out = tmp_path / "scan"
    out.mkdir()
    (out / "keep.txt").write_text("old result")
    with pytest.raises(InputError, match="already exists; pass --overwrite"):
        segment_scan(fake_stages, out, config=CFG)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert _leftovers(tmp_path) == []


def test_overwrite_replaces_the_old_folder_completely(fake_stages: Path, tmp_path: Path) -> None:
    out = tmp_path / "scan"
    out.mkdir()
    (out / "keep.txt").write_text("old result")
    segment_scan(fake_stages, out, config=CFG, overwrite=True)
    assert not (out / "keep.txt").exists()
    assert (out / "metrics.json").is_file()
    assert _leftovers(tmp_path) == []


def test_output_path_that_is_a_file_is_refused_even_with_overwrite(
    fake_stages: Path, tmp_path: Path
) -> None:
    out = tmp_path / "scan"
    out.write_text("a file")
    with pytest.raises(InputError, match="not a folder"):
        segment_scan(fake_stages, out, config=CFG, overwrite=True)


@pytest.mark.parametrize("stage", ["segment_lungs", "segment_lesions"])
def test_ctrl_c_during_a_stage_leaves_nothing(
    fake_stages: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stage: str
) -> None:
    def interrupt(*args: object, **kwargs: object) -> NoReturn:
        raise KeyboardInterrupt

    monkeypatch.setattr(lseg, stage, interrupt, raising=False)
    out = tmp_path / "new" / "scan"
    with pytest.raises(KeyboardInterrupt):
        segment_scan(fake_stages, out, config=CFG)
    assert not (tmp_path / "new").exists()


def test_ctrl_c_while_writing_removes_the_temp_folder_and_created_parents(
    fake_stages: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupt(*args: object, **kwargs: object) -> NoReturn:
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "render_qc_png", interrupt)
    out = tmp_path / "a" / "b" / "scan"
    with pytest.raises(KeyboardInterrupt):
        segment_scan(fake_stages, out, config=CFG)
    assert not (tmp_path / "a").exists()
    assert _leftovers(tmp_path) == []


def test_an_error_while_the_masks_are_written_waits_for_them_then_cleans_up(
    fake_stages: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The mask files are written on a second thread during the measurement: an error in
    # the measurement must wait for that thread, or it could write into (and recreate) the
    # temporary folder after the clean-up.
    import threading
    import time

    write = lio.write_label_nifti
    finished: list[str] = []
    started = threading.Event()

    def slow_write(labels: object, volume: object, path: Path) -> Path:
        started.set()
        time.sleep(0.3)
        out = write(labels, volume, path)  # type: ignore[arg-type]
        finished.append(path.name)
        return out

    def broken(*args: object, **kwargs: object) -> NoReturn:
        started.wait(5)
        raise KeyboardInterrupt

    monkeypatch.setattr(lio, "write_label_nifti", slow_write)
    monkeypatch.setattr(pipeline, "measure_scan", broken)
    out = tmp_path / "a" / "scan"
    with pytest.raises(KeyboardInterrupt):
        segment_scan(fake_stages, out, config=CFG)
    assert finished == ["lungs.nii.gz", "lesions.nii.gz"]  # done before the clean-up
    assert not (tmp_path / "a").exists()


def test_a_failing_mask_write_fails_the_run_and_leaves_nothing(
    fake_stages: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(*args: object, **kwargs: object) -> NoReturn:
        raise OSError("disk full")

    monkeypatch.setattr(lio, "write_label_nifti", full)
    out = tmp_path / "scan"
    with pytest.raises(OSError, match="disk full"):
        segment_scan(fake_stages, out, config=CFG)
    assert not out.exists()
    assert _leftovers(tmp_path) == []


def test_failed_overwrite_keeps_the_previous_result(
    fake_stages: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "scan"
    segment_scan(fake_stages, out, config=CFG)
    before = (out / "metrics.json").read_text()

    def broken(*args: object, **kwargs: object) -> NoReturn:
        raise OSError("disk full")

    monkeypatch.setattr(pipeline, "render_qc_png", broken)
    with pytest.raises(OSError, match="disk full"):
        segment_scan(fake_stages, out, config=CFG, overwrite=True)
    assert (out / "metrics.json").read_text() == before
    assert _leftovers(tmp_path) == []


def test_dicom_seg_for_a_non_dicom_input_is_refused_before_writing(
    fake_stages: Path, tmp_path: Path
) -> None:
    out = tmp_path / "scan"
    with pytest.raises(InputError, match="--dicom-seg needs a DICOM input"):
        segment_scan(fake_stages, out, config=CFG, dicom_seg=True)
    assert not out.exists()


def test_missing_input_and_unresolved_device_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        segment_scan(tmp_path / "nope", tmp_path / "out", config=CFG)
    with pytest.raises(InputError, match="device"):
        segment_scan(tmp_path, tmp_path / "out", config=CFG, device="auto")
    assert not (tmp_path / "out").exists()


def test_qc_png_can_be_switched_off_in_the_config(fake_stages: Path, tmp_path: Path) -> None:
    from lungvol.config import OutputConfig

    cfg = LungvolConfig(output=OutputConfig(qc_png=False))
    segment_scan(fake_stages, tmp_path / "scan", config=cfg)
    assert not (tmp_path / "scan" / "qc.png").exists()


def test_an_output_folder_that_holds_the_input_is_refused_even_with_overwrite(
    fake_stages: Path,
) -> None:
    for out in (fake_stages.parent, fake_stages.parent.parent):
        with pytest.raises(InputError, match="holds the input"):
            segment_scan(fake_stages, out, config=CFG, overwrite=True)
    assert fake_stages.is_file()
