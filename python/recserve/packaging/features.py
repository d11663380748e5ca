"""The feature schema of a package (TOML or JSON) and the CSV tables it describes,
encoded as recserve encodes features (recserve.engine.schema): 0 is unknown, an id is
its rank among the table's sorted ids plus 1, a token its place in the sorted
vocabulary plus 1, a number its bucket. Every problem is a PackageError naming the file,
the feature and the row."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recserve.engine.schema import FeatureSpec, encode_buckets, encode_tokens

from .tables import Cell, PackageError, parse_ids, read_table

SIDES = ("user", "item")
KINDS = ("id", "token", "bucket")
ENTRY_KEYS = ("name", "kind", "vocabulary", "boundaries", "max_values", "column", "separator")


@dataclass(frozen=True)
class Feature:
    """One schema entry and where its values are in the table."""

    spec: FeatureSpec
    column: str  # CSV column ("id" for the id feature)
    separator: str  # between the values of a multi-valued feature


def read_features(path: Path, sides: tuple[str, ...] = SIDES) -> list[Feature]:
    """The schema file's features of ``sides``, user side first, each checked."""
    data = _read_schema_file(path)
    unknown = [key for key in data if key not in sides]
    if unknown:
        lists = " and ".join(f"[[{side}]]" for side in sides)
        raise PackageError(f"{path}: unknown key {unknown[0]!r}; this schema has {lists}")
    features: list[Feature] = []
    for side in sides:
        entries = data.get(side, [])
        if not isinstance(entries, list):
            raise PackageError(f"{path}: {side!r} must be a list of features ([[{side}]] in TOML)")
        for position, entry in enumerate(entries):
            features.append(_feature(path, side, position, entry))
    names = [f.spec.name for f in features]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise PackageError(f"{path}: feature name {repeated[0]!r} is used twice")
    for side in SIDES:
        ids = [f.spec.name for f in features if f.spec.side == side and f.spec.kind == "id"]
        if len(ids) > 1:
            raise PackageError(f"{path}: the {side} side has two id features ({', '.join(ids)})")
    return features


def _read_schema_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PackageError(f"features: {path} does not exist") from None
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        elif sys.version_info >= (3, 11):
            import tomllib

            data = tomllib.loads(text)
        else:
            raise PackageError(f"{path}: TOML needs Python 3.11 or later; write the schema as JSON")
    except ValueError as exc:  # tomllib.TOMLDecodeError and json.JSONDecodeError
        raise PackageError(
            f"{path}: not valid {path.suffix.lstrip('.') or 'TOML'} ({exc})"
        ) from None
    if not isinstance(data, dict):
        raise PackageError(f"{path}: the schema must be a table with [[user]] and [[item]] lists")
    return data


def _feature(path: Path, side: str, position: int, entry: Any) -> Feature:
    where = f"{path}: {side} feature {position + 1}"
    if not isinstance(entry, dict):
        raise PackageError(f"{where} is not a table")
    extra = [key for key in entry if key not in ENTRY_KEYS]
    if extra:
        raise PackageError(f"{where}: unknown key {extra[0]!r} (known: {', '.join(ENTRY_KEYS)})")
    name, kind = entry.get("name"), entry.get("kind")
    if not isinstance(name, str) or not name:
        raise PackageError(f"{where}: 'name' must be a non-empty string")
    where = f"{path}: feature {name!r}"
    if kind not in KINDS:
        raise PackageError(f"{where}: 'kind' is {kind!r}; use one of {', '.join(KINDS)}")
    max_values = entry.get("max_values", 1)
    if not isinstance(max_values, int) or isinstance(max_values, bool) or max_values < 1:
        raise PackageError(f"{where}: 'max_values' must be an integer >= 1, got {max_values!r}")
    if max_values > 1 and (side != "item" or kind != "token"):
        raise PackageError(
            f"{where}: only item token features may be multi-valued (max_values > 1)"
        )
    if kind == "id":
        if "column" in entry:
            raise PackageError(
                f"{where}: an id feature reads the table's 'id' column; drop 'column'"
            )
        spec = FeatureSpec(name, side, "id", 1)  # cardinality set once the table is read
    elif kind == "token":
        vocabulary = entry.get("vocabulary")
        if not isinstance(vocabulary, list) or not vocabulary:
            raise PackageError(f"{where}: a token feature needs a non-empty 'vocabulary' list")
        if not all(isinstance(v, str) and v and v == v.strip() for v in vocabulary):
            raise PackageError(
                f"{where}: 'vocabulary' must hold non-empty strings without surrounding spaces"
            )
        if vocabulary != sorted(set(vocabulary)):
            raise PackageError(
                f"{where}: 'vocabulary' must be sorted and without repeats (token index = its "
                "place in the sorted list + 1, 0 = unknown)"
            )
        spec = FeatureSpec(
            name, side, "token", len(vocabulary) + 1, tuple(vocabulary), max_values=max_values
        )
    else:
        boundaries = entry.get("boundaries")
        if not isinstance(boundaries, list) or not boundaries:
            raise PackageError(f"{where}: a bucket feature needs a non-empty 'boundaries' list")
        if not all(isinstance(b, int | float) and not isinstance(b, bool) for b in boundaries):
            raise PackageError(f"{where}: 'boundaries' must be numbers")
        try:
            spec = FeatureSpec.bucket(name, side, boundaries)
        except ValueError as exc:
            raise PackageError(f"{path}: {exc}") from None
    separator = entry.get("separator", "|")
    if not isinstance(separator, str) or not separator:
        raise PackageError(f"{where}: 'separator' must be a non-empty string")
    column = entry.get("column", "id" if kind == "id" else name)
    if not isinstance(column, str) or not column:
        raise PackageError(f"{where}: 'column' must be a non-empty string")
    return Feature(spec, column, separator)


