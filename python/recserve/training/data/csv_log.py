"""Load a generic CSV/TSV interaction log, described by a small schema file.

The schema is TOML (``.toml``) or JSON (``.json``) with the same keys. TOML is the one to
write by hand: it has comments, and Python >= 3.11 reads it with the standard library's
``tomllib``. JSON is accepted everywhere, so the format works on Python 3.10 too, where a
``.toml`` schema is refused with a message that says to use JSON. Example::

    name = "shop"                 # the data set's name (default: the schema file's stem)

    [interactions]
    file = "events.csv"           # relative to the schema file
    user = "user_id"              # column name, or 0-based position when header = false
    item = "item_id"
    rating = "stars"              # optional: absent = implicit feedback, every row 1.0
    timestamp = "time"            # optional: absent = file order; Unix seconds or ISO 8601

    [items]                       # optional, like [users]: id, age, gender, occupation
    file = "items.tsv"
    id = "item_id"
    title = "name"
    release_year = "year"
    genres = "tags"
    genre_separator = "|"

Every table also takes ``delimiter`` (default: tab for ``.tsv``/``.tab`` files, else
comma), ``header`` (default ``true``), ``encoding`` (default ``"utf-8"``) and ``quoting``
(whether ``"`` quotes fields; default ``true``, except for tab-delimited files).

Ids must be integers (recserve's ids are int64 on the wire). Empty feature values are
unknown: age 0, gender ``""``, occupation ``""``, title ``""``, release year 0, no genres.
Gender is ``M``/``F`` (``male``/``female`` accepted, any case). Users and items that occur
only in the interactions get those unknown features, after the rows of the tables, in
ascending id order.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .types import InteractionData, Items, Users

SCHEMA_SUFFIXES = (".toml", ".json")
HAS_TOMLLIB = sys.version_info >= (3, 11)
"""Whether this Python reads TOML schemas (``tomllib`` is standard from 3.11 on)."""

_TABLE_OPTIONS = ("file", "delimiter", "header", "encoding", "quoting")
_COLUMNS = {
    "interactions": (("user", "item"), ("rating", "timestamp")),
    "users": (("id",), ("age", "gender", "occupation")),
    "items": (("id",), ("title", "release_year", "genres")),
}
"""Per table: (required column keys, optional column keys)."""
_EXTRA_OPTIONS = {"items": ("genre_separator",)}
_GENDERS = {"m": "M", "male": "M", "f": "F", "female": "F", "": ""}

Column = str | int


@dataclass(frozen=True)
class TableSpec:
    """One table of the schema: where it is, how it is written, which column is which."""

    section: str
    file: Path
    delimiter: str
    header: bool
    encoding: str
    quoting: bool
    columns: dict[str, Column]
    genre_separator: str = "|"


def load_interaction_log(schema_path: str | Path) -> InteractionData:
    """Load the interaction log (and its optional user and item tables) a schema describes.

    Args:
        schema_path: a ``.toml`` or ``.json`` schema file (see the module docstring).

    Returns:
        The interactions in file order, with the user and item tables.

    Raises:
        FileNotFoundError: the schema or a file it names does not exist.
        ValueError: the schema is invalid, or a row is malformed; the message names the
            file and line.
    """
    schema_file = Path(schema_path)
    schema = read_schema(schema_file)
    name = schema.get("name", schema_file.stem)
    if not isinstance(name, str) or not name:
        raise ValueError(f"{schema_file}: 'name' must be a non-empty string, got {name!r}")
    for key in schema:
        if key not in ("name", *_COLUMNS):
            raise ValueError(
                f"{schema_file}: unknown key {key!r}; known: name, interactions, users, items"
            )
    if "interactions" not in schema:
        raise ValueError(f"{schema_file}: the [interactions] table is missing")
    specs = {
        section: _table_spec(schema_file, section, schema[section])
        for section in _COLUMNS
        if section in schema
    }
    user_id, item_id, rating, timestamp = _read_interactions(specs["interactions"])
    users = _read_users(specs.get("users"), user_id)
    items = _read_items(specs.get("items"), item_id)
    return InteractionData(
        name=name,
        user_id=user_id,
        item_id=item_id,
        rating=rating,
        timestamp=timestamp,
        users=users,
        items=items,
    )


def read_schema(schema_file: Path) -> dict[str, Any]:
    """Parse a ``.toml`` or ``.json`` schema file into a dict (not yet checked)."""
    if not schema_file.is_file():
        raise FileNotFoundError(f"schema file {schema_file} does not exist")
    suffix = schema_file.suffix.lower()
    if suffix == ".json":
        try:
            schema = json.loads(schema_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{schema_file}:{error.lineno}: invalid JSON: {error.msg}") from None
    elif suffix == ".toml":
        if not HAS_TOMLLIB:
            raise ValueError(
                f"{schema_file}: reading TOML needs Python >= 3.11 (tomllib); write the same "
                "schema as JSON (a .json file with the same keys) instead"
            )
        import tomllib

        try:
            schema = tomllib.loads(schema_file.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as error:
            raise ValueError(f"{schema_file}: invalid TOML: {error}") from None
    else:
        raise ValueError(f"{schema_file}: a schema file must end in {' or '.join(SCHEMA_SUFFIXES)}")
    if not isinstance(schema, dict):
        raise _invalid(f"{schema_file}: the schema must be a table (a JSON object)")
    return schema


# --- the schema --------------------------------------------------------------------------


def _invalid(message: str) -> ValueError:
    """A schema value of the wrong kind: the file is wrong, so ValueError, not TypeError."""
    return ValueError(message)


def _table_spec(schema_file: Path, section: str, table: object) -> TableSpec:
    where = f"{schema_file}: [{section}]"
    if not isinstance(table, dict):
        raise _invalid(f"{where} must be a table, got {table!r}")
    required, optional = _COLUMNS[section]
    extra = _EXTRA_OPTIONS.get(section, ())
    known = (*_TABLE_OPTIONS, *required, *optional, *extra)
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; known: {', '.join(known)}")
    missing = [key for key in ("file", *required) if key not in table]
    if missing:
        raise ValueError(f"{where}: missing keys {missing}")

    file = table["file"]
    if not isinstance(file, str) or not file:
        raise ValueError(f"{where}: 'file' must be a path, got {file!r}")
    path = schema_file.parent / file
    if not path.is_file():
        raise FileNotFoundError(f"{where}: file {path} does not exist")
    default_delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    delimiter = table.get("delimiter", default_delimiter)
    if not isinstance(delimiter, str) or len(delimiter) != 1 or delimiter in '\r\n"':
        raise ValueError(f"{where}: 'delimiter' must be one character like ',' or '\\t'")
    header = table.get("header", True)
    quoting = table.get("quoting", delimiter != "\t")
    for key, value in (("header", header), ("quoting", quoting)):
        if not isinstance(value, bool):
            raise _invalid(f"{where}: {key!r} must be true or false, got {value!r}")
    encoding = table.get("encoding", "utf-8")
    if not isinstance(encoding, str):
        raise _invalid(f"{where}: 'encoding' must be a string like 'utf-8' or 'latin-1'")
    separator = table.get("genre_separator", "|")
    if not isinstance(separator, str) or not separator:
        raise ValueError(f"{where}: 'genre_separator' must be a non-empty string")

    columns: dict[str, Column] = {}
    for key in (*required, *optional):
        if key not in table:
            continue
        column = table[key]
        if isinstance(column, bool) or not isinstance(column, str | int):
            raise _invalid(f"{where}: {key!r} must be a column name or a 0-based position")
        if isinstance(column, int) and column < 0:
            raise ValueError(f"{where}: {key!r} position must be >= 0, got {column}")
        if isinstance(column, str) and not header:
            raise ValueError(
                f"{where}: {key!r} names column {column!r}, but header = false; give its "
                "0-based position instead"
            )
        columns[key] = column
    return TableSpec(section, path, delimiter, header, encoding, quoting, columns, separator)


def _read_table(spec: TableSpec) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield (line number, {schema key: stripped value}) for every data row of a table."""
    quoting = csv.QUOTE_MINIMAL if spec.quoting else csv.QUOTE_NONE
    with spec.file.open(encoding=spec.encoding, newline="") as handle:
        rows = csv.reader(handle, delimiter=spec.delimiter, quoting=quoting, strict=True)
        width: int | None = None
        positions: dict[str, int] = {}
        try:
            for fields in rows:
                number = rows.line_num
                if not fields or fields == [""]:
                    continue  # blank line
                if width is None:
                    width = len(fields)
                    if fields and fields[0].startswith("\ufeff"):
                        fields[0] = fields[0][1:]  # byte-order mark
                    positions = _positions(spec, fields, number)
                    if spec.header:
                        continue
                if len(fields) != width:
                    raise ValueError(
                        f"{spec.file}:{number}: expected {width} fields separated by "
                        f"{spec.delimiter!r}, got {len(fields)}"
                    )
                yield number, {key: fields[at].strip() for key, at in positions.items()}
        except csv.Error as error:
            raise ValueError(f"{spec.file}:{rows.line_num}: {error}") from None
        except UnicodeDecodeError as error:
            raise ValueError(
                f"{spec.file}: not {spec.encoding}-encoded ({error.reason}); set 'encoding' "
                f"in [{spec.section}] of the schema, e.g. 'latin-1'"
            ) from None


