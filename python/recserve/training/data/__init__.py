"""Interaction data sets: the in-memory tables, MovieLens-100k loading and fetching,
MovieLens-1M loading, generic CSV/TSV interaction logs described by a schema file, and a
synthetic look-alike for tests."""

from __future__ import annotations

from .csv_log import SCHEMA_SUFFIXES, load_interaction_log
from .detect import load_movielens
from .fetch import fetch_movielens_100k
from .movielens import GENRES, find_movielens_100k, load_movielens_100k
from .movielens_1m import (
    AGE_GROUPS_1M,
    OCCUPATIONS_1M,
    find_movielens_1m,
    load_movielens_1m,
    release_year_from_title,
)
from .synthetic import (
    OCCUPATIONS,
    SyntheticTruth,
    age_group_1m,
    make_synthetic_movielens,
    make_synthetic_movielens_with_truth,
    write_atomic,
    write_grouplens,
    write_interaction_log,
    write_movielens_1m,
)
from .types import InteractionData, Items, Users

__all__ = [
    "AGE_GROUPS_1M",
    "GENRES",
    "OCCUPATIONS",
    "OCCUPATIONS_1M",
    "SCHEMA_SUFFIXES",
    "InteractionData",
    "Items",
    "SyntheticTruth",
    "Users",
    "age_group_1m",
    "fetch_movielens_100k",
    "find_movielens_1m",
    "find_movielens_100k",
    "load_interaction_log",
    "load_movielens",
    "load_movielens_1m",
    "load_movielens_100k",
    "make_synthetic_movielens",
    "make_synthetic_movielens_with_truth",
    "release_year_from_title",
    "write_atomic",
    "write_grouplens",
    "write_interaction_log",
    "write_movielens_1m",
]
