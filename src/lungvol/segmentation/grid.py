"""Coarse working grid: block-mean downsampling and nearest-block upsampling.

The heavy 3-D work of lung segmentation runs on a coarse grid whose voxels are integer
blocks of CT voxels (factor per axis chosen so the coarse spacing is close to
``working_spacing_mm``). With ``phase`` p (0 <= p < f), coarse voxel ``i`` covers CT voxels
``[i*f - p, (i+1)*f - p)``; the first and the last block along an axis may be partial (edge
padding). A phase from :func:`patient_phase` anchors the blocks to patient coordinates, so
the same scan cropped differently is cut into the same blocks (crop-invariant volumes).
Block means are computed slab by slab so a 512x512x400 int16 volume never needs a full
float copy.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

import numpy as np

# Slabs of CT voxels converted to float at a time when block-averaging (memory bound).
_SLAB_VOXELS = 8_000_000


@dataclass(frozen=True)
class CoarseGrid:
    """Integer block factors between a CT grid and its coarse working grid."""

    full_shape: tuple[int, int, int]
    factors: tuple[int, int, int]
    full_spacing_mm: tuple[float, float, float]
    phase: tuple[int, int, int] = (0, 0, 0)  # CT voxels of padding before index 0, per axis

    def __post_init__(self) -> None:
        if not all(0 <= p < f for p, f in zip(self.phase, self.factors, strict=True)):
            raise ValueError(
                f"phase {self.phase} must lie in [0, factor) for factors {self.factors}"
            )

    @classmethod
    def for_volume(
        cls, shape: tuple[int, int, int], spacing_mm: tuple[float, float, float], *,
        working_spacing_mm: float, first_index: tuple[int, int, int] | None = None,
    ) -> CoarseGrid:
        """Grid of blocks close to ``working_spacing_mm``; with ``first_index`` (the
        patient-lattice index of CT voxel [0, 0, 0], :func:`patient_index`) the blocks
        start at lattice indices that are multiples of the factor."""
        factors = tuple(max(1, int(round(working_spacing_mm / s))) for s in spacing_mm)
        phase = (0, 0, 0) if first_index is None else patient_phase(first_index, factors)  # type: ignore[arg-type]
        return cls(
            tuple(int(v) for v in shape), factors, tuple(float(s) for s in spacing_mm), phase,  # type: ignore[arg-type]
        )

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(  # type: ignore[return-value]
            -(-(n + p) // f)
            for n, f, p in zip(self.full_shape, self.factors, self.phase, strict=True)
        )

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        return tuple(s * f for s, f in zip(self.full_spacing_mm, self.factors, strict=True))  # type: ignore[return-value]

    @property
    def voxel_volume_ml(self) -> float:
        return float(np.prod(self.spacing_mm)) / 1000.0

    def downsample_mean(self, array: np.ndarray) -> np.ndarray:
        """Block mean of ``array`` (float32, coarse shape). Partial edge blocks use edge padding.

        Block sums are accumulated from strided views (one add per block offset and axis)
        instead of a 6-D reshape + mean, which numpy reduces slowly over non-adjacent axes.
        Integer input up to 16 bits is summed exactly in int32.
        """
        return self._downsample(array, mean=True)

    def downsample_max(self, array: np.ndarray) -> np.ndarray:
        """Block maximum of ``array`` (float32, coarse shape); same strided scheme."""
        return self._downsample(array, mean=False)

    def _downsample(self, array: np.ndarray, *, mean: bool) -> np.ndarray:
        fz, fy, fx = self.factors
        pz, py, px = self.phase
        cz, cy, cx = self.shape
        nz, ny, nx = self.full_shape
        acc_dtype = (
            np.int32 if array.dtype.kind in "iub" and array.dtype.itemsize <= 2 else np.float32
        )
        if not mean:
            acc_dtype = array.dtype if array.dtype != bool else np.uint8
        out = np.empty((cz, cy, cx), dtype=np.float32)
        slab_blocks = max(1, _SLAB_VOXELS // max(1, fz * ny * nx))
        inv = 1.0 / float(fz * fy * fx)
        for c0 in range(0, cz, slab_blocks):
            c1 = min(cz, c0 + slab_blocks)
            # CT rows of these blocks; the partial first and last blocks are edge-padded.
            z0, z1 = max(0, c0 * fz - pz), min(nz, c1 * fz - pz)
            slab = np.asarray(array[z0:z1])
            if slab.dtype == bool:
                slab = slab.view(np.uint8)
            before = pz if c0 == 0 else 0
            pad = (
                (before, (c1 - c0) * fz - (z1 - z0) - before),
                (py, cy * fy - ny - py),
                (px, cx * fx - nx - px),
            )
            if any(a or b for a, b in pad):
                slab = np.pad(slab, pad, mode="edge")
            acc = slab
            for axis, f in enumerate((fz, fy, fx)):
                if f == 1:
                    continue
                index = [slice(None)] * 3
                index[axis] = slice(0, None, f)
                total = acc[tuple(index)].astype(acc_dtype)
                for k in range(1, f):
                    index[axis] = slice(k, None, f)
                    if mean:
                        total += acc[tuple(index)]
                    else:
                        np.maximum(total, acc[tuple(index)], out=total)
                acc = total
            np.multiply(acc, inv if mean else 1.0, out=out[c0:c1], casting="unsafe")
        return out

    def downsample_fraction(self, mask: np.ndarray) -> np.ndarray:
        """Fraction (0..1, float32) of each coarse block covered by boolean ``mask``."""
        return self.downsample_mean(mask.view(np.uint8) if mask.dtype == bool else mask)

    def index_maps(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per axis, the coarse index of every CT index."""
        return tuple(  # type: ignore[return-value]
            (np.arange(n) + p) // f
            for n, f, p in zip(self.full_shape, self.factors, self.phase, strict=True)
        )

    def coarse_index(self, idx: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
        """Coarse indices of CT voxel indices ``idx`` (one array per axis)."""
        return tuple(
            (i + p) // f for i, f, p in zip(idx, self.factors, self.phase, strict=True)
        )

    def upsample_nearest(self, coarse: np.ndarray) -> np.ndarray:
        """Repeat each coarse voxel over its CT block (CT shape, same dtype)."""
        out = coarse
        axes = zip(self.factors, self.full_shape, self.phase, strict=True)
        for axis, (f, n, p) in enumerate(axes):
            if f > 1:
                out = np.repeat(out, f, axis=axis)
            out = out[(slice(None),) * axis + (slice(p, p + n),)]
        return np.ascontiguousarray(out)


def patient_index(
    origin_lps_mm: tuple[float, float, float], direction: np.ndarray,
    spacing_mm: tuple[float, float, float],
) -> tuple[int, int, int]:
    """Index of CT voxel [0, 0, 0] on a lattice of the CT's spacing anchored at the patient
    coordinate origin, per array axis (z, y, x).

    Cropping a scan by k voxels along an axis moves its origin by k voxels, so voxels keep
    their lattice index: blocks aligned to this lattice do not move with the crop.
    """
    d = np.asarray(direction, float).reshape(3, 3)
    origin = np.asarray(origin_lps_mm, float)
    # Array axis a (z, y, x) runs along direction column 2 - a (ITK index order x, y, z).
    # Rounded half up, not half to even (np.rint): an origin half a voxel off the lattice
    # must round the same way before and after a crop; 1e-6 absorbs float error there.
    return tuple(  # type: ignore[return-value]
        int(np.floor(float(origin @ d[:, 2 - a]) / spacing_mm[a] + 0.5 + 1e-6))
        for a in range(3)
    )


def patient_phase(first_index: tuple[int, ...], factors: tuple[int, ...]) -> tuple[int, ...]:
    """Phase (CT voxels of padding before index 0) that puts block boundaries at lattice
    indices that are multiples of each factor, for an array whose voxel 0 has lattice
    index ``first_index``."""
    return tuple(int(i) % f for i, f in zip(first_index, factors, strict=True))


def bounding_box(mask: np.ndarray, margin: tuple[int, ...] | int = 0) -> tuple[slice, ...]:
    """Bounding box of ``mask`` grown by ``margin`` voxels per axis, clipped to the array."""
    if isinstance(margin, int):
        margin = (margin,) * mask.ndim
    out = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        lo = max(0, int(idx[0]) - margin[axis])
        hi = min(mask.shape[axis], int(idx[-1]) + 1 + margin[axis])
        out.append(slice(lo, hi))
    return tuple(out)


# Coarse CTs computed by coarse_mean() / coarse_max(), keyed by (id of the array, grid,
# kind); entries hold a weak reference so an id reused by a new array after garbage
# collection never hits.
_COARSE_CACHE: dict[tuple[int, CoarseGrid, str], tuple[weakref.ref, np.ndarray]] = {}
_COARSE_CACHE_MAX = 6
# The lesion stage reads the cache from two threads (noise index beside the noise search).
_COARSE_CACHE_LOCK = threading.Lock()


def coarse_mean(array: np.ndarray, grid: CoarseGrid) -> np.ndarray:
    """``grid.downsample_mean(array)``, computed once per (array object, grid) and cached.

    Lung and lesion segmentation of one volume can share the coarse CT this way (pass the
    same ``volume.hu`` object and an equal grid). The result is read-only; copy it before
    modifying. The cache cannot see in-place changes of ``array``: do not modify a CT array
    between calls (CTVolume arrays are treated as immutable in lungvol). Arrays that do not
    support weak references are not cached.
    """
    return _cached(array, grid, "mean")


def coarse_max(array: np.ndarray, grid: CoarseGrid) -> np.ndarray:
    """``grid.downsample_max(array)``, cached like :func:`coarse_mean` (the lung stage's
    bone map and the subpleural step share it)."""
    return _cached(array, grid, "max")


def _cached(array: np.ndarray, grid: CoarseGrid, kind: str) -> np.ndarray:
    key = (id(array), grid, kind)
    with _COARSE_CACHE_LOCK:
        hit = _COARSE_CACHE.get(key)
    if hit is not None and hit[0]() is array:
        return hit[1]
    out = grid.downsample_mean(array) if kind == "mean" else grid.downsample_max(array)
    out.flags.writeable = False
    try:
        ref = weakref.ref(array)
    except TypeError:
        return out
    with _COARSE_CACHE_LOCK:
        for stale in [k for k, (r, _) in _COARSE_CACHE.items() if r() is None]:
            del _COARSE_CACHE[stale]
        while len(_COARSE_CACHE) >= _COARSE_CACHE_MAX:
            del _COARSE_CACHE[next(iter(_COARSE_CACHE))]
        _COARSE_CACHE[key] = (ref, out)
    return out
