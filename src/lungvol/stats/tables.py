"""2x2 tables (events / n per arm): odds ratio, chi-square, Fisher, exact conditional logistic.

Table layout (arm 1 first, as in the trial's tables)::

                 event   no event
    arm 1          a        b        n1 = a + b
    arm 2          c        d        n2 = c + d

The odds ratio is (a / b) / (c / d): arm 1 versus arm 2.

The trial's rule (checked row by row against Shi et al. 2022, see ``lungvol.stats.paper``):

- no zero cell: sample odds ratio with Wald CI, and p from Pearson's chi-square WITHOUT
  continuity correction when every expected count is >= 5, otherwise Fisher's exact
  two-sided test;
- a zero cell: exact conditional logistic regression (SAS PROC LOGISTIC EXACT with the
  ONESIDED option): median-unbiased estimate, one-sided exact CI, and the exact one-sided p
  of that model (the paper's p column for these rows is this p, not Fisher's: e.g. 3/50 vs
  0/30 prints 0.239 = P0(T >= 3), while Fisher two-sided is 0.288);
- no events in either arm (or events in every patient, or an empty arm): not estimable,
  odds ratio and p are ``None`` ("NA" in the paper).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import numpy as np
from scipy import optimize
from scipy import stats as sps

from lungvol.errors import StatsError
from lungvol.stats.results import ExactLogisticResult, OddsRatioResult, TwoByTwoResult

logger = logging.getLogger(__name__)

# Expected count at or above which Pearson's chi-square is used instead of Fisher's test.
MIN_EXPECTED_FOR_CHI2 = 5.0
# Search range for log odds ratios in the exact model (exp(+-60) ~ 1e+-26: far beyond any
# estimable table; a limit beyond it is reported as 0 or +inf).
_LOG_PSI_BOUND = 60.0
# Within this distance of log psi = 0 the central hypergeometric law is used. scipy's
# nchypergeom_fisher (the BiasedUrn C++ code) aborts the whole process ("Parameter negative
# in LnFac function", an uncaught C++ exception) for odds one ulp away from 1, e.g. the
# table 2/3 vs 4/6 at psi = 1 + 2.2e-16 (scipy 1.17.1); odds 1 +- 1e-9 were checked safe
# for tables up to 400 subjects. The pmfs differ by ~1e-9 relative there.
_CENTRAL_LOG_PSI = 1e-9


def _check_counts(events1: int, n1: int, events2: int, n2: int) -> tuple[int, int, int, int]:
    out = []
    for name, value in (("events1", events1), ("n1", n1), ("events2", events2), ("n2", n2)):
        if isinstance(value, bool) or not float(value).is_integer():
            raise StatsError(f"{name} must be a whole number, got {value!r}")
        out.append(int(value))
    a, m1, c, m2 = out
    for arm, ev, n in ((1, a, m1), (2, c, m2)):
        if n < 0 or ev < 0:
            raise StatsError(f"arm {arm}: counts must be >= 0, got {ev}/{n}")
        if ev > n:
            raise StatsError(f"arm {arm}: {ev} events out of {n} patients; events cannot exceed n")
    return a, m1, c, m2


def wald_odds_ratio(
    events1: int, n1: int, events2: int, n2: int, *, alpha: float = 0.05
) -> OddsRatioResult:
    """Sample odds ratio with Wald CI exp(log OR +/- z sqrt(1/a + 1/b + 1/c + 1/d)).

    This is what (unconditional) logistic regression on one binary covariate prints. With a
    zero cell the sample OR is 0 or infinite: ``None`` with a note (use the exact estimate).
    """
    a, m1, c, m2 = _check_counts(events1, n1, events2, n2)
    b, d = m1 - a, m2 - c
    method = "logistic regression (sample odds ratio, Wald CI)"
    if min(a, b, c, d) == 0:
        return OddsRatioResult(
            estimate=None, ci_low=None, ci_high=None, method=method, confidence=1 - alpha,
            note="zero cell: sample odds ratio is 0 or infinite; see the exact estimate",
        )
    log_or = math.log(a) + math.log(d) - math.log(b) - math.log(c)
    se = math.sqrt(1 / a + 1 / b + 1 / c + 1 / d)
    z = float(sps.norm.ppf(1 - alpha / 2))
    return OddsRatioResult(
        estimate=math.exp(log_or),
        ci_low=math.exp(log_or - z * se),
        ci_high=math.exp(log_or + z * se),
        method=method,
        confidence=1 - alpha,
    )


class _ConditionalLaw:
    """T = events in arm 1 given the margins: Fisher noncentral hypergeometric (scipy)."""

    def __init__(self, a: int, n1: int, c: int, n2: int) -> None:
        self.t = a
        self.total = n1 + n2
        self.n1 = n1
        self.m = a + c
        self.lo = max(0, self.m - n2)
        self.hi = min(n1, self.m)
        self.support = np.arange(self.lo, self.hi + 1)

    def _pmf(self, psi: float) -> np.ndarray:
        if abs(math.log(psi)) <= _CENTRAL_LOG_PSI:
            law = sps.hypergeom(self.total, self.n1, self.m)
        else:
            law = sps.nchypergeom_fisher(self.total, self.n1, self.m, psi)
        pmf = law.pmf(self.support)
        return pmf / pmf.sum()

    def upper(self, psi: float) -> float:
        """P_psi(T >= t), summed over the pmf (no 1 - cdf cancellation)."""
        return float(self._pmf(psi)[self.support >= self.t].sum())

    def lower(self, psi: float) -> float:
        """P_psi(T <= t)."""
        return float(self._pmf(psi)[self.support <= self.t].sum())

    def mean(self, psi: float) -> float:
        return float(np.dot(self.support, self._pmf(psi)))


def _solve_log_psi(fn: Callable[[float], float], target: float) -> float:
    """log psi where the monotone ``fn(psi)`` crosses ``target`` (+-inf when out of range)."""

    def g(log_psi: float) -> float:
        return fn(math.exp(log_psi)) - target

    g_lo, g_hi = g(-_LOG_PSI_BOUND), g(_LOG_PSI_BOUND)
    if g_lo * g_hi > 0:
        # No crossing within exp(+-60): the limit is at the boundary of the parameter space.
        increasing = g_hi > g_lo
        above = g_lo > 0
        return -math.inf if (above == increasing) else math.inf
    return float(optimize.brentq(g, -_LOG_PSI_BOUND, _LOG_PSI_BOUND, xtol=1e-12, rtol=1e-13))


def exact_conditional_logistic(
    events1: int,
    n1: int,
    events2: int,
    n2: int,
    *,
    alpha: float = 0.05,
    sided: int = 1,
) -> ExactLogisticResult:
    """Exact conditional logistic regression of arm on event (SAS PROC LOGISTIC EXACT).

    Conditioning on the total events m, T = events in arm 1 has Fisher's noncentral
    hypergeometric law with odds ratio psi on support [lo, hi].

    - MUE: at t = hi solve P_psi(T >= t) = 1/2; at t = lo solve P_psi(T <= t) = 1/2; inside
      the support, the geometric mean of those two solutions (SAS averages the log odds).
    - CMLE: E_psi[T] = t, which has a solution only for lo < t < hi.
    - CI, ``sided=2``: lower solves P_psi(T >= t) = alpha/2 (0 when t = lo), upper solves
      P_psi(T <= t) = alpha/2 (+inf when t = hi). ``sided=1`` (SAS ONESIDED, the paper's
      choice): alpha on the side of the one-sided test (the smaller tail), the other limit
      0 or +inf.
    - p: one-sided = min(P_0(T >= t), P_0(T <= t)) at psi = 1; two-sided = min(1, 2 x that).

    Not estimable (``None`` values, note set) when the support is a single point: no events,
    every patient with the event, or an empty arm.
    """
    a, m1, c, m2 = _check_counts(events1, n1, events2, n2)
    if sided not in (1, 2):
        raise StatsError(f"sided must be 1 or 2, got {sided!r}")
    if not 0.0 < alpha < 1.0:
        raise StatsError(f"alpha must be in (0, 1), got {alpha}")
    law = _ConditionalLaw(a, m1, c, m2)
    method = f"exact conditional logistic regression ({'one' if sided == 1 else 'two'}-sided)"
    if law.lo == law.hi:
        if m1 == 0 or m2 == 0:
            why = "an arm has no patients"
        elif law.m == 0:
            why = "no events in either arm"
        else:
            why = "every patient had the event"
        return ExactLogisticResult(
            mue=None, cmle=None, ci_low=None, ci_high=None, p=None, sided=sided, alpha=alpha,
            t=a, support_min=law.lo, support_max=law.hi, method=method,
            note=f"{why}: odds ratio not estimable",
        )
    t = law.t
    p_upper0, p_lower0 = law.upper(1.0), law.lower(1.0)
    p_one = min(p_upper0, p_lower0, 1.0)
    p_two = min(1.0, 2.0 * p_one)
    tail = "upper" if p_upper0 <= p_lower0 else "lower"

    # Median-unbiased estimate.
    if t == law.hi:
        log_mue = _solve_log_psi(law.upper, 0.5)
    elif t == law.lo:
        log_mue = _solve_log_psi(law.lower, 0.5)
    else:
        log_mue = 0.5 * (_solve_log_psi(law.upper, 0.5) + _solve_log_psi(law.lower, 0.5))
    cmle = None
    if law.lo < t < law.hi:
        cmle = math.exp(_solve_log_psi(law.mean, float(t)))

    def lower_limit(eps: float) -> float:
        return 0.0 if t == law.lo else math.exp(_solve_log_psi(law.upper, eps))

    def upper_limit(eps: float) -> float:
        return math.inf if t == law.hi else math.exp(_solve_log_psi(law.lower, eps))

    if sided == 2:
        ci_low, ci_high = lower_limit(alpha / 2), upper_limit(alpha / 2)
    elif tail == "upper":
        ci_low, ci_high = lower_limit(alpha), math.inf
    else:
        ci_low, ci_high = 0.0, upper_limit(alpha)
    note = "" if cmle is not None else "t at the edge of its support: CMLE does not exist, MUE"
    return ExactLogisticResult(
        mue=math.exp(log_mue),
        cmle=cmle,
        ci_low=ci_low,
        ci_high=ci_high,
        p=p_one if sided == 1 else p_two,
        sided=sided,
        alpha=alpha,
        t=t,
        support_min=law.lo,
        support_max=law.hi,
        p_one_sided=p_one,
        p_two_sided=p_two,
        tail=tail,
        method=method,
        note=note,
    )


def analyze_2x2(
    events1: int,
    n1: int,
    events2: int,
    n2: int,
    *,
    alpha: float = 0.05,
    exact_sided: int = 1,
    min_expected_for_chi2: float = MIN_EXPECTED_FOR_CHI2,
) -> TwoByTwoResult:
    """Every 2x2 statistic of the trial's tables for ``events1/n1`` (arm 1) vs ``events2/n2``.

    ``odds_ratio``, ``p`` and ``p_method`` follow the trial's rule (module docstring): exact
    conditional logistic MUE, one-sided CI and exact p when a cell is zero; otherwise the
    Wald odds ratio and chi-square (every expected count >= ``min_expected_for_chi2``) or
    Fisher. ``wald``, ``exact``, ``chi2_p`` and ``fisher_p`` are always filled where defined.

    Examples
    --------
    >>> r = analyze_2x2(10, 56, 0, 30)
    >>> round(r.odds_ratio.estimate, 2), round(r.odds_ratio.ci_low, 2), round(r.p, 3)
    (8.75, 1.72, 0.01)
    """
    a, m1, c, m2 = _check_counts(events1, n1, events2, n2)
    b, d = m1 - a, m2 - c
    total = m1 + m2
    events = a + c
    wald = wald_odds_ratio(a, m1, c, m2, alpha=alpha)
    exact = exact_conditional_logistic(a, m1, c, m2, alpha=alpha, sided=exact_sided)
    table = np.array([[a, b], [c, d]])

    min_expected: float | None = None
    chi2_stat: float | None = None
    chi2_p: float | None = None
    fisher_p: float | None = None
    if total > 0:
        expected = np.outer([m1, m2], [events, total - events]) / total
        min_expected = float(expected.min())
        fisher_p = float(sps.fisher_exact(table).pvalue)
        if min_expected > 0:
            res = sps.chi2_contingency(table, correction=False)
            chi2_stat, chi2_p = float(res.statistic), float(res.pvalue)

    is_estimable = exact.mue is not None
    if not is_estimable:
        odds_ratio = OddsRatioResult(
            estimate=None, ci_low=None, ci_high=None, method="not estimable",
            confidence=1 - alpha, note=exact.note,
        )
        return TwoByTwoResult(
            events1=a, n1=m1, events2=c, n2=m2, odds_ratio=odds_ratio, wald=wald, exact=exact,
            chi2_statistic=chi2_stat, chi2_p=chi2_p, fisher_p=fisher_p,
            min_expected=min_expected, p=None, p_method="not estimable", is_estimable=False,
            note=exact.note,
        )
    if min(a, b, c, d) == 0:
        sided_word = "one" if exact_sided == 1 else "two"
        odds_ratio = OddsRatioResult(
            estimate=exact.mue, ci_low=exact.ci_low, ci_high=exact.ci_high,
            method=f"exact conditional logistic (median-unbiased estimate, {sided_word}-sided "
            "exact CI)",
            confidence=1 - alpha,
            note="zero cell",
        )
        p, p_method = exact.p, f"exact conditional logistic ({sided_word}-sided)"
        note = "zero cell: exact conditional logistic regression"
    else:
        odds_ratio = wald
        smallest = min_expected if min_expected is not None else 0.0
        if smallest >= min_expected_for_chi2 and chi2_p is not None:
            p, p_method = chi2_p, "Pearson chi-square (no continuity correction)"
        else:
            p, p_method = fisher_p, "Fisher exact (two-sided)"
        note = f"smallest expected count {smallest:.2f}"
    return TwoByTwoResult(
        events1=a, n1=m1, events2=c, n2=m2, odds_ratio=odds_ratio, wald=wald, exact=exact,
        chi2_statistic=chi2_stat, chi2_p=chi2_p, fisher_p=fisher_p, min_expected=min_expected,
        p=p, p_method=p_method, is_estimable=True, note=note,
    )


def parse_events(text: str) -> tuple[int, int]:
    """Parse "events/n" (e.g. "10/56") into (events, n); one-line StatsError otherwise."""
    parts = text.strip().split("/")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise StatsError(f"could not read {text!r} as events/n; write counts like 10/56")
    events, n = int(parts[0]), int(parts[1])
    if events > n:
        raise StatsError(f"{text!r}: {events} events out of {n}; events cannot exceed n")
    return events, n
