"""One-page QC figure of a segmented scan (qc.png): masks over the CT, numbers and flags.

Three axial slices (30/50/70 % of the lungs' z extent, the same anatomy at every visit), the
axial slice with the most lesion (so that what was measured is in view wherever it lies) and
one coronal slice through the lung centre, in a lung window, drawn in radiological
convention (the patient's right on the image's left, marked R/L) with the true aspect ratio
from the voxel spacing. Right/left lung contours
and ground-glass/solid fills use distinct colours; a text band gives the volumes, proportions
and QC flags. Uses matplotlib's object API with the Agg canvas (no pyplot global state).
"""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from lungvol.errors import SegmentationError
from lungvol.types import (
    LESION_GGO,
    LESION_SOLID,
    LUNG_LEFT,
    LUNG_RIGHT,
    CTVolume,
    LesionMask,
    LungMask,
    ScanMetrics,
    check_same_grid,
)

logger = logging.getLogger(__name__)

# Display settings (not analysis thresholds): window, slice positions, colours.
LUNG_WINDOW_HU = (-1350.0, 150.0)
AXIAL_POSITIONS_FRACTION = (0.3, 0.5, 0.7)  # of the lungs' z extent, inferior -> superior
RIGHT_LUNG_COLOUR = "#00e5ff"  # cyan contour
LEFT_LUNG_COLOUR = "#ff40ff"  # magenta contour
GGO_RGBA = (1.0, 0.9, 0.0, 0.5)  # yellow fill
SOLID_RGBA = (1.0, 0.1, 0.1, 0.75)  # red fill
RECOVERED_COLOUR = "#ffffff"  # dashed contour: the subpleural step's estimated layer
# Dotted contour: dependent opacity behind the lungs, estimated but NOT in the lung mask.
OUTSIDE_ESTIMATE_COLOUR = "#ffa040"
# The text band (20 in wide, 9 pt monospace) holds about 260 characters a line and 7
# lines: two summary lines and at most five of flags.
_FLAG_WRAP_CHARS = 240
_CENTRE_STEP = 4
# zlib level 3 instead of PIL's default 6: ~3x faster encoding, ~10 % larger file.
_PNG_COMPRESS_LEVEL = 3
_MAX_FLAG_LINES = 5


def _lesion_rgba(lesion_slice: np.ndarray) -> np.ndarray:
    rgba = np.zeros((*lesion_slice.shape, 4), dtype=np.float32)
    rgba[lesion_slice == LESION_GGO] = GGO_RGBA
    rgba[lesion_slice == LESION_SOLID] = SOLID_RGBA
    return rgba


def _draw_panel(
    ax: Axes,
    hu: np.ndarray,
    lungs: np.ndarray,
    lesions: np.ndarray,
    *,
    extent: tuple[float, float, float, float],
    origin: str,
    title: str,
    recovered: np.ndarray | None = None,
    outside: np.ndarray | None = None,
) -> None:
    ax.imshow(
        hu,
        cmap="gray",
        vmin=LUNG_WINDOW_HU[0],
        vmax=LUNG_WINDOW_HU[1],
        extent=extent,
        origin=origin,
        interpolation="bilinear",
    )
    if np.any(lesions):
        ax.imshow(_lesion_rgba(lesions), extent=extent, origin=origin, interpolation="nearest")
    for label, colour in ((LUNG_RIGHT, RIGHT_LUNG_COLOUR), (LUNG_LEFT, LEFT_LUNG_COLOUR)):
        mask = lungs == label
        if mask.any() and not mask.all():
            ax.contour(
                mask.astype(np.float32),
                levels=[0.5],
                colors=colour,
                linewidths=0.9,
                extent=extent,
                origin=origin,
            )
    if recovered is not None and recovered.any():
        ax.contour(
            recovered.astype(np.float32), levels=[0.5], colors=RECOVERED_COLOUR,
            linewidths=0.8, linestyles="dashed", extent=extent, origin=origin,
        )
    if outside is not None and outside.any():
        ax.contour(
            outside.astype(np.float32), levels=[0.5], colors=OUTSIDE_ESTIMATE_COLOUR,
            linewidths=1.3, linestyles="dotted", extent=extent, origin=origin,
        )
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    style = {"color": "white", "fontsize": 11, "fontweight": "bold", "va": "top"}
    # Low x index is the patient's right, drawn on the left of the image (radiological view).
    ax.text(0.02, 0.98, "R", transform=ax.transAxes, ha="left", **style)
    ax.text(0.98, 0.98, "L", transform=ax.transAxes, ha="right", **style)


