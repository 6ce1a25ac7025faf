"""Shared CLI plumbing: error mapping and console output. No domain logic here."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from lungvol.errors import LungvolError

console = Console(stderr=True)

# Options that several commands share, spelled once.
SeriesOption = Annotated[str | None, typer.Option("--series", help="SeriesInstanceUID to use.")]
ConfigOption = Annotated[
    Path | None, typer.Option("--config", help="YAML config (default: packaged).")
]
OverwriteOption = Annotated[
    bool, typer.Option("--overwrite", help="Replace an existing result folder.")
]
F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int = 1) -> None:
    """Print a one-line error to stderr and exit with ``code``."""
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def handle_errors(fn: F) -> F:
    """Turn LungvolError into a one-line message and exit code 1; Ctrl-C into 130."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except LungvolError as err:
            fail(str(err).splitlines()[0] if str(err) else err.__class__.__name__)
        except KeyboardInterrupt:
            console.print("interrupted; nothing half-written was left in place")
            sys.exit(130)

    return wrapper  # type: ignore[return-value]
