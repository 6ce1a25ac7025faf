"""``lungvol cohort run|analyze`` and ``lungvol simulate-trial``: thin shells over the library."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from lungvol.cli._common import console, fail, handle_errors

cohort_app = typer.Typer(
    help="Longitudinal cohorts: segment every visit of every subject, then the trial endpoints.",
    no_args_is_help=True,
)

TrialOption = Annotated[
    Path | None,
    typer.Option("--trial", help="Trial definition YAML (default: configs/shi2022.yaml)."),
]


def _setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
        force=True,
    )


def _make_executor(workers: int, scheduler: str | None):
    if scheduler:
        try:
            from lungvol.cohort.dask_executor import DaskExecutor
        except ImportError as err:
            fail(
                f"--scheduler needs lungvol.cohort.dask_executor and dask.distributed ({err}); "
                "pip install 'lungvol[dask]' or drop --scheduler"
            )
        return DaskExecutor(scheduler)
    from lungvol.cohort.executors import LocalProcessExecutor

    return LocalProcessExecutor(workers)


@cohort_app.command("run")
@handle_errors
def run_command(
    cohort: Annotated[Path, typer.Argument(help="Cohort folder: COHORT/<subject>/<visit>/.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output folder (resumable).")],
    workers: Annotated[int, typer.Option("--workers", "-w", min=1, help="Parallel processes.")] = 1,
    manifest: Annotated[
        Path | None, typer.Option("--manifest", help="Manifest CSV (default: COHORT/manifest.csv).")
    ] = None,
    trial: TrialOption = None,
    config: Annotated[Path | None, typer.Option("--config", help="lungvol config YAML.")] = None,
    rerun_changed: Annotated[
        bool,
        typer.Option(
            "--rerun-changed", help="Accept an OUT made with another config; redo its scans."
        ),
    ] = False,
    scheduler: Annotated[
        str | None,
        typer.Option(
            "--scheduler", help="Dask scheduler address tcp://HOST:PORT instead of local processes."
        ),
    ] = None,
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda")] = "auto",
    phase_check: Annotated[
        bool,
        typer.Option(
            "--phase-check",
            help="Also measure each scan's block-phase spread (about 4x the time; "
            "quantification.phase_check).",
        ),
    ] = False,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bar.")] = False,
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="Debug logging.")] = False,
) -> None:
    """Segment every scan of a cohort in parallel; skip finished scans; record failures."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from lungvol.cohort.discover import discover_cohort
    from lungvol.cohort.run import run_cohort
    from lungvol.cohort.trial import load_trial
    from lungvol.config import load_config, with_phase_check
    from lungvol.device import resolve_device

    _setup_logging(verbose)
    trial_cfg = load_trial(trial)
    cfg = load_config(config)
    if phase_check:
        cfg = with_phase_check(cfg)
    resolved = resolve_device(device)
    found = discover_cohort(cohort, trial_cfg, manifest=manifest)
    for issue in found.issues:
        console.print(f"[yellow]note:[/] {issue.message}", highlight=False)
    executor = _make_executor(workers, scheduler)
    show = not no_progress and sys.stderr.isatty()
    try:
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
            disable=not show,
        ) as progress:
            task = progress.add_task("segmenting", total=len(found.jobs))

            def on_progress(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            summary = run_cohort(
                found,
                out,
                cfg,
                executor=executor,
                on_progress=on_progress,
                rerun_changed=rerun_changed,
                device=resolved,
                trial_hash=trial_cfg.hash,
            )
    finally:
        executor.close()
    from lungvol.cohort.results import collect_results, qc_flag_counts

    rows = collect_results(out)
    typer.echo(
        f"{summary.total} scans: {summary.done} done, {summary.skipped} skipped (complete), "
        f"{summary.failed} failed in {summary.seconds:.1f} s; table: {out / 'scans.csv'}"
    )
    n_flagged, counts = qc_flag_counts(rows)
    if n_flagged:
        listed = ", ".join(f"{code} {n}" for code, n in counts)
        typer.echo(f"  QC flags on {n_flagged} scans ({listed}): column qc_flag_codes")
    for f in summary.failures:
        typer.echo(f"  failed {f['subject']}/{f['visit']}: {f['error_type']}: {f['error'][:160]}")
    if summary.failed:
        typer.echo(
            f"  failures listed in {out / 'failures.csv'}; rerun the same command to retry them"
        )


@cohort_app.command("analyze")
@handle_errors
def analyze_command(
    out: Annotated[Path, typer.Argument(help="Output folder of `lungvol cohort run`.")],
    trial: TrialOption = None,
    reads: Annotated[
        Path | None,
        typer.Option(
            "--reads",
            help="Radiologist reads CSV (subject, visit, normal yes/no); they take precedence.",
        ),
    ] = None,
    exclude_flag: Annotated[
        list[str] | None,
        typer.Option(
            "--exclude-flag",
            help="Leave out scans with this QC flag code (repeatable; adds to the trial's "
            "exclude_qc_flags), e.g. lung_base_truncated.",
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="Debug logging.")] = False,
) -> None:
    """Endpoints per arm and visit: endpoints.csv, table2.md, Figure 2 (PNG, SVG), report.html."""
    import dataclasses

    from lungvol.cohort.trial import load_trial
    from lungvol.reporting.cohort_report import analyze_cohort

    _setup_logging(verbose)
    trial_cfg = load_trial(trial)
    if exclude_flag:
        codes = tuple(dict.fromkeys([*trial_cfg.exclude_qc_flags, *exclude_flag]))
        trial_cfg = dataclasses.replace(trial_cfg, exclude_qc_flags=codes)
    result = analyze_cohort(out, trial_cfg, reads_path=reads)
    typer.echo(result.files["table2_md"].read_text())
    n_lung = sum(1 for r in result.subject_visits if r.get("lung_volume_flag"))
    if n_lung:
        typer.echo(
            f"{n_lung} scans' lung volume differs from the subject's baseline by more than "
            f"{trial_cfg.lung_volume_change_flag_pct:g} % (inspiration, or consolidation left "
            "out of the lung mask): see report.html, column lung_volume_flag of "
            "subject_visits.csv"
        )
    n_excluded = sum(1 for r in result.subject_visits if r["scan_status"] == "excluded")
    if trial_cfg.exclude_qc_flags:
        typer.echo(
            f"{n_excluded} measured scans excluded for QC flag "
            f"{', '.join(trial_cfg.exclude_qc_flags)} (handled like visits without a usable "
            "scan): see report.html, column excluded_for of subject_visits.csv"
        )
    n_acq = sum(1 for r in result.subject_visits if r.get("acquisition_changes"))
    if n_acq:
        typer.echo(
            f"{n_acq} scans were acquired differently from the subject's baseline (kernel, "
            "manufacturer or slice spacing), which moves the lesion proportion by itself: see "
            "report.html, column acquisition_changes of subject_visits.csv"
        )
    for name in ("endpoints_csv", "table2_md", "report_html"):
        typer.echo(f"{name}: {result.files[name]}")


def simulate_trial_command(
    out: Annotated[Path, typer.Argument(help="Folder for the simulated cohort (must not exist).")],
    trial: TrialOption = None,
    subjects_per_arm: Annotated[
        str, typer.Option("--subjects-per-arm", help="N for both arms, or N1,N2 (e.g. 65,35).")
    ] = "5",
    seed: Annotated[int, typer.Option("--seed", min=0, help="Random seed (>= 0).")] = 0,
    size: Annotated[
        str, typer.Option("--size", help="Phantom grid: tiny | small | full | ZxYxX.")
    ] = "small",
    workers: Annotated[int, typer.Option("--workers", "-w", min=1, help="Parallel processes.")] = 1,
    missing_fraction: Annotated[
        float,
        typer.Option("--missing-fraction", help="Share of follow-up visits left without a scan."),
    ] = 0.15,
    fmt: Annotated[str, typer.Option("--format", help="dicom | nifti")] = "nifti",
) -> None:
    """Write a cohort of phantom scans whose arm medians follow the trial's published Table 2."""
    from lungvol.cohort.simulate import simulate_trial
    from lungvol.cohort.trial import load_trial

    try:
        counts = [int(v) for v in subjects_per_arm.split(",")]
    except ValueError:
        fail(f"--subjects-per-arm must be N or N1,N2, got {subjects_per_arm!r}")
    if len(counts) == 1:
        counts = counts * 2
    result = simulate_trial(
        out,
        load_trial(trial),
        subjects_per_arm=tuple(counts),
        seed=seed,
        size=size,
        missing_fraction=missing_fraction,
        fmt=fmt,
        workers=workers,
    )
    typer.echo(
        f"{result.n_scans} scans of {result.n_subjects} subjects in {out}; manifest "
        f"{result.manifest}; truth {result.truth}"
    )


def register(app: typer.Typer) -> None:
    """Add this module's commands to the main app."""
    app.add_typer(cohort_app, name="cohort")
    app.command("simulate-trial")(handle_errors(simulate_trial_command))