def encode_column(feature: Feature, values: list[Cell], path: Path) -> np.ndarray:
    """int64 [rows] or [rows, max_values] of one feature's column (not an id): text, or
    for a multi-valued feature also a Parquet list of values."""
    spec = feature.spec
    for row, value in enumerate(values):
        if isinstance(value, list) and not spec.multi_valued:
            raise PackageError(
                f"{path}: {feature.column!r} of data row {row + 1} holds a list; the schema "
                f"makes {spec.name!r} single-valued"
            )
    if spec.kind == "bucket":
        numbers = np.empty(len(values), dtype=np.float64)
        for row, value in enumerate(values):
            try:
                numbers[row] = float(value) if value.strip() else np.nan
            except ValueError:
                raise PackageError(
                    f"{path}: {feature.column!r} of data row {row + 1} is {value!r}, not a number"
                ) from None
        return encode_buckets(spec, numbers)
    rows = [_tokens(value, feature) for value in values]
    out = np.zeros((len(values), spec.max_values), dtype=np.int64)
    for row, tokens in enumerate(rows):
        if len(tokens) > spec.max_values:
            raise PackageError(
                f"{path}: {feature.column!r} of data row {row + 1} has {len(tokens)} values; "
                f"the schema allows {spec.max_values} (max_values)"
            )
        codes = encode_tokens(spec, tokens)
        if (codes == 0).any():
            raise PackageError(
                f"{path}: {feature.column!r} of data row {row + 1}: "
                f"{tokens[int(np.flatnonzero(codes == 0)[0])]!r} is not in the vocabulary"
            )
        out[row, : codes.size] = codes
    return out if spec.multi_valued else out[:, 0]


def _tokens(value: Cell, feature: Feature) -> list[str]:
    """A cell's tokens: a list's values, a multi-valued text cut at the separator."""
    if isinstance(value, list):
        parts = value
    elif feature.spec.multi_valued:
        parts = value.split(feature.separator)
    else:
        parts = [value]
    return [v.strip() for v in parts if v.strip()]


@dataclass(frozen=True)
class SideTable:
    """One side's table, encoded and sorted by id (as the artifact stores it)."""

    ids: np.ndarray  # int64 [rows], sorted
    single: np.ndarray  # int64 [rows, F]: the single-valued features, schema order
    multi: np.ndarray  # int64 [rows, M]: the multi-valued ones, max_values columns each
    specs: list[FeatureSpec]
    titles: np.ndarray  # str [rows] ("" without a title column)


def read_side(path: Path | None, features: list[Feature], what: str) -> SideTable:
    """The table of one side, each column encoded as its feature says (error messages
    count the file's data rows), then sorted by id."""
    columns = tuple(dict.fromkeys(f.column for f in features if f.spec.kind != "id"))
    raw: dict[str, list[Cell]] = {c: [] for c in ("id", *columns)}  # no table: no rows
    ids = np.empty(0, np.int64)
    if path is not None:
        optional = ("title",) if what == "items" else ()
        raw = read_table(path, ("id", *columns), what, optional=optional)
        ids = parse_ids(raw["id"], path, "id")
    order = np.argsort(ids, kind="stable")
    ranks = np.empty_like(order)
    ranks[order] = np.arange(1, ids.size + 1)  # an id's code: its rank among sorted ids + 1
    single, multi, specs = [], [], []
    for feature in features:
        spec = feature.spec
        if spec.kind == "id":
            spec = FeatureSpec.id(spec.name, spec.side, int(ids.size))
            codes = ranks
        else:
            codes = encode_column(feature, raw[feature.column], path)
        specs.append(spec)
        (multi if spec.multi_valued else single).append(
            codes.reshape(ids.size, spec.max_values)[order]
        )
    empty = np.zeros((ids.size, 0), np.int64)
    titles = np.asarray(raw.get("title", [""] * ids.size), dtype=str)[order]
    return SideTable(
        ids[order],
        np.concatenate(single, axis=1) if single else empty,
        np.concatenate(multi, axis=1) if multi else empty,
        specs,
        titles,
    )
