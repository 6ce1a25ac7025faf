"""Cohort discovery: manifest checks, visit windows, the duplicate rule, subject-level issues."""

from __future__ import annotations

import pytest
from cohort_fakes import make_cohort

from lungvol.cohort.discover import discover_cohort
from lungvol.cohort.trial import load_trial
from lungvol.errors import CohortError

TRIAL = load_trial()


def _scan(subject, visit, arm="MSC", **kw):
    return {"subject": subject, "arm": arm, "visit": visit, "lesion": 10.0, "solid": 1.0, **kw}


def test_visit_column_manifest_gives_one_job_per_scan(tmp_path):
    scans = [_scan("S1", "baseline"), _scan("S1", "month1"), _scan("S2", "baseline", "placebo")]
    cohort = discover_cohort(make_cohort(tmp_path, scans), TRIAL)
    assert [(j.subject, j.visit, j.day) for j in cohort.jobs] == [
        ("S1", "baseline", 0), ("S1", "month1", 30), ("S2", "baseline", 0)
    ]
    assert all(j.is_day_nominal for j in cohort.jobs)
    assert cohort.arms == {"S1": "MSC", "S2": "placebo"}
    assert cohort.issues == ()


def test_scan_dates_are_assigned_to_visit_windows(tmp_path):
    scans = [
        {"subject": "S1", "arm": "MSC", "scan": "a", "scan_date": "2020-03-01"},
        {"subject": "S1", "arm": "MSC", "scan": "b", "scan_date": "2020-03-12"},
        {"subject": "S1", "arm": "MSC", "scan": "c", "scan_date": "2020-05-29"},
    ]
    for s in scans:
        s.update(lesion=5.0, solid=1.0)
    root = make_cohort(tmp_path, scans, columns=("subject", "arm", "scan", "scan_date"))
    cohort = discover_cohort(root, TRIAL)
    assert [(j.scan, j.visit, j.day) for j in cohort.jobs] == [
        ("a", "baseline", 0), ("b", "day10", 11), ("c", "month3", 89)
    ]


def test_reference_date_sets_day_zero(tmp_path):
    scans = [
        {"subject": "S1", "arm": "MSC", "scan": "a", "scan_date": "20200301",
         "reference_date": "2020-03-03", "lesion": 5.0, "solid": 1.0},
    ]
    root = make_cohort(tmp_path, scans, columns=("subject", "arm", "scan", "scan_date",
                                                 "reference_date"))
    (job,) = discover_cohort(root, TRIAL).jobs
    assert (job.visit, job.day, job.scan_date) == ("baseline", -2, "2020-03-01")


def test_two_scans_in_one_window_keep_the_closest_to_nominal_and_report_the_other(tmp_path):
    scans = [
        {"subject": "S1", "arm": "MSC", "scan": "b0", "day": "0"},
        {"subject": "S1", "arm": "MSC", "scan": "m3a", "day": "70"},
        {"subject": "S1", "arm": "MSC", "scan": "m3b", "day": "95"},
        {"subject": "S1", "arm": "MSC", "scan": "m6a", "day": "175"},
        {"subject": "S1", "arm": "MSC", "scan": "m6b", "day": "185"},  # tie: earlier wins
    ]
    for s in scans:
        s.update(lesion=5.0, solid=1.0)
    root = make_cohort(tmp_path, scans, columns=("subject", "arm", "scan", "day"))
    cohort = discover_cohort(root, TRIAL)
    assert {j.visit: j.scan for j in cohort.jobs} == {
        "baseline": "b0", "month3": "m3b", "month6": "m6a"
    }
    dups = [i for i in cohort.issues if i.kind == "duplicate_in_window"]
    assert sorted(i.scan for i in dups) == ["m3a", "m6b"]
    assert "closest to day 90" in dups[0].message or "closest to day 90" in dups[1].message


def test_unknown_arm_is_refused(tmp_path):
    root = make_cohort(tmp_path, [_scan("S1", "baseline", arm="MSC-high")])
    with pytest.raises(CohortError, match=r"unknown arm 'MSC-high'.*\['MSC', 'placebo'\]"):
        discover_cohort(root, TRIAL)


