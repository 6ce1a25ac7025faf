"""Euclidean distance transform: scipy's values, computed with less memory traffic.

``scipy.ndimage.distance_transform_edt`` finds each voxel's nearest background voxel (its
feature transform, in C) and then turns that into distances in Python with full-size
temporaries: the index grid of every voxel and three float64 copies of the offsets. On the
9 M-voxel background grid of a 400-slice scan that second part took 0.9 s of 1.5 s. Here
the feature transform is scipy's and the distances are computed from it a slab of slices
at a time, with the same float64 operations in the same order (offset times sampling,
squared, summed over the axes in turn, square root), so every value is bit-identical to
scipy's; only the temporaries shrink to one slab.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, overload

import numpy as np
from scipy import ndimage

# Voxels per slab of the distance computation: temporaries of about 8 MB (float64).
_SLAB_VOXELS = 1 << 20


@overload
def distance_transform_edt(
    mask: np.ndarray, sampling: float | Sequence[float] | None = ...,
    *, return_indices: Literal[False] = ...,
) -> np.ndarray: ...


@overload
def distance_transform_edt(
    mask: np.ndarray, sampling: float | Sequence[float] | None = ...,
    *, return_indices: Literal[True],
) -> tuple[np.ndarray, np.ndarray]: ...


def distance_transform_edt(
    mask: np.ndarray, sampling: float | Sequence[float] | None = None,
    *, return_indices: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Distance (in the units of ``sampling``, per axis; voxels without it) from each
    non-zero voxel of ``mask`` to the nearest zero voxel; 0 on zero voxels.

    Returns float64 distances, and with ``return_indices`` also the int32 indices of that
    nearest zero voxel (shape ``(mask.ndim,) + mask.shape``), exactly as
    ``scipy.ndimage.distance_transform_edt(mask, sampling, return_indices=...)``.
    """
    mask = np.asarray(mask)
    if mask.ndim == 0:
        return ndimage.distance_transform_edt(mask, sampling, return_indices=return_indices)
    ft = ndimage.distance_transform_edt(
        mask, sampling, return_distances=False, return_indices=True
    )
    scale = None
    if sampling is not None:
        scale = np.broadcast_to(np.asarray(sampling, dtype=np.float64), (mask.ndim,))
    shape = mask.shape
    out = np.empty(shape, dtype=np.float64)
    rest = int(np.prod(shape[1:], dtype=np.int64))
    step = max(1, _SLAB_VOXELS // max(1, rest))
    for z0 in range(0, shape[0], step):
        z1 = min(shape[0], z0 + step)
        grid = np.ogrid[(slice(z0, z1), *(slice(0, n) for n in shape[1:]))]
        total = None
        for axis, index in enumerate(grid):
            offset = (ft[axis, z0:z1] - index.astype(np.int32)).astype(np.float64)
            if scale is not None:
                offset *= scale[axis]
            np.multiply(offset, offset, out=offset)
            if total is None:
                total = offset
            else:
                total += offset
        np.sqrt(total, out=out[z0:z1])
    return (out, ft) if return_indices else out
