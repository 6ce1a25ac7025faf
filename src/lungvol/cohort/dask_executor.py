"""Run cohort scans on an existing dask.distributed cluster (``lungvol cohort run --scheduler``).

``DaskExecutor`` implements the executor contract of :mod:`lungvol.cohort.executors`: it maps
a picklable function over small job descriptions and yields ``(item, result or exception)`` as
each scan finishes. Only the job description (a path and a few strings), the function and the
returned metrics travel through the scheduler; workers read the scans and write the outputs on
storage that every worker and the submitting machine share (NFS, Lustre, a bind mount).

Fault handling:

- A worker that dies (killed, out of memory, node lost) has its running scans rescheduled by
  the scheduler onto the remaining workers; the scan function writes its outputs atomically
  (temporary folder renamed into place), so a rerun replaces nothing half-written and each scan
  yields exactly one result here. A scan that kills ``distributed.scheduler.allowed-failures``
  workers in a row is given up as :class:`WorkerLostError`.
- ``LungvolError`` raised by the function (bad scan, segmentation failure) is deterministic: it
  is handed back at once, never retried. Other exceptions (I/O hiccups on shared storage) are
  retried ``retries`` times first.
- A job whose input (``input_path`` or ``path``) the worker cannot read, or whose output folder
  (``result_dir``) it cannot reach, yields an ``InputError`` naming the worker host: the usual
  sign that inputs or outputs are not on storage shared by the submitter and all workers.
- Losing the scheduler itself ends the run with :class:`SchedulerLostError`; the scans that
  finished are on disk and a rerun of the cohort skips them.

dask-jobqueue users (SLURM, PBS, ...) start a ``SLURMCluster``/``PBSCluster`` and pass its
``scheduler_address``; nothing else changes.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import CancelledError
from dataclasses import dataclass
from typing import Any, TypeVar

from lungvol.errors import InputError, LungvolError, MissingDependencyError

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

# tcp://host:port, tls://host:port, ucx://host:port ("host" may be a bracketed IPv6 address).
_ADDRESS = re.compile(r"^(tcp|tls|ucx)://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")


class SchedulerUnreachableError(InputError):
    """The ``--scheduler`` address is malformed or no Dask scheduler answers there."""


class SchedulerLostError(LungvolError, RuntimeError):
    """The connection to the Dask scheduler broke during a run (finished scans are kept)."""


class WorkerLostError(LungvolError, RuntimeError):
    """A scan kept killing the Dask workers that ran it (often: not enough worker memory)."""


@dataclass(frozen=True)
class _Outcome:
    """What a worker sends back: the function's value or the lungvol error it raised."""

    value: Any = None
    error: BaseException | None = None


def _job_path(item: Any) -> str | None:
    """The input path of a job description (``ScanTask.input_path``, ``ScanJob.path``)."""
    for name in ("input_path", "path"):
        path = getattr(item, name, None)
        if isinstance(path, str | os.PathLike):
            return os.fspath(path)
    return None


def _output_anchor(item: Any) -> str | None:
    """The deepest existing folder above the job's output folder, as seen by the submitter.

    Workers must see that same folder; otherwise ``mkdir -p`` on the worker would quietly
    create the result on the worker's local disk, where the cohort table never finds it.
    """
    out = getattr(item, "result_dir", None)
    if not isinstance(out, str | os.PathLike):
        return None
    folder = os.path.abspath(os.fspath(out))
    while not os.path.isdir(folder):
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent
    return None if folder == os.path.dirname(folder) else folder


def _shared_storage_error(what: str, path: str, *, visible_to_client: bool) -> InputError:
    where = (
        "it exists on the submitting machine"
        if visible_to_client
        else "it does not exist on the submitting machine either"
    )
    return InputError(
        f"worker {socket.gethostname()} cannot {what} {path}: inputs and outputs must be on "
        f"storage shared by all workers, mounted at the same path ({where})"
    )


