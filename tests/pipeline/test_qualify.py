"""`lungvol qualify`: lesions of known volume inserted into a scan without pneumonia, read back.

Fast: the committed lesion-free phantom (sample_data/phantom_small_normal) and small arrays.
The real chest over insertion seeds: tests/segmentation/test_accuracy_insertion_seeds_slow.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import lungvol.reporting.qualify as rq
from lungvol.cli import app
from lungvol.config import load_config
from lungvol.errors import InputError
from lungvol.io import read_ct
from lungvol.qualify import (
    QualifyTargets,
    check_burdens,
    lesion_metrics,
    qualify_scan,
    qualify_volume,
)

runner = CliRunner()
CFG = load_config(None)
QUALIFY_FILES = {"qualify.json", "qualify.md", "qualify.png"}


@pytest.fixture(scope="module")
def normal_phantom(sample_data: Path):
    return read_ct(sample_data / "phantom_small_normal" / "ct.nii.gz")


@pytest.fixture(scope="module")
def qualified(normal_phantom):
    """Both models at 15 %, two insertions each, on the lesion-free small phantom (about 7 s)."""
    return qualify_volume(normal_phantom, CFG, burdens_pct=[15.0], seed=3, repeats=2)


def test_lesion_metrics_count_the_labels():
    lungs = np.zeros((4, 10, 10), np.uint8)
    lungs[:, :, :5] = 1
    lungs[:, :, 5:] = 2  # 400 voxels of lung
    truth = np.zeros_like(lungs)
    truth[0, :, :] = 1  # 100 voxels, 20 of them solid
    truth[0, :2, :] = 2
    read = np.zeros_like(lungs)
    read[0, :8, :] = 1  # 80 of the truth found ...
    read[0, :1, :] = 2  # ... 10 as solid
    read[1, :3, :] = 1  # and 30 false positives
    m = lesion_metrics(lungs, read, lungs, truth, voxel_ml=0.5)
    assert m["lesion_ml"] == 55.0
    assert m["truth_lesion_ml"] == 50.0
    assert m["lesion_err_pct"] == 10.0
    assert m["solid_ml"] == 5.0
    assert m["truth_solid_ml"] == 10.0
    assert m["solid_err_pct"] == -50.0
    assert m["proportion_pct"] == 27.5
    assert m["truth_proportion_pct"] == 25.0
    assert m["proportion_err_pp"] == 2.5
    assert m["lesion_recall"] == 0.8
    assert m["lesion_fp_ml"] == 15.0
    assert m["solid_recall"] == 0.5
    assert m["solid_fp_ml"] == 0.0
    assert m["lesion_dice"] == round(2 * 80 / (110 + 100), 3)


def test_lesion_metrics_without_truth_give_no_relative_error():
    lungs = np.ones((2, 4, 4), np.uint8)
    m = lesion_metrics(lungs, lungs * 0, lungs, lungs * 0, voxel_ml=1.0)
    assert m["lesion_err_pct"] is None
    assert m["lesion_recall"] is None
    assert m["proportion_err_pp"] == 0.0


@pytest.mark.parametrize("burdens", [[], [0.0], [15.0, 70.0], [-5.0]])
def test_burdens_out_of_range_are_refused(burdens):
    with pytest.raises(InputError, match="burden"):
        check_burdens(burdens)


def test_targets_must_be_positive():
    with pytest.raises(InputError, match="lesion_error_pct must be > 0"):
        QualifyTargets(lesion_error_pct=0.0)


def test_unknown_model_is_refused(normal_phantom):
    with pytest.raises(InputError, match="unknown insertion model 'spheres'"):
        qualify_volume(normal_phantom, CFG, models=["spheres"])


def test_a_reference_scan_with_pneumonia_is_refused(sample_data):
    """The demo phantom reads 14 % lesion: not a scan of the protocol without pneumonia."""
    vol = read_ct(sample_data / "phantom_small" / "dicom")
    with pytest.raises(InputError, match=r"reads 1\d\.\d % lesion itself"):
        qualify_volume(vol, CFG, burdens_pct=[5.0])


def test_each_case_reads_its_own_inserted_truth(qualified):
    report, panels = qualified
    cases = report["cases"]
    assert [c["model"] for c in cases] == ["insert_lesions"] * 2 + ["blobs"] * 2
    assert [c["seed"] for c in cases] == [3000, 3001, 3002, 3003]
    assert [c["repeat"] for c in cases] == [0, 1, 0, 1]
    assert len(panels) == 2  # the first insertion of each model and burden
    ref = report["reference"]
    assert ref["lesion_pct"] < 1.0
    assert ref["normal_ct_rule_met"]
    for c in cases:
        # The insertion hits its burden; the errors are those of the volumes reported.
        assert c["truth_proportion_pct"] == pytest.approx(15.0, abs=1.5)
        assert c["lesion_err_pct"] == pytest.approx(
            100 * (c["lesion_ml"] - c["truth_lesion_ml"]) / c["truth_lesion_ml"], abs=0.06)
        assert c["lesion_err_less_own_pct"] == pytest.approx(
            100 * (c["lesion_ml"] - ref["lesion_ml"] - c["truth_lesion_ml"])
            / c["truth_lesion_ml"], abs=0.2)
        assert 0.5 < c["lesion_recall"] <= 1.0
        assert c["lung_dice_vs_reference"] > 0.97
        met = c["targets_met"]
        assert met["lesion"] == (abs(c["lesion_err_pct"]) <= 10.0)
        assert met["proportion"] == (abs(c["proportion_err_pp"]) <= 1.0)
        assert c["all_targets_met"] == all(met.values())
    assert report["summary"]["all_targets_met"] == sum(c["all_targets_met"] for c in cases)
    json.dumps(report, allow_nan=False)  # JSON-ready as it is


def test_groups_summarise_the_insertions_of_each_model_and_burden(qualified):
    report, _panels = qualified
    assert [(g["model"], g["lesion_pct"], g["n"]) for g in report["groups"]] == [
        ("insert_lesions", 15.0, 2), ("blobs", 15.0, 2)]
    for g in report["groups"]:
        rows = [c for c in report["cases"] if c["model"] == g["model"]]
        for key, target in (("lesion_err_pct", "lesion"), ("solid_err_pct", "solid"),
                            ("proportion_err_pp", "proportion")):
            values = np.array([c[key] for c in rows])
            assert g[key]["mean"] == pytest.approx(values.mean(), abs=0.051)
            assert g[key]["sd"] == pytest.approx(values.std(ddof=1), abs=0.051)
            assert g[key]["worst"] == values[np.argmax(np.abs(values))]
            assert g[key]["within_target"] == sum(c["targets_met"][target] for c in rows)


def test_the_partial_volume_model_counts_mixed_voxels_at_half_lung(normal_phantom):
    """``partial_volume`` is ``insert_lesions`` with ``tissue_hu`` (mixed voxels count at
    half lung); it reaches its burden and the case reads it back."""
    report, panels = qualify_volume(normal_phantom, CFG, burdens_pct=[15.0],
                                    models=["partial_volume"], seed=3)
    (case,) = report["cases"]
    assert case["model"] == "partial_volume"
    assert case["solid_pct"] == 3.0
    assert case["truth_proportion_pct"] == pytest.approx(15.0, abs=1.5)
    assert 0.5 < case["lesion_recall"] <= 1.0
    assert len(panels) == 1


def test_repeats_must_be_positive(normal_phantom):
    with pytest.raises(InputError, match="repeats must be at least 1"):
        qualify_volume(normal_phantom, CFG, repeats=0)


def test_panels_show_the_slice_with_the_most_inserted_lesion(qualified):
    _report, panels = qualified
    for p in panels:
        assert p.hu.ndim == 2
        assert p.hu.shape == p.truth.shape == p.lesions.shape
        assert p.truth.any()
        assert (p.lesions > 0).any()


def test_the_markdown_table_marks_each_missed_target(qualified):
    report, _panels = qualified
    report = json.loads(json.dumps(report))
    report["cases"][0]["targets_met"]["solid"] = False
    text = rq.qualify_markdown(report)
    rows = [line for line in text.splitlines() if line.startswith("| insert_lesions")]
    (first,) = [line for line in rows if "| 3000 |" in line]
    assert "**(miss)**" in first.split("|")[6]  # the solid column of the first insertion
    (group,) = [line for line in rows if "of 2" in line]  # mean (SD), worst; k of n
    assert group.count("of 2") == 3
    assert "Reference scan as is" in text


def test_cli_writes_the_report_and_prints_it_with_json(sample_data, tmp_path):
    src = sample_data / "phantom_small_normal" / "ct.nii.gz"
    out = tmp_path / "q"
    result = runner.invoke(app, ["qualify", str(src), "-o", str(out), "--burdens", "15",
                                 "--models", "insert_lesions", "--repeats", "1", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert {p.name for p in out.iterdir()} == QUALIFY_FILES
    assert json.loads((out / "qualify.json").read_text()) == report
    assert report["input"]["kind"] == "nifti"
    assert len(report["input"]["sha256"]) == 64
    assert report["config_hash"] == CFG.hash
    (case,) = report["cases"]
    assert case["model"] == "insert_lesions"
    assert case["lesion_pct"] == 15.0
    assert "all targets met in" in result.stderr
    assert report["groups"][0]["n"] == 1
    assert report["repeats"] == 1
    assert (out / "qualify.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["q"]  # no temporary sibling left


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--burdens", "0"], "lesion burden 0 % is out of range"),
        (["--burdens", "5,x"], "--burdens must be comma-separated numbers"),
        (["--models", "spheres"], "unknown insertion model"),
        (["--max-lesion-error-pct", "-1"], "lesion_error_pct must be > 0"),
        (["--repeats", "0"], "repeats must be at least 1"),
    ],
)
def test_cli_refuses_bad_options_in_one_line_without_output(sample_data, tmp_path, args,
                                                            message):
    src = sample_data / "phantom_small_normal" / "ct.nii.gz"
    out = tmp_path / "q"
    result = runner.invoke(app, ["qualify", str(src), "-o", str(out), *args])
    assert result.exit_code == 1
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2  # one line (wrapped at most once)
    assert not out.exists()


def test_cli_refuses_a_missing_input(tmp_path):
    result = runner.invoke(app, ["qualify", str(tmp_path / "nope"), "-o", str(tmp_path / "q")])
    assert result.exit_code == 1
    assert "does not exist" in result.stderr
    assert not (tmp_path / "q").exists()


def test_a_failure_while_writing_leaves_nothing(sample_data, tmp_path, monkeypatch):
    def broken(panels, path, **kw):
        raise RuntimeError("disk full")

    monkeypatch.setattr(rq, "render_qualify_png", broken)
    out = tmp_path / "sub" / "q"
    with pytest.raises(RuntimeError, match="disk full"):
        qualify_scan(sample_data / "phantom_small_normal" / "ct.nii.gz", out, config=CFG,
                     burdens_pct=[15.0], models=["insert_lesions"])
    assert not (tmp_path / "sub").exists()



def test_cli_refuses_an_output_folder_that_holds_the_input(sample_data):
    src = sample_data / "phantom_small_normal" / "ct.nii.gz"
    before = sorted(p.name for p in src.parent.iterdir())
    result = runner.invoke(app, ["qualify", str(src), "-o", str(src.parent), "--overwrite"])
    assert result.exit_code == 1
    assert "holds the input" in result.stderr
    assert sorted(p.name for p in src.parent.iterdir()) == before


@pytest.mark.parametrize(("args", "message"), [
    (["--models", "spheres"], "unknown insertion model"),
    (["--repeats", "0"], "repeats must be at least 1"),
])
def test_bad_options_are_refused_before_the_scan_is_read(tmp_path, args, message):
    """A typo in the options fails at once, not after reading (and segmenting) the scan:
    here the 'scan' is not even a volume."""
    src = tmp_path / "ct.nii.gz"
    src.write_bytes(b"not a volume")
    result = runner.invoke(app, ["qualify", str(src), "-o", str(tmp_path / "q"), *args])
    assert result.exit_code == 1
    assert message in result.stderr
    assert not (tmp_path / "q").exists()
