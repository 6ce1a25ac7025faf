"""Figure 2-like plots: median relative change (Q1-Q3 bars) and mean absolute change (SE bars)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lungvol.cohort.trial import EndpointSpec, TrialConfig

ARM_COLORS = ("#c0392b", "#2c3e50")
ARM_MARKERS = ("o", "s")
DODGE_DAYS_FRACTION = 0.012  # horizontal offset between arms, as a fraction of the day range


def _value(row: dict[str, Any], key: str) -> float:
    v = row.get(key)
    return float("nan") if v is None or v == "" else float(v)


def endpoint_figure(
    endpoint_rows: Sequence[dict[str, Any]], trial: TrialConfig, endpoint: EndpointSpec
):
    """A two-panel figure for one endpoint, visits on a day axis, baseline at 0.

    Left: median relative change (%) with Q1-Q3 bars per arm. Right: mean absolute change
    (percentage points) with standard-error bars per arm.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [
        r
        for r in endpoint_rows
        if r["endpoint"] == endpoint.name and r["kind"] == "relative_change"
    ]
    days = [0] + [trial.visit(r["visit"]).nominal_day for r in rows]
    labels = [trial.visit(trial.baseline_visit).label] + [r["visit_label"] for r in rows]
    span = max(days) - min(days) or 1
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for i, arm in enumerate(trial.arm_names):
        offset = (i - 0.5) * DODGE_DAYS_FRACTION * span * 2
        x = [d + offset for d in days]
        med = [0.0] + [_value(r, f"{arm}_median") for r in rows]
        q1 = [0.0] + [_value(r, f"{arm}_q1") for r in rows]
        q3 = [0.0] + [_value(r, f"{arm}_q3") for r in rows]
        low = [m - a if not math.isnan(a) else 0.0 for m, a in zip(med, q1, strict=True)]
        high = [b - m if not math.isnan(b) else 0.0 for m, b in zip(med, q3, strict=True)]
        label = trial.arm_label(arm)
        axes[0].errorbar(
            x,
            med,
            yerr=[low, high],
            color=ARM_COLORS[i],
            marker=ARM_MARKERS[i],
            capsize=3,
            label=label,
        )
        mean = [0.0] + [_value(r, f"{arm}_abs_mean") for r in rows]
        se = [0.0] + [_value(r, f"{arm}_abs_se") for r in rows]
        se = [0.0 if math.isnan(s) else s for s in se]
        axes[1].errorbar(
            x, mean, yerr=se, color=ARM_COLORS[i], marker=ARM_MARKERS[i], capsize=3, label=label
        )
    axes[0].set_ylabel("relative change from baseline (%)")
    axes[0].set_title("median, bars Q1–Q3", fontsize=10)
    axes[1].set_ylabel("absolute change from baseline (percentage points)")
    axes[1].set_title("mean, bars ± SE", fontsize=10)
    for ax in axes:
        ax.axhline(0.0, color="0.6", linewidth=0.8)
        ax.set_xticks(days)
        ax.set_xticklabels(labels, rotation=30, ha="right")
        ax.set_xlabel("Visit (placed at nominal day)")
        ax.legend(frameon=False)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{endpoint.label}: change from baseline by arm")
    return fig


def write_figures(
    endpoint_rows: Sequence[dict[str, Any]], trial: TrialConfig, out_dir: str | Path
) -> dict[str, dict[str, Path]]:
    """Write ``figure2_<endpoint>.png`` and ``.svg`` per endpoint; return the paths by endpoint."""
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, dict[str, Path]] = {}
    for endpoint in trial.endpoints:
        fig = endpoint_figure(endpoint_rows, trial, endpoint)
        paths = {}
        for ext in ("png", "svg"):
            path = out_dir / f"figure2_{endpoint.name}.{ext}"
            fig.savefig(path, dpi=120)
            paths[ext] = path
        plt.close(fig)
        written[endpoint.name] = paths
    return written
