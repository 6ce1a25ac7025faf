"""Endpoint tables: ``endpoints.csv`` and ``table2.md`` laid out like Table 2 of Shi et al. 2022."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from lungvol.cohort.results import write_rows_csv
from lungvol.cohort.trial import TrialConfig

__all__ = ["markdown_table", "table2_markdown", "write_rows_csv"]


def _is_missing(value: Any) -> bool:
    return value is None or value == "" or (isinstance(value, float) and math.isnan(value))


def fmt_number(value: Any, digits: int = 2) -> str:
    """A number with ``digits`` decimals; '+inf' / '-inf' spelled out; empty as 'NA'."""
    if _is_missing(value):
        return "NA"
    v = float(value)
    if math.isinf(v):
        return "+inf" if v > 0 else "-inf"
    return f"{v:.{digits}f}"


def fmt_p(value: Any) -> str:
    """p to three decimals, '<0.001' below that, 'NA' when not computed."""
    if _is_missing(value):
        return "NA"
    v = float(value)
    return "<0.001" if v < 0.001 else f"{v:.3f}"


def fmt_median_iqr(row: dict[str, Any], prefix: str) -> str:
    return (
        f"{fmt_number(row.get(f'{prefix}_median'))} "
        f"({fmt_number(row.get(f'{prefix}_q1'))}, {fmt_number(row.get(f'{prefix}_q3'))})"
    )


def fmt_mean_se(row: dict[str, Any], prefix: str) -> str:
    return f"{fmt_number(row.get(f'{prefix}_mean'))} ± {fmt_number(row.get(f'{prefix}_se'))}"


def fmt_ci(estimate: Any, low: Any, high: Any) -> str:
    return f"{fmt_number(estimate)} ({fmt_number(low)}, {fmt_number(high)})"


def table2_rows(endpoint_rows: Sequence[dict[str, Any]], trial: TrialConfig) -> list[list[str]]:
    """Table 2 cells: endpoint, visit, n and median (Q1, Q3) per arm, HL (95% CI), p."""
    first, second = trial.arm_names
    cells = []
    for row in endpoint_rows:
        if row["kind"] != "relative_change":
            continue
        cells.append(
            [
                row["endpoint_label"],
                row["visit_label"],
                f"{row[f'{first}_n']}",
                fmt_median_iqr(row, first),
                f"{row[f'{second}_n']}",
                fmt_median_iqr(row, second),
                fmt_ci(row["hl_estimate"], row["hl_ci_low"], row["hl_ci_high"]),
                fmt_p(row["p"]),
            ]
        )
    return cells


def table2_header(trial: TrialConfig) -> list[str]:
    first, second = (trial.arm_label(a) for a in trial.arm_names)
    return [
        "Endpoint",
        "Visit",
        f"{first} n",
        f"{first} median (Q1, Q3)",
        f"{second} n",
        f"{second} median (Q1, Q3)",
        f"Difference {first} − {second}, HL (95% CI)",
        "p (Wilcoxon)",
    ]


def absolute_rows(endpoint_rows: Sequence[dict[str, Any]], trial: TrialConfig) -> list[list[str]]:
    """Mean ± SE of the absolute change (percentage points), the Figure 2 companion."""
    first, second = trial.arm_names
    return [
        [
            row["endpoint_label"],
            row["visit_label"],
            fmt_mean_se(row, f"{first}_abs"),
            fmt_mean_se(row, f"{second}_abs"),
            f"{row[f'{first}_n_imputed']} / {row[f'{second}_n_imputed']}",
            f"{row[f'{first}_n_baseline_zero']} / {row[f'{second}_n_baseline_zero']}",
        ]
        for row in endpoint_rows
        if row["kind"] == "relative_change"
    ]


def absolute_header(trial: TrialConfig) -> list[str]:
    first, second = (trial.arm_label(a) for a in trial.arm_names)
    return [
        "Endpoint",
        "Visit",
        f"{first} mean ± SE (pp)",
        f"{second} mean ± SE (pp)",
        "LOCF-imputed (per arm)",
        "Baseline 0, relative change undefined (per arm)",
    ]


def normal_ct_table(endpoint_rows: Sequence[dict[str, Any]], trial: TrialConfig) -> list[list[str]]:
    first, second = trial.arm_names
    return [
        [
            row["visit_label"],
            f"{row[f'{first}_events']}/{row[f'{first}_n']}",
            f"{row[f'{second}_events']}/{row[f'{second}_n']}",
            fmt_ci(row["or_estimate"], row["or_ci_low"], row["or_ci_high"]),
            fmt_p(row["p"]),
            row.get("p_method") or "",
        ]
        for row in endpoint_rows
        if row["kind"] == "count"
    ]


def normal_ct_header(trial: TrialConfig) -> list[str]:
    first, second = (trial.arm_label(a) for a in trial.arm_names)
    return [
        "Visit",
        f"{first} normal/assessed",
        f"{second} normal/assessed",
        "OR (95% CI)",
        "p",
        "test",
    ]


def published_rows(trial: TrialConfig) -> list[list[str]]:
    """The trial file's published median (Q1, Q3) of relative change, per endpoint and visit."""
    published = trial.published.get("relative_change_pct", {})
    rows = []
    for e in trial.endpoints:
        for visit in e.visits:
            arms = published.get(e.name, {}).get(visit)
            if not arms:
                continue
            cells = [e.label, trial.visit(visit).label]
            for arm in trial.arm_names:
                q1, median, q3 = arms[arm]
                cells.append(f"{fmt_number(median)} ({fmt_number(q1)}, {fmt_number(q3)})")
            rows.append(cells)
    return rows


