"""Hodges-Lehmann / Moses CIs, Wilcoxon rank-sum and per-arm summaries."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from lungvol.errors import StatsError
from lungvol.stats import hodges_lehmann, mann_whitney_cdf, summarize, wilcoxon_rank_sum
from lungvol.stats.nonparametric import _rank_sum_sd

# Hollander & Wolfe (1973), permeability constants of the human chorioamnion (term vs 12-26
# weeks); the data of R's ?wilcox.test example. R's documented results for this data:
#   wilcox.test(x, y): W = 35, p-value = 0.2544;  alternative = "greater": p = 0.1272;
#   greater, exact = FALSE, correct = FALSE (H&W large-sample approximation): p = 0.1103;
#   conf.int = TRUE: difference in location 0.305, 95 percent CI -0.15 0.76 (exact).
HW_X = [0.80, 0.83, 1.89, 1.04, 1.45, 1.38, 1.91, 1.64, 0.73, 1.46]
HW_Y = [1.15, 0.88, 0.90, 0.74, 1.21]

finite = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False)


# --- Hodges-Lehmann: cases derived by hand -------------------------------------------------


def test_hl_estimate_is_median_of_pairwise_differences_by_hand():
    # x - y over all pairs: 1,0 / 2,1 / 3,2 -> sorted 0,1,1,2,2,3 -> median (1 + 2) / 2 = 1.5
    assert hodges_lehmann([1, 2, 3], [0, 1]).estimate == 1.5


def test_hl_is_arm1_minus_arm2():
    assert hodges_lehmann([0, 1], [1, 2, 3]).estimate == -1.5


def test_hl_four_by_four_ci_by_hand():
    # x = 10..13, y = 0..3: differences 7..13, counts 1,2,3,4,3,2,1 -> median 10.
    # M = 16, sigma_W = sqrt(4*4*9/12) = sqrt(12); 8 - 1.959964*3.4641 = 1.21 -> C = 1 (floor
    # and round), so CI = [D(1), D(16)] = [7, 13]. Exact: P(U<=0) = 1/70 < 0.025 <= P(U<=1)
    # = 2/70 -> C = 1 too, achieved confidence 1 - 2/70.
    x, y = [10, 11, 12, 13], [0, 1, 2, 3]
    for ci in ("sas", "r", "exact"):
        r = hodges_lehmann(x, y, ci=ci)
        assert (r.estimate, r.ci_low, r.ci_high) == (10.0, 7.0, 13.0), ci
        assert (r.ci_rank_low, r.ci_rank_high) == (1, 16)
    assert "0.9714" in hodges_lehmann(x, y, ci="exact").ci_method


def test_hl_textbook_hollander_wolfe_matches_r_exact_ci():
    r = hodges_lehmann(HW_X, HW_Y, ci="exact")
    assert r.estimate == pytest.approx(0.305)
    assert (round(r.ci_low, 2), round(r.ci_high, 2)) == (-0.15, 0.76)


def test_hl_sas_floor_and_r_round_differ_by_one_order_statistic():
    # M = 50, sigma_W = sqrt(50*16/12) = 8.165; 25 - 1.959964*8.165 = 8.997:
    # SAS floors to C = 8, R's asymptotic interval lands on C = round(8.997) = 9.
    sas = hodges_lehmann(HW_X, HW_Y, ci="sas")
    r_conv = hodges_lehmann(HW_X, HW_Y, ci="r")
    assert (sas.ci_rank_low, sas.ci_rank_high) == (8, 43)
    assert (r_conv.ci_rank_low, r_conv.ci_rank_high) == (9, 42)
    diffs = np.sort(np.subtract.outer(HW_X, HW_Y).ravel())
    assert sas.ci_low == diffs[7]
    assert sas.ci_high == diffs[42]
    assert (round(sas.ci_low, 2), round(sas.ci_high, 2)) == (-0.17, 0.76)
    assert (round(r_conv.ci_low, 2), round(r_conv.ci_high, 2)) == (-0.15, 0.76)


def test_sas_npar1way_output_on_the_textbook_data():
    # SAS PROC NPAR1WAY WILCOXON HL on the same data (classes Trt = HW_X, Ctrl = HW_Y), as
    # printed in the SAS comparison output shipped with the CRAN package DescrTab2 2.1.9:
    #   Location Shift (Ctrl - Trt) -0.3050, 95% Confidence Limits -0.7600 0.1700;
    #   Wilcoxon two-sample test, Z with continuity correction 0.5: Pr > |Z| 0.2446;
    #   exact Pr >= |S - Mean| 0.2544.
    r = hodges_lehmann(HW_Y, HW_X)  # default ci="sas"
    assert (round(r.estimate, 4), round(r.ci_low, 4), round(r.ci_high, 4)) == (
        -0.305, -0.76, 0.17
    )
    normal = wilcoxon_rank_sum(HW_Y, HW_X, method="asymptotic")
    assert round(normal.p_value, 4) == 0.2446
    assert round(wilcoxon_rank_sum(HW_Y, HW_X).p_value, 4) == 0.2544


def test_sas_documentation_example_with_heavy_ties():
    # SAS/STAT User's Guide, PROC NPAR1WAY, "Hodges-Lehmann Estimation" example on data React
    # (reaction times under stimulant 1 and 2; created in the exact Wilcoxon example).
    # SAS prints rank sums 110.50 / 79.50, Std Dev Under H0 11.004784, and with ALPHA=.02:
    # Location Shift (2 - 1) 0.3500, Asymptotic (Moses) 98% limits 0.0000 0.8200.
    # Without the tie adjustment the limits would be 0.00 and 1.33.
    stim1 = [1.94] * 2 + [2.92] * 4 + [3.27] * 4 + [3.70] * 2 + [3.74]
    stim2 = [3.27] * 3 + [3.70] * 2 + [3.74]
    ranks = sps.rankdata(stim1 + stim2)
    assert (ranks[:13].sum(), ranks[13:].sum()) == (110.5, 79.5)
    assert round(_rank_sum_sd(np.array(stim1), np.array(stim2)), 6) == 11.004784
    r = hodges_lehmann(stim2, stim1, alpha=0.02)
    assert (round(r.estimate, 4), round(r.ci_low, 4), round(r.ci_high, 4)) == (0.35, 0.0, 0.82)


def test_sas_output_hollander_wolfe_chicken_example():
    # PHUSE CAMIS "Non-parametric point estimation in SAS" (Hollander-Wolfe chicken data):
    # PROC NPAR1WAY HL(REFCLASS="B"): Location Shift (A - B) 0.5600,
    # Asymptotic (Moses) 95% limits -0.3700 1.1830.
    a = [1.83, 0.50, 1.62, 2.48, 1.68, 1.88, 1.55, 3.06, 1.30]
    b = [0.878, 0.647, 0.598, 2.050, 1.060, 1.290, 1.060, 3.140, 1.290]
    r = hodges_lehmann(a, b)
    assert (round(r.estimate, 4), round(r.ci_low, 4), round(r.ci_high, 4)) == (
        0.56, -0.37, 1.183
    )


def test_tie_adjusted_rank_sum_sd_equals_permutation_variance():
    # The variance of the midrank sum of arm 1 over all C(N, n1) equally likely assignments
    # is what the tie-adjusted formula must give.
    x = np.array([1.0, 2.0, 2.0, 3.0, 5.0])
    y = np.array([1.0, 1.0, 2.0, 4.0, 5.0, 5.0])
    ranks = sps.rankdata(np.concatenate([x, y]))
    sums = [ranks[list(idx)].sum() for idx in itertools.combinations(range(11), 5)]
    assert _rank_sum_sd(x, y) ** 2 == pytest.approx(np.var(sums), rel=1e-12)


def test_hl_with_ties_uses_tie_adjusted_variance():
    x = [1, 2, 2, 3, 3, 3, 4, 5, 5, 6]
    y = [0, 1, 1, 2, 2, 3, 3, 4]
    r = hodges_lehmann(x, y)
    # by hand: N = 18, tie groups (value: count) 0:1 1:3 2:4 3:5 4:2 5:2 6:1
    tie = sum(t**3 - t for t in (1, 3, 4, 5, 2, 2, 1)) / (18 * 17)
    sd = math.sqrt(80 / 12 * (19 - tie))
    c = math.floor(40 - 1.959963984540054 * sd)
    diffs = np.sort(np.subtract.outer(x, y).ravel())
    assert r.has_ties
    assert (r.ci_rank_low, r.ci_low, r.ci_high) == (c, diffs[c - 1], diffs[80 - c])
    assert r.estimate == float(np.median(diffs))


def test_exact_ci_with_ties_falls_back_to_sas_and_says_so():
    r = hodges_lehmann([1, 2, 2, 3, 4, 5], [0, 1, 2, 2, 3], ci="exact")
    sas = hodges_lehmann([1, 2, 2, 3, 4, 5], [0, 1, 2, 2, 3], ci="sas")
    assert (r.ci_low, r.ci_high) == (sas.ci_low, sas.ci_high)
    assert "fallback" in r.ci_method
    assert "ties" in r.note


def test_exact_and_asymptotic_cis_agree_on_large_untied_sample():
    rng = np.random.default_rng(7)
    x = rng.normal(1.0, 2.0, 45)
    y = rng.normal(0.0, 2.0, 40)
    exact = hodges_lehmann(x, y, ci="exact")
    sas = hodges_lehmann(x, y, ci="sas")
    r_conv = hodges_lehmann(x, y, ci="r")
    assert not exact.has_ties
    assert abs(exact.ci_rank_low - sas.ci_rank_low) <= 1
    assert abs(exact.ci_rank_low - r_conv.ci_rank_low) <= 1
    assert exact.ci_low == pytest.approx(sas.ci_low, abs=0.05)
    assert exact.ci_high == pytest.approx(sas.ci_high, abs=0.05)


def test_mann_whitney_cdf_matches_scipy_exact_p_values():
    n1, n2 = 6, 9
    cdf = mann_whitney_cdf(n1, n2)
    assert cdf.size == n1 * n2 + 1
    assert cdf[-1] == pytest.approx(1.0)
    y = np.arange(n2, dtype=float)
    rng = np.random.default_rng(3)
    for _ in range(10):
        k = rng.integers(-1, n2, size=n1)  # x_i sits above k_i + 1 of the y values
        x = k + 0.5 + 1e-3 * np.arange(n1)  # untied
        u = int(np.sum(k + 1))
        p_less = sps.mannwhitneyu(x, y, alternative="less", method="exact").pvalue
        assert cdf[u] == pytest.approx(p_less, rel=1e-10)


def test_mann_whitney_cdf_is_exact_for_larger_samples():
    # Exact integer counts: symmetric around M/2 and close to the normal approximation.
    n1, n2 = 90, 110
    cdf = mann_whitney_cdf(n1, n2)
    m = n1 * n2
    assert np.all(np.diff(cdf) >= 0)
    # symmetry: P(U <= u) = P(U >= M - u) = 1 - P(U <= M - u - 1)
    assert np.allclose(cdf[:-1] + cdf[-2::-1], 1.0, rtol=0, atol=1e-12)
    assert cdf[0] == pytest.approx(1 / math.comb(n1 + n2, n1), rel=1e-12)
    sd = math.sqrt(n1 * n2 * (n1 + n2 + 1) / 12)
    u = m // 2 - 1000
    assert cdf[u] == pytest.approx(sps.norm.cdf((u + 0.5 - m / 2) / sd), abs=2e-3)


def test_exact_ci_above_size_limit_falls_back_with_note(monkeypatch):
    import lungvol.stats.nonparametric as npm

    monkeypatch.setattr(npm, "MAX_EXACT_DIFFERENCES", 10)
    r = hodges_lehmann([1.0, 2.5, 3.1, 4.2], [0.3, 1.7, 2.2, 5.9], ci="exact")
    assert "fallback" in r.ci_method
    assert "not computed above 10" in r.note
    with pytest.raises(StatsError, match="above the limit"):
        mann_whitney_cdf(4, 4)


# --- Hodges-Lehmann: edge cases --------------------------------------------------------


def test_hl_missing_values_are_dropped_and_counted():
    r = hodges_lehmann([1, 2, float("nan"), 3, None], [0, 1, None])
    assert (r.n1, r.n2, r.n_missing1, r.n_missing2) == (3, 2, 2, 1)
    assert r.estimate == 1.5


def test_hl_empty_arm_gives_none_with_note():
    r = hodges_lehmann([], [1.0, 2.0])
    assert r.estimate is None
    assert r.ci_low is None
    assert "arm 1" in r.note
    r = hodges_lehmann([1.0], [float("nan")])
    assert r.estimate is None
    assert r.n_missing2 == 1
    assert "arm 2" in r.note


def test_hl_one_per_arm_gives_estimate_but_no_ci():
    r = hodges_lehmann([5.0], [2.0])
    assert r.estimate == 3.0
    assert r.ci_low is None
    assert r.ci_high is None
    assert "too small" in r.note


def test_hl_all_ties_gives_zero_shift_and_degenerate_ci():
    r = hodges_lehmann([2.0] * 5, [2.0] * 4)
    assert (r.estimate, r.ci_low, r.ci_high) == (0.0, 0.0, 0.0)
    assert "all values tied" in r.note


def test_hl_rejects_bad_arguments():
    with pytest.raises(StatsError, match="unknown HL"):
        hodges_lehmann([1], [2], ci="bootstrap")
    with pytest.raises(StatsError, match="alpha"):
        hodges_lehmann([1], [2], alpha=1.5)
    with pytest.raises(StatsError, match="infinite"):
        hodges_lehmann([1, float("inf")], [2])
    with pytest.raises(StatsError, match="non-numeric"):
        hodges_lehmann([1, "a"], [2])


def test_hl_to_dict_is_plain():
    d = hodges_lehmann([1, 2, 3], [0, 1]).to_dict()
    assert d["estimate"] == 1.5
    assert d["method"] == "Hodges-Lehmann"


@settings(max_examples=40, deadline=None)
@given(
    x=st.lists(finite, min_size=1, max_size=12),
    y=st.lists(finite, min_size=1, max_size=12),
    shift=st.floats(min_value=-100, max_value=100, allow_nan=False),
)
def test_hl_estimate_shifts_exactly_with_arm1(x, y, shift):
    # Work on a grid of multiples of 1/8 so that the shift is exact in floating point.
    x = [round(v * 8) / 8 for v in x]
    y = [round(v * 8) / 8 for v in y]
    s = round(shift * 8) / 8
    base = hodges_lehmann(x, y)
    moved = hodges_lehmann([v + s for v in x], y)
    assert moved.estimate == base.estimate + s
    # The CI's ranks depend on ties between the arms, which a shift can create or remove.
    if base.ci_low is not None and not base.has_ties and not moved.has_ties:
        assert (moved.ci_low, moved.ci_high) == (base.ci_low + s, base.ci_high + s)
    swapped = hodges_lehmann(y, x)
    assert swapped.estimate == -base.estimate


# --- Wilcoxon rank-sum --------------------------------------------------------------------


def test_wilcoxon_textbook_values():
    r = wilcoxon_rank_sum(HW_X, HW_Y)
    assert r.statistic == 35.0
    assert round(r.p_value, 4) == 0.2544
    assert "exact" in r.method
    assert round(wilcoxon_rank_sum(HW_X, HW_Y, alternative="greater").p_value, 4) == 0.1272
    approx = wilcoxon_rank_sum(
        HW_X, HW_Y, alternative="greater", method="asymptotic", continuity=False
    )
    assert round(approx.p_value, 4) == 0.1103
    assert "normal approximation" in approx.method


def test_wilcoxon_uses_normal_approximation_with_ties_or_large_arms():
    assert "normal" in wilcoxon_rank_sum([1, 2, 2, 3], [2, 3, 4]).method
    rng = np.random.default_rng(1)
    assert "normal" in wilcoxon_rank_sum(rng.normal(size=60), rng.normal(size=30)).method


def test_wilcoxon_edge_cases():
    assert wilcoxon_rank_sum([], [1.0]).p_value is None
    tied = wilcoxon_rank_sum([1.0, 1.0], [1.0, 1.0, 1.0])
    assert tied.p_value == 1.0
    assert "tied" in tied.note
    one = wilcoxon_rank_sum([2.0], [1.0])
    assert one.p_value == 1.0
    assert (one.n1, one.n2) == (1, 1)


@settings(max_examples=40, deadline=None)
@given(x=st.lists(finite, min_size=0, max_size=15), y=st.lists(finite, min_size=0, max_size=15))
def test_wilcoxon_p_in_unit_interval(x, y):
    p = wilcoxon_rank_sum(x, y).p_value
    assert p is None or 0.0 <= p <= 1.0


# --- Summaries -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "definition", "expected"),
    [
        # SAS QNTLDEF=5, n = 10: Q1 n p = 2.5 -> y(3) = 3; median 5 -> (y5 + y6)/2; Q3 -> y(8)
        (range(1, 11), "sas5", (3.0, 5.5, 8.0)),
        # R type 7, n = 10: Q1 = y(1 + 9/4) = 3.25, Q3 = y(7.75) = 7.75
        (range(1, 11), "r7", (3.25, 5.5, 7.75)),
        # n = 8: n p = 2 exactly (g = 0) -> (y2 + y3)/2 = 2.5 and (y6 + y7)/2 = 6.5
        (range(1, 9), "sas5", (2.5, 4.5, 6.5)),
        (range(1, 9), "r7", (2.75, 4.5, 6.25)),
        # n = 6: 1.5 -> y(2); 4.5 -> y(5)
        ([6, 1, 5, 2, 4, 3], "sas5", (2.0, 3.5, 5.0)),
    ],
)
def test_summary_quantile_definitions_by_hand(values, definition, expected):
    s = summarize(list(values), quantile_definition=definition)
    assert (s.q1, s.median, s.q3) == expected


def test_summary_mean_se_missing():
    s = summarize([2.0, 4.0, None, 6.0, float("nan"), 8.0])
    assert (s.n, s.n_missing, s.mean) == (4, 2, 5.0)
    assert s.sd == pytest.approx(math.sqrt(20 / 3))
    assert s.se == pytest.approx(math.sqrt(20 / 3) / 2)


def test_summary_edge_cases():
    empty = summarize([float("nan"), None])
    assert empty.n == 0
    assert empty.n_missing == 2
    assert empty.median is None
    one = summarize([3.0])
    assert (one.median, one.q1, one.q3, one.mean, one.se) == (3.0, 3.0, 3.0, 3.0, None)
    with pytest.raises(StatsError, match="quantile definition"):
        summarize([1.0], quantile_definition="sas4")
