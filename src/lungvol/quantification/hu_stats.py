"""HU statistics of the lung parenchyma (mean, SD, percentiles)."""

from __future__ import annotations

import numpy as np

from lungvol.errors import SegmentationError

# Integer HU data go through an exact histogram (bincount) instead of a partial sort: it
# gives the same order statistics as np.percentile(method="linear") in a fraction of the time
# on 10^7-10^8 voxels. numpy has no histogram-based percentile, hence the hand-written part.
_MAX_HIST_RANGE = 1 << 16


def percentile_key(q: float) -> str:
    """Metric key of a percentile, e.g. 50.0 -> "p50_hu", 2.5 -> "p2.5_hu"."""
    return f"p{q:g}_hu"


def _percentiles_from_histogram(
    hist: np.ndarray, offset: int, percentiles: tuple[float, ...]
) -> list[float]:
    """np.percentile(method='linear') of integer data given its histogram."""
    cum = np.cumsum(hist)
    n = int(cum[-1])
    out = []
    for q in percentiles:
        rank = q / 100.0 * (n - 1)
        lo = int(np.floor(rank))
        hi = min(lo + 1, n - 1)
        v_lo = int(np.searchsorted(cum, lo, side="right")) + offset
        v_hi = int(np.searchsorted(cum, hi, side="right")) + offset
        out.append(float(v_lo + (rank - lo) * (v_hi - v_lo)))
    return out


def lung_hu_stats(
    hu: np.ndarray, lung: np.ndarray, *, percentiles: tuple[float, ...]
) -> dict[str, float]:
    """Mean, SD (population, ddof=0) and percentiles of HU inside the lung mask.

    Parameters
    ----------
    hu : ndarray, shape (Z, Y, X)
        Hounsfield units.
    lung : ndarray of bool or labels, shape (Z, Y, X)
        Nonzero inside the lungs.
    percentiles : tuple of float in [0, 100]

    Returns
    -------
    dict
        ``{"mean_hu", "std_hu", "p5_hu", ...}`` in HU.

    Raises
    ------
    SegmentationError
        If the mask is empty.

    Examples
    --------
    >>> hu = np.arange(8, dtype=np.int16).reshape(2, 2, 2) - 900
    >>> lung_hu_stats(hu, np.ones_like(hu, bool), percentiles=(50.0,))["p50_hu"]
    -896.5
    """
    values = hu[lung.astype(bool, copy=False)]
    if values.size == 0:
        raise SegmentationError(
            "the lung mask is empty, so lung HU statistics cannot be computed; "
            "check that the scan is a chest CT with the lungs in view"
        )
    stats = {
        "mean_hu": float(values.mean(dtype=np.float64)),
        "std_hu": float(values.std(dtype=np.float64)),
    }
    is_integer = values.dtype.kind in "iu"
    lo, hi = (int(values.min()), int(values.max())) if is_integer else (0, 0)
    if is_integer and hi - lo < _MAX_HIST_RANGE:
        hist = np.bincount(values.astype(np.int64) - lo, minlength=hi - lo + 1)
        qs = _percentiles_from_histogram(hist, lo, percentiles)
    else:
        qs = [float(v) for v in np.percentile(values, percentiles)]
    for q, v in zip(percentiles, qs, strict=True):
        stats[percentile_key(q)] = v
    return stats
