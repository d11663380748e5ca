"""Interaction data sets: the in-memory tables, MovieLens-100k loading and fetching, and a
synthetic look-alike for tests."""

from __future__ import annotations

from .fetch import fetch_movielens_100k
from .movielens import GENRES, find_movielens_100k, load_movielens_100k
from .synthetic import (
    OCCUPATIONS,
    SyntheticTruth,
    make_synthetic_movielens,
    make_synthetic_movielens_with_truth,
    write_atomic,
    write_grouplens,
)
from .types import InteractionData, Items, Users

__all__ = [
    "GENRES",
    "OCCUPATIONS",
    "InteractionData",
    "Items",
    "SyntheticTruth",
    "Users",
    "fetch_movielens_100k",
    "find_movielens_100k",
    "load_movielens_100k",
    "make_synthetic_movielens",
    "make_synthetic_movielens_with_truth",
    "write_atomic",
    "write_grouplens",
]
