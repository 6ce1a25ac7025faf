"""analyze_cohort: endpoints.csv, table2.md, Figure 2 files, a self-contained report.html."""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from cohort_fakes import fake_scan, make_cohort

from lungvol.cohort.discover import discover_cohort
from lungvol.cohort.executors import SerialExecutor
from lungvol.cohort.run import run_cohort
from lungvol.cohort.trial import load_trial
from lungvol.config import LungvolConfig
from lungvol.reporting.cohort_report import analyze_cohort

TRIAL = load_trial()
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


SCANS: list[dict] = []


@pytest.fixture(scope="module")
def analysed(tmp_path_factory) -> tuple[Path, object]:
    tmp = tmp_path_factory.mktemp("report")
    scans = SCANS
    scans.clear()
    for i in range(6):
        arm = "MSC" if i < 3 else "placebo"
        drop = 0.5 if arm == "MSC" else 0.8
        for k, visit in enumerate(TRIAL.visit_names):
            if (i, visit) == (1, "month3"):
                continue  # missing -> LOCF
            lesion = 30.0 * drop**k + i
            scans.append({"subject": f"S{i}", "arm": arm, "visit": visit,
                          "lesion": lesion, "solid": lesion / 10})
    scans[5] = dict(scans[5], fail="corrupt scan")
    scans[8] = dict(scans[8], qc_flags=[
        "solid_at_lung_surface: 12 mL of the 40 mL of solid lesion lies against the chest "
        "wall; the lung mask may leave out a layer of it; check qc.png",
        "thick_slices_lesion_bias: slices are 3 mm apart; lesion reads high",
    ])
    scans[20] = dict(scans[20], qc_flags=["thick_slices_lesion_bias: slices are 3 mm apart"])
    root = make_cohort(tmp / "cohort", scans)
    out = tmp / "out"
    run_cohort(discover_cohort(root, TRIAL), out, LungvolConfig(), executor=SerialExecutor(),
               scan_fn=fake_scan)
    return out, analyze_cohort(out, TRIAL)


def test_endpoints_csv_has_one_row_per_endpoint_and_visit(analysed):
    out, result = analysed
    with result.files["endpoints_csv"].open() as fh:
        rows = list(csv.DictReader(fh))
    keys = [(r["endpoint"], r["visit"]) for r in rows]
    expected = [(e.name, v) for e in TRIAL.endpoints for v in e.visits]
    expected += [("normal_ct", v) for v in TRIAL.normal_ct_visits]
    assert keys == expected
    month3 = [r for r in rows if r["endpoint"] == "total_lesion" and r["visit"] == "month3"][0]
    assert month3["MSC_n"] == "3"
    assert month3["MSC_n_imputed"] == "1"
    # MSC: lesion halves each visit -> median relative change at month 3 is close to -87.5 %.
    assert float(month3["MSC_median"]) < float(month3["placebo_median"]) < 0


def test_table2_markdown_is_laid_out_like_the_paper(analysed):
    _, result = analysed
    md = result.files["table2_md"].read_text()
    assert "| Endpoint | Visit | UC-MSC n | UC-MSC median (Q1, Q3) |" in md
    assert re.search(r"\| Solid-component proportion \| Month 12 \| 3 \| -?\d+\.\d\d \(", md)
    assert "## Normal chest CT" in md
    published = "| Total lesion proportion | Day 10 | -7.99 (-23.63, 0.51) | 4.13 (-16.58, 14.83) |"
    assert published in md


def test_figures_are_written_as_png_and_svg(analysed):
    _, result = analysed
    for e in TRIAL.endpoints:
        png = result.files[f"figure_{e.name}_png"]
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "<svg" in result.files[f"figure_{e.name}_svg"].read_text()[:2000]


def test_report_html_is_self_contained_and_lists_imputed_and_failed(analysed):
    _, result = analysed
    page = result.files["report_html"].read_text()
    assert "<script" not in page
    assert not re.search(r"(src|href)=\"(?!data:|#)", page)  # no external assets
    assert page.count("data:image/png;base64,") == len(TRIAL.endpoints)
    assert page.count("data:image/jpeg;base64,") == 6 * 7 - 2  # QC thumbnails of ok scans
    assert "Imputed visits (LOCF)" in page
    assert "corrupt scan" in page


def test_report_lists_qc_flags_per_scan_and_marks_their_thumbnails(analysed):
    """Flags reach scans.csv as codes (filterable) and full messages, and the report counts
    and lists them; flag messages hold ';', so the codes column is ';'-joined codes only."""
    out, result = analysed
    with (out / "scans.csv").open() as fh:
        rows = {(r["subject"], r["visit"]): r for r in csv.DictReader(fh)}
    s8, s20 = (rows[(s["subject"], s["visit"])] for s in (SCANS[8], SCANS[20]))
    assert s8["qc_flag_codes"] == "solid_at_lung_surface;thick_slices_lesion_bias"
    assert s8["qc_flags"].split(" | ")[0].endswith("; check qc.png")
    assert s20["qc_flag_codes"] == "thick_slices_lesion_bias"
    assert sum(bool(r["qc_flag_codes"]) for r in rows.values()) == 2
    page = result.files["report_html"].read_text()
    assert "QC flags: 2 of 40 measured scans" in page
    assert "<td>thick_slices_lesion_bias</td><td>2</td>" in page
    assert "<td>solid_at_lung_surface</td><td>1</td>" in page
    assert "the lung mask may leave out a layer of it; check qc.png</td>" in page
    assert page.count('class="thumb flagged"') == 2
    assert "QC: solid_at_lung_surface, thick_slices_lesion_bias" in page


@pytest.mark.slow
def test_report_html_renders_in_headless_chromium(analysed, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium not installed (apt-get install chromium); CI installs it")
    _, result = analysed
    shot = tmp_path / "report.png"
    cmd = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
        "--window-size=1200,2000", result.files["report_html"].resolve().as_uri(),
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    from PIL import Image

    with Image.open(shot) as img:
        assert img.size == (1200, 2000)
        colours = img.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None
    assert len(colours) > 50


def test_an_interrupted_analysis_leaves_the_previous_one_whole(analysed, tmp_path, monkeypatch):
    """The analysis is written into a temporary sibling folder and swapped in only when
    complete: a failure halfway (here in the figures) leaves the earlier analysis as it was
    and no temporary folder behind; the next complete run replaces it."""
    import lungvol.reporting.cohort_report as cohort_report

    out, _ = analysed
    target = tmp_path / "analysis"
    first = analyze_cohort(out, TRIAL, analysis_dir=target)
    assert first.files["report_html"] == target / "report.html"
    before = {p.name: p.read_bytes() for p in target.iterdir()}

    def broken(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cohort_report, "write_figures", broken)
    with pytest.raises(KeyboardInterrupt):
        analyze_cohort(out, TRIAL, analysis_dir=target)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["analysis"]
    monkeypatch.undo()
    (target / "stale.txt").write_text("from an older analysis")
    again = analyze_cohort(out, TRIAL, analysis_dir=target)
    assert not (target / "stale.txt").exists()
    assert again.files["endpoints_csv"].read_bytes() == before["endpoints.csv"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["analysis"]
