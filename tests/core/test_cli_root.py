"""The root command: version, help listing every command group."""

from __future__ import annotations

from typer.testing import CliRunner

from lungvol import __version__
from lungvol.cli import app


def test_version_flag() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output
