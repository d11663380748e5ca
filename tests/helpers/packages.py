"""The plain CSV files a package is made of: shared by the packaging tests
(tests/packaging) and the examples' tests (tests/clients)."""

from __future__ import annotations

import csv
from pathlib import Path


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return path


def data_rows(path: Path) -> list[list[str]]:
    """A CSV file's rows after its header."""
    with path.open(newline="") as f:
        return list(csv.reader(f))[1:]
