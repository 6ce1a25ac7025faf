"""DaskExecutor on a loopback LocalCluster: the executor contract, faults and clear errors."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

distributed = pytest.importorskip("distributed")

from lungvol.cohort.dask_executor import (  # noqa: E402
    DaskExecutor,
    SchedulerUnreachableError,
    WorkerLostError,
    _run_on_worker,
)
from lungvol.errors import InputError, LungvolError, SegmentationError  # noqa: E402


@dataclass(frozen=True)
class Job:
    """Stands in for cohort.ScanJob: a small, picklable description with an input path."""

    name: str
    path: str


# Job functions live at module level so worker processes can unpickle them by reference.
def square(x: int) -> int:
    return x * x


def fail_on_three(x: int) -> int:
    if x == 3:
        raise SegmentationError("no lungs in view in scan 3; check the field of view")
    return x


def count_calls_then_fail(job: Job) -> str:
    # Appends one line per execution, then raises a non-lungvol error (retried by dask).
    with open(job.path, "a") as log:
        log.write(f"{os.getpid()}\n")
    raise OSError("stale NFS file handle")


def slow_atomic_job(job: Job) -> str:
    """Like the cohort scan function: log the start, work, then publish the output atomically."""
    out_dir = Path(job.path).parent / "out"
    with open(Path(job.path).parent / "executions.log", "a") as log:
        log.write(f"start {job.name} {os.getpid()}\n")
    time.sleep(0.4)
    tmp = out_dir / f".{job.name}.{os.getpid()}.tmp"
    tmp.write_text(job.name)
    os.replace(tmp, out_dir / f"{job.name}.done")
    with open(Path(job.path).parent / "executions.log", "a") as log:
        log.write(f"end {job.name} {os.getpid()}\n")
    return job.name


@pytest.fixture
def executor(cluster):
    ex = DaskExecutor(cluster.scheduler_address, connect_timeout_s=10, wait_for_workers_s=30)
    yield ex
    ex.close()


@contextlib.contextmanager
def _refusing_address() -> Iterator[str]:
    """A loopback port held bound but not listening: connections to it are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield f"tcp://127.0.0.1:{s.getsockname()[1]}"


def test_every_item_yields_its_result_exactly_once(executor: DaskExecutor) -> None:
    items = list(range(25))  # more than the in-flight limit (2 per thread x 2 threads)
    pairs = list(executor.map_unordered(square, items))
    assert Counter(item for item, _ in pairs) == Counter(items)
    assert all(result == item * item for item, result in pairs)


def test_empty_cohort_yields_nothing(executor: DaskExecutor) -> None:
    assert list(executor.map_unordered(square, [])) == []


def test_lungvol_error_comes_back_as_value_and_others_go_on(executor: DaskExecutor) -> None:
    results = dict(executor.map_unordered(fail_on_three, [1, 2, 3, 4]))
    assert isinstance(results[3], SegmentationError)
    assert "no lungs in view" in str(results[3])
    assert [results[k] for k in (1, 2, 4)] == [1, 2, 4]


def test_unexpected_errors_are_retried_then_returned(cluster, tmp_path: Path) -> None:
    log = tmp_path / "calls.log"
    log.touch()
    with DaskExecutor(cluster.scheduler_address, retries=2) as ex:
        [(job, result)] = list(ex.map_unordered(count_calls_then_fail, [Job("a", str(log))]))
    assert isinstance(result, OSError)
    assert len(log.read_text().splitlines()) == 3  # first try + 2 retries


def test_worker_that_cannot_see_the_input_says_so(executor: DaskExecutor, tmp_path: Path) -> None:
    missing = tmp_path / "not-on-shared-storage" / "scan.nii.gz"
    [(job, result)] = list(executor.map_unordered(square, [Job("s1", str(missing))]))
    assert isinstance(result, InputError)
    message = str(result)
    assert "\n" not in message
    assert f"cannot read {missing}" in message
    assert "storage shared by all workers" in message


def test_worker_check_distinguishes_a_path_only_the_client_sees(tmp_path: Path) -> None:
    # On a real cluster the path exists where the cohort was discovered but not on the worker.
    outcome = _run_on_worker(square, Job("s1", str(tmp_path / "nope")), True)
    assert isinstance(outcome.error, InputError)
    assert socket.gethostname() in str(outcome.error)
    assert "exists on the submitting machine" in str(outcome.error)


def test_unreachable_scheduler_is_a_one_line_input_error() -> None:
    start = time.monotonic()
    with _refusing_address() as address, pytest.raises(SchedulerUnreachableError) as info:
        DaskExecutor(address, connect_timeout_s=1.5)
    assert time.monotonic() - start < 20
    message = str(info.value)
    assert "\n" not in message
    assert address in message
    assert isinstance(info.value, InputError)


@pytest.mark.parametrize(
    "address", ["localhost", "127.0.0.1:8786", "http://127.0.0.1:8786", "tcp://host:99999", ""]
)
def test_malformed_scheduler_address_is_refused_before_connecting(address: str) -> None:
    with pytest.raises(SchedulerUnreachableError, match="tcp://HOST:PORT|port must be"):
        DaskExecutor(address, connect_timeout_s=1)


