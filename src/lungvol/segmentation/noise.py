"""Image noise of the aerated lung, and the smoothing that brings a noisy scan to the noise
level the lesion rules are calibrated for.

The lesion stage's background map is a grey-level opening, i.e. a local MINIMUM over a ball
of block means, followed by a maximum. Noise biases a minimum downward: on the real chest
here with white noise of SD 60 / 100 HU added (a sharp-kernel or low-dose HRCT), ground
glass fell below the lesion-region floor and inserted lesion volume read -21 / -51 %
(session 7). The thresholds (bands, region floor, rim steps) were set on scans whose
aerated-lung block noise is 15-20 HU (the 141-slice chest, pyradiomics lung1/lung2, the
phantoms), so a noisier scan is smoothed (Gaussian, ``scipy.ndimage``) just enough to bring
its noise down to ``noise_target_hu`` before the lesion rules run.

Noise is measured where it matters: on the background grid (blocks of about
``background_working_spacing_mm``), in aerated lung away from vessels and the lung border.
Each block's difference from the mean of its six neighbours is, for independent block
noise of SD s, of SD s * sqrt(1 + 1/6); the median absolute difference (scaled to an SD)
ignores the vessels and fissures that survive the selection. Lung texture contributes a
floor of about 13-16 HU on the real scans here, so the measure is a calibrated index of
noise + fine texture, not a physical noise SD. It is reported, and it flags soft images.

The smoothing itself is chosen on what the noise does to the rules: the OPENING BIAS, how
far the background opening falls below the local level of normal lung (median over aerated
blocks deep inside the lung, :func:`opening_bias_hu`). The same noise index biases the
opening more where the ball holds more, smaller blocks (single-pixel blocks on pixels over
1.0 mm: the real chest with SD 100 HU noise read 30 % low at 1.02 mm when smoothed to the
index target, session 23), while the lesion error follows the opening bias on every grid
measured (0.95-1.95 mm pixels, with and without noise; session 25). The index target stays
the fallback where the bias cannot be measured (too little lung deep inside).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from lungvol.segmentation.grid import CoarseGrid, bounding_box, coarse_mean
from lungvol.segmentation.opening import ball, grey_opening
from lungvol.segmentation.slabs import gaussian_in_slabs

# The six face neighbours of a block, averaged (the residual's reference).
_FACE_MEAN = np.zeros((3, 3, 3), np.float32)
_FACE_MEAN[1, 1, 0] = _FACE_MEAN[1, 1, 2] = _FACE_MEAN[1, 0, 1] = 1 / 6
_FACE_MEAN[1, 2, 1] = _FACE_MEAN[0, 1, 1] = _FACE_MEAN[2, 1, 1] = 1 / 6
# MAD -> SD of a normal variable, and the residual's SD per unit block noise.
_MAD_TO_SD = 1.4826
_RESIDUAL_GAIN = float(np.sqrt(1.0 + 1.0 / 6.0))
# Fewer qualifying blocks than this: the noise is not measured (no adaptation).
_MIN_BLOCKS = 2000
# Lung-mask exterior in the opening of the bias measure: air (the lesion stage's value).
_OUTSIDE_HU = -1000.0
# Thickness of the z-slab on which the smoothing is searched (mm), and the search steps.
_SLAB_MM = 48.0
_BISECTION_STEPS = 7


@dataclass(frozen=True)
class NoiseAdaptation:
    """Measured lung noise index and opening bias (HU, None when too little aerated lung)
    and the Gaussian smoothing applied before the lesion rules (sigma in mm; 0 = none),
    chosen by ``measure`` ("opening_bias", or "noise_index" where the bias could not be
    measured), whose value after the smoothing is ``smoothed_hu``."""

    lung_noise_hu: float | None
    smoothing_sigma_mm: float
    smoothed_hu: float | None
    opening_bias_hu: float | None = None
    measure: str = "opening_bias"


def lung_noise_hu(
    hu: np.ndarray, lung: np.ndarray, spacing_mm: tuple[float, float, float], *,
    block_mm: float, aerated_max_hu: float, first_index: tuple[int, int, int] | None = None,
) -> float | None:
    """Block-level noise index (HU) of aerated lung; None with too few qualifying blocks.

    Blocks of about ``block_mm`` (:class:`CoarseGrid`) that lie inside the lung with their
    26 neighbours, and whose 3 x 3 x 3 neighbourhood stays below ``aerated_max_hu`` (no
    vessel, wall or lesion nearby), contribute their difference from the mean of their six
    face neighbours. ``first_index`` anchors the blocks to the patient lattice
    (:func:`~lungvol.segmentation.grid.patient_index` of voxel [0, 0, 0]).
    """
    grid = CoarseGrid.for_volume(
        hu.shape, spacing_mm, working_spacing_mm=block_mm, first_index=first_index
    )
    # Cached: the lesion stage's background grid is this grid on the same box array, so an
    # unsmoothed scan's block means are computed once (lesions._background).
    blocks = coarse_mean(hu, grid)
    inside = ndimage.minimum_filter(grid.downsample_fraction(lung), size=3, mode="constant")
    use = (inside >= 0.999) & (ndimage.maximum_filter(blocks, size=3) < aerated_max_hu)
    if np.count_nonzero(use) < _MIN_BLOCKS:
        return None
    residual = (blocks - ndimage.convolve(blocks, _FACE_MEAN, mode="nearest"))[use]
    mad = float(np.median(np.abs(residual - np.median(residual))))
    return _MAD_TO_SD * mad / _RESIDUAL_GAIN


def opening_bias_hu(
    hu: np.ndarray, lung: np.ndarray, spacing_mm: tuple[float, float, float], *,
    block_mm: float, radius_mm: float, level_mm: float, aerated_max_hu: float,
    first_index: tuple[int, int, int] | None = None,
) -> float | None:
    """How far the background opening falls below normal lung (HU, median); None with too
    few qualifying blocks.

    The lesion stage's background opening (ball of ``radius_mm`` on blocks of about
    ``block_mm``, lung exterior as air) is a local minimum, which noise biases downward.
    Measured at blocks whose ball lies inside the lung and whose 3 x 3 x 3 neighbourhood
    stays below ``aerated_max_hu``: the local level of normal lung (mean of aerated blocks
    over about ``level_mm``, as the parenchyma level of the region floor) minus the opened
    value. Clean lung texture gives 28.5-33.5 HU on the real chest at 0.95-1.95 mm pixels,
    about 40 HU on 1.02-1.05 mm pixels, 27-35 HU on three other real scans (session 25).
    """
    return _OpeningBias(
        lung, spacing_mm, block_mm=block_mm, radius_mm=radius_mm, level_mm=level_mm,
        aerated_max_hu=aerated_max_hu, first_index=first_index,
    )(hu)


class _OpeningBias:
    """:func:`opening_bias_hu` for one lung mask: the grid, the lung fraction and the blocks
    deep inside are computed once for the sigma search's several CT versions."""

    def __init__(
        self, lung: np.ndarray, spacing_mm: tuple[float, float, float], *, block_mm: float,
        radius_mm: float, level_mm: float, aerated_max_hu: float,
        first_index: tuple[int, int, int] | None,
    ) -> None:
        self.grid = CoarseGrid.for_volume(
            lung.shape, spacing_mm, working_spacing_mm=block_mm,  # type: ignore[arg-type]
            first_index=first_index,
        )
        fraction = self.grid.downsample_fraction(lung)
        self.footprint = ball(radius_mm, self.grid.spacing_mm)
        self.inside = fraction >= 0.999
        self.outside = fraction < 0.5
        self.deep = ndimage.binary_erosion(self.inside, structure=self.footprint, border_value=0)
        self.size = tuple(max(1, int(round(level_mm / s))) for s in self.grid.spacing_mm)
        self.aerated_max_hu = aerated_max_hu

    def __call__(self, hu: np.ndarray) -> float | None:
        blocks = coarse_mean(hu, self.grid)
        use = self.deep & (ndimage.maximum_filter(blocks, size=3) < self.aerated_max_hu)
        if np.count_nonzero(use) < _MIN_BLOCKS:
            return None
        opened = grey_opening(np.where(self.outside, _OUTSIDE_HU, blocks), self.footprint)
        aerated = (self.inside & (blocks < self.aerated_max_hu)).astype(np.float32)
        level = ndimage.uniform_filter(blocks * aerated, self.size, mode="constant") / np.maximum(
            ndimage.uniform_filter(aerated, self.size, mode="constant"), 1e-6
        )
        return float(np.median((level - opened)[use]))


