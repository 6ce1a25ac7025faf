"""2x2 tables: Wald OR, chi-square / Fisher rule, exact conditional logistic regression.

The published rows below are the test vectors of ../shared/reference/shi2022-endpoints.md,
written out here independently of lungvol.stats.paper, to the printed precision.
"""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lungvol.errors import StatsError
from lungvol.stats import analyze_2x2, exact_conditional_logistic, parse_events, wald_odds_ratio


def _fmt(v: float) -> str:
    return "+inf" if math.isinf(v) else f"{v:.2f}"


# (MSC events/n, placebo events/n, printed OR, low, high, printed p)
NORMAL_CT_ROWS = [
    ((3, 50, 0, 30), "2.38", "0.35", "+inf", "0.239"),  # month 3
    ((6, 51, 0, 27), "4.72", "0.86", "+inf", "0.070"),  # month 6 (printed with a typo minus)
    ((6, 53, 0, 27), "4.52", "0.82", "+inf", "0.076"),  # month 9
    ((10, 56, 0, 30), "8.75", "1.72", "+inf", "0.010"),  # month 12
]
SYMPTOM_ROWS = [
    ((5, 51, 6, 30), "0.43", "0.12", "1.57", "0.313"),  # loss of appetite, month 3
    ((35, 60, 22, 35), "0.83", "0.35", "1.95", "0.664"),  # sleep difficulties, month 1
    ((14, 51, 20, 30), "0.19", "0.07", "0.50", "0.001"),  # sleep difficulties, month 3
    ((10, 60, 5, 35), "1.20", "0.37", "3.85", "0.759"),  # pain or discomfort, month 1
    ((7, 51, 9, 30), "0.37", "0.12", "1.13", "0.076"),  # pain or discomfort, month 3
    ((11, 51, 10, 30), "0.55", "0.20", "1.51", "0.243"),  # fatigue, month 3
    ((34, 60, 22, 35), "0.77", "0.33", "1.82", "0.554"),  # decreased usual activity, month 1
    ((28, 51, 21, 30), "0.52", "0.20", "1.36", "0.180"),  # decreased usual activity, month 3
    ((1, 50, 0, 30), "0.60", "0.03", "+inf", "0.625"),  # anxiety or depression, month 3
]


@pytest.mark.parametrize(("counts", "est", "low", "high", "p"), NORMAL_CT_ROWS + SYMPTOM_ROWS)
def test_published_row_reproduced_to_printed_precision(counts, est, low, high, p):
    r = analyze_2x2(*counts)
    odds = r.odds_ratio
    assert (_fmt(odds.estimate), _fmt(odds.ci_low), _fmt(odds.ci_high)) == (est, low, high)
    assert f"{r.p:.3f}" == p


def test_normal_ct_month1_no_events_is_not_estimable():
    r = analyze_2x2(0, 58, 0, 34)
    assert not r.is_estimable
    assert (r.odds_ratio.estimate, r.p, r.p_method) == (None, None, "not estimable")
    assert "no events in either arm" in r.note
    assert r.chi2_p is None  # a zero column: chi-square undefined, not NaN
    assert r.fisher_p == 1.0


def test_fisher_p_values_quoted_in_the_text():
    # "two-sided Fisher exact p = 0.087 (month 6) and 0.013 (month 12)"
    assert f"{analyze_2x2(6, 51, 0, 27).fisher_p:.3f}" == "0.087"
    assert f"{analyze_2x2(10, 56, 0, 30).fisher_p:.3f}" == "0.013"


def test_p_method_follows_the_rule():
    assert analyze_2x2(5, 51, 6, 30).p_method.startswith("Fisher")  # expected 4.07 < 5
    assert analyze_2x2(10, 60, 5, 35).p_method.startswith("Pearson")  # expected 5.53
    assert analyze_2x2(3, 50, 0, 30).p_method.startswith("exact conditional logistic")
    # every expected count exactly 5 -> chi-square (">= 5")
    boundary = analyze_2x2(7, 10, 3, 10)
    assert boundary.min_expected == 5.0
    assert boundary.p_method.startswith("Pearson")


