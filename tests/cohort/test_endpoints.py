"""Endpoints: relative/absolute change, LOCF with flags, zero baseline, normal CT and reads."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from lungvol.cohort.endpoints import endpoint_rows, read_reads, subject_visit_table
from lungvol.cohort.trial import load_trial
from lungvol.errors import CohortError, ConfigError
from lungvol.stats import hodges_lehmann, wilcoxon_rank_sum

TRIAL = load_trial()


def scan(subject, visit, lesion, solid, *, arm="MSC", status="ok", normal=None):
    return {
        "subject": subject, "arm": arm, "visit": visit, "day": TRIAL.visit(visit).nominal_day,
        "status": status, "lesion_proportion_pct": lesion, "solid_proportion_pct": solid,
        "normal_ct": "" if normal is None else normal,
    }


def row(table, subject, visit):
    (r,) = [r for r in table if r["subject"] == subject and r["visit"] == visit]
    return r


def test_relative_change_is_percent_of_baseline_and_absolute_is_points():
    scans = [scan("S1", "baseline", 20.0, 4.0), scan("S1", "day10", 15.0, 5.0)]
    table = subject_visit_table(scans, {"S1": "MSC"}, TRIAL)
    r = row(table, "S1", "day10")
    assert r["total_lesion_change_rel_pct"] == pytest.approx(-25.0)
    assert r["total_lesion_change_abs_pp"] == pytest.approx(-5.0)
    assert r["solid_change_rel_pct"] == pytest.approx(25.0)
    assert r["solid_change_abs_pp"] == pytest.approx(1.0)
    assert not r["is_imputed"]


def test_missing_and_failed_visits_take_the_last_observation_and_are_flagged():
    scans = [
        scan("S1", "baseline", 20.0, 4.0),
        scan("S1", "day10", 10.0, 2.0),
        scan("S1", "month3", 99.0, 9.0, status="failed"),
    ]
    table = subject_visit_table(scans, {"S1": "MSC"}, TRIAL)
    for visit in ("month1", "month3", "month12"):
        r = row(table, "S1", visit)
        assert r["is_imputed"]
        assert r["imputed_from"] == "day10"
        assert r["total_lesion_pct"] == 10.0
        assert r["total_lesion_change_rel_pct"] == pytest.approx(-50.0)
    assert row(table, "S1", "month3")["scan_status"] == "failed"


def test_lung_volume_change_against_baseline_is_measured_and_flagged_never_imputed():
    scans = [
        dict(scan("S1", "baseline", 20.0, 4.0), lung_volume_ml=5000.0),
        dict(scan("S1", "day10", 15.0, 3.0), lung_volume_ml=4400.0),  # -12 %: flagged
        dict(scan("S1", "month1", 10.0, 2.0), lung_volume_ml="5200.0"),  # +4 % (CSV text)
        dict(scan("S2", "day10", 10.0, 2.0), lung_volume_ml=3000.0),  # no baseline scan
    ]
    table = subject_visit_table(scans, {"S1": "MSC", "S2": "MSC"}, TRIAL)
    assert row(table, "S1", "baseline")["lung_volume_change_pct"] == 0.0
    r = row(table, "S1", "day10")
    assert r["lung_volume_change_pct"] == pytest.approx(-12.0)
    assert r["lung_volume_flag"] is True
    r = row(table, "S1", "month1")
    assert r["lung_volume_change_pct"] == pytest.approx(4.0)
    assert r["lung_volume_flag"] is False
    imputed = row(table, "S1", "month3")  # LOCF carries the endpoints, not the lung volume
    assert imputed["is_imputed"]
    assert math.isnan(imputed["lung_volume_ml"])
    assert imputed["lung_volume_flag"] is False
    assert math.isnan(row(table, "S2", "day10")["lung_volume_change_pct"])
    strict = dataclasses.replace(TRIAL, lung_volume_change_flag_pct=3.0)
    table = subject_visit_table(scans, {"S1": "MSC", "S2": "MSC"}, strict)
    assert row(table, "S1", "month1")["lung_volume_flag"] is True
    with pytest.raises(ConfigError, match="lung_volume_change_flag_pct"):
        dataclasses.replace(TRIAL, lung_volume_change_flag_pct=0.0)


def test_a_visit_acquired_differently_from_baseline_is_listed():
    """Kernel, manufacturer, slice spacing or thickness changed from the subject's baseline
    scan: the lesion bands read the kernel's noise and the slices' partial volume (a normal
    chest reads 0.31 % lesion at 2 mm, 1.52 % in 6 mm slabs, session 20)."""
    def acquired(visit, kernel, spacing, manufacturer="SIEMENS", thickness=1.0):
        return dict(scan("S1", visit, 10.0, 2.0), convolution_kernel=kernel,
                    slice_spacing_mm=spacing, manufacturer=manufacturer,
                    slice_thickness_mm=thickness)

    scans = [
        acquired("baseline", "B70f", 1.0),
        acquired("day10", "b70f ", "1.25", thickness="1.5"),  # case, spaces, CSV text: alike
        acquired("month1", "B30f", 1.0),
        acquired("month3", "B70f", 5.0, manufacturer="GE MEDICAL SYSTEMS"),
        dict(scan("S1", "month6", 9.0, 1.0)),  # nothing recorded: not judged
        # Overlapping 5 mm slices at the baseline's spacing: the partial volume of 5 mm.
        acquired("month12", "B70f", 1.0, thickness=5.0),
    ]
    table = subject_visit_table(scans, {"S1": "MSC"}, TRIAL)
    assert row(table, "S1", "baseline")["acquisition_changes"] == ""
    assert row(table, "S1", "day10")["acquisition_changes"] == ""
    assert row(table, "S1", "month1")["acquisition_changes"] == "kernel B70f -> B30f"
    assert row(table, "S1", "month3")["acquisition_changes"] == (
        "manufacturer SIEMENS -> GE MEDICAL SYSTEMS; slice spacing 1 -> 5 mm"
    )
    assert row(table, "S1", "month6")["acquisition_changes"] == ""
    assert row(table, "S1", "month9")["acquisition_changes"] == ""  # imputed, no scan
    assert row(table, "S1", "month12")["acquisition_changes"] == "slice thickness 1 -> 5 mm"
    loose = dataclasses.replace(TRIAL, acquisition_spacing_tolerance_mm=5.0)
    table = subject_visit_table(scans, {"S1": "MSC"}, loose)
    assert row(table, "S1", "month3")["acquisition_changes"] == (
        "manufacturer SIEMENS -> GE MEDICAL SYSTEMS"
    )
    with pytest.raises(ConfigError, match="acquisition_spacing_tolerance_mm"):
        dataclasses.replace(TRIAL, acquisition_spacing_tolerance_mm=-1.0)


def test_acquisition_columns_come_from_the_provenance_and_hold_no_identifier():
    from lungvol.cohort.results import ACQUISITION_COLUMNS, acquisition

    metrics = {"provenance": {
        "geometry": {"spacing_mm_zyx": [1.25, 0.7, 0.7]},
        "input": {"slice_thickness_mm": 1.25, "convolution_kernel": "LUNG",
                  "manufacturer": "GE MEDICAL SYSTEMS", "series_uid": "1.2.3", "path": "/x"},
    }}
    assert acquisition(metrics) == {
        "slice_spacing_mm": 1.25, "pixel_spacing_mm": 0.7, "slice_thickness_mm": 1.25,
        "convolution_kernel": "LUNG", "manufacturer": "GE MEDICAL SYSTEMS",
    }
    assert tuple(acquisition(metrics)) == ACQUISITION_COLUMNS
    assert set(acquisition({}).values()) == {None}


def test_no_imputation_leaves_missing_visits_empty():
    trial = dataclasses.replace(load_trial(), imputation="none")
    scans = [scan("S1", "baseline", 20.0, 4.0)]
    table = subject_visit_table(scans, {"S1": "MSC"}, trial)
    assert math.isnan(row(table, "S1", "month1")["total_lesion_change_rel_pct"])
    assert not row(table, "S1", "month1")["is_imputed"]


def test_zero_baseline_gives_no_relative_change_but_an_absolute_one():
    scans = [scan("S1", "baseline", 5.0, 0.0), scan("S1", "month1", 3.0, 0.5)]
    table = subject_visit_table(scans, {"S1": "MSC"}, TRIAL)
    r = row(table, "S1", "month1")
    assert math.isnan(r["solid_change_rel_pct"])
    assert r["solid_baseline_zero"] is True
    assert r["solid_change_abs_pp"] == pytest.approx(0.5)
    ep = [e for e in endpoint_rows(table, TRIAL) if e["endpoint"] == "solid"
          and e["visit"] == "month1"][0]
    assert ep["MSC_n"] == 0
    assert ep["MSC_n_baseline_zero"] == 1
    assert ep["MSC_abs_n"] == 1


def test_subject_without_baseline_is_left_out_of_change_endpoints():
    scans = [scan("S1", "baseline", 20.0, 4.0), scan("S1", "day10", 10.0, 2.0),
             scan("S2", "day10", 10.0, 2.0)]
    table = subject_visit_table(scans, {"S1": "MSC", "S2": "MSC"}, TRIAL)
    ep = [e for e in endpoint_rows(table, TRIAL) if e["endpoint"] == "total_lesion"
          and e["visit"] == "day10"][0]
    assert ep["MSC_n"] == 1
    assert ep["MSC_median"] == pytest.approx(-50.0)


def test_endpoint_rows_match_the_statistics_engine_on_hand_made_arms():
    rng = np.random.default_rng(3)
    scans, arms = [], {}
    for i in range(9):
        arm = "MSC" if i < 5 else "placebo"
        subject = f"S{i}"
        arms[subject] = arm
        base = float(rng.uniform(10, 40))
        scans.append(scan(subject, "baseline", base, base / 10, arm=arm))
        scans.append(scan(subject, "month1", base * float(rng.uniform(0.3, 1.2)), base / 20,
                          arm=arm))
    table = subject_visit_table(scans, arms, TRIAL)
    ep = [e for e in endpoint_rows(table, TRIAL) if e["endpoint"] == "total_lesion"
          and e["visit"] == "month1"][0]
    rel = {a: [r["total_lesion_change_rel_pct"] for r in table
               if r["visit"] == "month1" and r["arm"] == a] for a in ("MSC", "placebo")}
    assert ep["MSC_n"] == 5
    assert ep["placebo_n"] == 4
    assert ep["MSC_median"] == pytest.approx(float(np.median(rel["MSC"])))
    assert ep["MSC_mean"] == pytest.approx(float(np.mean(rel["MSC"])))
    assert ep["MSC_se"] == pytest.approx(float(np.std(rel["MSC"], ddof=1) / np.sqrt(5)))
    hl = hodges_lehmann(rel["MSC"], rel["placebo"], ci="sas")
    assert ep["hl_estimate"] == pytest.approx(hl.estimate)
    assert (ep["hl_ci_low"], ep["hl_ci_high"]) == pytest.approx((hl.ci_low, hl.ci_high))
    assert ep["p"] == pytest.approx(wilcoxon_rank_sum(rel["MSC"], rel["placebo"]).p_value)
    # HL estimate is the median of pairwise differences.
    diffs = [x - y for x in rel["MSC"] for y in rel["placebo"]]
    assert ep["hl_estimate"] == pytest.approx(float(np.median(diffs)))


def test_normal_ct_counts_are_not_imputed_and_reads_take_precedence(tmp_path):
    scans = [
        scan("S1", "baseline", 20.0, 4.0, normal=False),
        scan("S1", "month3", 0.5, 0.0, normal=True),
        scan("S2", "baseline", 20.0, 4.0, arm="placebo", normal=False),
        scan("S2", "month1", 10.0, 1.0, arm="placebo", normal=False),
    ]
    arms = {"S1": "MSC", "S2": "placebo"}
    reads_csv = tmp_path / "reads.csv"
    reads_csv.write_text("subject,visit,normal\nS1,month3,no\nS2,month6,yes\n")
    reads = read_reads(reads_csv, TRIAL, list(arms))
    table = subject_visit_table(scans, arms, TRIAL, reads=reads)
    rows = {e["visit"]: e for e in endpoint_rows(table, TRIAL) if e["endpoint"] == "normal_ct"}
    assert (rows["month3"]["MSC_events"], rows["month3"]["MSC_n"]) == (0, 1)  # read says no
    assert rows["month3"]["placebo_n"] == 0  # S2's month3 is LOCF-imputed: not counted
    assert (rows["month6"]["placebo_events"], rows["month6"]["placebo_n"]) == (1, 1)
    assert rows["month6"]["placebo_source"] == "reads"
    assert (rows["month1"]["placebo_events"], rows["month1"]["placebo_n"]) == (0, 1)


def test_normal_ct_row_reproduces_the_papers_month12_counts():
    scans, arms = [], {}
    for i in range(56):
        arms[f"M{i}"] = "MSC"
        scans.append(scan(f"M{i}", "month12", 0.1, 0.0, normal=i < 10))
    for i in range(30):
        arms[f"P{i}"] = "placebo"
        scans.append(scan(f"P{i}", "month12", 5.0, 0.0, arm="placebo", normal=False))
    table = subject_visit_table(scans, arms, TRIAL)
    (r,) = [e for e in endpoint_rows(table, TRIAL) if e["endpoint"] == "normal_ct"
            and e["visit"] == "month12"]
    assert (r["MSC_events"], r["MSC_n"], r["placebo_events"], r["placebo_n"]) == (10, 56, 0, 30)
    assert round(r["or_estimate"], 2) == 8.75
    assert round(r["or_ci_low"], 2) == 1.72
    assert math.isinf(r["or_ci_high"])
    assert round(r["p"], 3) == 0.010


def test_bad_reads_are_refused(tmp_path):
    bad = tmp_path / "reads.csv"
    bad.write_text("subject,visit,normal\nS1,month3,maybe\n")
    with pytest.raises(CohortError, match="normal must be yes or no, got 'maybe'"):
        read_reads(bad, TRIAL, ["S1"])
    bad.write_text("subject,visit,normal\nS7,month3,yes\n")
    with pytest.raises(CohortError, match="'S7' is not in the cohort manifest"):
        read_reads(bad, TRIAL, ["S1"])


def test_semicolon_separated_reads_are_read(tmp_path):
    reads_csv = tmp_path / "reads.csv"
    reads_csv.write_text("\ufeffsubject;visit;normal\r\nS1;month3;yes\r\n", newline="")
    (read,) = read_reads(reads_csv, TRIAL, ["S1"])
    assert (read.subject, read.visit, read.is_normal) == ("S1", "month3", True)


def test_scans_with_an_excluded_qc_flag_are_handled_like_visits_without_a_scan():
    """Session 18: trial setting exclude_qc_flags. A follow-up scan flagged
    lung_base_truncated is carried forward from the last counted visit and its normal-CT
    call dropped; an excluded baseline leaves the subject out of the change endpoints. Other
    flags, and every flag without the setting, change nothing."""
    flagged = "thick_slices_lesion_bias;lung_base_truncated"
    scans = [
        scan("S1", "baseline", 20.0, 4.0),
        scan("S1", "day10", 10.0, 2.0, normal=True),
        dict(scan("S1", "month1", 1.0, 0.1, normal=True), qc_flag_codes=flagged),
        dict(scan("S1", "month3", 8.0, 1.0), qc_flag_codes="thick_slices_lesion_bias"),
        dict(scan("S2", "baseline", 30.0, 5.0), qc_flag_codes="lung_base_truncated"),
        scan("S2", "day10", 20.0, 4.0),
    ]
    arms = {"S1": "MSC", "S2": "MSC"}
    plain = subject_visit_table(scans, arms, TRIAL)
    assert row(plain, "S1", "month1")["total_lesion_pct"] == 1.0
    assert row(plain, "S1", "month1")["excluded_for"] == ""
    excluding = dataclasses.replace(TRIAL, exclude_qc_flags=("lung_base_truncated",))
    table = subject_visit_table(scans, arms, excluding)
    r = row(table, "S1", "month1")
    assert r["scan_status"] == "excluded"
    assert r["excluded_for"] == "lung_base_truncated"
    assert r["is_imputed"]
    assert r["imputed_from"] == "day10"
    assert r["total_lesion_pct"] == 10.0
    assert r["total_lesion_change_rel_pct"] == pytest.approx(-50.0)
    assert r["normal_ct"] is None
    assert math.isnan(r["lung_volume_ml"])
    kept = row(table, "S1", "month3")
    assert kept["scan_status"] == "ok"
    assert kept["total_lesion_pct"] == 8.0
    assert not row(table, "S2", "day10")["has_baseline"]
    assert math.isnan(row(table, "S2", "day10")["total_lesion_change_rel_pct"])


def test_exclude_qc_flags_must_be_flag_codes():
    with pytest.raises(ConfigError, match="exclude_qc_flags"):
        dataclasses.replace(TRIAL, exclude_qc_flags=("Lung base truncated",))
    assert dataclasses.replace(TRIAL, exclude_qc_flags=["lung_base_truncated"]).hash != TRIAL.hash
