"""Where cohort scans run: the executor contract and its local implementations.

An executor maps a top-level (picklable) function over small job descriptions and yields
``(item, result or exception)`` pairs as they finish, in any order. A failing item yields its
exception and the others go on. ``lungvol.cohort.dask_executor.DaskExecutor`` implements the same
contract on a dask.distributed cluster.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Protocol, TypeVar

from lungvol.errors import ConfigError

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class Executor(Protocol):
    """Runs ``fn`` over ``items``; yields ``(item, result or exception)`` as each finishes."""

    def map_unordered(
        self, fn: Callable[[T], R], items: Sequence[T]
    ) -> Iterator[tuple[T, R | BaseException]]: ...

    def close(self) -> None: ...


class SerialExecutor:
    """Runs items one after the other in this process (debugging, tests, ``--workers 1``)."""

    def map_unordered(
        self, fn: Callable[[T], R], items: Sequence[T]
    ) -> Iterator[tuple[T, R | BaseException]]:
        for item in items:
            try:
                result: R | BaseException = fn(item)
            except Exception as err:  # noqa: BLE001 - the contract hands the error back
                result = err
            yield item, result

    def close(self) -> None:
        return None


class LocalProcessExecutor:
    """A pool of ``workers`` local processes (concurrent.futures.ProcessPoolExecutor).

    At most ``2 * workers`` items are in flight at a time, so a cohort of thousands of scans
    does not queue thousands of futures. A worker that dies (e.g. killed for memory) fails only
    the items in flight, which yield a BrokenProcessPool error; the pool is then rebuilt.
    """

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ConfigError(f"workers must be >= 1, got {workers}")
        self.workers = int(workers)
        self._pool: ProcessPoolExecutor | None = None

    def _get_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # "spawn" avoids forking a process that holds threads (rich, dask, BLAS); each
            # worker imports lungvol afresh.
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers, mp_context=multiprocessing.get_context("spawn")
            )
        return self._pool

    def map_unordered(
        self, fn: Callable[[T], R], items: Sequence[T]
    ) -> Iterator[tuple[T, R | BaseException]]:
        pending = list(items)[::-1]
        in_flight: dict[Future[R], T] = {}
        max_in_flight = 2 * self.workers
        try:
            while pending or in_flight:
                while pending and len(in_flight) < max_in_flight:
                    item = pending.pop()
                    try:
                        in_flight[self._get_pool().submit(fn, item)] = item
                    except BrokenProcessPool:
                        self._reset_pool()
                        in_flight[self._get_pool().submit(fn, item)] = item
                done, _ = wait(list(in_flight), return_when=FIRST_COMPLETED)
                broken = False
                for future in done:
                    item = in_flight.pop(future)
                    err = future.exception()
                    if isinstance(err, BrokenProcessPool):
                        broken = True
                    yield item, (err if err is not None else future.result())
                if broken:
                    self._reset_pool()
        finally:
            for future in in_flight:
                future.cancel()

    def _reset_pool(self) -> None:
        logger.warning("a worker process died; starting a new process pool")
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
