"""The qualification's table (qualify.md) and figure (qualify.png): see :mod:`lungvol.qualify`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from lungvol.reporting.qc import (
    GGO_RGBA,
    LEFT_LUNG_COLOUR,
    RIGHT_LUNG_COLOUR,
    SOLID_RGBA,
    _draw_panel,
)

TRUTH_COLOUR = "#ffffff"  # solid white outline: the inserted lesion
_PNG_COMPRESS_LEVEL = 3


def _cell(value: Any, unit: str = "", signed: bool = True, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:+.{digits}f}{unit}" if signed else f"{value:.{digits}f}{unit}"


def _spread(stats: dict[str, Any], unit: str, n: int, digits: int = 1) -> str:
    if stats["mean"] is None:
        return "-"
    sd = "" if stats["sd"] is None else f" ({stats['sd']:.{digits}f})"
    worst = "" if n < 2 else f", {stats['worst']:+.{digits}f}"
    return (f"{stats['mean']:+.{digits}f}{unit}{sd}{worst}; "
            f"{stats['within_target']} of {n}")


def _mark(met: bool | None) -> str:
    return "" if met is None or met else " **(miss)**"


def qualify_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: the reference scan, then one row per case."""
    ref, t = report["reference"], report["targets"]
    src = report.get("input", {})
    lines = [
        "# lungvol qualification",
        "",
        f"lungvol {report['lungvol_version']}, config {report['config_hash']}; input "
        f"{src.get('kind', '?')} sha256 {str(src.get('sha256', ''))[:12]} "
        f"(series {src.get('series_uid') or '-'}); seed {report['seed']}.",
        "",
        f"Reference scan as is: lung {ref['lung_ml']:.0f} mL, lesion {ref['lesion_ml']:.1f} mL "
        f"({ref['lesion_pct']:.2f} %), solid {ref['solid_ml']:.1f} mL; normal-CT rule "
        f"{'met' if ref['normal_ct_rule_met'] else 'NOT met'}"
        + (f"; segmentation warnings: {', '.join(ref['segmentation_warnings'])}"
           if ref["segmentation_warnings"] else "") + ".",
        "",
        f"Targets: total lesion within {t['lesion_error_pct']:g} %, solid within "
        f"{t['solid_error_pct']:g} %, proportion within {t['proportion_error_pp']:g} pp. "
        f"{report['repeats']} insertion(s) per model and burden, each with its own seed: "
        "mean (SD), worst; how many met the target.",
        "",
        "| model | inserted | total lesion | solid | proportion |",
        "|---|---|---|---|---|",
    ]
    for g in report["groups"]:
        lines.append(
            f"| {g['model']} | {g['lesion_pct']:g} % "
            f"| {_spread(g['lesion_err_pct'], ' %', g['n'])} "
            f"| {_spread(g['solid_err_pct'], ' %', g['n'])} "
            f"| {_spread(g['proportion_err_pp'], ' pp', g['n'], 2)} |"
        )
    lines += [
        "",
        "Each insertion:",
        "",
        "| model | inserted | seed | total lesion | without the scan's own | solid | proportion "
        "| recall | false positives | lung Dice vs reference |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in report["cases"]:
        met = c["targets_met"]
        lines.append(
            f"| {c['model']} | {c['lesion_pct']:g} % ({c['truth_lesion_ml']:.0f} mL) "
            f"| {c['seed']} "
            f"| {_cell(c['lesion_err_pct'], ' %')}{_mark(met['lesion'])} "
            f"| {_cell(c['lesion_err_less_own_pct'], ' %')} "
            f"| {_cell(c['solid_err_pct'], ' %')}{_mark(met['solid'])} "
            f"| {_cell(c['proportion_err_pp'], ' pp', digits=2)}{_mark(met['proportion'])} "
            f"| {_cell(c['lesion_recall'], signed=False, digits=3)} "
            f"| {c['lesion_fp_ml']:.1f} mL | {c['lung_dice_vs_reference']:.4f} |"
        )
    s = report["summary"]
    lines += [
        "",
        f"All targets met in {s['all_targets_met']} of {s['cases']} cases. The models count "
        "a lesion next to a vessel differently (`insert_lesions` leaves vessels out of its "
        "truth, `partial_volume` counts their lung part, `blobs` count them whole): on "
        "lungvol's real reference chest at 15 % they read -1.0 % (mean of eight seeds), "
        "-14.9 % and +18.6 % (README, Measured accuracy).",
        "",
    ]
    return "\n".join(lines)


def render_qualify_png(panels: Sequence[Any], path: str | Path, *, dpi: int = 100) -> Path:
    """One panel per case (:class:`lungvol.qualify.CasePanel`), four to a row: the axial
    slice with the most inserted lesion, lungvol's lung contours and lesion fill, the
    inserted truth outlined in white."""
    path = Path(path)
    n = max(1, len(panels))
    cols = min(4, n)
    rows = (n + cols - 1) // cols
    fig = Figure(figsize=(5.0 * cols, 5.3 * rows + 0.6))
    FigureCanvasAgg(fig)
    for i, p in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        _draw_panel(ax, p.hu, p.lungs, p.lesions, extent=p.extent, origin="upper",
                    title=p.title)
        if p.truth.any() and not p.truth.all():
            ax.contour(np.asarray(p.truth, np.float32), levels=[0.5], colors=TRUTH_COLOUR,
                       linewidths=0.7, extent=p.extent, origin="upper")
    handles = [
        Line2D([], [], color=TRUTH_COLOUR, label="inserted lesion (truth)"),
        Patch(color=GGO_RGBA, label="ground-glass read"),
        Patch(color=SOLID_RGBA, label="solid read"),
        Line2D([], [], color=RIGHT_LUNG_COLOUR, label="right lung"),
        Line2D([], [], color=LEFT_LUNG_COLOUR, label="left lung"),
    ]
    fig.legend(handles=handles, loc="upper center", ncol=len(handles), frameon=False,
               fontsize=9, labelcolor="white")
    fig.patch.set_facecolor("black")
    for ax in fig.axes:
        ax.title.set_color("white")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.6 / (5.3 * rows + 0.6)))
    fig.savefig(path, dpi=dpi, facecolor="black",
                pil_kwargs={"compress_level": _PNG_COMPRESS_LEVEL})
    return path

