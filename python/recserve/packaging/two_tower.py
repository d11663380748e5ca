"""A two-tower retriever trained elsewhere, packaged as a model recserve serves.

The inputs are plain files: the item embeddings as a ``.npy`` array (row r is the r-th
id of the items table) or as a table of ``id`` and ``vector`` (CSV or Parquet, matched
by id), the ids (and optional titles) as a table, optionally an interaction
log whose pairs are excluded from each user's answers and give the cold-start order
(popularity), and the user side in one of two forms:

- user embeddings (``.npy``, row r the r-th id of the users table, or a table of ``id``
  and ``vector``): family ``embedding``;
- a user-tower program (TorchScript or ``torch.export``, ``forward(user: int64[B, Fu])
  -> float[B, d]``) with a feature schema of ``[[user]]`` features and their columns in
  the users CSV: family ``user_tower``, which computes the user's vector per request, so
  a user the tables lack is served from the features the request sends.

Either way score(u, i) = <user vector, item vector>, served by ``Recommend`` with the C++
top-k and seen-item exclusion, and by ``Rank`` (docs/artifact.md). Everything is checked
before anything is written. Nothing is unpickled: ``.npy`` files load with
``allow_pickle=False``, programs as packaging.program says.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recserve.engine.artifact import save_artifact
from recserve.engine.retrieval import EMBEDDING_FAMILY, USER_TOWER_FAMILY
from recserve.engine.schema import FeatureSchema, FeatureSpec

from .features import read_features, read_side
from .program import SAMPLE_ROWS, column_names, load_program, probe_rows, run_probe
from .tables import PackageError, check_model_name, parse_ids, read_table, seen_table

FLOAT_DTYPES = (np.float16, np.float32, np.float64)


@dataclass(frozen=True)
class TwoTowerFiles:
    items: Path  # CSV with a header: `id` (int64) and optionally `title`
    item_embeddings: Path  # .npy, [items, d], float; or a table of id, vector
    users: Path  # CSV with a header: `id` (and the user tower's feature columns)
    user_embeddings: Path | None = None  # .npy, [users, d], float, or a table; or:
    interactions: Path | None = None  # CSV with a header: `user_id`, `item_id`
    user_tower: Path | None = None  # program: int64 [B, Fu] -> float [B, d]
    user_features: Path | None = None  # the tower's feature schema: [[user]] entries


def read_embeddings(path: Path, ids: np.ndarray, what: str) -> np.ndarray:
    """float32 [len(ids), d], row r the vector of ``ids[r]``: from a ``.npy`` array in the
    ids' order, or from a table (CSV or Parquet) of ``id`` and ``vector`` matched by id
    (:func:`read_embedding_table`). Refuses pickles, other dtypes and shapes, and values
    that are not finite."""
    if path.suffix != ".npy":
        array = read_embedding_table(path, ids, what)
    else:
        array = _read_npy(path, ids.size, what)
    bad = ~np.isfinite(array).all(axis=1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise PackageError(
            f"{what}: {path}: the vector of id {int(ids[row])} has a value that is not finite "
            f"({int(bad.sum())} such vectors)"
        )
    return np.ascontiguousarray(array, dtype=np.float32)


def _read_npy(path: Path, rows: int, what: str) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise PackageError(f"{what}: {path} does not exist") from None
    except ValueError as exc:  # an object array (pickled Python objects) or not .npy
        raise PackageError(f"{what}: {path} is not a plain numeric .npy array ({exc})") from None
    if not isinstance(array, np.ndarray):
        raise PackageError(f"{what}: {path} holds several arrays (.npz); save one with np.save")
    if array.dtype.type not in FLOAT_DTYPES:
        raise PackageError(
            f"{what}: {path} has dtype {array.dtype}; expected float16, float32 or float64"
        )
    if array.ndim != 2 or array.shape[1] == 0:
        raise PackageError(f"{what}: {path} has shape {array.shape}; expected [rows, dimension]")
    if array.shape[0] != rows:
        raise PackageError(
            f"{what}: {path} has {array.shape[0]} rows but its id table has {rows} ids "
            "(row r must be the vector of the r-th id)"
        )
    return array


def read_embedding_table(path: Path, ids: np.ndarray, what: str) -> np.ndarray:
    """float64 [len(ids), d] from a table with an ``id`` column and a ``vector`` column
    (a list column in Parquet, numbers separated by spaces in CSV), in any row order: it
    must hold each of ``ids`` exactly once, and nothing else, each with d numbers."""
    table = read_table(path, ("id", "vector"), what)
    table_ids = parse_ids(table["id"], path, "id")
    wanted = np.sort(ids)
    missing = np.setdiff1d(wanted, table_ids)
    if missing.size:
        raise PackageError(
            f"{what}: {path} has no vector for id {int(missing[0])} ({missing.size} ids of the "
            "id table are missing)"
        )
    extra = np.setdiff1d(table_ids, wanted)
    if extra.size:
        raise PackageError(
            f"{what}: {path} has a vector for id {int(extra[0])}, which the id table does not "
            f"list ({extra.size} such ids)"
        )
    vectors = [_vector(cell, path, row, what) for row, cell in enumerate(table["vector"])]
    dim = len(vectors[0]) if vectors else 0
    ragged = next((row for row, v in enumerate(vectors) if len(v) != dim), None)
    if dim == 0 or ragged is not None:
        row = 0 if ragged is None else ragged
        raise PackageError(
            f"{what}: {path}: 'vector' of data row {row + 1} has {len(vectors[row])} numbers; "
            f"every vector needs the same dimension, at least 1 (the first has {dim})"
        )
    by_id = np.argsort(table_ids)
    rows = by_id[np.searchsorted(table_ids[by_id], ids)]  # the table row of each id
    return np.asarray(vectors, dtype=np.float64)[rows]


def _vector(cell: str | list[str], path: Path, row: int, what: str) -> list[float]:
    values = cell.split() if isinstance(cell, str) else cell
    try:
        return [float(v) for v in values]
    except ValueError:
        raise PackageError(
            f"{what}: {path}: 'vector' of data row {row + 1} is {cell!r}, not numbers (a "
            "Parquet list column, or numbers separated by spaces in CSV)"
        ) from None


def package_two_tower(files: TwoTowerFiles, repo: str | os.PathLike[str], name: str) -> Path:
    """Checks the files and writes a new version of ``name`` into ``repo`` (atomically);
    returns its directory. Raises PackageError, naming the file and field, and writes
    nothing, when a file is missing or wrong."""
    check_model_name(name)
    if (files.user_embeddings is None) == (files.user_tower is None):
        raise PackageError(
            "give the user side once: user embeddings (.npy) or a user-tower program"
        )
    if files.user_tower is not None and files.user_features is None:
        raise PackageError("a user-tower program needs its feature schema (--user-features)")
    items = read_table(files.items, ("id",), "items", optional=("title",))
    item_ids = parse_ids(items["id"], files.items, "id")
    if item_ids.size == 0:
        raise PackageError(f"items: {files.items} has no rows")
    item_vectors = read_embeddings(files.item_embeddings, item_ids, "item embeddings")
    item_order = np.argsort(item_ids)  # served sorted
    item_ids = item_ids[item_order]
    titles = np.asarray(items.get("title", [""] * item_ids.size))[item_order].astype(str)
    user_ids, user_tables, user_specs, modules = (
        _tower_side(files, item_vectors.shape[1])
        if files.user_tower is not None
        else _embedding_side(files, item_vectors.shape[1])
    )
    indptr, seen, popularity = seen_table(files.interactions, user_ids, item_ids)
    return save_artifact(
        repo,
        name,
        family=USER_TOWER_FAMILY if modules else EMBEDDING_FAMILY,
        schema=FeatureSchema((*user_specs, FeatureSpec.id("item_id", "item", int(item_ids.size)))),
        modules=modules,
        tables={
            "user_ids": user_ids,
            "item_ids": item_ids,
            "item_titles": titles,
            "seen_indptr": indptr,
            "seen_items": seen,
            "popularity": popularity,
            "item_vectors": item_vectors[item_order],
            **user_tables,
        },
        metrics={},
        config={
            "model": "two-tower (packaged)",
            "files": {key: str(path) for key, path in vars(files).items() if path is not None},
        },
    )


UserSide = tuple[np.ndarray, dict[str, np.ndarray], tuple[FeatureSpec, ...], dict[str, Any]]


def _embedding_side(files: TwoTowerFiles, dim: int) -> UserSide:
    """Sorted user ids and their stored vectors."""
    users = read_table(files.users, ("id",), "users")
    user_ids = parse_ids(users["id"], files.users, "id")
    if user_ids.size == 0:
        raise PackageError(f"users: {files.users} has no rows")
    vectors = read_embeddings(files.user_embeddings, user_ids, "user embeddings")
    if vectors.shape[1] != dim:
        raise PackageError(
            f"user embeddings have dimension {vectors.shape[1]} but item embeddings {dim}; "
            "the two towers must meet in one space"
        )
    order = np.argsort(user_ids)
    spec = FeatureSpec.id("user_id", "user", int(user_ids.size))
    return user_ids[order], {"user_vectors": vectors[order]}, (spec,), {}


def _tower_side(files: TwoTowerFiles, dim: int) -> UserSide:
    """Sorted user ids, their encoded features and the tower program, run on the probes
    (packaging.program.probe_rows): it must give one finite ``dim``-vector per user."""
    features = read_features(files.user_features, sides=("user",))
    if not features:
        raise PackageError(f"{files.user_features}: no [[user]] feature for the tower to read")
    users = read_side(files.users, features, "users")
    schema = FeatureSchema(tuple(users.specs))
    program, module = load_program(files.user_tower)
    first = users.single[:SAMPLE_ROWS]
    if first.shape[0] == 0:
        first = np.zeros((1, users.single.shape[1]), np.int64)
    for what, arrays in probe_rows(schema, {"user": first}, "users").items():
        run_probe(
            module,
            arrays,
            what,
            column_names(schema, ("user",)),
            lambda rows: ((rows, dim),),
            f"one {dim}-dimensional vector per user (the item embeddings' dimension)",
        )
    tables = {"user_features": users.single}
    return users.ids, tables, tuple(users.specs), {"user_tower": program}
