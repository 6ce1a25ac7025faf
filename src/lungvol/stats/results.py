"""Frozen result objects of the statistics engine.

Every result names its method and the n per arm, and has ``to_dict()`` giving plain Python
values for JSON/CSV. A quantity that cannot be computed is ``None`` with a reason in ``note``,
never NaN. Infinite confidence limits (one-sided exact intervals) stay ``float('inf')`` in the
dataclass and in ``to_dict()``; ``to_json_dict()`` spells them as the strings ``"inf"`` /
``"-inf"`` so the JSON stays strict (``float("inf")`` parses them back).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


class _DictMixin:
    def to_dict(self) -> dict[str, Any]:
        """Plain-Python mapping of every field (nested results become dicts)."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def to_json_dict(self) -> dict[str, Any]:
        """Like ``to_dict`` but with +/-inf as the strings "inf"/"-inf" (strict JSON)."""
        return _jsonable(self.to_dict())


@dataclass(frozen=True)
class Summary(_DictMixin):
    """Per-arm descriptive summary of one variable.

    ``n`` counts the finite values used; ``n_missing`` the NaN/None values dropped. Quantiles
    follow ``quantile_definition`` ("sas5": SAS PROC UNIVARIATE default QNTLDEF=5, the
    Hyndman-Fan type 2 averaged empirical distribution; "r7": R's default type 7).
    """

    n: int
    n_missing: int
    median: float | None
    q1: float | None
    q3: float | None
    mean: float | None
    se: float | None  # standard error of the mean, SD (n-1 denominator) / sqrt(n)
    sd: float | None
    minimum: float | None
    maximum: float | None
    quantile_definition: str
    note: str = ""


@dataclass(frozen=True)
class TestResult(_DictMixin):
    """A hypothesis test: statistic, p-value, method name and the n per arm."""

    __test__ = False  # not a pytest test class

    method: str
    statistic: float | None
    p_value: float | None
    n1: int
    n2: int
    alternative: str = "two-sided"
    effect_size: float | None = None
    note: str = ""


@dataclass(frozen=True)
class HLResult(_DictMixin):
    """Hodges-Lehmann two-sample shift (arm 1 minus arm 2) with a Moses-type CI.

    ``ci_rank_low``/``ci_rank_high`` are the 1-based ranks of the order statistics of the
    n1 x n2 pairwise differences used as limits (None when the CI is not available).
    """

    estimate: float | None
    ci_low: float | None
    ci_high: float | None
    confidence: float
    ci_method: str
    n1: int
    n2: int
    n_missing1: int = 0
    n_missing2: int = 0
    ci_rank_low: int | None = None
    ci_rank_high: int | None = None
    n_differences: int = 0
    has_ties: bool = False
    method: str = "Hodges-Lehmann"
    note: str = ""


@dataclass(frozen=True)
class OddsRatioResult(_DictMixin):
    """Odds ratio (arm 1 odds / arm 2 odds) with its CI and how both were obtained."""

    estimate: float | None
    ci_low: float | None
    ci_high: float | None
    method: str
    confidence: float = 0.95
    note: str = ""


@dataclass(frozen=True)
class ExactLogisticResult(_DictMixin):
    """Exact conditional logistic regression of a 2x2 table (SAS PROC LOGISTIC EXACT).

    T = events in arm 1 given the total events; T ~ Fisher noncentral hypergeometric with
    odds ratio psi. ``mue``: median-unbiased estimate of psi. ``cmle``: conditional maximum
    likelihood estimate (None when it does not exist, i.e. t at the edge of its support).
    ``ci_low``/``ci_high``: exact CI, one- or two-sided per ``sided``. ``p``: one-sided
    p = min(P0(T >= t), P0(T <= t)) when ``sided == 1``, two-sided p = min(1, 2 x that)
    otherwise (SAS's definitions).
    """

    mue: float | None
    cmle: float | None
    ci_low: float | None
    ci_high: float | None
    p: float | None
    sided: int
    alpha: float
    t: int
    support_min: int
    support_max: int
    p_one_sided: float | None = None
    p_two_sided: float | None = None
    tail: str = ""  # "upper" (T >= t) or "lower" (T <= t): direction of the one-sided test
    method: str = "exact conditional logistic regression"
    note: str = ""


@dataclass(frozen=True)
class TwoByTwoResult(_DictMixin):
    """Everything lungvol computes for one 2x2 table of events/n per arm.

    ``p``/``p_method`` and ``odds_ratio`` follow the trial's rule (see ``tables.analyze_2x2``).
    """

    events1: int
    n1: int
    events2: int
    n2: int
    odds_ratio: OddsRatioResult
    wald: OddsRatioResult
    exact: ExactLogisticResult
    chi2_statistic: float | None
    chi2_p: float | None
    fisher_p: float | None
    min_expected: float | None
    p: float | None
    p_method: str
    is_estimable: bool
    note: str = ""