def test_zero_cell_p_is_exact_not_fisher():
    # 3/50 vs 0/30: P0(T >= 3) = C(50,3) / C(80,3) (hypergeometric, all 3 events in arm 1)
    r = analyze_2x2(3, 50, 0, 30)
    assert r.p == pytest.approx(math.comb(50, 3) / math.comb(80, 3), rel=1e-12)
    assert r.fisher_p == pytest.approx(0.28797, abs=1e-5)


def test_exact_closed_form_one_event():
    # 1/50 vs 0/30: m = 1, P_psi(T = 1) = 50 psi / (50 psi + 30).
    # MUE: = 1/2 -> psi = 0.6. One-sided lower limit: = 0.05 -> psi = 0.05 * 30 / (50 * 0.95).
    # Two-sided lower limit: = 0.025. p = P_1(T = 1) = 50/80.
    one = exact_conditional_logistic(1, 50, 0, 30)
    assert one.mue == pytest.approx(0.6, rel=1e-9)
    assert one.ci_low == pytest.approx(0.05 * 30 / (50 * 0.95), rel=1e-9)
    assert one.ci_high == math.inf
    assert one.p == pytest.approx(0.625, rel=1e-12)
    assert one.cmle is None
    two = exact_conditional_logistic(1, 50, 0, 30, sided=2)
    assert two.ci_low == pytest.approx(0.025 * 30 / (50 * 0.975), rel=1e-9)
    assert two.p == 1.0  # min(1, 2 x 0.625)


def _tail_probs(a, n1, c, n2, psi):
    """Independent P_psi(T >= a), P_psi(T <= a) and E_psi[T] from binomial coefficients."""
    m = a + c
    support = range(max(0, m - n2), min(n1, m) + 1)
    weights = {t: math.comb(n1, t) * math.comb(n2, m - t) * psi**t for t in support}
    total = sum(weights.values())
    upper = sum(w for t, w in weights.items() if t >= a) / total
    lower = sum(w for t, w in weights.items() if t <= a) / total
    mean = sum(t * w for t, w in weights.items()) / total
    return upper, lower, mean


@pytest.mark.parametrize("counts", [(2, 12, 5, 10), (4, 20, 1, 15), (1, 8, 6, 9)])
def test_exact_interior_t_definitions_checked_independently(counts):
    r = exact_conditional_logistic(*counts, sided=2)
    a, n1, c, n2 = counts
    # CI limits: P_low(T >= t) = alpha/2 and P_high(T <= t) = alpha/2
    assert _tail_probs(a, n1, c, n2, r.ci_low)[0] == pytest.approx(0.025, rel=1e-7)
    assert _tail_probs(a, n1, c, n2, r.ci_high)[1] == pytest.approx(0.025, rel=1e-7)
    # CMLE: E[T] = t
    assert _tail_probs(a, n1, c, n2, r.cmle)[2] == pytest.approx(a, rel=1e-7)
    # MUE: geometric mean of the psi solving P(T >= t) = 1/2 and P(T <= t) = 1/2
    one = exact_conditional_logistic(*counts, sided=1)
    assert one.mue == pytest.approx(r.mue, rel=1e-12)
    # p one-sided: smaller tail at psi = 1; two-sided doubles it
    up0, low0, _ = _tail_probs(a, n1, c, n2, 1.0)
    assert one.p == pytest.approx(min(up0, low0), rel=1e-9)
    assert r.p == pytest.approx(min(1.0, 2 * min(up0, low0)), rel=1e-9)


def test_exact_one_sided_lower_tail_interval_is_zero_to_upper():
    r = exact_conditional_logistic(0, 30, 10, 56)  # arm 1 has no events: lower tail
    assert r.tail == "lower"
    assert r.ci_low == 0.0
    assert r.ci_high == pytest.approx(1 / 1.7172199319356007, rel=1e-7)


