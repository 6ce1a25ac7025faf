"""Published Shi 2022 rows: every count-based row reproduced; Table 2 data plausible."""

from __future__ import annotations

import dataclasses

import pytest

from lungvol.errors import StatsError
from lungvol.stats.paper import (
    SHI2022_ROWS,
    TABLE2_ROWS,
    compare_paper,
    compare_row,
    format_p,
)


def test_every_published_count_row_matches():
    rows = compare_paper("shi2022")
    assert len(rows) == 14
    bad = [(r.row.outcome, r.row.visit, r.computed_odds_ratio, r.computed_p)
           for r in rows if not r.is_match]
    assert bad == []


def test_month6_typo_is_documented():
    (row,) = [r for r in SHI2022_ROWS if r.outcome == "normal CT" and r.visit == "month 6"]
    assert "minus sign" in row.typo_note
    assert row.odds_ratio.startswith("4.72")


def test_a_wrong_published_value_is_reported_as_mismatch():
    row = dataclasses.replace(SHI2022_ROWS[1], p="0.288")  # Fisher's p instead of exact
    result = compare_row(row)
    assert result.is_or_match
    assert not result.is_p_match
    assert not result.is_match


def test_unknown_paper_is_a_stats_error():
    with pytest.raises(StatsError, match="unknown paper"):
        compare_paper("shi2021")


def test_format_p_small_values():
    assert format_p(0.0004) == "<0.001"
    assert format_p(0.0005) == "0.001"
    assert format_p(None) == "NA"


@pytest.mark.parametrize("row", TABLE2_ROWS, ids=lambda r: f"{r.endpoint}-{r.visit}")
def test_table2_rows_are_internally_consistent(row):
    # HL estimate inside its CI; the CI excludes 0 exactly when p < 0.05 (same test family).
    assert row.hl_ci_low <= row.hl_estimate <= row.hl_ci_high
    assert (row.hl_ci_high < 0 or row.hl_ci_low > 0) == (row.p < 0.05)
    assert row.msc_q1 <= row.msc_median <= row.msc_q3