def _central_slab(lung: np.ndarray, spacing_mm: tuple[float, ...], halo_mm: float) -> tuple:
    """Box of a ``_SLAB_MM`` thick z-slab through the lung's centre of mass, with ``halo_mm``
    more each side (the smoothing's reach), cropped in-plane to the lung."""
    z_counts = np.count_nonzero(lung, axis=(1, 2))
    zc = int(round(float(np.average(np.arange(lung.shape[0]), weights=z_counts))))
    half = int(np.ceil((_SLAB_MM / 2 + halo_mm) / spacing_mm[0]))
    z = slice(max(0, zc - half), min(lung.shape[0], zc + half + 1))
    inplane = bounding_box(lung[z].any(axis=0), 2)
    return (z, *inplane)


def adapt_to_noise(
    hu: np.ndarray, lung: np.ndarray, spacing_mm: tuple[float, float, float], *,
    bias_target_hu: float, target_hu: float, max_sigma_mm: float, block_mm: float,
    radius_mm: float, level_mm: float, aerated_max_hu: float,
    first_index: tuple[int, int, int] | None = None, pool: ThreadPoolExecutor | None = None,
) -> NoiseAdaptation:
    """Measure the lung noise and find the Gaussian sigma (mm) that brings the opening bias
    down to ``bias_target_hu``.

    The smallest sigma in [0, ``max_sigma_mm``] whose smoothed :func:`opening_bias_hu` is
    at most ``bias_target_hu``, to ``max_sigma_mm / 2**_BISECTION_STEPS``
    (:func:`_search_sigma`, on a central z-slab, which keeps the search at a fraction of a
    whole-scan filter). Where the bias cannot be measured (too little lung deep inside) or
    ``bias_target_hu`` is 0, the noise index (:func:`lung_noise_hu`) is brought to
    ``target_hu`` instead (0 disables that too). The caller applies the smoothing
    (``gaussian_filter`` with sigma / spacing per axis). ``block_mm``, ``radius_mm`` and
    ``level_mm``: the lesion stage's background grid, ball and parenchyma block;
    ``first_index``: the patient-lattice index of voxel [0, 0, 0], which anchors the blocks.
    With ``pool``, the noise index (on the whole box) is measured on it while the search
    runs on the central slab: the result is the same.
    """
    def index() -> float | None:
        return lung_noise_hu(
            hu, lung, spacing_mm, block_mm=block_mm, aerated_max_hu=aerated_max_hu,
            first_index=first_index,
        )

    if max_sigma_mm <= 0 or (bias_target_hu <= 0 and target_hu <= 0):
        noise = index()
        return NoiseAdaptation(noise, 0.0, noise, None, "noise_index")
    noise_future: Future[float | None] | None = pool.submit(index) if pool is not None else None
    try:
        return _adapt(
            noise_future.result if noise_future is not None else index, hu, lung, spacing_mm,
            bias_target_hu=bias_target_hu, target_hu=target_hu, max_sigma_mm=max_sigma_mm,
            block_mm=block_mm, radius_mm=radius_mm, level_mm=level_mm,
            aerated_max_hu=aerated_max_hu, first_index=first_index, pool=pool,
        )
    finally:
        if noise_future is not None:
            # After an error in the search: drop the index if the pool has not started it
            # (a running one finishes; the caller's pool shutdown waits for it).
            noise_future.cancel()