def _run_on_worker(
    fn: Callable[[Any], Any],
    item: Any,
    visible_to_client: bool,
    output_anchor: str | None = None,
) -> _Outcome:
    """Run one job on a worker; domain errors come back as values so dask does not retry them."""
    path = _job_path(item)
    if path is not None and not os.access(path, os.R_OK):
        return _Outcome(
            error=_shared_storage_error("read", path, visible_to_client=visible_to_client)
        )
    if output_anchor is not None and not (
        os.path.isdir(output_anchor) and os.access(output_anchor, os.W_OK | os.X_OK)
    ):
        return _Outcome(
            error=_shared_storage_error("write to", output_anchor, visible_to_client=True)
        )
    try:
        return _Outcome(value=fn(item))
    except LungvolError as err:
        return _Outcome(error=err)


def _check_address(address: str) -> None:
    if not isinstance(address, str) or not _ADDRESS.match(address.strip()):
        raise SchedulerUnreachableError(
            f"scheduler address must look like tcp://HOST:PORT (e.g. tcp://10.0.0.5:8786), "
            f"got {address!r}"
        )
    port = int(address.rsplit(":", 1)[1])
    if not 0 < port < 65536:
        raise SchedulerUnreachableError(f"scheduler port must be 1-65535, got {port} in {address}")


