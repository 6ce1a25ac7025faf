"""Two threads on one volume: z-slabs with halos, exact for local filters.

scipy.ndimage releases the GIL, so a local filter computed slab by slab on two threads is
the filter of the whole volume in about half the wall time: each slab carries a halo of the
filter's reach along z and keeps only its own slices. The lesion stage and the noise
search share this one mechanism.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
from scipy import ndimage

_T = TypeVar("_T")
# scipy's gaussian_filter truncates its kernel at this many sigma.
_GAUSSIAN_TRUNCATE = 4.0


def shared_slabs(
    n: int, halo: int, work: Callable[[int, int, int, int], _T], pool: ThreadPoolExecutor,
    pieces: int,
) -> list[_T]:
    """``work(lo, hi, a, b)`` on ``pieces`` slabs along z, taken in turn by this thread and
    by one task on ``pool``, whichever is free.

    ``[a, b)`` is ``[lo, hi)`` with ``halo`` more slices each side (clipped to ``n``): a
    local filter reaching ``halo`` slices along z, computed on ``[a, b)``, is exact on
    ``[lo, hi)``. Should ``pool`` still be running earlier work, this thread does not wait
    for it but takes every slab the pool does not. Returns the results in slab order; an
    error in either thread is raised here.
    """
    bounds = [n * i // pieces for i in range(pieces + 1)]
    results: list[_T | None] = [None] * pieces
    state: dict[str, Any] = {"next": 0, "done": 0, "error": None}
    ready = threading.Condition()

    def take() -> None:
        while True:
            with ready:
                i = state["next"]
                if i >= pieces or state["error"] is not None:
                    return
                state["next"] = i + 1
            lo, hi = bounds[i], bounds[i + 1]
            try:
                result = work(lo, hi, max(0, lo - halo), min(n, hi + halo))
            except BaseException as exc:
                with ready:
                    state["error"] = exc
                    ready.notify_all()
                raise
            with ready:
                results[i] = result
                state["done"] += 1
                ready.notify_all()

    pool.submit(take)  # errors reach this thread through ``state``
    take()
    with ready:
        ready.wait_for(lambda: state["done"] == pieces or state["error"] is not None)
        if state["error"] is not None:
            raise state["error"]
    return results  # type: ignore[return-value]


def gaussian_in_slabs(
    hu: np.ndarray, sigma_px: tuple[float, ...], pool: ThreadPoolExecutor | None,
    mode: str = "nearest",
) -> np.ndarray:
    """``ndimage.gaussian_filter(hu, sigma_px, mode=mode)``, in two z-slabs on two threads
    (:func:`shared_slabs`).

    Each slab carries a halo of the kernel's reach along z, so the result is identical to
    one ``gaussian_filter`` call (scipy's default truncation, 4 sigma; the slabs at the
    volume's ends see its ends, so any boundary mode holds). Sigma is in voxels per axis;
    all zero returns ``hu`` itself. Volumes shorter than four halos, or without ``pool``,
    take the single call.
    """
    if not any(s > 0 for s in sigma_px):
        return hu
    n = hu.shape[0]
    halo = int(_GAUSSIAN_TRUNCATE * sigma_px[0] + 0.5) + 1
    if pool is None or n < 4 * halo:
        return ndimage.gaussian_filter(hu, sigma=sigma_px, mode=mode)
    out = np.empty_like(hu)

    def run(lo: int, hi: int, a: int, b: int) -> None:
        out[lo:hi] = ndimage.gaussian_filter(hu[a:b], sigma=sigma_px, mode=mode)[lo - a:hi - a]

    shared_slabs(n, halo, run, pool, 2)
    return out
