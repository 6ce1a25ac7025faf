"""``lungvol segment``: one scan -> masks, metrics, QC figure (a thin shell over segment_scan)."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from lungvol.cli._common import (
    ConfigOption,
    OverwriteOption,
    SeriesOption,
    console,
    handle_errors,
)

if TYPE_CHECKING:
    from lungvol.types import ScanMetrics

_VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")


def default_output(path: Path) -> Path:
    """``./lungvol_out/<input name without volume suffix>``."""
    name = path.absolute().name
    for suffix in _VOLUME_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
            break
    return Path("lungvol_out") / name


def _setup_logging(verbose: bool) -> None:
    """Warnings (or, with -v, stage progress) on stderr through rich; stdout stays clean."""
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
        force=True,
    )


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM (``kill``, ``timeout``, schedulers) like Ctrl-C while the scan runs.

    segment_scan cleans its temporary folder on KeyboardInterrupt; Python's default SIGTERM
    action would end the process without that clean-up. Only the main thread can set
    handlers, so elsewhere (e.g. a CLI runner in a thread) nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _print_summary(metrics: ScanMetrics, out_dir: Path, elapsed_s: float) -> None:
    from rich.table import Table

    m = metrics
    src = m.provenance.get("input", {})
    series = src.get("series_uid") or "-"
    reason = src.get("selection_reason") or ""
    # The io reader's selection reason already names the series and why it was chosen.
    chosen = reason if reason else f"series {series}"
    console.print(
        f"[bold]input[/] {src.get('kind', '?')}: {chosen}", highlight=False, soft_wrap=True
    )
    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    table.add_column("measure")
    table.add_column("volume mL", justify="right")
    table.add_column("% of lungs", justify="right")
    table.add_row("lungs (right / left)",
                  f"{m.lung_volume_ml:.0f} ({m.lung_volume_right_ml:.0f} / "
                  f"{m.lung_volume_left_ml:.0f})", "")
    table.add_row("lesion (GGO + solid)", f"{m.lesion_volume_ml:.1f}",
                  f"{m.lesion_proportion_pct:.2f}")
    table.add_row("  ground-glass", f"{m.ggo_volume_ml:.1f}", f"{m.ggo_proportion_pct:.2f}")
    table.add_row("  solid", f"{m.solid_volume_ml:.1f}", f"{m.solid_proportion_pct:.2f}")
    table.add_row("    against soft tissue", f"{m.solid_at_surface_ml:.1f}", "")
    console.print(table)
    console.print(f"normal CT: {'[green]yes[/]' if m.normal_ct else '[yellow]no[/]'}")
    if m.phase_check:
        span = m.phase_check["range"]
        console.print(
            f"block-phase check ({len(m.phase_check['phases'])} phases): lesion "
            f"{span['lesion_volume_ml'][0]:.1f}-{span['lesion_volume_ml'][1]:.1f} mL, solid "
            f"{span['solid_volume_ml'][0]:.1f}-{span['solid_volume_ml'][1]:.1f} mL, lesion "
            f"proportion {span['lesion_proportion_pct'][0]:.2f}-"
            f"{span['lesion_proportion_pct'][1]:.2f} %",
            highlight=False, soft_wrap=True,
        )
    if m.qc_flags:
        console.print(f"[yellow]QC flags ({len(m.qc_flags)}):[/]")
        for flag in m.qc_flags:
            console.print(f"  - {flag}", highlight=False, soft_wrap=True, markup=False)
    else:
        console.print("QC flags: none")
    console.print(f"output: {out_dir}  ({elapsed_s:.1f} s)", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the main app."""

    @app.command("segment")
    @handle_errors
    def segment(
        path: Annotated[Path, typer.Argument(help="DICOM folder/file or NIfTI/NRRD/MHA volume.")],
        output: Annotated[
            Path | None,
            typer.Option(
                "-o", "--output", help="Result folder (default: ./lungvol_out/INPUT_NAME)."
            ),
        ] = None,
        series: SeriesOption = None,
        config_file: ConfigOption = None,
        dicom_seg: Annotated[
            bool, typer.Option("--dicom-seg", help="Also write seg.dcm (DICOM input only).")
        ] = False,
        as_json: Annotated[
            bool, typer.Option("--json", help="Print metrics.json to stdout (only that).")
        ] = False,
        overwrite: OverwriteOption = False,
        device: Annotated[
            str, typer.Option("--device", help="auto | cpu | cuda.")
        ] = "auto",
        phase_check: Annotated[
            bool,
            typer.Option(
                "--phase-check",
                help="Segment again on shifted block lattices and report how much the "
                "numbers move (metrics.json phase_check; about 4x the time).",
            ),
        ] = False,
        verbose: Annotated[
            bool, typer.Option("-v", "--verbose", help="Log each stage (stderr).")
        ] = False,
    ) -> None:
        """Segment lungs and lesions in one CT scan and measure them."""
        _setup_logging(verbose)
        from lungvol.config import load_config, with_phase_check
        from lungvol.device import resolve_device
        from lungvol.pipeline import metrics_json, segment_scan

        t0 = time.perf_counter()
        config = load_config(config_file)
        if phase_check:
            config = with_phase_check(config)
        resolved = resolve_device(device)
        out_dir = output if output is not None else default_output(path)
        with _sigterm_as_interrupt():
            metrics = segment_scan(
                path,
                out_dir,
                config=config,
                series_uid=series,
                dicom_seg=dicom_seg,
                device=resolved,
                overwrite=overwrite,
            )
        _print_summary(metrics, out_dir.absolute(), time.perf_counter() - t0)
        if as_json:
            sys.stdout.write(metrics_json(metrics))
            sys.stdout.flush()