def test_wald_matches_formula_and_refuses_zero_cells():
    r = wald_odds_ratio(10, 60, 5, 35)
    se = math.sqrt(1 / 10 + 1 / 50 + 1 / 5 + 1 / 30)
    assert r.estimate == pytest.approx(10 * 30 / (50 * 5))
    assert r.ci_low == pytest.approx(1.2 * math.exp(-1.959963984540054 * se))
    assert wald_odds_ratio(3, 50, 0, 30).estimate is None


@pytest.mark.parametrize(
    ("counts", "why"),
    [
        ((0, 58, 0, 34), "no events"),
        ((5, 5, 3, 3), "every patient"),
        ((0, 0, 1, 5), "no patients"),
    ],
)
def test_degenerate_tables_are_defined_not_errors(counts, why):
    r = analyze_2x2(*counts)
    assert r.p is None
    assert r.odds_ratio.estimate is None
    assert why in r.note


def test_one_patient_per_arm():
    r = analyze_2x2(1, 1, 0, 1)
    assert r.odds_ratio.estimate == pytest.approx(1.0)  # psi/(psi+1) = 1/2
    assert r.p == pytest.approx(0.5)


@pytest.mark.parametrize("bad", [(5, 3, 1, 2), (-1, 3, 1, 2), (1.5, 3, 1, 2), (1, 3, 1, -2)])
def test_bad_counts_raise_one_line_stats_error(bad):
    with pytest.raises(StatsError) as info:
        analyze_2x2(*bad)
    assert "\n" not in str(info.value)


def test_parse_events():
    assert parse_events("10/56") == (10, 56)
    assert parse_events(" 0/30 ") == (0, 30)
    for bad in ("10-56", "a/3", "5/3", "1/2/3"):
        with pytest.raises(StatsError, match="events"):
            parse_events(bad)


counts = st.integers(min_value=0, max_value=25).flatmap(
    lambda n: st.tuples(st.integers(min_value=0, max_value=n), st.just(n))
)


@settings(max_examples=40, deadline=None)
@given(arm1=counts, arm2=counts)
def test_swapping_arms_inverts_the_odds_ratio(arm1, arm2):
    r = analyze_2x2(*arm1, *arm2)
    s = analyze_2x2(*arm2, *arm1)
    assert r.is_estimable == s.is_estimable
    if r.odds_ratio.estimate is not None:
        assert r.odds_ratio.estimate * s.odds_ratio.estimate == pytest.approx(1.0, rel=1e-6)
        assert r.p == pytest.approx(s.p, rel=1e-9)
    if r.exact.mue is not None:
        assert r.exact.mue * s.exact.mue == pytest.approx(1.0, rel=1e-6)


@settings(max_examples=40, deadline=None)
@given(arm1=counts, arm2=counts)
def test_p_values_stay_in_unit_interval(arm1, arm2):
    r = analyze_2x2(*arm1, *arm2)
    for p in (r.p, r.chi2_p, r.fisher_p, r.exact.p, r.exact.p_two_sided):
        assert p is None or 0.0 <= p <= 1.0


def test_odds_one_ulp_from_one_does_not_abort_the_process():
    """scipy's nchypergeom_fisher aborts the interpreter (uncaught C++ exception in
    BiasedUrn) at psi = 1 + 2.2e-16, which the root search reached for 2/3 vs 4/6 (found
    by the hypothesis test above, which then killed the whole pytest run). Run in a child
    process so that a regression fails this test instead of aborting the suite."""
    code = (
        "from lungvol.stats import analyze_2x2, exact_conditional_logistic\n"
        "r = analyze_2x2(2, 3, 4, 6)\n"
        "e = exact_conditional_logistic(2, 3, 4, 6)\n"
        "print(r.p, e.cmle)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-500:]
    p, cmle = (float(v) for v in done.stdout.split())
    assert p == pytest.approx(1.0)  # equal proportions: two-sided Fisher p = 1
    assert cmle == pytest.approx(1.0, abs=1e-6)
