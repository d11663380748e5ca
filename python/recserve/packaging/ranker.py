"""A ranker trained elsewhere, packaged as a model recserve serves.

What a team brings: its program (TorchScript ``.pt`` or ``torch.export`` ``.pt2``), a
feature schema (TOML or JSON) that says which features the program reads and how each
is encoded, and the item table (and optionally the user table) as CSV. The program's
signature is the one recserve's own rankers have::

    forward(user: int64[B, Fu], item: int64[B, Fi], item_multi: int64[B, M]) -> float[B]

one logit per candidate (the answer's score is its sigmoid), each column an encoded
feature: 0 is unknown, an id is its rank among the table's sorted ids plus 1, a token its
place in the sorted vocabulary plus 1, a number its bucket (recserve.engine.schema). The
package is the ``packaged_ranker`` family (docs/artifact.md), served by ``Rank`` and as a
cascade's ``rank_with`` with batching, explanations and metrics like the rankers recserve
trains. Everything is checked before anything is written, including a forward pass on
rows of the tables and on the largest index of every column; nothing is unpickled.
"""

from __future__ import annotations

import io
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recserve.engine.artifact import (
    PACKAGED_RANKER_FAMILY,
    ArtifactError,
    save_artifact,
    validate_model_name,
)
from recserve.engine.programs import ProgramError, check_pt2_plain, torchscript_deprecation_silenced
from recserve.engine.schema import FeatureSchema, FeatureSpec, encode_buckets, encode_tokens

from .tables import PackageError, parse_ids, read_table, seen_table

SIDES = ("user", "item")
KINDS = ("id", "token", "bucket")
ENTRY_KEYS = ("name", "kind", "vocabulary", "boundaries", "max_values", "column", "separator")
SAMPLE_ROWS = 8  # candidates of the sample forward pass


@dataclass(frozen=True)
class RankerFiles:
    program: Path  # TorchScript (.pt) or torch.export (.pt2)
    features: Path  # the feature schema: TOML (.toml) or JSON (.json)
    items: Path  # CSV: id, optional title, a column per item feature
    users: Path | None = None  # CSV: id, a column per user feature
    interactions: Path | None = None  # CSV: user_id, item_id; left out of Recommend


@dataclass(frozen=True)
class Feature:
    """One schema entry and where its values are in the table."""

    spec: FeatureSpec
    column: str  # CSV column ("id" for the id feature)
    separator: str  # between the values of a multi-valued feature


def read_features(path: Path) -> list[Feature]:
    """The schema file's features, user side first, each checked."""
    data = _read_schema_file(path)
    unknown = [key for key in data if key not in SIDES]
    if unknown:
        raise PackageError(
            f"{path}: unknown key {unknown[0]!r}; the schema has [[user]] and [[item]]"
        )
    features: list[Feature] = []
    for side in SIDES:
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
    if not any(f.spec.side == "item" for f in features):
        raise PackageError(f"{path}: no [[item]] feature; a ranker needs the candidate's features")
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
        if not all(isinstance(v, str) and v for v in vocabulary):
            raise PackageError(f"{where}: 'vocabulary' must hold non-empty strings")
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


def encode_column(feature: Feature, values: list[str], path: Path) -> np.ndarray:
    """int64 [rows] or [rows, max_values] of one feature's CSV column (not an id)."""
    spec = feature.spec
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
    rows = [
        [v.strip() for v in value.split(feature.separator) if v.strip()]
        if spec.multi_valued
        else ([value.strip()] if value.strip() else [])
        for value in values
    ]
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
    raw: dict[str, list[str]] = {"id": []}
    ids = np.empty(0, np.int64)
    if path is not None:
        columns = tuple(dict.fromkeys(f.column for f in features if f.spec.kind != "id"))
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
        (multi if spec.multi_valued else single).append(codes.reshape(ids.size, -1)[order])
    empty = np.zeros((ids.size, 0), np.int64)
    titles = np.asarray(raw.get("title", [""] * ids.size), dtype=str)[order]
    return SideTable(
        ids[order],
        np.concatenate(single, axis=1) if single else empty,
        np.concatenate(multi, axis=1) if multi else empty,
        specs,
        titles,
    )


