"""`lungvol segment` in-process with the read/segment stages faked (fast CLI contract tests)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import lungvol.io as lio
import lungvol.segmentation as lseg
from lungvol.cli import app
from lungvol.cli.segment import default_output

from ._synthetic import chest

runner = CliRunner()


@pytest.fixture
def fake_input(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    vol, lungs, lesions = chest()
    monkeypatch.setattr(lio, "read_ct", lambda p, **kw: vol, raising=False)
    monkeypatch.setattr(lseg, "segment_lungs", lambda v, c: lungs, raising=False)
    monkeypatch.setattr(lseg, "segment_lesions", lambda v, lm, c: lesions, raising=False)
    # The phase check runs the whole chain at each shifted lattice.
    monkeypatch.setattr(lseg, "segment_masks", lambda v, c: (lungs, lesions), raising=False)
    src = tmp_path / "ct.nii.gz"
    src.write_bytes(b"x")
    return src


def test_json_prints_exactly_metrics_json_on_stdout(fake_input: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, ["segment", str(fake_input), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert result.stdout == (out / "metrics.json").read_text()
    assert json.loads(result.stdout)["normal_ct"] is True
    assert "normal CT" in result.stderr
    assert str(out) in result.stderr.replace("\n", "")


def test_without_json_stdout_is_empty_and_summary_goes_to_stderr(
    fake_input: Path, tmp_path: Path
) -> None:
    result = runner.invoke(app, ["segment", str(fake_input), "-o", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    for text in ("lungs (right / left)", "ground-glass", "solid", "QC flags", "lung_volume"):
        assert text in result.stderr


def test_existing_output_exits_1_with_one_line_and_overwrite_works(
    fake_input: Path, tmp_path: Path
) -> None:
    out = tmp_path / "o"
    out.mkdir()
    result = runner.invoke(app, ["segment", str(fake_input), "-o", str(out)])
    assert result.exit_code == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert "--overwrite" in result.stderr
    result = runner.invoke(app, ["segment", str(fake_input), "-o", str(out), "--overwrite"])
    assert result.exit_code == 0, result.output
    assert (out / "metrics.json").is_file()


def test_config_file_is_used_and_recorded(fake_input: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "strict.yaml"
    cfg.write_text("quantification:\n  normal_ct_max_lesion_pct: 0.0001\n")
    out = tmp_path / "o"
    result = runner.invoke(
        app, ["segment", str(fake_input), "-o", str(out), "--config", str(cfg), "--json"]
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["normal_ct"] is False
    assert metrics["provenance"]["config_source"] == str(cfg)
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["quantification"]["normal_ct_max_lesion_pct"] == 0.0001


def test_phase_check_flag_runs_the_check_and_records_it_in_the_config(
    fake_input: Path, tmp_path: Path
) -> None:
    from lungvol.config import load_config

    plain = tmp_path / "plain"
    result = runner.invoke(app, ["segment", str(fake_input), "-o", str(plain), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["phase_check"] is None
    out = tmp_path / "o"
    result = runner.invoke(
        app, ["segment", str(fake_input), "-o", str(out), "--phase-check", "--json"]
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    check = metrics["phase_check"]
    # The faked stages return the same masks at every phase: no spread, no flag.
    assert [r["offset_voxels"] for r in check["phases"]] == [
        [0, 0, 0], [0, 0, 1], [0, 1, 0], [0, 1, 1]
    ]
    assert check["lesion_proportion_range_pp"] == 0.0
    assert check["normal_ct_agrees"] is True
    assert "phase_check" in metrics["provenance"]["timings_s"]
    assert "block-phase check (4 phases)" in result.stderr
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["quantification"]["phase_check"] is True
    default_hash = load_config(None).hash
    assert metrics["provenance"]["config_hash"] == run["config_hash"] != default_hash


def test_bad_config_and_bad_device_fail_with_one_line(fake_input: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("quantification:\n  no_such_key: 1\n")
    for extra in (["--config", str(cfg)], ["--device", "tpu"]):
        out = tmp_path / "o"
        result = runner.invoke(app, ["segment", str(fake_input), "-o", str(out), *extra])
        assert result.exit_code == 1, result.output
        assert len(result.stderr.strip().splitlines()) == 1
        assert not out.exists()


def test_default_output_is_lungvol_out_slash_input_name_without_suffix() -> None:
    assert default_output(Path("/data/scan7.nii.gz")) == Path("lungvol_out/scan7")
    assert default_output(Path("/data/subj/dicom")) == Path("lungvol_out/dicom")
