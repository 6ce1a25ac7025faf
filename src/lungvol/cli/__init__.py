"""The ``lungvol`` command line: a thin shell over the library's plain functions.

Each command group lives in its own module and registers itself on ``app``.
"""

from __future__ import annotations

import typer

from lungvol import __version__

app = typer.Typer(
    name="lungvol",
    help="CT lung and lesion volumetry for longitudinal clinical trials.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"lungvol {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version."
    ),
) -> None:
    """CT lung and lesion volumetry for longitudinal clinical trials."""


def _register_all() -> None:
    from lungvol.cli import cohort, phantom, qualify, segment, stats

    for module in (segment, phantom, qualify, stats, cohort):
        module.register(app)


_register_all()


def main() -> None:
    app()
