"""The in-memory interaction data set: an interaction log plus its user and item tables.

Ids are the external ids found in the data (int64); mapping them to dense indices is the
job of the dataset code that consumes these tables. Strings are stored as unicode numpy
arrays (``<U…``) or tuples, never object arrays, so every table saves with ``np.save``
without pickling.

The classes check themselves when built and raise ``ValueError`` with a message that says
what is wrong and what to do. They are frozen; compare them field by field with
``np.array_equal`` (numpy fields make ``==`` ambiguous, so it is identity).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

GENDERS = ("M", "F", "")
"""Allowed values of ``Users.gender``; ``""`` means unknown."""


def _as_int64(owner: str, field: str, values: Any) -> np.ndarray:
    array = np.asarray(values)
    if array.size == 0:
        array = array.astype(np.int64)
    if array.ndim != 1:
        raise ValueError(f"{owner}.{field} must be 1-D, got shape {array.shape}")
    if array.dtype.kind not in "iu":
        raise ValueError(
            f"{owner}.{field} must hold integers, got dtype {array.dtype}; "
            "convert it with np.asarray(values, dtype=np.int64) after checking the values"
        )
    return array.astype(np.int64, copy=False)


def _as_float32(owner: str, field: str, values: Any) -> np.ndarray:
    array = np.asarray(values)
    if array.size == 0:
        array = array.astype(np.float32)
    if array.ndim != 1:
        raise ValueError(f"{owner}.{field} must be 1-D, got shape {array.shape}")
    if array.dtype.kind not in "iuf":
        raise ValueError(f"{owner}.{field} must be numeric, got dtype {array.dtype}")
    array = array.astype(np.float32, copy=False)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{owner}.{field} holds NaN or infinite values; drop those rows")
    return array


def _as_unicode(owner: str, field: str, values: Any) -> np.ndarray:
    array = np.asarray(values)
    if array.size == 0:
        array = array.astype(np.str_)
    if array.ndim != 1:
        raise ValueError(f"{owner}.{field} must be 1-D, got shape {array.shape}")
    if array.dtype.kind == "O" and all(isinstance(value, str) for value in array):
        array = array.astype(np.str_)
    if array.dtype.kind != "U":
        raise ValueError(
            f"{owner}.{field} must hold str values as a unicode array (dtype '<U…'), "
            f"got dtype {array.dtype}"
        )
    return array


def _as_genres(owner: str, values: Any) -> tuple[tuple[str, ...], ...]:
    genres = tuple(tuple(item_genres) for item_genres in values)
    for row, item_genres in enumerate(genres):
        if not all(isinstance(genre, str) for genre in item_genres):
            raise ValueError(f"{owner}.genres[{row}] must hold only str, got {item_genres!r}")
    return genres


def _check_same_length(owner: str, lengths: dict[str, int]) -> None:
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"{name}={length}" for name, length in lengths.items())
        raise ValueError(f"{owner} columns must have the same length, got {listed}")


def _check_unique(owner: str, field: str, ids: np.ndarray) -> None:
    unique, counts = np.unique(ids, return_counts=True)
    duplicated = unique[counts > 1]
    if duplicated.size:
        raise ValueError(
            f"{owner}.{field} must be unique, but {duplicated.size} ids occur more than once "
            f"(first: {duplicated[:5].tolist()}); merge or drop the duplicate rows"
        )


def _set(instance: object, field: str, value: object) -> None:
    object.__setattr__(instance, field, value)


@dataclass(frozen=True, eq=False)
class Users:
    """The user table, one row per user.

    Args:
        user_id: external user ids, int64, unique.
        age: age in years, int64; 0 means unknown.
        gender: ``"M"``, ``"F"`` or ``""`` (unknown), unicode array.
        occupation: occupation names, unicode array.
    """

    user_id: np.ndarray
    age: np.ndarray
    gender: np.ndarray
    occupation: np.ndarray

    def __post_init__(self) -> None:
        _set(self, "user_id", _as_int64("Users", "user_id", self.user_id))
        _set(self, "age", _as_int64("Users", "age", self.age))
        _set(self, "gender", _as_unicode("Users", "gender", self.gender))
        _set(self, "occupation", _as_unicode("Users", "occupation", self.occupation))
        self.validate()

    def __len__(self) -> int:
        return len(self.user_id)

    def validate(self) -> None:
        """Raise ``ValueError`` if the table is inconsistent."""
        _check_same_length(
            "Users",
            {
                "user_id": len(self.user_id),
                "age": len(self.age),
                "gender": len(self.gender),
                "occupation": len(self.occupation),
            },
        )
        _check_unique("Users", "user_id", self.user_id)
        if np.any(self.age < 0):
            raise ValueError("Users.age must be >= 0 (use 0 for unknown)")
        unknown_genders = sorted(set(self.gender.tolist()) - set(GENDERS))
        if unknown_genders:
            raise ValueError(
                f"Users.gender must be one of {GENDERS} ('' = unknown), got {unknown_genders[:5]}"
            )


@dataclass(frozen=True, eq=False)
class Items:
    """The item table, one row per item.

    Args:
        item_id: external item ids, int64, unique.
        title: titles, unicode array.
        release_year: release year, int64; 0 means unknown.
        genres: one tuple of genre names per item (may be empty).
    """

    item_id: np.ndarray
    title: np.ndarray
    release_year: np.ndarray
    genres: tuple[tuple[str, ...], ...]

    def __post_init__(self) -> None:
        _set(self, "item_id", _as_int64("Items", "item_id", self.item_id))
        _set(self, "title", _as_unicode("Items", "title", self.title))
        _set(self, "release_year", _as_int64("Items", "release_year", self.release_year))
        _set(self, "genres", _as_genres("Items", self.genres))
        self.validate()

    def __len__(self) -> int:
        return len(self.item_id)

    def validate(self) -> None:
        """Raise ``ValueError`` if the table is inconsistent."""
        _check_same_length(
            "Items",
            {
                "item_id": len(self.item_id),
                "title": len(self.title),
                "release_year": len(self.release_year),
                "genres": len(self.genres),
            },
        )
        _check_unique("Items", "item_id", self.item_id)
        if np.any(self.release_year < 0):
            raise ValueError("Items.release_year must be >= 0 (use 0 for unknown)")


@dataclass(frozen=True, eq=False)
class InteractionData:
    """An interaction log (one row per rating event) with its user and item tables.

    Args:
        name: a short name of the data set, e.g. ``"ml-100k"``.
        user_id: external user id of each interaction, int64; every id is in ``users``.
        item_id: external item id of each interaction, int64; every id is in ``items``.
        rating: explicit rating, float32.
        timestamp: seconds since the Unix epoch, int64.
        users: the user table.
        items: the item table.
    """

    name: str
    user_id: np.ndarray
    item_id: np.ndarray
    rating: np.ndarray
    timestamp: np.ndarray
    users: Users
    items: Items

    def __post_init__(self) -> None:
        owner = f"InteractionData {self.name!r}"
        _set(self, "user_id", _as_int64(owner, "user_id", self.user_id))
        _set(self, "item_id", _as_int64(owner, "item_id", self.item_id))
        _set(self, "rating", _as_float32(owner, "rating", self.rating))
        _set(self, "timestamp", _as_int64(owner, "timestamp", self.timestamp))
        self.validate()

    def __len__(self) -> int:
        return len(self.user_id)

    def validate(self) -> None:
        """Raise ``ValueError`` if the log and the tables disagree."""
        owner = f"InteractionData {self.name!r}"
        if not isinstance(self.users, Users) or not isinstance(self.items, Items):
            raise TypeError(f"{owner}: users must be Users and items must be Items")
        self.users.validate()
        self.items.validate()
        _check_same_length(
            owner,
            {
                "user_id": len(self.user_id),
                "item_id": len(self.item_id),
                "rating": len(self.rating),
                "timestamp": len(self.timestamp),
            },
        )
        for field, ids, table, known in (
            ("user", self.user_id, "users", self.users.user_id),
            ("item", self.item_id, "items", self.items.item_id),
        ):
            missing = np.unique(ids[~np.isin(ids, known)])
            if missing.size:
                raise ValueError(
                    f"{owner}: {missing.size} {field} ids in the interactions are missing "
                    f"from the {table} table (first: {missing[:5].tolist()}); add those "
                    f"rows to the {table} table or drop their interactions"
                )
