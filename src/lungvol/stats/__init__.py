"""lungvol.stats: the trial's statistics, reproducing SAS's published numbers. No imaging here.

Two-sample location (``hodges_lehmann``, ``wilcoxon_rank_sum``), per-arm summaries
(``summarize``), 2x2 tables (``analyze_2x2`` and its parts) and the published rows of
Shi et al. 2022 as test vectors (``lungvol.stats.paper``). Every result is a frozen dataclass
naming its method and n per arm, with ``to_dict()``.
"""

from lungvol.stats.nonparametric import (
    hodges_lehmann,
    mann_whitney_cdf,
    summarize,
    wilcoxon_rank_sum,
)
from lungvol.stats.results import (
    ExactLogisticResult,
    HLResult,
    OddsRatioResult,
    Summary,
    TestResult,
    TwoByTwoResult,
)
from lungvol.stats.tables import (
    analyze_2x2,
    exact_conditional_logistic,
    parse_events,
    wald_odds_ratio,
)

__all__ = [
    "ExactLogisticResult",
    "HLResult",
    "OddsRatioResult",
    "Summary",
    "TestResult",
    "TwoByTwoResult",
    "analyze_2x2",
    "exact_conditional_logistic",
    "hodges_lehmann",
    "mann_whitney_cdf",
    "parse_events",
    "summarize",
    "wald_odds_ratio",
    "wilcoxon_rank_sum",
]