def _adapt(
    noise_index: Callable[[], float | None], hu: np.ndarray, lung: np.ndarray,
    spacing_mm: tuple[float, float, float], *, bias_target_hu: float, target_hu: float,
    max_sigma_mm: float, block_mm: float, radius_mm: float, level_mm: float,
    aerated_max_hu: float, first_index: tuple[int, int, int] | None,
    pool: ThreadPoolExecutor | None = None,
) -> NoiseAdaptation:
    """:func:`adapt_to_noise` with smoothing allowed; ``noise_index()`` gives the noise
    index of the whole box (no adaptation where it is None), asked for only when needed.
    With ``pool``, the slab's Gaussians run in two z-slabs, one taken there when it is free
    (it may still be measuring the index): the same values as one call."""
    box = _central_slab(lung, spacing_mm, halo_mm=4.0 * max_sigma_mm)
    slab, slab_lung = hu[box].astype(np.float32, copy=False), lung[box]
    slab_first = None if first_index is None else tuple(
        i + b.start for i, b in zip(first_index, box, strict=True)
    )

    def smoothed(sigma_mm: float) -> np.ndarray:
        if sigma_mm <= 0:
            return slab
        return gaussian_in_slabs(slab, tuple(sigma_mm / s for s in spacing_mm), pool)

    measure_bias = _OpeningBias(
        slab_lung, spacing_mm, block_mm=block_mm, radius_mm=radius_mm, level_mm=level_mm,
        aerated_max_hu=aerated_max_hu, first_index=slab_first,  # type: ignore[arg-type]
    ) if bias_target_hu > 0 else None

    def bias_at(sigma_mm: float) -> float | None:
        return None if measure_bias is None else measure_bias(smoothed(sigma_mm))

    def noise_at(sigma_mm: float) -> float | None:
        return lung_noise_hu(
            smoothed(sigma_mm), slab_lung, spacing_mm, block_mm=block_mm,
            aerated_max_hu=aerated_max_hu, first_index=slab_first,  # type: ignore[arg-type]
        )

    bias = bias_at(0.0)
    if bias is not None:
        sigma, value = (
            (0.0, bias) if bias <= bias_target_hu
            else _search_sigma(bias_at, bias, bias_target_hu, max_sigma_mm)
        )
        noise = noise_index()
        if noise is None:  # too little aerated lung for the index: no adaptation
            return NoiseAdaptation(None, 0.0, None, None, "noise_index")
        return NoiseAdaptation(noise, sigma, value, bias, "opening_bias")
    noise = noise_index()
    if noise is None or target_hu <= 0 or noise <= target_hu:
        return NoiseAdaptation(noise, 0.0, noise, None, "noise_index")
    sigma, value = _search_sigma(noise_at, noise, target_hu, max_sigma_mm)
    return NoiseAdaptation(noise, sigma, value, None, "noise_index")


