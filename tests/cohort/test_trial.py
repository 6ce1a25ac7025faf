"""Trial definition: shi2022.yaml loads; bad definitions are refused with clear messages."""

from __future__ import annotations

import copy

import pytest
import yaml

from lungvol.cohort.trial import DEFAULT_TRIAL, load_trial, trial_from_dict
from lungvol.errors import ConfigError


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(DEFAULT_TRIAL.read_text())


def test_shi2022_has_the_papers_visits_arms_and_endpoints():
    trial = load_trial()
    assert trial.visit_names == (
        "baseline", "day10", "month1", "month3", "month6", "month9", "month12"
    )
    assert trial.arm_names == ("MSC", "placebo")
    endpoints = {e.name: e for e in trial.endpoints}
    assert endpoints["total_lesion"].visits[-1] == "month3"
    assert endpoints["solid"].visits[-1] == "month12"
    assert trial.normal_ct_visits[0] == "month1"
    # The paper's median actual follow-up days fall in their visit windows.
    for visit, day in [("month1", 32), ("month3", 89), ("month6", 172), ("month9", 266),
                       ("month12", 362)]:
        assert trial.visit_for_day(day).name == visit


def test_visit_for_day_between_windows_is_none():
    trial = load_trial()
    assert trial.visit_for_day(50) is None
    assert trial.visit_for_day(-15) is None


def test_unknown_key_is_refused_with_valid_keys(raw):
    data = copy.deepcopy(raw)
    data["visits"][1]["window"] = [1, 2]
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['window'\].*valid keys"):
        trial_from_dict(data, where="t.yaml")


def test_overlapping_windows_are_refused(raw):
    data = copy.deepcopy(raw)
    data["visits"][2]["window_day"] = [10, 45]
    with pytest.raises(ConfigError, match="overlap"):
        trial_from_dict(data)


def test_nominal_day_outside_window_is_refused(raw):
    data = copy.deepcopy(raw)
    data["visits"][3]["nominal_day"] = 200
    with pytest.raises(ConfigError, match="outside its window"):
        trial_from_dict(data)


def test_endpoint_with_unknown_visit_is_refused(raw):
    data = copy.deepcopy(raw)
    data["endpoints"][0]["visits"] = ["day10", "week2"]
    with pytest.raises(ConfigError, match="week2"):
        trial_from_dict(data)


def test_trial_needs_two_arms(raw):
    data = copy.deepcopy(raw)
    data["arms"] = data["arms"][:1]
    with pytest.raises(ConfigError, match="exactly 2 arms"):
        trial_from_dict(data)


def test_missing_trial_file_message_names_the_path(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_trial(tmp_path / "nope.yaml")
