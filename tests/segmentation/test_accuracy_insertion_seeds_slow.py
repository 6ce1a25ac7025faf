"""The real chest with ``insert_lesions`` over eight seeds per burden (slow, about 3 minutes).

One insertion is one draw; these tests hold the targets over the draws
(benchmarks/evaluate_accuracy.py, section 14).
"""

from __future__ import annotations

import pytest
from real_chest import CFG

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def insertion_seeds(chest):
    """``insert_lesions`` at 5 and 15 % over eight seeds each (seeds 0-7 and 8-15, the
    evaluation's section 14), read by ``lungvol qualify``'s machinery (about 3 minutes)."""
    from lungvol.qualify import qualify_volume

    vol, _lungs = chest
    report, _panels = qualify_volume(
        vol, CFG, burdens_pct=[5.0, 15.0], models=["insert_lesions"], repeats=8
    )
    return {g["lesion_pct"]: g for g in report["groups"]}, report


def test_real_chest_inserted_15pct_over_seeds_meets_the_total_and_proportion_targets(
    insertion_seeds,
):
    """Every one of the eight insertions at 15 % reads the total within 10 % and the
    proportion within 1 pp (session 27: mean -1.0 %, worst -5.6 %; -0.07 pp, worst -0.77;
    session 28: +0.6 %, worst +4.7; +0.16 pp, worst +0.79). The fixed-seed test above is
    one of them (seed 12)."""
    groups, report = insertion_seeds
    g = groups[15.0]
    assert g["n"] == 8
    assert g["lesion_err_pct"]["within_target"] == 8, g
    assert g["proportion_err_pp"]["within_target"] == 8, g
    assert report["reference"]["lesion_pct"] < 1.0


@pytest.mark.parametrize(
    ("burden", "key", "limit"),
    [
        (5.0, "lesion_err_pct", 10.0),
        (5.0, "solid_err_pct", 15.0),
        (15.0, "solid_err_pct", 15.0),
    ],
)
def test_real_chest_inserted_lesions_mean_error_over_seeds(insertion_seeds, burden, key, limit):
    """The mean error over eight insertions is within the target (issue 2: total 10 %,
    solid 15 %). Session 28 (0.6.8, dense plaques off the costal pleura): 5 % total -8.3 %
    (SD 4.3, 5 of 8 within 10 %), solid -9.6 % (6 of 8 within 15 %), 15 % solid -10.4 % (6
    of 8); strict expected failures until 0.6.7 (-11.3 / -22.5 / -17.2 %). One insertion
    is one draw: single seeds still miss (worst -14.9 / -17.6 / -18.5 %)."""
    groups, _report = insertion_seeds
    assert abs(groups[burden][key]["mean"]) <= limit, groups[burden][key]

