"""Reading one arm's values from a text/CSV file for the ``lungvol stats hl`` command."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from lungvol.errors import StatsError

# Cell texts read as a missing value (dropped and counted by the statistics).
MISSING_TOKENS = frozenset({"", "na", "nan", ".", "null", "none", "missing"})


def _to_value(text: str, *, path: Path, line: int) -> float | None:
    token = text.strip()
    if token.lower() in MISSING_TOKENS:
        return None
    try:
        value = float(token)
    except ValueError as err:
        raise StatsError(
            f"{path}:{line}: {token!r} is not a number; use one value per line (NA or empty "
            "for missing) or pass --column NAME for a CSV with a header"
        ) from err
    if math.isinf(value):
        raise StatsError(f"{path}:{line}: infinite value {token!r}; fix or mark it missing (NA)")
    return None if math.isnan(value) else value


def read_values(path: str | Path, *, column: str | None = None) -> list[float | None]:
    """Values of one arm: one number per line, or the named column of a CSV with a header.

    Without ``column``, a first line that is not a number is taken as a header and skipped.
    Missing values (empty, NA, NaN, ".") come back as ``None``.
    """
    p = Path(path)
    if not p.is_file():
        raise StatsError(f"values file {p} does not exist; pass a text or CSV file")
    text = p.read_text(encoding="utf-8-sig")
    if column is not None:
        reader = csv.DictReader(text.splitlines())
        if reader.fieldnames is None or column not in reader.fieldnames:
            raise StatsError(
                f"{p}: no column {column!r}; columns are {list(reader.fieldnames or [])}"
            )
        return [
            _to_value(row[column] or "", path=p, line=i + 2) for i, row in enumerate(reader)
        ]
    lines = text.splitlines()
    values: list[float | None] = []
    for i, line in enumerate(lines, start=1):
        if i == 1 and line.strip() and line.strip().lower() not in MISSING_TOKENS:
            try:
                float(line.strip())
            except ValueError:
                continue  # header line
        if i == len(lines) and not line.strip():
            continue
        values.append(_to_value(line, path=p, line=i))
    return values