@pytest.mark.parametrize(("delimiter", "encoding", "newline"), [
    (";", "utf-8-sig", "\r\n"),  # European Excel "CSV (semicolon)", with BOM and CRLF
    ("\t", "utf-8", "\n"),      # a tab-separated export
])
def test_a_spreadsheet_manifest_reads_like_a_comma_separated_one(
    tmp_path, delimiter, encoding, newline
):
    scans = [_scan("S1", "baseline"), _scan("S1", "month1"), _scan("S2", "baseline", "placebo")]
    root = make_cohort(tmp_path, scans)
    plain = discover_cohort(root, TRIAL)
    lines = (root / "manifest.csv").read_text().splitlines()
    (root / "manifest.csv").write_text(
        newline.join(line.replace(",", delimiter) for line in lines) + newline,
        encoding=encoding, newline="",
    )
    again = discover_cohort(root, TRIAL)
    assert [(j.subject, j.visit, j.day) for j in again.jobs] == [
        (j.subject, j.visit, j.day) for j in plain.jobs
    ]
    assert again.arms == plain.arms


def test_a_manifest_without_the_needed_columns_names_what_it_read(tmp_path):
    root = make_cohort(tmp_path, [_scan("S1", "baseline")])
    (root / "manifest.csv").write_text("subject|arm|visit\nS1|MSC|baseline\n")
    with pytest.raises(CohortError, match=r"missing column\(s\) \['subject', 'arm'\] in this "
                       r"manifest; header is \['subject\|arm\|visit'\]"):
        discover_cohort(root, TRIAL)


def test_duplicate_manifest_rows_are_refused(tmp_path):
    scans = [_scan("S1", "baseline")]
    root = make_cohort(tmp_path, scans, manifest_rows=scans + scans)
    with pytest.raises(CohortError, match="line 3: duplicate row for subject S1"):
        discover_cohort(root, TRIAL)


def test_subject_in_two_arms_is_refused(tmp_path):
    scans = [_scan("S1", "baseline"), _scan("S1", "month1", arm="placebo")]
    with pytest.raises(CohortError, match="one subject has one arm"):
        discover_cohort(make_cohort(tmp_path, scans), TRIAL)


def test_scans_of_a_subject_missing_from_the_manifest_are_refused(tmp_path):
    scans = [_scan("S1", "baseline"), _scan("S9", "baseline")]
    root = make_cohort(tmp_path, scans, manifest_rows=scans[:1])
    with pytest.raises(CohortError, match=r"not in the manifest \(S9\)"):
        discover_cohort(root, TRIAL)


def test_listed_scan_folder_that_does_not_exist_is_refused(tmp_path):
    scans = [_scan("S1", "baseline")]
    root = make_cohort(tmp_path, scans, manifest_rows=scans + [_scan("S1", "month3")])
    with pytest.raises(CohortError, match="month3 does not exist"):
        discover_cohort(root, TRIAL)


def test_subject_without_scans_and_subject_with_only_follow_up_are_issues(tmp_path):
    scans = [_scan("S1", "baseline"), _scan("S2", "month1"), _scan("S2", "month3")]
    rows = scans + [{"subject": "S3", "arm": "placebo"}]
    cohort = discover_cohort(make_cohort(tmp_path, scans, manifest_rows=rows), TRIAL)
    kinds = {(i.subject, i.kind) for i in cohort.issues}
    assert kinds == {("S2", "no_baseline"), ("S3", "no_scans")}
    assert "S3" in cohort.arms
    assert len(cohort.jobs_for("S2")) == 2  # follow-up scans are still measured


def test_subject_only_rows_discover_folders_named_by_visit_or_date(tmp_path):
    scans = [_scan("S1", "baseline"), _scan("S1", "month1")]
    rows = [{"subject": "S1", "arm": "MSC"}]
    root = make_cohort(tmp_path, scans, manifest_rows=rows)
    cohort = discover_cohort(root, TRIAL)
    assert [j.visit for j in cohort.jobs] == ["baseline", "month1"]


def test_scan_outside_every_window_is_reported_not_used(tmp_path):
    scans = [
        {"subject": "S1", "arm": "MSC", "scan": "a", "day": "0"},
        {"subject": "S1", "arm": "MSC", "scan": "b", "day": "50"},
    ]
    for s in scans:
        s.update(lesion=5.0, solid=1.0)
    root = make_cohort(tmp_path, scans, columns=("subject", "arm", "scan", "day"))
    cohort = discover_cohort(root, TRIAL)
    assert [j.scan for j in cohort.jobs] == ["a"]
    assert [i.kind for i in cohort.issues] == ["outside_windows"]


def test_missing_required_column_is_refused(tmp_path):
    root = make_cohort(tmp_path, [_scan("S1", "baseline")], columns=("subject", "visit"))
    with pytest.raises(CohortError, match=r"missing column\(s\) \['arm'\]"):
        discover_cohort(root, TRIAL)
