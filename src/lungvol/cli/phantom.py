"""``lungvol phantom OUT``: write a synthetic chest CT with exact ground truth."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lungvol.cli._common import fail, handle_errors

FORMATS = ("dicom", "nifti")
TRANSFER_SYNTAXES = (
    "explicit_vr_little_endian",
    "jpeg_lossless",
    "jpeg2000_lossless",
    "rle_lossless",
)


@handle_errors
def phantom(
    out: Annotated[Path, typer.Argument(help="Output folder (must be new or empty).")],
    seed: Annotated[
        int, typer.Option("--seed", min=0, help="Random seed >= 0 (same seed = same scan).")
    ] = 0,
    noise_seed: Annotated[
        int | None,
        typer.Option(
            "--noise-seed",
            min=0,
            help="Seed the image noise on its own: the same --seed with another --noise-seed "
            "is a rescan of the same chest (test-retest).",
        ),
    ] = None,
    fmt: Annotated[
        str, typer.Option("--format", help="CT format: dicom (series) or nifti (ct.nii.gz).")
    ] = "dicom",
    size: Annotated[
        str,
        typer.Option(
            "--size",
            help="small (96x128x128, 3.0x2.8x2.8 mm), full (400x512x512, 0.8x0.7x0.7 mm) "
            "or ZxYxX (same field of view).",
        ),
    ] = "small",
    lesion_pct: Annotated[
        float, typer.Option("--lesion-pct", help="Target lesion volume / lung volume, %.")
    ] = 15.0,
    solid_pct: Annotated[
        float, typer.Option("--solid-pct", help="Target solid component / lung volume, %.")
    ] = 3.0,
    noise_hu: Annotated[float, typer.Option("--noise-hu", help="Image noise SD in HU.")] = 20.0,
    transfer_syntax: Annotated[
        str,
        typer.Option(
            "--transfer-syntax",
            help="DICOM encoding: explicit_vr_little_endian (uncompressed), jpeg_lossless, "
            "jpeg2000_lossless or rle_lossless.",
        ),
    ] = "explicit_vr_little_endian",
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace a non-empty OUT folder.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print truth.json to stdout.")] = False,
) -> None:
    """Write a synthetic chest CT (DICOM or NIfTI) with truth masks and truth.json."""
    from lungvol.phantom import make_phantom, resolve_size, write_phantom

    if fmt not in FORMATS:
        fail(f"--format {fmt!r} is not supported; use one of {', '.join(FORMATS)}")
    if transfer_syntax not in TRANSFER_SYNTAXES:
        fail(
            f"--transfer-syntax {transfer_syntax!r} is not supported; use one of "
            f"{', '.join(TRANSFER_SYNTAXES)}"
        )
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        fail(f"{out} exists and is not empty; pass --overwrite or choose another folder")
    shape, spacing_mm = resolve_size(size)
    ph = make_phantom(
        shape=shape,
        spacing_mm=spacing_mm,
        seed=seed,
        noise_seed=noise_seed,
        lesion_pct=lesion_pct,
        solid_pct=solid_pct,
        noise_hu=noise_hu,
    )
    paths = write_phantom(
        ph, out, fmt=fmt, overwrite=overwrite, transfer_syntax=transfer_syntax
    )
    if as_json:
        typer.echo(paths["truth_json"].read_text().rstrip())
        return
    t = ph.truth
    z, y, x = t["shape"]
    sz, sy, sx = t["spacing_mm"]
    typer.echo(f"phantom written to {out} (format {fmt})")
    typer.echo(
        f"  grid        {z}x{y}x{x} voxels at {sz:g}x{sy:g}x{sx:g} mm (z, y, x); seed {seed}"
    )
    typer.echo(
        f"  lungs       {t['lung_volume_ml']:.1f} mL (right {t['lung_volume_right_ml']:.1f}, "
        f"left {t['lung_volume_left_ml']:.1f})"
    )
    typer.echo(
        f"  lesions     {t['lesion_volume_ml']:.1f} mL = {t['lesion_proportion_pct']:.2f} % "
        f"(target {lesion_pct:g} %), {t['n_lesion_components']} components, "
        f"{t['n_pleural_lesion_components']} touching the pleura"
    )
    typer.echo(
        f"  solid       {t['solid_volume_ml']:.1f} mL = {t['solid_proportion_pct']:.2f} % "
        f"(target {solid_pct:g} %)"
    )
    typer.echo(f"  ground-glass {t['ggo_volume_ml']:.1f} mL = {t['ggo_proportion_pct']:.2f} %")
    typer.echo("  files       " + ", ".join(p.name for p in paths.values()))


def register(app: typer.Typer) -> None:
    """Add this module's commands to the main app."""
    app.command("phantom", no_args_is_help=True)(phantom)