def load_program(path: Path) -> tuple[Any, torch.nn.Module]:
    """(what save_artifact writes, the callable module) of a TorchScript or .pt2 file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PackageError(f"program: {path} does not exist") from None
    if path.suffix == ".pt2":
        try:
            check_pt2_plain(data)
            program = torch.export.load(io.BytesIO(data))
        except (ProgramError, RuntimeError, ValueError) as exc:
            raise PackageError(
                f"program: {path} is not a loadable torch.export program ({exc})"
            ) from None
        return program, program.module()
    try:
        with torchscript_deprecation_silenced():
            module = torch.jit.load(io.BytesIO(data), map_location="cpu")
    except (RuntimeError, ValueError) as exc:
        raise PackageError(
            f"program: {path} is not a TorchScript program ({_last_line(exc)}); save it with "
            "torch.jit.save(torch.jit.script(model), ...) or, as a .pt2, with torch.export.save"
        ) from None
    module.eval()
    return module, module


def check_forward(
    module: torch.nn.Module,
    schema: FeatureSchema,
    user_features: np.ndarray,
    item_features: np.ndarray,
    item_multi: np.ndarray,
) -> None:
    """Runs the program on rows built from the tables and the schema, and refuses it when
    it fails, or answers anything but one finite float per candidate."""
    n_items = item_features.shape[0]
    n = min(SAMPLE_ROWS, n_items)
    user = (
        user_features[:1]
        if user_features.shape[0]
        else np.zeros((1, user_features.shape[1]), np.int64)
    )
    largest = _largest_codes(schema)
    probes = {
        f"the first user against the first {n} items": (
            np.repeat(user, n, axis=0),
            item_features[:n],
            item_multi[:n],
        ),
        "one candidate": (user, item_features[:1], item_multi[:1]),
        "every column at its largest index (cardinality - 1)": tuple(
            np.repeat(part[None, :], 2, axis=0) for part in largest
        ),
        "every column unknown (0)": tuple(np.zeros((2, p.size), np.int64) for p in largest),
    }
    for what, arrays in probes.items():
        inputs = [torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64)) for a in arrays]
        shapes = ", ".join(
            f"{name} int64[{t.shape[0]}, {t.shape[1]}]"
            for name, t in zip(("user", "item", "item_multi"), inputs, strict=True)
        )
        try:
            with torch.inference_mode():
                out = module(*inputs)
        except Exception as exc:  # noqa: BLE001 - whatever the user's program raises
            raise PackageError(
                f"program: the sample forward pass failed on {what} ({shapes}; columns "
                f"{_column_names(schema)}): {_last_line(exc)}. "
                "Does the feature schema match the program's inputs?"
            ) from None
        rows = inputs[1].shape[0]
        if not isinstance(out, torch.Tensor):
            raise PackageError(
                f"program: returns {type(out).__name__} on {what}; expected a float tensor of "
                "one logit per candidate"
            )
        if not out.is_floating_point():
            raise PackageError(
                f"program: returns dtype {out.dtype} on {what}; expected float logits "
                "(float32, float64, float16 or bfloat16)"
            )
        if out.shape not in ((rows,), (rows, 1)):
            raise PackageError(
                f"program: returns shape {list(out.shape)} on {what} ({rows} candidates); "
                f"expected [{rows}] or [{rows}, 1], one logit per candidate"
            )
        if not torch.isfinite(out).all():
            raise PackageError(f"program: returns a value that is not finite on {what}")


def _last_line(exc: BaseException) -> str:
    """The error itself: TorchScript puts the program's traceback first, the error last."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def _largest_codes(schema: FeatureSchema) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    user = [f.cardinality - 1 for f in schema.single_valued("user")]
    item = [f.cardinality - 1 for f in schema.single_valued("item")]
    multi = [f.cardinality - 1 for f in schema.multi_valued("item") for _ in range(f.max_values)]
    return tuple(np.asarray(c, dtype=np.int64) for c in (user, item, multi))  # type: ignore[return-value]


def _column_names(schema: FeatureSchema) -> str:
    parts = []
    for label, specs in (
        ("user", schema.single_valued("user")),
        ("item", schema.single_valued("item")),
        ("item_multi", schema.multi_valued("item")),
    ):
        names = [f"{s.name}x{s.max_values}" if s.multi_valued else s.name for s in specs]
        parts.append(f"{label}: [{', '.join(names)}]")
    return "; ".join(parts)


def package_ranker(files: RankerFiles, repo: str | os.PathLike[str], name: str) -> Path:
    """Checks the files and writes a new version of ``name`` into ``repo`` (atomically);
    returns its directory. Raises PackageError, naming the file and field, and writes
    nothing, when a file is missing or wrong."""
    try:
        validate_model_name(name)
    except ArtifactError as exc:
        raise PackageError(str(exc)) from None
    features = read_features(files.features)
    user_side = [f for f in features if f.spec.side == "user"]
    item_side = [f for f in features if f.spec.side == "item"]
    if files.users is None and any(f.spec.kind == "id" for f in user_side):
        raise PackageError(
            f"{files.features}: the user id feature needs the users table (--users): it "
            "numbers users by their sorted ids"
        )
    items = read_side(files.items, item_side, "items")
    if items.ids.size == 0:
        raise PackageError(f"items: {files.items} has no rows")
    users = read_side(files.users, user_side, "users")
    schema = FeatureSchema((*users.specs, *items.specs))
    program, module = load_program(files.program)
    check_forward(module, schema, users.single, items.single, items.multi)
    indptr, seen, _ = seen_table(files.interactions, users.ids, items.ids)
    return save_artifact(
        repo,
        name,
        family=PACKAGED_RANKER_FAMILY,
        schema=schema,
        modules={"model": program},
        tables={
            "user_ids": users.ids,
            "user_features": users.single,
            "item_ids": items.ids,
            "item_features": items.single,
            "item_multi": items.multi,
            "item_titles": items.titles,
            "seen_indptr": indptr,
            "seen_items": seen,
        },
        metrics={},
        config={
            "model": "ranker (packaged)",
            "files": {key: str(path) for key, path in vars(files).items() if path is not None},
        },
    )
