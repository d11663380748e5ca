"""Turns an interaction data set into the feature schema and encoded tables of a ranker.

The tables are what the artifact stores and what the server indexes: the model sees
exactly the same encoded rows in training and in serving.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recserve.engine.schema import (
    FeatureSchema,
    FeatureSpec,
    encode_buckets,
    encode_ids,
    encode_multi_tokens,
    encode_tokens,
)

from .data import InteractionData

# MovieLens' own age groups (the ML-1M README): under 18, 18-24, 25-34, ... 56+.
AGE_BOUNDARIES = (18, 25, 35, 45, 50, 56)
# Most films are from the 1990s; finer buckets there.
RELEASE_YEAR_BOUNDARIES = (1960, 1970, 1980, 1990, 1994, 1996, 1997, 1998)


@dataclass(frozen=True)
class EncodedData:
    """A data set encoded for a ranker: tables by row, interactions as table rows."""

    schema: FeatureSchema
    tables: dict[str, np.ndarray]
    user_rows: np.ndarray  # int64 [n]: row in user_ids for each interaction
    item_rows: np.ndarray  # int64 [n]: row in item_ids for each interaction
    labels: np.ndarray  # float32 [n]: 1 when rating >= threshold


def movielens_schema(data: InteractionData) -> FeatureSchema:
    """User: id, age bucket, gender, occupation. Item: id, release-year bucket, genres."""
    max_genres = max((len(g) for g in data.items.genres), default=1)
    return FeatureSchema(
        (
            FeatureSpec.id("user_id", "user", data.users.user_id.size),
            FeatureSpec.bucket("age", "user", AGE_BOUNDARIES),
            FeatureSpec.token("gender", "user", data.users.gender.tolist()),
            FeatureSpec.token("occupation", "user", data.users.occupation.tolist()),
            FeatureSpec.id("item_id", "item", data.items.item_id.size),
            FeatureSpec.bucket("release_year", "item", RELEASE_YEAR_BOUNDARIES),
            FeatureSpec.token(
                "genres",
                "item",
                [g for row in data.items.genres for g in row],
                max_values=max(max_genres, 2),
            ),
        )
    )


def _seen_csr(user_rows: np.ndarray, item_rows: np.ndarray, n_users: int) -> tuple[np.ndarray, ...]:
    order = np.lexsort((item_rows, user_rows))
    indptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(user_rows, minlength=n_users), out=indptr[1:])
    return indptr, np.ascontiguousarray(item_rows[order], dtype=np.int64)


def encode_movielens(data: InteractionData, positive_rating: float = 4.0) -> EncodedData:
    """Encode users, items and interactions; label = rating >= ``positive_rating``."""
    schema = movielens_schema(data)
    users, items = data.users, data.items

    user_order = np.argsort(users.user_id, kind="stable")
    user_ids = users.user_id[user_order]
    user_features = np.stack(
        [
            np.arange(1, user_ids.size + 1, dtype=np.int64),
            encode_buckets(schema.by_name("age"), users.age[user_order]),
            encode_tokens(schema.by_name("gender"), users.gender[user_order]),
            encode_tokens(schema.by_name("occupation"), users.occupation[user_order]),
        ],
        axis=1,
    )

    item_order = np.argsort(items.item_id, kind="stable")
    item_ids = items.item_id[item_order]
    item_features = np.stack(
        [
            np.arange(1, item_ids.size + 1, dtype=np.int64),
            encode_buckets(schema.by_name("release_year"), items.release_year[item_order]),
        ],
        axis=1,
    )
    genres = [items.genres[i] for i in item_order]
    item_multi = encode_multi_tokens(schema.by_name("genres"), genres)

    user_rows = encode_ids(user_ids, data.user_id) - 1
    item_rows = encode_ids(item_ids, data.item_id) - 1
    if (user_rows < 0).any() or (item_rows < 0).any():
        raise ValueError("interactions refer to users or items missing from the tables")
    seen_indptr, seen_items = _seen_csr(user_rows, item_rows, user_ids.size)

    tables = {
        "user_ids": user_ids,
        "user_features": user_features,
        "item_ids": item_ids,
        "item_features": item_features,
        "item_multi": item_multi,
        "item_titles": items.title[item_order],
        "seen_indptr": seen_indptr,
        "seen_items": seen_items,
    }
    labels = (data.rating >= positive_rating).astype(np.float32)
    return EncodedData(schema, tables, user_rows, item_rows, labels)


def random_split(
    n: int, seed: int, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row indices of a random train/validation/test split, fixed by ``seed``."""
    if abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError(f"split fractions must sum to 1, got {fractions}")
    order = np.random.default_rng(seed).permutation(n)
    n_train = round(fractions[0] * n)
    n_val = round(fractions[1] * n)
    return order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :]