def published_header(trial: TrialConfig) -> list[str]:
    first, second = (trial.arm_label(a) for a in trial.arm_names)
    return ["Endpoint", "Visit", f"{first} median (Q1, Q3)", f"{second} median (Q1, Q3)"]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def table2_markdown(
    endpoint_rows: Sequence[dict[str, Any]], trial: TrialConfig, *, n_subjects: dict[str, int]
) -> str:
    """Table 2 as Markdown: change from baseline per arm, between-arm HL and p, normal CT."""
    first, second = trial.arm_names
    arms = ", ".join(f"{trial.arm_label(a)} n={n_subjects.get(a, 0)}" for a in trial.arm_names)
    parts = [
        f"# Table 2. Imaging endpoints: {trial.title or trial.name}",
        "",
        f"Subjects: {arms}. Change from baseline is relative: 100 × (visit − baseline) / baseline "
        "per subject; median (Q1, Q3) per arm. Difference: Hodges-Lehmann estimate of "
        f"{trial.arm_label(first)} minus {trial.arm_label(second)} with 95% CI "
        f"({trial.hl_ci.upper()} convention); p: Wilcoxon rank-sum. Missing scans: "
        f"{'last observation carried forward' if trial.imputation == 'locf' else 'not imputed'}.",
        "",
        markdown_table(table2_header(trial), table2_rows(endpoint_rows, trial)),
        "",
        "## Absolute change from baseline (percentage points)",
        "",
        markdown_table(absolute_header(trial), absolute_rows(endpoint_rows, trial)),
    ]
    published = published_rows(trial)
    if published:
        parts += [
            "",
            "## Published values (for comparison)",
            "",
            markdown_table(published_header(trial), published),
        ]
    normal = normal_ct_table(endpoint_rows, trial)
    if normal:
        parts += [
            "",
            "## Normal chest CT",
            "",
            "Counts are not imputed. OR: exact conditional logistic regression (one-sided, "
            "median-unbiased) when a cell is 0, else the sample OR with Wald CI; p: Pearson "
            "chi-square without continuity correction when every expected count is ≥ 5, else "
            "Fisher's exact test.",
            "",
            markdown_table(normal_ct_header(trial), normal),
        ]
    return "\n".join(parts) + "\n"
