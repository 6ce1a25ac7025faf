"""No patient identifier from DICOM headers reaches a cohort table, log or report."""

from __future__ import annotations

import csv
import logging

import pytest

from lungvol.cohort.discover import discover_cohort
from lungvol.cohort.executors import SerialExecutor
from lungvol.cohort.run import run_cohort
from lungvol.cohort.trial import load_trial
from lungvol.config import LungvolConfig
from lungvol.io import write_dicom_series
from lungvol.phantom import make_phantom
from lungvol.reporting.cohort_report import analyze_cohort

PATIENT_ID = "PHI-ID-8472913"


@pytest.mark.slow
def test_dicom_patient_id_and_name_stay_out_of_tables_logs_and_report(tmp_path, caplog):
    trial = load_trial()
    root = tmp_path / "cohort"
    rows = []
    for visit, lesion in (("baseline", 20.0), ("month1", 10.0)):
        ph = make_phantom(shape=(48, 64, 64), seed=5, lesion_pct=lesion, solid_pct=lesion / 10)
        write_dicom_series(ph.hu, root / "P01" / visit, spacing_mm=ph.spacing_mm,
                           origin_lps_mm=ph.origin_lps_mm, patient_id=PATIENT_ID)
        rows.append({"subject": "P01", "arm": "MSC", "visit": visit})
    with (root / "manifest.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["subject", "arm", "visit"])
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "out"
    with caplog.at_level(logging.DEBUG):
        summary = run_cohort(discover_cohort(root, trial), out, LungvolConfig(),
                             executor=SerialExecutor())
        analyze_cohort(out, trial)
    assert summary.done == 2
    assert PATIENT_ID not in caplog.text
    checked = 0
    for path in out.rglob("*"):
        if path.is_file() and path.suffix in {".csv", ".json", ".md", ".html", ".svg"}:
            assert PATIENT_ID not in path.read_text(errors="replace"), path
            checked += 1
    assert checked >= 10
