"""Z-slabs shared by two threads (lungvol.segmentation.slabs): exact for local filters."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from scipy import ndimage

from lungvol.segmentation.slabs import gaussian_in_slabs, shared_slabs


@pytest.mark.parametrize("n_slices", [7, 40])
@pytest.mark.parametrize("with_pool", [True, False])
@pytest.mark.parametrize("mode", ["nearest", "reflect"])
def test_smoothing_in_two_threaded_slabs_equals_one_gaussian_filter(n_slices, with_pool, mode):
    """The lesion stage and the noise search smooth in two z-slabs on two threads; the halo
    makes the result bit-identical to scipy's single call (short volumes, and calls without
    a pool, take the single call; a zero sigma returns the input)."""
    rng = np.random.default_rng(3)
    hu = rng.normal(-700.0, 150.0, (n_slices, 24, 20)).astype(np.float32)
    sigma_px = (1.2, 0.7, 0.9)
    with ThreadPoolExecutor(max_workers=1) as pool:
        out = gaussian_in_slabs(hu, sigma_px, pool if with_pool else None, mode=mode)
        assert gaussian_in_slabs(hu, (0.0, 0.0, 0.0), pool) is hu
    assert np.array_equal(out, ndimage.gaussian_filter(hu, sigma=sigma_px, mode=mode))


def test_shared_slabs_cover_every_slice_once_in_order_and_raise_errors():
    """Slabs shared by two threads: each slice range once, results in slab order, halos
    clipped at the ends; while the pool is busy this thread takes every slab; an error in
    either thread is raised to the caller."""
    def work(lo, hi, a, b):
        return lo, hi, a, b, threading.current_thread().name

    release = threading.Event()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pool") as pool:
        pool.submit(release.wait)  # busy until the slabs are done
        out = shared_slabs(50, 3, work, pool, 4)
        release.set()
    assert [o[:4] for o in out] == [
        (0, 12, 0, 15), (12, 25, 9, 28), (25, 37, 22, 40), (37, 50, 34, 50)
    ]
    assert all(not o[4].startswith("pool") for o in out)

    def failing(lo, hi, a, b):
        if lo > 0:
            raise ValueError(f"slab {lo}")
        return lo

    with ThreadPoolExecutor(max_workers=1) as pool, pytest.raises(ValueError, match="slab"):
        shared_slabs(40, 2, failing, pool, 4)
