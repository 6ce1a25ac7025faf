"""Published count-based rows of Shi et al. (eBioMedicine 2022;75:103789) as test vectors.

Each row holds the counts and the printed odds ratio / p exactly as published (source:
../shared/reference/shi2022-endpoints.md). ``compare_paper`` recomputes every row with
``analyze_2x2`` (the trial's rule) and formats it at the printed precision: 2 decimals for
the odds ratio and CI, 3 decimals for p. A row matches when both strings are identical.

Which p the paper prints (worked out row by row):
- rows without a zero cell: Pearson chi-square without continuity correction when every
  expected count is >= 5 (e.g. pain month 1, smallest expected 5.53: 0.759), else Fisher's
  two-sided test (loss of appetite month 3, smallest expected 4.07: 0.313; chi-square would
  give 0.196);
- rows with a zero cell: the one-sided exact p of the exact conditional logistic model,
  min(P0(T >= t), P0(T <= t)): normal CT month 3 0.239 (Fisher 0.288), month 6 0.070
  (Fisher 0.087, quoted in the text), month 9 0.076, month 12 0.010 (Fisher 0.013, quoted in
  the text), anxiety/depression month 3 0.625 (Fisher 1.000);
- no events in either arm: NA.

Known typo: the month-6 normal-CT odds ratio is printed with a minus sign; an odds ratio
cannot be negative, so the row stores the corrected 4.72 and says so in ``typo_note``.

Table 2 (Hodges-Lehmann rows) needs per-patient data that is not published; its rows are kept
as data (``TABLE2_ROWS``) for plausibility checks and reports, not recomputed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lungvol.errors import StatsError
from lungvol.stats.results import TwoByTwoResult, _DictMixin
from lungvol.stats.tables import analyze_2x2

OR_DECIMALS = 2
P_DECIMALS = 3
NOT_AVAILABLE = "NA"


@dataclass(frozen=True)
class PublishedRow(_DictMixin):
    """One count-based row as printed in the paper (arm 1 = UC-MSC, arm 2 = placebo)."""

    table: str
    outcome: str
    visit: str
    events1: int
    n1: int
    events2: int
    n2: int
    odds_ratio: str  # printed "OR (low, high)" or "NA"
    p: str  # printed p or "NA"
    typo_note: str = ""


@dataclass(frozen=True)
class RowComparison(_DictMixin):
    """A published row beside lungvol's recomputation at the printed precision."""

    row: PublishedRow
    computed_odds_ratio: str
    computed_p: str
    or_method: str
    p_method: str
    is_or_match: bool
    is_p_match: bool

    @property
    def is_match(self) -> bool:
        return self.is_or_match and self.is_p_match


@dataclass(frozen=True)
class Table2Row(_DictMixin):
    """A Table 2 endpoint row (relative change from baseline, %); per-arm median (Q1, Q3)."""

    endpoint: str
    visit: str
    msc_median: float
    msc_q1: float
    msc_q3: float
    placebo_median: float
    placebo_q1: float
    placebo_q3: float
    hl_estimate: float
    hl_ci_low: float
    hl_ci_high: float
    p: float
    note: str = ""


_NORMAL = "normal chest CT"
_SYMPTOM = "symptoms"

SHI2022_ROWS: tuple[PublishedRow, ...] = (
    PublishedRow(_NORMAL, "normal CT", "month 1", 0, 58, 0, 34, "NA", "NA"),
    PublishedRow(_NORMAL, "normal CT", "month 3", 3, 50, 0, 30, "2.38 (0.35, +inf)", "0.239"),
    PublishedRow(
        _NORMAL, "normal CT", "month 6", 6, 51, 0, 27, "4.72 (0.86, +inf)", "0.070",
        typo_note="printed with a minus sign (an odds ratio cannot be negative); "
        "compared with the corrected 4.72",
    ),
    PublishedRow(_NORMAL, "normal CT", "month 9", 6, 53, 0, 27, "4.52 (0.82, +inf)", "0.076"),
    PublishedRow(_NORMAL, "normal CT", "month 12", 10, 56, 0, 30, "8.75 (1.72, +inf)", "0.010"),
    PublishedRow(_SYMPTOM, "loss of appetite", "month 3", 5, 51, 6, 30, "0.43 (0.12, 1.57)",
                 "0.313"),
    PublishedRow(_SYMPTOM, "sleep difficulties", "month 1", 35, 60, 22, 35,
                 "0.83 (0.35, 1.95)", "0.664"),
    PublishedRow(_SYMPTOM, "sleep difficulties", "month 3", 14, 51, 20, 30,
                 "0.19 (0.07, 0.50)", "0.001"),
    PublishedRow(_SYMPTOM, "pain or discomfort", "month 1", 10, 60, 5, 35,
                 "1.20 (0.37, 3.85)", "0.759"),
    PublishedRow(_SYMPTOM, "pain or discomfort", "month 3", 7, 51, 9, 30,
                 "0.37 (0.12, 1.13)", "0.076"),
    PublishedRow(_SYMPTOM, "fatigue or muscle weakness", "month 3", 11, 51, 10, 30,
                 "0.55 (0.20, 1.51)", "0.243"),
    PublishedRow(_SYMPTOM, "decreased usual activity", "month 1", 34, 60, 22, 35,
                 "0.77 (0.33, 1.82)", "0.554"),
    PublishedRow(_SYMPTOM, "decreased usual activity", "month 3", 28, 51, 21, 30,
                 "0.52 (0.20, 1.36)", "0.180"),
    PublishedRow(_SYMPTOM, "anxiety or depression", "month 3", 1, 50, 0, 30,
                 "0.60 (0.03, +inf)", "0.625"),
)

