"""Two-sample nonparametric statistics as the trial's software (SAS) computes them.

- ``hodges_lehmann``: Hodges-Lehmann shift estimate (arm 1 minus arm 2) with a Moses CI:
  ``"sas"`` (default; asymptotic, tie-adjusted rank-sum variance, floor), ``"exact"``
  (Wilcoxon/Mann-Whitney distribution, untied data) or ``"r"`` (R's asymptotic convention,
  which rounds instead of flooring).
- ``wilcoxon_rank_sum``: Wilcoxon rank-sum (Mann-Whitney) test via scipy.
- ``summarize``: n, missing, median (Q1, Q3) by SAS definition 5 or R type 7, mean, SE.

Missing values (NaN/None) are dropped and counted everywhere; empty arms give ``None``
results with a note instead of exceptions.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Literal

import numpy as np
from scipy import stats as sps

from lungvol.errors import StatsError
from lungvol.stats.results import HLResult, Summary, TestResult

logger = logging.getLogger(__name__)

CIMethod = Literal["sas", "exact", "r"]
QuantileDefinition = Literal["sas5", "r7"]

# numpy's names for the two quantile definitions (Hyndman & Fan 1996 numbering):
# SAS QNTLDEF=5 (PROC UNIVARIATE default) is H&F type 2, numpy "averaged_inverted_cdf";
# R's default type 7 is numpy "linear".
_NUMPY_QUANTILE_METHOD = {"sas5": "averaged_inverted_cdf", "r7": "linear"}

# R's wilcox.test uses the exact distribution when both arms have fewer than 50 values and
# there are no ties; we follow the same rule for method="auto".
EXACT_MAX_N_PER_ARM = 49
# Largest number of pairwise differences held in memory for Hodges-Lehmann (8 bytes each).
MAX_PAIRWISE_DIFFERENCES = 20_000_000
# Largest n1 x n2 for the exact Mann-Whitney distribution (exact integers; ~1.5 s at 200 x 200).
# Far below it the exact and asymptotic Moses CIs already agree to within one order statistic.
MAX_EXACT_DIFFERENCES = 40_000


def _clean(values: Iterable[float | None] | np.ndarray, *, name: str) -> tuple[np.ndarray, int]:
    """Return (finite float values, number of missing) ; NaN and None count as missing."""
    raw = list(values) if not isinstance(values, np.ndarray) else values.ravel().tolist()
    try:
        arr = np.array([np.nan if v is None else v for v in raw], dtype=float)
    except (TypeError, ValueError) as err:
        raise StatsError(
            f"{name} holds a non-numeric value ({err}); pass numbers, with NaN/None for missing"
        ) from err
    if np.isinf(arr).any():
        raise StatsError(
            f"{name} holds an infinite value; remove it or mark it missing (NaN) before analysis"
        )
    missing = np.isnan(arr)
    return arr[~missing], int(missing.sum())


def _rank_sum_sd(x: np.ndarray, y: np.ndarray) -> float:
    """Tie-adjusted SD of the Wilcoxon rank sum under H0 (as SAS PROC NPAR1WAY).

    Var(W) = n1 n2 / 12 x [(N + 1) - sum(t^3 - t) / (N (N - 1))], t = size of each tie group.
    """
    n1, n2 = x.size, y.size
    n = n1 + n2
    _, tie_counts = np.unique(np.concatenate([x, y]), return_counts=True)
    tie_term = float(np.sum(tie_counts.astype(float) ** 3 - tie_counts)) / (n * (n - 1))
    var = n1 * n2 / 12.0 * ((n + 1) - tie_term)
    return math.sqrt(max(var, 0.0))


def mann_whitney_cdf(n1: int, n2: int) -> np.ndarray:
    """Exact null CDF of the Mann-Whitney U statistic (no ties): ``cdf[u] = P(U <= u)``.

    scipy exposes exact Mann-Whitney p-values but not the distribution's quantiles, which the
    exact Moses CI needs (R's ``qwilcox``), so it is written here (Harding 1984, Appl. Stat.
    33:1-6): the counts of U are the coefficients of the Gaussian binomial
    [n1 + n2 choose n1]_q = prod_{i=1..n1} (1 - q^(n2+i)) / (1 - q^i), built factor by factor
    in exact integer arithmetic. (Floating point is not an option: the alternating
    multiply/divide steps cancel catastrophically beyond ~100 per arm.) Limited to
    ``n1 * n2 <= MAX_EXACT_DIFFERENCES``.
    """
    if n1 < 0 or n2 < 0:
        raise StatsError(f"arm sizes must be >= 0, got n1={n1}, n2={n2}")
    m = n1 * n2
    if m > MAX_EXACT_DIFFERENCES:
        raise StatsError(
            f"exact Mann-Whitney distribution for n1={n1}, n2={n2} ({m} differences) is above "
            f"the limit of {MAX_EXACT_DIFFERENCES}; use the asymptotic CI (ci='sas')"
        )
    counts = [0] * (m + 1)
    counts[0] = 1
    for i in range(1, n1 + 1):
        deg = i * n2  # degree of [n2 + i choose i]_q, the product after this step
        for j in range(i, deg + 1):  # divide by (1 - q^i)
            counts[j] += counts[j - i]
        shift = n2 + i
        for j in range(deg, shift - 1, -1):  # multiply by (1 - q^(n2 + i))
            counts[j] -= counts[j - shift]
    total = math.comb(n1 + n2, n1)
    cdf = np.empty(m + 1)
    running = 0
    for u, count in enumerate(counts):
        running += count
        cdf[u] = running / total  # int / int: correctly rounded
    return cdf


def _pairwise_differences(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    m = x.size * y.size
    if m > MAX_PAIRWISE_DIFFERENCES:
        raise StatsError(
            f"Hodges-Lehmann needs {m} pairwise differences (n1={x.size}, n2={y.size}), above "
            f"the limit of {MAX_PAIRWISE_DIFFERENCES}; analyse a smaller sample or subsample"
        )
    return np.sort(np.subtract.outer(x, y).ravel())


def hodges_lehmann(
    x: Iterable[float | None] | np.ndarray,
    y: Iterable[float | None] | np.ndarray,
    *,
    ci: CIMethod = "sas",
    alpha: float = 0.05,
) -> HLResult:
    """Hodges-Lehmann estimate of the shift ``x - y`` (arm 1 minus arm 2) with a Moses CI.

    Parameters
    ----------
    x, y : sequences of float
        Values of arm 1 and arm 2; NaN/None are dropped and counted.
    ci : {"sas", "exact", "r"}
        ``"sas"`` (default, SAS PROC NPAR1WAY HL): C = floor(M/2 - z sigma_W), with M = n1 n2
        and sigma_W the tie-adjusted SD of the rank sum; CI = [D(C), D(M + 1 - C)] over the
        sorted pairwise differences D. ``"r"``: the same with rounding instead of floor, which
        is where R's asymptotic ``wilcox.test(conf.int=TRUE)`` interval lands.
        ``"exact"``: C = the alpha/2 quantile of the exact Mann-Whitney distribution (R's
        ``qwilcox``; C = 1 when that is 0); needs untied data, otherwise falls back to "sas"
        and says so in ``ci_method`` and ``note``.
    alpha : float
        1 - confidence level (two-sided), in (0, 1).

    Returns
    -------
    HLResult
        ``estimate`` (median of all pairwise differences), ``ci_low``, ``ci_high``. The CI is
        ``None`` (with a note) when the samples are too small for the requested confidence.

    Raises
    ------
    StatsError
        Unknown ``ci``, ``alpha`` outside (0, 1), non-numeric or infinite values.

    Examples
    --------
    >>> r = hodges_lehmann([1.0, 2.0, 3.0], [0.0, 1.0])
    >>> r.estimate
    1.5
    """
    if ci not in ("sas", "exact", "r"):
        raise StatsError(f"unknown HL confidence interval method {ci!r}; use 'sas', 'exact' or 'r'")
    if not 0.0 < alpha < 1.0:
        raise StatsError(f"alpha must be in (0, 1), got {alpha}")
    xs, miss1 = _clean(x, name="arm 1")
    ys, miss2 = _clean(y, name="arm 2")
    n1, n2 = xs.size, ys.size
    confidence = 1.0 - alpha
    base = {"confidence": confidence, "n1": n1, "n2": n2, "n_missing1": miss1, "n_missing2": miss2}
    if n1 == 0 or n2 == 0:
        empty = "arm 1" if n1 == 0 else "arm 2"
        return HLResult(
            estimate=None, ci_low=None, ci_high=None, ci_method=ci, **base,
            note=f"{empty} has no non-missing values: no Hodges-Lehmann estimate",
        )
    diffs = _pairwise_differences(xs, ys)
    m = diffs.size
    estimate = float(np.median(diffs))
    combined = np.concatenate([xs, ys])
    has_ties = np.unique(combined).size < combined.size
    z = float(sps.norm.ppf(1.0 - alpha / 2.0))
    notes: list[str] = []
    method = ci
    if ci == "exact" and has_ties:
        method = "sas"
        notes.append("exact CI needs untied data; ties present, asymptotic SAS CI given instead")
    elif ci == "exact" and m > MAX_EXACT_DIFFERENCES:
        method = "sas"
        notes.append(
            f"exact distribution not computed above {MAX_EXACT_DIFFERENCES} differences "
            f"(n1 x n2 = {m}); asymptotic SAS CI given instead"
        )
    if method == "exact":
        cdf = mann_whitney_cdf(n1, n2)
        # qwilcox(alpha/2): smallest u with P(U <= u) >= alpha/2, with R's fuzz of 10 eps.
        c = int(np.searchsorted(cdf, alpha / 2.0 - 10 * np.finfo(float).eps, side="left"))
        if c == 0:
            c = 1  # as R: the smallest difference is the lower limit
        achieved = 1.0 - 2.0 * (float(cdf[c - 1]) if c >= 1 else 0.0)
        ci_method = f"exact (Mann-Whitney distribution; achieved confidence {achieved:.4f})"
    else:
        sd = _rank_sum_sd(xs, ys)
        raw = m / 2.0 - z * sd
        if method == "sas":
            c = math.floor(raw + 1e-9)  # the epsilon guards float noise at exact integers
            ci_method = "asymptotic Moses, tie-adjusted rank-sum variance, floor (SAS)"
        else:
            c = math.floor(raw + 0.5)
            ci_method = "asymptotic Moses, tie-adjusted rank-sum variance, rounded (R)"
        if method != ci:
            ci_method += " [fallback from exact]"
    if c < 1 or c > m + 1 - c:
        notes.append(
            f"samples too small for a {100 * confidence:g}% CI (n1={n1}, n2={n2}, C={c})"
        )
        return HLResult(
            estimate=estimate, ci_low=None, ci_high=None, ci_method=ci_method, **base,
            n_differences=m, has_ties=bool(has_ties), note="; ".join(notes),
        )
    if np.unique(combined).size == 1:
        notes.append("all values tied")
    return HLResult(
        estimate=estimate,
        ci_low=float(diffs[c - 1]),
        ci_high=float(diffs[m - c]),
        ci_method=ci_method,
        **base,
        ci_rank_low=c,
        ci_rank_high=m + 1 - c,
        n_differences=m,
        has_ties=bool(has_ties),
        note="; ".join(notes),
    )


def wilcoxon_rank_sum(
    x: Iterable[float | None] | np.ndarray,
    y: Iterable[float | None] | np.ndarray,
    *,
    method: Literal["auto", "exact", "asymptotic"] = "auto",
    continuity: bool = True,
    alternative: Literal["two-sided", "less", "greater"] = "two-sided",
) -> TestResult:
    """Wilcoxon rank-sum (Mann-Whitney U) test of arm 1 versus arm 2.

    ``method="auto"`` uses the exact distribution when there are no ties and both arms have
    fewer than 50 values (R's rule), else the normal approximation with tie-adjusted variance
    and (by default) a 0.5 continuity correction, as SAS PROC NPAR1WAY and R do. The method
    used is stated in the result. ``statistic`` is U of arm 1 (= R's W); ``effect_size`` is
    U / (n1 n2), the probability that an arm-1 value exceeds an arm-2 value (ties count half).
    """
    if method not in ("auto", "exact", "asymptotic"):
        raise StatsError(f"unknown Wilcoxon method {method!r}; use 'auto', 'exact' or 'asymptotic'")
    if alternative not in ("two-sided", "less", "greater"):
        raise StatsError(
            f"unknown alternative {alternative!r}; use 'two-sided', 'less' or 'greater'"
        )
    xs, _ = _clean(x, name="arm 1")
    ys, _ = _clean(y, name="arm 2")
    n1, n2 = xs.size, ys.size
    if n1 == 0 or n2 == 0:
        empty = "arm 1" if n1 == 0 else "arm 2"
        return TestResult(
            method="Wilcoxon rank-sum", statistic=None, p_value=None, n1=n1, n2=n2,
            alternative=alternative, note=f"{empty} has no non-missing values: no test",
        )
    combined = np.concatenate([xs, ys])
    has_ties = np.unique(combined).size < combined.size
    ranks = sps.rankdata(combined)
    u1 = float(ranks[:n1].sum() - n1 * (n1 + 1) / 2.0)
    effect = u1 / (n1 * n2)
    if np.unique(combined).size == 1:
        return TestResult(
            method="Wilcoxon rank-sum", statistic=u1, p_value=1.0, n1=n1, n2=n2,
            alternative=alternative, effect_size=effect,
            note="all values tied: rank sums carry no information, p = 1",
        )
    use = method
    notes = []
    if method == "auto":
        small = n1 <= EXACT_MAX_N_PER_ARM and n2 <= EXACT_MAX_N_PER_ARM
        use = "exact" if (small and not has_ties) else "asymptotic"
    elif method == "exact" and has_ties:
        use = "asymptotic"
        notes.append("exact p needs untied data; ties present, normal approximation used")
    res = sps.mannwhitneyu(
        xs, ys, alternative=alternative, method=use, use_continuity=continuity
    )
    if use == "exact":
        name = "Wilcoxon rank-sum, exact"
    else:
        cc = "with" if continuity else "without"
        name = f"Wilcoxon rank-sum, normal approximation {cc} continuity correction"
    return TestResult(
        method=name, statistic=u1, p_value=float(min(1.0, res.pvalue)), n1=n1, n2=n2,
        alternative=alternative, effect_size=effect, note="; ".join(notes),
    )


def summarize(
    values: Iterable[float | None] | np.ndarray,
    *,
    quantile_definition: QuantileDefinition = "sas5",
) -> Summary:
    """n, missing, median (Q1, Q3), mean, SE of one arm.

    ``quantile_definition="sas5"`` (default): SAS PROC UNIVARIATE QNTLDEF=5: with n p = j + g,
    the p-quantile is y(j+1) when g > 0 and (y(j) + y(j+1)) / 2 when g = 0 (Hyndman-Fan
    type 2). ``"r7"``: R's default type 7 (linear interpolation, y(1 + (n-1) p)).

    Examples
    --------
    >>> s = summarize([1, 2, 3, 4, float("nan")])
    >>> (s.n, s.n_missing, s.median, s.q1, s.q3)
    (4, 1, 2.5, 1.5, 3.5)
    """
    if quantile_definition not in _NUMPY_QUANTILE_METHOD:
        raise StatsError(
            f"unknown quantile definition {quantile_definition!r}; use 'sas5' or 'r7'"
        )
    arr, missing = _clean(values, name="values")
    n = arr.size
    if n == 0:
        return Summary(
            n=0, n_missing=missing, median=None, q1=None, q3=None, mean=None, se=None, sd=None,
            minimum=None, maximum=None, quantile_definition=quantile_definition,
            note="no non-missing values",
        )
    q1, med, q3 = (
        float(v)
        for v in np.quantile(
            arr, [0.25, 0.5, 0.75], method=_NUMPY_QUANTILE_METHOD[quantile_definition]
        )
    )
    mean = float(np.mean(arr))
    if n >= 2:
        sd: float | None = float(np.std(arr, ddof=1))
        se: float | None = sd / math.sqrt(n)
        note = ""
    else:
        sd = se = None
        note = "n = 1: SD and SE not defined"
    return Summary(
        n=n, n_missing=missing, median=med, q1=q1, q3=q3, mean=mean, se=se, sd=sd,
        minimum=float(arr.min()), maximum=float(arr.max()),
        quantile_definition=quantile_definition, note=note,
    )
