"""simulate-trial trajectories: arm medians follow the published Table 2; days in windows."""

from __future__ import annotations

import numpy as np
import pytest

from lungvol.cohort.simulate import draw_trajectories, quantile_function
from lungvol.cohort.trial import load_trial
from lungvol.errors import ConfigError

TRIAL = load_trial()


@pytest.fixture(scope="module")
def rows():
    return draw_trajectories(TRIAL, subjects_per_arm=(65, 35), seed=4, missing_fraction=0.2)


def test_arm_medians_of_drawn_change_equal_the_published_medians(rows):
    published = TRIAL.published["relative_change_pct"]
    for endpoint, key in (("total_lesion", "target_lesion_change_rel_pct"),
                          ("solid", "target_solid_change_rel_pct")):
        for visit, arms in published[endpoint].items():
            for arm, (_q1, median, _q3) in arms.items():
                values = [r[key] for r in rows if r["visit"] == visit and r["arm"] == arm]
                assert np.median(values) == pytest.approx(median, abs=1e-9)


def test_published_quartiles_are_matched_approximately(rows):
    q1, _median, q3 = TRIAL.published["relative_change_pct"]["solid"]["month3"]["MSC"]
    values = [r["target_solid_change_rel_pct"] for r in rows
              if r["visit"] == "month3" and r["arm"] == "MSC"]
    assert np.percentile(values, 25) == pytest.approx(q1, abs=2.0)
    assert np.percentile(values, 75) == pytest.approx(q3, abs=2.0)


def test_unordered_published_quartiles_keep_the_median():
    u, v = quantile_function([-46.59, -7.30, -19.12], where="placebo month 1")
    assert np.interp(0.5, u, v) == pytest.approx(-7.30)
    assert np.interp(0.75, u, v) == pytest.approx(2 * -7.30 + 46.59)
    with pytest.raises(ConfigError, match="Q1 <= median <= Q3"):
        quantile_function([5.0, 1.0, 7.0])


def test_trajectories_are_physical_and_days_fall_in_their_windows(rows):
    assert len({r["subject"] for r in rows}) == 100
    for r in rows:
        assert 0.0 <= r["target_solid_pct"] <= 0.95 * r["target_lesion_pct"] + 1e-9
        assert TRIAL.visit(r["visit"]).contains(r["day"])
        if r["visit"] == "baseline":
            assert not r["is_missing"]
    n_follow_up = sum(r["visit"] != "baseline" for r in rows)
    share = sum(r["is_missing"] for r in rows) / n_follow_up
    assert 0.15 < share < 0.25


def test_same_seed_same_trajectories():
    a = draw_trajectories(TRIAL, subjects_per_arm=(3, 2), seed=9, missing_fraction=0.1)
    b = draw_trajectories(TRIAL, subjects_per_arm=(3, 2), seed=9, missing_fraction=0.1)
    assert a == b


def test_a_subject_is_one_anatomy_scanned_with_fresh_noise_at_every_visit(tmp_path):
    """Visits of one subject differ by image noise and lesions only; subjects differ."""
    import csv

    import SimpleITK as sitk  # noqa: N813

    from lungvol.cohort.simulate import simulate_trial

    simulate_trial(tmp_path / "c", TRIAL, subjects_per_arm=(1, 1), seed=3, size="tiny",
                   missing_fraction=0.0)
    with (tmp_path / "c" / "truth.csv").open() as fh:
        truth = list(csv.DictReader(fh))
    seeds = {(r["subject"], r["phantom_seed"]) for r in truth}
    assert len(seeds) == 2
    assert len({s for _, s in seeds}) == 2
    assert len({r["noise_seed"] for r in truth}) == len(truth)

    def hu(subject: str, visit: str) -> np.ndarray:
        path = tmp_path / "c" / subject / visit / "ct.nii.gz"
        return sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float32)

    def changed(a: np.ndarray, b: np.ndarray) -> float:
        """Share of voxels more than 150 HU apart (two 20 HU noise draws: > 5 SD)."""
        return float(np.mean(np.abs(a - b) > 150.0))

    baseline = hu("S001", "baseline")
    # Day 10 has about the baseline's burden: noise only. Month 12 has lost a third of its
    # lesion: that much more. Another subject: another body, vessels and lesions.
    assert changed(baseline, hu("S001", "day10")) < 0.001
    assert changed(baseline, hu("S001", "month12")) < 0.01
    assert changed(baseline, hu("S002", "baseline")) > 0.03