def test_scheduler_without_workers_is_a_clear_error() -> None:
    with (
        distributed.LocalCluster(
            n_workers=0,
            processes=False,
            protocol="tcp://",
            host="127.0.0.1",
            dashboard_address=":0",
        ) as empty,
        pytest.raises(SchedulerUnreachableError, match="has no workers"),
    ):
        DaskExecutor(empty.scheduler_address, wait_for_workers_s=1)


def test_killed_worker_mid_run_every_scan_finishes_exactly_once(cluster, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    inputs = []
    for i in range(10):
        p = tmp_path / f"scan{i:02d}.nii.gz"
        p.write_bytes(b"x")
        inputs.append(Job(f"scan{i:02d}", str(p)))
    log = tmp_path / "executions.log"
    log.touch()

    killed_pid = None
    seen: list[tuple[Job, object]] = []
    with DaskExecutor(cluster.scheduler_address, wait_for_workers_s=30) as ex:
        worker_pids = set(ex._client.run(os.getpid).values())
        for pair in ex.map_unordered(slow_atomic_job, inputs):
            seen.append(pair)
            if killed_pid is None:
                # Kill a worker that is in the middle of a scan (started, not ended).
                deadline = time.monotonic() + 5
                while killed_pid is None and time.monotonic() < deadline:
                    started, ended = Counter(), Counter()
                    for line in log.read_text().splitlines():
                        kind, name, pid = line.split()
                        (started if kind == "start" else ended)[(name, int(pid))] += 1
                    running = [k for k in started if started[k] > ended[k]]
                    running = [k for k in running if k[1] in worker_pids]
                    if running:
                        killed_pid = running[0][1]
                        os.kill(killed_pid, signal.SIGKILL)
                    else:
                        time.sleep(0.02)
        ex._client.wait_for_workers(2, timeout=60)  # the nanny restarts the dead worker

    assert killed_pid is not None, "no scan was running when the test tried to kill a worker"
    names = [job.name for job, _ in seen]
    assert sorted(names) == sorted(job.name for job in inputs)  # yielded exactly once each
    assert all(result == job.name for job, result in seen), seen
    outputs = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert outputs == sorted(f"{job.name}.done" for job in inputs)  # no temp leftovers
    starts = Counter(line.split()[1] for line in log.read_text().splitlines() if "start" in line)
    assert max(starts.values()) >= 2  # the killed scan really ran again elsewhere
    assert all(isinstance(result, str) for _, result in seen)
    assert not any(isinstance(result, LungvolError | WorkerLostError) for _, result in seen)


def slow_identity(x: int) -> int:
    time.sleep(0.5)
    return x


def test_lost_scheduler_stops_the_run_with_a_clear_error(tmp_path: Path) -> None:
    # A real `dask scheduler` + `dask worker` pair (the command-line deployment); the scheduler
    # is killed after two results.
    import subprocess
    import sys

    from lungvol.cohort.dask_executor import SchedulerLostError

    dask = Path(sys.executable).with_name("dask")
    if not dask.exists():
        pytest.skip("the dask command-line tool is not installed next to this Python")
    # the scheduler and the workers unpickle the task (slow_identity): same environment
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": env}
    scheduler_file = tmp_path / "scheduler.json"
    scheduler = subprocess.Popen(
        [str(dask), "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard"]
        + ["--scheduler-file", str(scheduler_file)],
        **quiet,
    )
    address = None
    deadline = time.monotonic() + 30
    while address is None and time.monotonic() < deadline:
        try:
            address = json.loads(scheduler_file.read_text())["address"]
        except (OSError, ValueError, KeyError):
            time.sleep(0.1)
    assert address, "dask scheduler did not start"
    worker = subprocess.Popen(
        [str(dask), "worker", address, "--nworkers", "2", "--nthreads", "1", "--no-dashboard"],
        **quiet,
    )
    try:
        ex = DaskExecutor(address, connect_timeout_s=20, wait_for_workers_s=30)
        received = []

        def consume() -> None:
            for item, result in ex.map_unordered(slow_identity, list(range(12))):
                received.append((item, result))
                if len(received) == 2:
                    scheduler.kill()

        with pytest.raises(SchedulerLostError) as info:
            consume()
        assert len(received) >= 2
        assert all(item == result for item, result in received), received
        message = str(info.value)
        assert "\n" not in message
        assert address in message
        assert "run the same command again" in message
        # The executor let go of the lost scheduler: no reconnect attempts left to log an
        # error into a later test's output.
        assert ex._client.status == "closed"
        ex.close()  # idempotent
    finally:
        scheduler.kill()
        worker.kill()
        scheduler.wait(timeout=30)
        worker.wait(timeout=30)


def test_close_never_raises_over_the_error_a_run_ended_with(caplog) -> None:
    """close() runs in ``finally`` blocks: a disconnect that times out is logged, not raised
    (it would hide the one-line SchedulerLostError), and a closed client is left alone."""

    class StuckClient:
        status = "running"
        calls = 0

        def close(self, timeout=None):
            StuckClient.calls += 1
            raise TimeoutError("closing took too long")

    ex = object.__new__(DaskExecutor)
    ex.address, ex._close_timeout_s, ex._client = "tcp://127.0.0.1:1", 0.1, StuckClient()
    ex.close()
    assert "could not disconnect cleanly" in caplog.text
    ex._client.status = "closed"
    ex.close()
    assert StuckClient.calls == 1
