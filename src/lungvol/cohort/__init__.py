"""lungvol.cohort: a trial's scans -> per-scan results -> per subject x visit endpoints.

- :func:`load_trial` (``configs/shi2022.yaml``), :func:`discover_cohort` (manifest + folders
  -> :class:`ScanJob` per subject x visit, with visit windows and validation),
- :func:`run_cohort` (resumable, parallel through an :class:`Executor`), :func:`collect_results`,
- :func:`subject_visit_table` / :func:`endpoint_rows` (LOCF, relative and absolute change),
- :func:`simulate_trial` (phantom cohorts following the published Table 2).

``lungvol.cohort.dask_executor`` is imported only when a Dask scheduler is used.
"""

from lungvol.cohort.discover import Cohort, CohortIssue, ScanJob, discover_cohort
from lungvol.cohort.endpoints import endpoint_rows, read_reads, subject_visit_table
from lungvol.cohort.executors import Executor, LocalProcessExecutor, SerialExecutor
from lungvol.cohort.results import collect_results
from lungvol.cohort.run import RunSummary, ScanTask, process_scan, run_cohort
from lungvol.cohort.simulate import simulate_trial
from lungvol.cohort.trial import TrialConfig, load_trial

__all__ = [
    "Cohort",
    "CohortIssue",
    "Executor",
    "LocalProcessExecutor",
    "RunSummary",
    "ScanJob",
    "ScanTask",
    "SerialExecutor",
    "TrialConfig",
    "collect_results",
    "discover_cohort",
    "endpoint_rows",
    "load_trial",
    "process_scan",
    "read_reads",
    "run_cohort",
    "simulate_trial",
    "subject_visit_table",
]