def _positions(spec: TableSpec, first_row: list[str], number: int) -> dict[str, int]:
    """The position of each schema column, checked against the header (or the first row)."""
    names = [name.strip() for name in first_row]
    positions = {}
    for key, column in spec.columns.items():
        if isinstance(column, int):
            if column >= len(first_row):
                raise ValueError(
                    f"{spec.file}:{number}: [{spec.section}] {key} = {column}, but the rows "
                    f"have only {len(first_row)} fields (positions 0-{len(first_row) - 1})"
                )
            positions[key] = column
        elif column in names:
            positions[key] = names.index(column)
        else:
            raise ValueError(
                f"{spec.file}:{number}: [{spec.section}] {key} = {column!r} is not a column; "
                f"the header has {names}"
            )
    return positions


# --- values ------------------------------------------------------------------------------


def _bad(spec: TableSpec, number: int, problem: str) -> ValueError:
    return ValueError(f"{spec.file}:{number}: {problem}")


def _parse_id(spec: TableSpec, number: int, key: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise _bad(
            spec,
            number,
            f"{key} id {text!r} is not an integer; recserve's ids are int64 (as on the wire), "
            "so map the ids to integers first",
        ) from None


def _parse_whole(spec: TableSpec, number: int, key: str, text: str) -> int:
    """A non-negative whole number; an empty value is 0 (unknown)."""
    if not text:
        return 0
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value.is_integer() or value < 0:
        raise _bad(spec, number, f"{key} {text!r} is not a whole number >= 0 (empty = unknown)")
    return int(value)


def _parse_rating(spec: TableSpec, number: int, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not np.isfinite(value):
        raise _bad(spec, number, f"rating {text!r} is not a number")
    return value


def _parse_timestamp(spec: TableSpec, number: int, text: str) -> int:
    """Unix seconds (integer or whole float), or an ISO 8601 date/time (UTC if no zone)."""
    try:
        value = float(text)
    except ValueError:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise _bad(
                spec,
                number,
                f"timestamp {text!r} is neither Unix seconds nor an ISO 8601 date/time",
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        return int(moment.timestamp())
    if not np.isfinite(value):
        raise _bad(spec, number, f"timestamp {text!r} is not finite")
    return int(value)


def _parse_year(spec: TableSpec, number: int, text: str) -> int:
    """``1995`` or a date starting with the year (``1995-01-01``); empty = 0 (unknown)."""
    year = text[:4]
    if text and year.isdigit() and (len(text) == 4 or text[4] == "-"):
        return int(year)
    if not text:
        return 0
    raise _bad(spec, number, f"release_year {text!r} is not a year like 1995 (empty = unknown)")


def _parse_gender(spec: TableSpec, number: int, text: str) -> str:
    gender = _GENDERS.get(text.lower())
    if gender is None:
        raise _bad(
            spec, number, f"gender {text!r} must be M or F (or male/female; empty = unknown)"
        )
    return gender


# --- the tables --------------------------------------------------------------------------


def _read_interactions(
    spec: TableSpec,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    user_ids, item_ids, ratings, timestamps = [], [], [], []
    has_rating, has_timestamp = "rating" in spec.columns, "timestamp" in spec.columns
    for number, row in _read_table(spec):
        user_ids.append(_parse_id(spec, number, "user", row["user"]))
        item_ids.append(_parse_id(spec, number, "item", row["item"]))
        if has_rating:
            ratings.append(_parse_rating(spec, number, row["rating"]))
        if has_timestamp:
            timestamps.append(_parse_timestamp(spec, number, row["timestamp"]))
    n = len(user_ids)
    if n == 0:
        raise ValueError(f"{spec.file}: no interactions; the file has no data rows")
    return (
        np.array(user_ids, dtype=np.int64),
        np.array(item_ids, dtype=np.int64),
        np.array(ratings, dtype=np.float32) if has_rating else np.ones(n, dtype=np.float32),
        np.array(timestamps, dtype=np.int64) if has_timestamp else np.arange(n, dtype=np.int64),
    )


def _check_new_id(spec: TableSpec, number: int, seen: dict[int, int], value: int) -> None:
    if value in seen:
        raise _bad(
            spec,
            number,
            f"id {value} was already given on line {seen[value]}; each id may have one row, "
            "so merge or drop the duplicates",
        )
    seen[value] = number


def _only_in_log(known: dict[int, int], ids_in_log: np.ndarray) -> list[int]:
    return sorted(set(np.unique(ids_in_log).tolist()) - set(known))


def _read_users(spec: TableSpec | None, ids_in_log: np.ndarray) -> Users:
    seen: dict[int, int] = {}
    ages, genders, occupations = [], [], []
    for number, row in _read_table(spec) if spec is not None else ():
        _check_new_id(spec, number, seen, _parse_id(spec, number, "user", row["id"]))
        ages.append(_parse_whole(spec, number, "age", row.get("age", "")))
        genders.append(_parse_gender(spec, number, row.get("gender", "")))
        occupations.append(row.get("occupation", ""))
    extra = _only_in_log(seen, ids_in_log)
    return Users(
        user_id=np.array([*seen, *extra], dtype=np.int64),
        age=np.array(ages + [0] * len(extra), dtype=np.int64),
        gender=np.array(genders + [""] * len(extra), dtype=np.str_),
        occupation=np.array(occupations + [""] * len(extra), dtype=np.str_),
    )


def _read_items(spec: TableSpec | None, ids_in_log: np.ndarray) -> Items:
    seen: dict[int, int] = {}
    titles, years, genres = [], [], []
    for number, row in _read_table(spec) if spec is not None else ():
        _check_new_id(spec, number, seen, _parse_id(spec, number, "item", row["id"]))
        titles.append(row.get("title", ""))
        years.append(_parse_year(spec, number, row.get("release_year", "")))
        genres.append(
            tuple(
                genre.strip()
                for genre in row.get("genres", "").split(spec.genre_separator)
                if genre.strip()
            )
        )
    extra = _only_in_log(seen, ids_in_log)
    return Items(
        item_id=np.array([*seen, *extra], dtype=np.int64),
        title=np.array(titles + [""] * len(extra), dtype=np.str_),
        release_year=np.array(years + [0] * len(extra), dtype=np.int64),
        genres=(*genres, *([()] * len(extra))),
    )