def most_lesion_slice(lesion_labels: np.ndarray) -> int | None:
    """Index of the axial slice with the most lesion voxels (the lowest on ties), or None
    when there is no lesion."""
    per_slice = np.count_nonzero(lesion_labels.reshape(lesion_labels.shape[0], -1), axis=1)
    if not per_slice.any():
        return None
    return int(np.argmax(per_slice))


def _summary_text(metrics: ScanMetrics) -> str:
    m = metrics
    lines = [
        f"Lungs {m.lung_volume_ml:.0f} mL (right {m.lung_volume_right_ml:.0f}, "
        f"left {m.lung_volume_left_ml:.0f})    "
        f"Lesion {m.lesion_volume_ml:.1f} mL = {m.lesion_proportion_pct:.2f}%    "
        f"GGO {m.ggo_volume_ml:.1f} mL = {m.ggo_proportion_pct:.2f}%    "
        f"Solid {m.solid_volume_ml:.1f} mL = {m.solid_proportion_pct:.2f}%    "
        f"Normal CT: {'yes' if m.normal_ct else 'no'}    "
        f"Lung HU mean {m.lung_hu.get('mean_hu', float('nan')):.0f}",
    ]
    prov = m.provenance
    lines.append(
        f"lungvol {prov.get('lungvol_version', '?')}  config {prov.get('config_hash', '?')}  "
        f"input sha256 {str(prov.get('input', {}).get('sha256', '?'))[:12]}"
    )
    if m.qc_flags:
        flag_lines: list[str] = []
        for flag in m.qc_flags:
            flag_lines += textwrap.wrap("QC " + flag, _FLAG_WRAP_CHARS)
        if len(flag_lines) > _MAX_FLAG_LINES:
            hidden = len(flag_lines) - _MAX_FLAG_LINES + 1
            more = f"... {hidden} more line(s) in metrics.json"
            flag_lines = [*flag_lines[: _MAX_FLAG_LINES - 1], more]
        lines += flag_lines
    else:
        lines.append("QC flags: none")
    return "\n".join(lines)


