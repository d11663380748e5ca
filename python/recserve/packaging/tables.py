"""The plain files a package is made of: CSV tables with a header, read and checked
with messages that name the file, the column and the row."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from recserve.engine.artifact import ArtifactError, validate_model_name


class PackageError(ValueError):
    """What makes the files unusable, naming the file and the field."""


# A cell as the readers give it: text, or the values of a Parquet list column.
Cell = str | list[str]


def read_table(
    path: Path, columns: tuple[str, ...], what: str, optional: tuple[str, ...] = ()
) -> dict[str, list[Cell]]:
    """The named columns of a table, and those of ``optional`` it has (other columns are
    ignored): a CSV file with a header, or a Parquet file (``.parquet``, read with
    pyarrow: ``pip install "recserve[parquet]"``). Cells are text ("" when empty or
    null); a Parquet list column gives each row's values as a list."""
    if not path.exists():
        raise PackageError(f"{what}: {path} does not exist")
    if path.suffix == ".parquet":
        header, read = _parquet_columns(path, what)
    else:
        header, read = _csv_columns(path, what)
    missing = [c for c in columns if c not in header]
    if missing:
        raise PackageError(
            f"{what}: {path} has no column {missing[0]!r} in its header "
            f"(it has: {', '.join(header) or 'none'})"
        )
    return read([*columns, *(c for c in optional if c in header)])


def _csv_columns(path: Path, what: str):
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise PackageError(f"{what}: {path} is not a UTF-8 CSV file ({exc})") from None
    header, data = (rows[0], [r for r in rows[1:] if r]) if rows else ([], [])  # blank lines: none

    short = next((n for n, r in enumerate(data) if len(r) < len(header)), None)
    if short is not None:
        raise PackageError(
            f"{what}: {path} data row {short + 1} has {len(data[short])} fields; the header "
            f"has {len(header)}"
        )

    def read(wanted: list[str]) -> dict[str, list[Cell]]:
        index = {c: header.index(c) for c in wanted}
        return {c: [r[i] for r in data] for c, i in index.items()}

    return header, read


def _parquet_columns(path: Path, what: str):
    try:
        from pyarrow import parquet
    except ImportError:
        raise PackageError(
            f'{what}: {path} is Parquet, which needs pyarrow: pip install "recserve[parquet]"'
        ) from None
    try:
        table = parquet.read_table(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several kinds
        raise PackageError(f"{what}: {path} is not a readable Parquet file ({exc})") from None

    def cell(value: object) -> Cell:
        if value is None:
            return ""
        if isinstance(value, list):
            return [str(v) for v in value if v is not None]
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        return str(value)

    def read(wanted: list[str]) -> dict[str, list[Cell]]:
        return {c: [cell(v) for v in table.column(c).to_pylist()] for c in wanted}

    return table.column_names, read


def parse_ids(values: list[Cell], path: Path, column: str, unique: bool = True) -> np.ndarray:
    ids = np.empty(len(values), dtype=np.int64)
    for row, value in enumerate(values):
        try:
            ids[row] = int(value)  # a list (Parquet) raises TypeError, > int64 OverflowError
        except (ValueError, TypeError, OverflowError):
            raise PackageError(
                f"{path}: {column!r} of data row {row + 1} is {value!r}, not an integer id"
            ) from None
    if (ids < 0).any():
        row = int(np.flatnonzero(ids < 0)[0])
        raise PackageError(f"{path}: {column!r} of data row {row + 1} is negative ({ids[row]})")
    if unique:
        values_sorted, counts = np.unique(ids, return_counts=True)
        if (counts > 1).any():
            repeated = values_sorted[counts > 1][:5].tolist()
            raise PackageError(f"{path}: duplicate {column!r} values: {repeated}")
    return ids


def seen_table(
    path: Path | None, user_ids: np.ndarray, item_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(seen_indptr, seen_items, popularity) over sorted user and item rows, from an
    interactions CSV (``user_id``, ``item_id``); nothing seen without one."""
    n_users, n_items = user_ids.size, item_ids.size
    if path is None:  # nothing seen; a cold-start order by popularity has nothing to count
        return np.zeros(n_users + 1, np.int64), np.empty(0, np.int64), np.zeros(n_items, np.float32)
    table = read_table(path, ("user_id", "item_id"), "interactions")
    users = parse_ids(table["user_id"], path, "user_id", unique=False)
    items = parse_ids(table["item_id"], path, "item_id", unique=False)
    user_rows = np.searchsorted(user_ids, users)
    item_rows = np.searchsorted(item_ids, items)
    for ids, rows, table_ids, what in (
        (users, user_rows, user_ids, "user_id"),
        (items, item_rows, item_ids, "item_id"),
    ):
        known = (rows < table_ids.size) & (table_ids[np.minimum(rows, table_ids.size - 1)] == ids)
        if not known.all():
            row = int(np.flatnonzero(~known)[0])
            raise PackageError(
                f"{path}: {what} {ids[row]} of data row {row + 1} is not in the "
                f"{'users' if what == 'user_id' else 'items'} table"
            )
    pairs = np.unique(user_rows * n_items + item_rows)  # each pair once, by user then item
    seen_users, seen_items = np.divmod(pairs, n_items)
    indptr = np.zeros(n_users + 1, np.int64)
    np.cumsum(np.bincount(seen_users, minlength=n_users), out=indptr[1:])
    popularity = np.bincount(item_rows, minlength=n_items).astype(np.float32)
    return indptr, seen_items.astype(np.int64), popularity / max(item_rows.size, 1)


def check_model_name(name: str) -> None:
    """A PackageError for a name the repository would refuse."""
    try:
        validate_model_name(name)
    except ArtifactError as exc:
        raise PackageError(str(exc)) from None
