"""``lungvol qualify``: lesions of known volume inserted into a site's own scan, read back
(a thin shell over :func:`lungvol.qualify.qualify_scan`)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from lungvol.cli._common import (
    ConfigOption,
    OverwriteOption,
    SeriesOption,
    console,
    handle_errors,
)
from lungvol.errors import InputError


def _numbers(text: str, what: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(
            f"{what} must be comma-separated numbers, e.g. 5,15,30; got {text!r}"
        ) from None


def _print_summary(report: dict[str, Any], out_dir: Path, elapsed_s: float) -> None:
    from rich.table import Table

    ref = report["reference"]
    console.print(
        f"reference scan: lung {ref['lung_ml']:.0f} mL, lesion {ref['lesion_pct']:.2f} % "
        f"as is", highlight=False,
    )
    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    for name, justify in (("model", "left"), ("inserted", "right"), ("total", "right"),
                          ("solid", "right"), ("proportion", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]

    def spread(stats: dict[str, Any], unit: str, n: int, digits: int = 1) -> str:
        if stats["mean"] is None:
            return "-"
        sd = "" if stats["sd"] is None else f" ({stats['sd']:.{digits}f})"
        ok = stats["within_target"]
        text = f"{stats['mean']:+.{digits}f}{unit}{sd} {ok}/{n}"
        return text if ok == n else f"[yellow]{text}[/]"

    for g in report["groups"]:
        n = g["n"]
        table.add_row(
            g["model"], f"{g['lesion_pct']:g} %", spread(g["lesion_err_pct"], " %", n),
            spread(g["solid_err_pct"], " %", n), spread(g["proportion_err_pp"], " pp", n, 2),
        )
    console.print("error read - inserted: mean (SD) over the insertions, how many met the "
                  "target", highlight=False)
    console.print(table)
    s = report["summary"]
    console.print(f"all targets met in {s['all_targets_met']} of {s['cases']} cases")
    console.print(f"output: {out_dir}  ({elapsed_s:.1f} s)", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the main app."""

    @app.command("qualify", no_args_is_help=True)
    @handle_errors
    def qualify(
        path: Annotated[
            Path, typer.Argument(help="A scan of the protocol WITHOUT pneumonia: DICOM "
                                      "folder/file or NIfTI/NRRD/MHA volume.")
        ],
        output: Annotated[
            Path, typer.Option("-o", "--output", help="Result folder (must not exist).")
        ],
        burdens: Annotated[
            str | None,
            typer.Option("--burdens", help="Lesion to insert, % of the lung, comma list "
                                           "(default 5,15,30)."),
        ] = None,
        models: Annotated[
            str | None,
            typer.Option("--models", help="Insertion models, comma list: insert_lesions, "
                                          "blobs, partial_volume (default: the first two)."),
        ] = None,
        repeats: Annotated[
            int | None,
            typer.Option("--repeats", help="Insertions per model and burden, each with its "
                                           "own seed: one is one draw (default 3)."),
        ] = None,
        seed: Annotated[int, typer.Option("--seed", help="Seed of the insertions.")] = 0,
        series: SeriesOption = None,
        config_file: ConfigOption = None,
        max_lesion_error: Annotated[
            float | None,
            typer.Option("--max-lesion-error-pct", help="Target: total lesion (default 10)."),
        ] = None,
        max_solid_error: Annotated[
            float | None,
            typer.Option("--max-solid-error-pct", help="Target: solid lesion (default 15)."),
        ] = None,
        max_proportion_error: Annotated[
            float | None,
            typer.Option("--max-proportion-error-pp", help="Target: proportion (default 1)."),
        ] = None,
        reference_max_lesion: Annotated[
            float | None,
            typer.Option("--reference-max-lesion-pct",
                         help="Refuse a reference scan that reads more lesion than this "
                              "(default 5)."),
        ] = None,
        as_json: Annotated[
            bool, typer.Option("--json", help="Print qualify.json to stdout (only that).")
        ] = False,
        overwrite: OverwriteOption = False,
    ) -> None:
        """Insert lesions of known volume into a scan without pneumonia and read them back:
        lungvol's accuracy on this scanner protocol (about 10 s per insertion on a 141-slice
        chest: 2 models x 3 burdens x 3 repeats by default, 3-4 minutes)."""
        from lungvol.config import load_config
        from lungvol.qualify import (
            DEFAULT_BURDENS_PCT,
            DEFAULT_MODELS,
            DEFAULT_REPEATS,
            QualifyTargets,
            qualify_scan,
        )
        from lungvol.quantification.provenance import json_safe

        t0 = time.perf_counter()
        given = {
            "lesion_error_pct": max_lesion_error, "solid_error_pct": max_solid_error,
            "proportion_error_pp": max_proportion_error,
            "reference_max_lesion_pct": reference_max_lesion,
        }
        targets = QualifyTargets(**{k: v for k, v in given.items() if v is not None})
        report = qualify_scan(
            path, output, config=load_config(config_file), series_uid=series,
            burdens_pct=DEFAULT_BURDENS_PCT if burdens is None else _numbers(burdens, "--burdens"),
            models=DEFAULT_MODELS if models is None else [
                m.strip() for m in models.split(",") if m.strip()],
            seed=seed,
            repeats=DEFAULT_REPEATS if repeats is None else repeats, targets=targets,
            overwrite=overwrite,
            progress=lambda line: console.print(f"  {line} ...", highlight=False),
        )
        _print_summary(report, output.absolute(), time.perf_counter() - t0)
        if as_json:
            sys.stdout.write(json.dumps(json_safe(report), indent=2) + "\n")
            sys.stdout.flush()