def render_qc_png(
    volume: CTVolume,
    lungs: LungMask,
    lesions: LesionMask,
    metrics: ScanMetrics,
    path: str | Path,
    *,
    dpi: int = 110,
) -> Path:
    """Write the QC figure to ``path`` (PNG) and return the path.

    Parameters
    ----------
    volume : CTVolume
    lungs, lesions : LungMask, LesionMask
        Label maps on the CT grid.
    metrics : ScanMetrics
        Numbers and flags printed in the text band.
    path : path-like
        Output PNG file.
    dpi : int
        Resolution of the PNG.

    Raises
    ------
    GeometryError
        If a mask is not on the CT grid.
    SegmentationError
        If the lung mask is empty (nothing to centre the slices on).
    """
    check_same_grid(lungs.labels, volume, name="lung mask")
    check_same_grid(lesions.labels, volume, name="lesion mask")
    labels = lungs.labels
    recovered = lungs.recovered
    if recovered is not None:
        check_same_grid(recovered, volume, name="recovered subpleural layer")
    outside = lungs.outside_estimate
    if outside is not None:
        check_same_grid(outside, volume, name="dependent opacity estimate")
    # uint8 max is much faster than count_nonzero(axis=...) on 10^8 voxels.
    z_idx = np.flatnonzero(labels.max(axis=(1, 2)))
    if z_idx.size == 0:
        raise SegmentationError("the lung mask is empty; there is nothing to show in qc.png")
    z_lo, z_hi = int(z_idx[0]), int(z_idx[-1])
    # Coronal plane through the lungs' centre of mass along y (anterior -> posterior),
    # estimated on every _CENTRE_STEP-th slice and column (a display choice, not a measure).
    sub = labels[z_lo : z_hi + 1 : _CENTRE_STEP, :, ::_CENTRE_STEP]
    per_y = np.count_nonzero(sub, axis=(0, 2)).astype(np.float64)
    if per_y.sum() == 0:  # lungs only on skipped slices/columns
        per_y = np.count_nonzero(labels[z_lo : z_hi + 1], axis=(0, 2)).astype(np.float64)
    y_centre = int(round(float(np.dot(np.arange(per_y.size), per_y) / per_y.sum())))

    nz, ny, nx = volume.shape
    sz, sy, sx = volume.spacing_mm
    fig = Figure(figsize=(20, 6.2), dpi=dpi, facecolor="black")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(
        2, 5, height_ratios=(5.0, 1.2), left=0.01, right=0.99, top=0.95, bottom=0.01,
        wspace=0.04, hspace=0.06,
    )
    axial_extent = (0.0, nx * sx, ny * sy, 0.0)  # rows = y (anterior at the top)
    axial: list[tuple[int, str] | None] = []
    for fraction in AXIAL_POSITIONS_FRACTION:
        z = int(round(z_lo + fraction * (z_hi - z_lo)))
        axial.append((z, f"axial {int(fraction * 100)}% (slice {z + 1}/{nz})"))
    z_most = most_lesion_slice(lesions.labels)
    if z_most is None:
        axial.append(None)
    else:
        in_slice_ml = (
            np.count_nonzero(lesions.labels[z_most]) * float(np.prod(volume.spacing_mm)) / 1000.0
        )
        axial.append(
            (z_most, f"axial, most lesion (slice {z_most + 1}/{nz}: {in_slice_ml:.1f} mL)")
        )
    for i, panel in enumerate(axial):
        ax = fig.add_subplot(grid[0, i])
        if panel is None:
            ax.set_facecolor("black")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.text(0.5, 0.5, "no lesion voxels", transform=ax.transAxes, ha="center",
                    va="center", color="white", fontsize=11)
            ax.set_title("axial, most lesion", fontsize=9)
            continue
        z, title = panel
        _draw_panel(
            ax, volume.hu[z], labels[z], lesions.labels[z], extent=axial_extent,
            origin="upper", title=title, recovered=None if recovered is None else recovered[z],
            outside=None if outside is None else outside[z],
        )
    ax = fig.add_subplot(grid[0, 4])
    _draw_panel(
        ax,
        volume.hu[:, y_centre, :],
        labels[:, y_centre, :],
        lesions.labels[:, y_centre, :],
        extent=(0.0, nx * sx, 0.0, nz * sz),  # rows = z, superior at the top
        origin="lower",
        title=f"coronal (row {y_centre + 1}/{ny})",
        recovered=None if recovered is None else recovered[:, y_centre, :],
        outside=None if outside is None else outside[:, y_centre, :],
    )
    for axis in fig.axes:
        axis.title.set_color("white")
    legend = [
        Line2D([0], [0], color=RIGHT_LUNG_COLOUR, lw=2, label="right lung"),
        Line2D([0], [0], color=LEFT_LUNG_COLOUR, lw=2, label="left lung"),
        Patch(color=GGO_RGBA[:3], label="ground-glass"),
        Patch(color=SOLID_RGBA[:3], label="solid"),
    ]
    if recovered is not None and recovered.any():
        legend.append(Line2D([0], [0], color=RECOVERED_COLOUR, lw=1.5, linestyle="dashed",
                             label="subpleural layer added (estimate)"))
    if outside is not None and outside.any():
        legend.append(Line2D([0], [0], color=OUTSIDE_ESTIMATE_COLOUR, lw=1.5, linestyle="dotted",
                             label="dependent opacity outside the lungs (estimate, not added)"))
    fig.legend(
        handles=legend, loc="upper center", ncol=len(legend), fontsize=9, frameon=False,
        labelcolor="white", bbox_to_anchor=(0.5, 1.0),
    )
    text_ax = fig.add_subplot(grid[1, :])
    text_ax.set_axis_off()
    colour = "#ff6060" if metrics.qc_flags else "white"
    text_ax.text(
        0.0, 1.0, _summary_text(metrics), transform=text_ax.transAxes, va="top", ha="left",
        fontsize=9, family="monospace", color="white",
    )
    text_ax.axhline(1.0, color=colour, lw=1)
    out = Path(path)
    fig.savefig(
        out,
        dpi=dpi,
        facecolor=fig.get_facecolor(),
        pil_kwargs={"compress_level": _PNG_COMPRESS_LEVEL},
    )
    logger.debug("wrote %s", out)
    return out
