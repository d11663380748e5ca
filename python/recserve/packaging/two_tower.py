"""A two-tower retriever trained elsewhere, packaged as a model recserve serves.

The inputs are plain files: the item and user embeddings as ``.npy`` arrays (row r is
the r-th id of the matching CSV table), the ids (and optional titles) as CSV, and
optionally an interaction log whose pairs are excluded from each user's answers and
give the cold-start order (popularity). Everything is checked before anything is
written; the artifact is the ``embedding`` family (docs/artifact.md): score(u, i) =
<user vector, item vector>, served by ``Recommend`` with the C++ top-k and seen-item
exclusion, and by ``Rank``. Nothing is unpickled: ``.npy`` files load with
``allow_pickle=False``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recserve.engine.artifact import ArtifactError, save_artifact, validate_model_name
from recserve.engine.schema import FeatureSchema, FeatureSpec

from .tables import PackageError, parse_ids, read_table, seen_table

FLOAT_DTYPES = (np.float16, np.float32, np.float64)


@dataclass(frozen=True)
class TwoTowerFiles:
    items: Path  # CSV with a header: `id` (int64) and optionally `title`
    item_embeddings: Path  # .npy, [items, d], float
    users: Path  # CSV with a header: `id`
    user_embeddings: Path  # .npy, [users, d], float
    interactions: Path | None = None  # CSV with a header: `user_id`, `item_id`


def read_embeddings(path: Path, rows: int, what: str) -> np.ndarray:
    """float32 [rows, d] from a ``.npy`` file, refusing pickles, other dtypes and shapes,
    and values that are not finite."""
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
    bad = ~np.isfinite(array).all(axis=1)
    if bad.any():
        raise PackageError(
            f"{what}: {path} row {int(np.flatnonzero(bad)[0])} has a value that is not finite "
            f"({int(bad.sum())} such rows)"
        )
    return np.ascontiguousarray(array, dtype=np.float32)


def package_two_tower(files: TwoTowerFiles, repo: str | os.PathLike[str], name: str) -> Path:
    """Checks the files and writes a new version of ``name`` into ``repo`` (atomically);
    returns its directory. Raises PackageError, naming the file and field, and writes
    nothing, when a file is missing or wrong."""
    try:
        validate_model_name(name)
    except ArtifactError as exc:
        raise PackageError(str(exc)) from None
    items = read_table(files.items, ("id",), "items", optional=("title",))
    item_ids = parse_ids(items["id"], files.items, "id")
    users = read_table(files.users, ("id",), "users")
    user_ids = parse_ids(users["id"], files.users, "id")
    if item_ids.size == 0 or user_ids.size == 0:
        raise PackageError("the items and users tables need at least one id each")
    item_vectors = read_embeddings(files.item_embeddings, item_ids.size, "item embeddings")
    user_vectors = read_embeddings(files.user_embeddings, user_ids.size, "user embeddings")
    if item_vectors.shape[1] != user_vectors.shape[1]:
        raise PackageError(
            f"user embeddings have dimension {user_vectors.shape[1]} but item embeddings "
            f"{item_vectors.shape[1]}; the two towers must meet in one space"
        )
    item_order, user_order = np.argsort(item_ids), np.argsort(user_ids)  # served sorted
    item_ids, user_ids = item_ids[item_order], user_ids[user_order]
    indptr, seen, popularity = seen_table(files.interactions, user_ids, item_ids)
    title_table = np.asarray(items.get("title", [""] * item_ids.size))[item_order]
    schema = FeatureSchema(
        (
            FeatureSpec.id("user_id", "user", int(user_ids.size)),
            FeatureSpec.id("item_id", "item", int(item_ids.size)),
        )
    )
    return save_artifact(
        repo,
        name,
        family="embedding",
        schema=schema,
        modules={},
        tables={
            "user_ids": user_ids,
            "item_ids": item_ids,
            "item_titles": title_table.astype(str),
            "seen_indptr": indptr,
            "seen_items": seen,
            "popularity": popularity,
            "user_vectors": user_vectors[user_order],
            "item_vectors": item_vectors[item_order],
        },
        metrics={},
        config={
            "model": "two-tower (packaged)",
            "files": {key: str(path) for key, path in vars(files).items() if path is not None},
        },
    )