def _search_sigma(
    smoothed_noise: Callable[[float], float | None], noise_hu: float, target_hu: float,
    max_sigma_mm: float,
) -> tuple[float, float]:
    """``(sigma_mm, value_hu)``: the smallest sigma on the grid
    ``k * max_sigma_mm / 2**_BISECTION_STEPS`` (k >= 1) whose ``smoothed_noise`` (the noise
    index or the opening bias) is at most ``target_hu``, and that value; ``max_sigma_mm``
    when even that is noisier, ``(0, noise_hu)`` when nothing can be measured after smoothing
    (``noise_hu``: the unsmoothed value, the search's first anchor).

    The answer is the one a bisection with ``_BISECTION_STEPS`` steps gives for a
    value that falls with sigma, found in about half the evaluations (each a Gaussian
    filter of the slab): the next grid point is interpolated in (sigma, log noise) between
    the nearest evaluated points on either side of the target (the step doubled when
    the same end moved twice), and the search stops when a passing grid point has a
    failing neighbour below it. Written by hand because
    ``scipy.optimize`` root finders work on a continuous variable, not on this grid.
    """
    n = 2**_BISECTION_STEPS
    step = max_sigma_mm / n
    values: dict[int, float | None] = {}

    def value(k: int) -> float | None:
        if k not in values:
            values[k] = smoothed_noise(k * step)
        return values[k]

    lo, hi = 0, n + 1  # largest failing, smallest passing grid index (0 = no smoothing)
    k, streak, k_side = n // 2, 0, None
    while hi - lo > 1:
        v = value(k)
        moved_hi = v is not None and v <= target_hu
        if moved_hi:
            hi = k
        else:
            lo = k
        if hi - lo <= 1:
            break
        estimate = _interpolated(values, noise_hu, target_hu, lo, hi, n)
        # Log noise is not linear in sigma near the texture floor, so an interpolation can
        # move the same end again and again: after two such steps the step from that end
        # is doubled (the Illinois variant of regula falsi).
        streak = streak + 1 if k_side == moved_hi else 1
        k_side = moved_hi
        if streak >= 2:
            end = hi if moved_hi else lo
            estimate = end + 2 * (estimate - end)
        k = min(max(estimate, lo + 1), min(hi, n + 1) - 1)
    if hi > n:  # even the largest smoothing is noisier than the target
        top = value(n)
        if top is None:
            return 0.0, noise_hu
        return max_sigma_mm, top
    return round(hi * step, 3), values[hi]  # type: ignore[return-value]


def _interpolated(
    values: dict[int, float | None], noise_hu: float, target_hu: float, lo: int, hi: int,
    n: int,
) -> int:
    """Grid index where log noise reaches ``target_hu``: linear in k between the failing
    point ``lo`` and the passing point ``hi``, or, while nothing passes, extrapolated through
    the two largest failing points (grid index 0 is the unsmoothed ``noise_hu``). The
    midpoint of (lo, hi) where that is undefined."""
    known = {0: noise_hu, **{k: v for k, v in values.items() if v is not None}}
    midpoint = (lo + min(hi, n + 1)) // 2
    if hi <= n and lo in known:
        (k1, v1), (k2, v2) = (lo, known[lo]), (hi, known[hi])
    else:
        failing = sorted(k for k in known if k <= lo)
        if len(failing) < 2:
            return midpoint
        k1, k2 = failing[-2], failing[-1]
        v1, v2 = known[k1], known[k2]
    if min(v1, v2) <= 0 or v1 == v2:
        return midpoint
    k = k1 + (np.log(target_hu) - np.log(v1)) * (k2 - k1) / (np.log(v2) - np.log(v1))
    return int(np.ceil(k)) if np.isfinite(k) else midpoint