class DaskExecutor:
    """Executor contract on a dask.distributed cluster reached at ``address``.

    Parameters
    ----------
    address : str
        The scheduler, ``tcp://HOST:PORT`` (``tls://`` and ``ucx://`` also accepted).
    connect_timeout_s : float
        How long to try to reach the scheduler before giving up.
    wait_for_workers_s : float
        How long to wait for at least one worker to join before giving up (0: do not wait).
    retries : int
        Extra attempts for a scan that raised a non-lungvol exception (e.g. an ``OSError`` on
        shared storage). Rescheduling after a worker death does not count against it.
    max_in_flight_per_thread : int
        Scans submitted ahead per worker thread; keeps a cohort of thousands of scans from
        being queued on the scheduler at once.

    Raises
    ------
    SchedulerUnreachableError
        Malformed address, nothing answering, or no workers joined in time.
    MissingDependencyError
        dask.distributed is not installed.
    """

    def __init__(
        self,
        address: str,
        *,
        connect_timeout_s: float = 10.0,
        wait_for_workers_s: float = 60.0,
        retries: int = 2,
        max_in_flight_per_thread: int = 2,
    ) -> None:
        _check_address(address)
        if retries < 0 or max_in_flight_per_thread < 1 or connect_timeout_s <= 0:
            raise InputError(
                "DaskExecutor needs retries >= 0, max_in_flight_per_thread >= 1 and "
                f"connect_timeout_s > 0, got {retries}, {max_in_flight_per_thread}, "
                f"{connect_timeout_s}"
            )
        try:
            from distributed import Client
        except ImportError as err:
            raise MissingDependencyError(
                "--scheduler needs dask.distributed, which is not installed; "
                "pip install 'lungvol[dask]'"
            ) from err
        self.address = address.strip()
        self.retries = int(retries)
        self.max_in_flight_per_thread = int(max_in_flight_per_thread)
        self._close_timeout_s = float(connect_timeout_s)
        try:
            self._client = Client(self.address, timeout=connect_timeout_s, set_as_default=False)
        except (OSError, TimeoutError) as err:
            raise SchedulerUnreachableError(
                f"no Dask scheduler answered at {self.address} within {connect_timeout_s:g} s; "
                "check the address and port, that 'dask scheduler' is running, and that this "
                "machine can reach it (firewall, VPN)"
            ) from err
        if wait_for_workers_s > 0:
            try:
                self._client.wait_for_workers(1, timeout=wait_for_workers_s)
            except (OSError, TimeoutError) as err:
                self._client.close()
                raise SchedulerUnreachableError(
                    f"the Dask scheduler at {self.address} has no workers after "
                    f"{wait_for_workers_s:g} s; start some ('dask worker {self.address}') "
                    "and run again"
                ) from err
        logger.info(
            "connected to Dask scheduler %s with %d worker(s), %d thread(s)",
            self.address,
            len(self._worker_threads()),
            self.n_threads,
        )

    def _worker_threads(self) -> dict[str, int]:
        return dict(self._client.nthreads())

    @property
    def n_threads(self) -> int:
        """Worker threads in the cluster right now (scans that can run at once)."""
        return sum(self._worker_threads().values())

    def map_unordered(
        self, fn: Callable[[T], R], items: Sequence[T]
    ) -> Iterator[tuple[T, R | BaseException]]:
        """Run ``fn`` on every item on the cluster; yield ``(item, result or error)`` as done.

        Every item is yielded exactly once, whatever happens to the workers meanwhile.
        """
        from distributed import as_completed
        from distributed.scheduler import KilledWorker

        jobs = list(items)
        if not jobs:
            return
        run_id = uuid.uuid4().hex[:8]
        queue = list(enumerate(jobs))[::-1]
        in_flight: dict[Any, int] = {}

        def submit_more() -> list[Any]:
            submitted = []
            limit = max(2, self.max_in_flight_per_thread * max(self.n_threads, 1))
            while queue and len(in_flight) < limit:
                index, item = queue.pop()
                path = _job_path(item)
                future = self._client.submit(
                    _run_on_worker,
                    fn,
                    item,
                    path is None or os.access(path, os.R_OK),
                    _output_anchor(item),
                    key=f"lungvol-scan-{run_id}-{index}",
                    pure=False,
                    retries=self.retries,
                )
                in_flight[future] = index
                submitted.append(future)
            return submitted

        n_done = 0
        lost = False
        try:
            # This executor's client is deliberately not the process default: pass its loop.
            completed = as_completed(submit_more(), loop=self._client.loop)
            for future in completed:
                index = in_flight.pop(future)
                item = jobs[index]
                result = self._outcome(future, item, KilledWorker)
                if isinstance(result, CancelledError) and self._client.status != "running":
                    lost = True
                    raise self._scheduler_lost(n_done, len(jobs), result)
                n_done += 1
                yield item, result
                future.release()
                for new in submit_more():
                    completed.add(new)
        except OSError as err:  # distributed's CommClosedError is an OSError
            lost = True
            raise self._scheduler_lost(n_done, len(jobs), err) from err
        finally:
            for future in in_flight:
                future.cancel()
            # The client may still read "running" when the lost connection surfaces as an
            # error first (its status changes on its own loop, a moment later).
            if lost or self._client.status != "running":
                # The scheduler is gone: stop the client's reconnect attempts (for
                # connect_timeout_s), which would log an error later into whatever else the
                # process is doing. This executor is done.
                self.close()

    def _scheduler_lost(self, n_done: int, n_total: int, err: BaseException) -> SchedulerLostError:
        return SchedulerLostError(
            f"lost the Dask scheduler at {self.address} after {n_done} of {n_total} scans "
            f"({err.__class__.__name__}); finished scans are kept: check the scheduler and run "
            "the same command again to do the rest"
        )

    def _outcome(self, future: Any, item: Any, killed_worker: type) -> Any:
        try:
            outcome = future.result()
        except killed_worker as err:
            return WorkerLostError(
                f"scan {_job_path(item) or item!r} was running on Dask workers that died each "
                "time (often out of memory); give the workers more memory and run again "
                f"({err.__class__.__name__})"
            )
        except Exception as err:  # noqa: BLE001 - the contract hands the error back
            return err
        return outcome.error if outcome.error is not None else outcome.value

    def close(self) -> None:
        """Disconnect from the scheduler (the cluster itself keeps running); idempotent.
        Never raises: a disconnect that times out must not hide the error the run ended
        with (it is called from ``finally`` blocks)."""
        if self._client.status in ("closing", "closed"):
            return
        try:
            self._client.close(timeout=self._close_timeout_s)
        except (OSError, TimeoutError) as err:  # dask's TimeoutError is the builtin one
            logger.warning("could not disconnect cleanly from %s: %s", self.address, err)

    def __enter__(self) -> DaskExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