TABLE2_ROWS: tuple[Table2Row, ...] = (
    Table2Row("total lesion", "day 10", -7.99, -23.63, 0.51, 4.13, -16.58, 14.83,
              -10.82, -20.69, -1.46, 0.030),
    Table2Row("total lesion", "month 1", -19.40, -53.40, -2.62, -7.30, -46.59, -19.12,
              -13.31, -29.14, 2.13, 0.080,
              note="placebo Q3 printed below its median: one of the two is a typo"),
    Table2Row("total lesion", "month 3", -52.06, -81.82, -13.13, -38.00, -71.58, 6.83,
              -12.79, -30.80, 5.44, 0.170),
    Table2Row("solid", "month 1", -57.70, -74.95, -36.57, -44.45, -62.24, -8.82,
              -15.45, -30.82, -0.39, 0.043),
    Table2Row("solid", "month 3", -77.37, -92.23, -58.63, -65.12, -87.32, -16.26,
              -9.77, -24.40, 1.86, 0.099),
    Table2Row("solid", "month 6", -82.89, -90.88, -63.95, -70.65, -91.95, -42.98,
              -6.97, -19.10, 2.98, 0.174),
    Table2Row("solid", "month 9", -84.00, -93.29, -62.49, -75.51, -84.32, -51.32,
              -9.02, -17.44, -0.10, 0.045),
    Table2Row("solid", "month 12", -87.35, -95.69, -68.39, -84.13, -91.98, -53.92,
              -4.65, -11.05, 2.02, 0.161),
)

PAPERS = {"shi2022": SHI2022_ROWS}


def format_limit(value: float | None, *, decimals: int = OR_DECIMALS) -> str:
    """A number at the printed precision; +/-inf as "+inf"/"-inf"; None as "NA"."""
    if value is None:
        return NOT_AVAILABLE
    if math.isinf(value):
        return "+inf" if value > 0 else "-inf"
    return f"{value:.{decimals}f}"


def format_odds_ratio(result: TwoByTwoResult, *, decimals: int = OR_DECIMALS) -> str:
    """``"OR (low, high)"`` as the paper prints it, or "NA" when not estimable."""
    odds = result.odds_ratio
    if odds.estimate is None:
        return NOT_AVAILABLE
    est = format_limit(odds.estimate, decimals=decimals)
    low = format_limit(odds.ci_low, decimals=decimals)
    high = format_limit(odds.ci_high, decimals=decimals)
    return f"{est} ({low}, {high})"


def format_p(p: float | None, *, decimals: int = P_DECIMALS) -> str:
    """p at the printed precision; below the smallest printable value as "<0.001"."""
    if p is None:
        return NOT_AVAILABLE
    text = f"{p:.{decimals}f}"
    if float(text) == 0.0:
        return "<" + format(10.0**-decimals, f".{decimals}f")
    return text


def compare_row(row: PublishedRow) -> RowComparison:
    """Recompute one published row and compare at the printed precision."""
    result = analyze_2x2(row.events1, row.n1, row.events2, row.n2)
    computed_or = format_odds_ratio(result)
    computed_p = format_p(result.p)
    return RowComparison(
        row=row,
        computed_odds_ratio=computed_or,
        computed_p=computed_p,
        or_method=result.odds_ratio.method,
        p_method=result.p_method,
        is_or_match=computed_or == row.odds_ratio,
        is_p_match=computed_p == row.p,
    )


def compare_paper(name: str = "shi2022") -> list[RowComparison]:
    """Compare every count-based row of a known paper; StatsError for an unknown name."""
    if name not in PAPERS:
        raise StatsError(f"unknown paper {name!r}; known: {', '.join(sorted(PAPERS))}")
    return [compare_row(row) for row in PAPERS[name]]
