"""The declarative feature schema shared by training and serving.

Every feature is categorical after encoding: index 0 is reserved for "unknown" (and
for padding in multi-valued features), known values map to 1..cardinality-1. A
feature gets its values in one of three ways:

- ``kind="id"``: external int64 ids, mapped through a sorted id table saved with the
  artifact (``user_ids.npy`` / ``item_ids.npy``);
- ``kind="token"``: strings from a small vocabulary stored in the schema;
- ``kind="bucket"``: numbers cut at ``boundaries`` (value <= 0 means unknown).

Training encodes the data set with these functions and the server encodes a request's
context with the same ones, so the two can never disagree.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np

Side = Literal["user", "item"]
Kind = Literal["id", "token", "bucket"]


@dataclass(frozen=True)
class FeatureSpec:
    """One categorical input feature of a model.

    Args:
        name: feature name, as clients send it in ``user_features``.
        side: ``"user"`` or ``"item"``.
        kind: ``"id"``, ``"token"`` or ``"bucket"`` (see the module docstring).
        cardinality: number of embedding rows, including the reserved index 0.
        vocabulary: the known tokens of a ``"token"`` feature, in index order 1..n.
        boundaries: increasing cut points of a ``"bucket"`` feature.
        max_values: values per item for a multi-valued feature (1 = single-valued).
    """

    name: str
    side: Side
    kind: Kind
    cardinality: int
    vocabulary: tuple[str, ...] = ()
    boundaries: tuple[float, ...] = ()
    max_values: int = 1

    @property
    def multi_valued(self) -> bool:
        return self.max_values > 1

    @staticmethod
    def token(name: str, side: Side, values: Iterable[str], max_values: int = 1) -> FeatureSpec:
        """A token feature whose vocabulary is the sorted distinct non-empty values."""
        vocabulary = tuple(sorted({v for v in values if v}))
        return FeatureSpec(
            name, side, "token", len(vocabulary) + 1, vocabulary=vocabulary, max_values=max_values
        )

    @staticmethod
    def bucket(name: str, side: Side, boundaries: Sequence[float]) -> FeatureSpec:
        bounds = tuple(float(b) for b in boundaries)
        if list(bounds) != sorted(set(bounds)):
            raise ValueError(f"bucket boundaries of {name!r} must be strictly increasing")
        # index 0 unknown, then len(bounds)+1 buckets
        return FeatureSpec(name, side, "bucket", len(bounds) + 2, boundaries=bounds)

    @staticmethod
    def id(name: str, side: Side, num_ids: int) -> FeatureSpec:
        return FeatureSpec(name, side, "id", num_ids + 1)


@dataclass(frozen=True)
class FeatureSchema:
    """The ordered features of a model; the user side first, then the item side."""

    features: tuple[FeatureSpec, ...] = field(default_factory=tuple)

    def side(self, side: Side) -> tuple[FeatureSpec, ...]:
        return tuple(f for f in self.features if f.side == side)

    def single_valued(self, side: Side) -> tuple[FeatureSpec, ...]:
        return tuple(f for f in self.side(side) if not f.multi_valued)

    def multi_valued(self, side: Side) -> tuple[FeatureSpec, ...]:
        return tuple(f for f in self.side(side) if f.multi_valued)

    def by_name(self, name: str) -> FeatureSpec:
        for f in self.features:
            if f.name == name:
                return f
        known = ", ".join(f.name for f in self.features)
        raise KeyError(f"unknown feature {name!r}; the model's features are: {known}")

    def to_json(self) -> list[dict]:
        return [asdict(f) for f in self.features]

    @staticmethod
    def from_json(items: list[dict]) -> FeatureSchema:
        specs = []
        for item in items:
            item = dict(item)
            item["vocabulary"] = tuple(item.get("vocabulary", ()))
            item["boundaries"] = tuple(item.get("boundaries", ()))
            specs.append(FeatureSpec(**item))
        return FeatureSchema(tuple(specs))


def encode_tokens(spec: FeatureSpec, values: Sequence[str] | np.ndarray) -> np.ndarray:
    """Token strings -> int64 indices (0 for unknown or empty)."""
    vocabulary = np.asarray(spec.vocabulary, dtype=str)
    values = np.asarray(values, dtype=str)
    if vocabulary.size == 0 or values.size == 0:
        return np.zeros(values.shape, dtype=np.int64)
    pos = np.searchsorted(vocabulary, values)
    pos_clipped = np.minimum(pos, vocabulary.size - 1)
    known = vocabulary[pos_clipped] == values
    return np.where(known, pos_clipped + 1, 0).astype(np.int64)


def encode_buckets(spec: FeatureSpec, values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Numbers -> int64 bucket indices (0 for unknown, i.e. values <= 0 or NaN)."""
    values = np.asarray(values, dtype=np.float64)
    index = np.searchsorted(np.asarray(spec.boundaries), values, side="right") + 1
    return np.where(values > 0, index, 0).astype(np.int64)


def encode_ids(id_table: np.ndarray, ids: Sequence[int] | np.ndarray) -> np.ndarray:
    """External ids -> row index + 1 in the sorted ``id_table``; 0 for unknown ids."""
    ids = np.asarray(ids, dtype=np.int64)
    if id_table.size == 0:
        return np.zeros(ids.shape, dtype=np.int64)
    pos = np.searchsorted(id_table, ids)
    pos_clipped = np.minimum(pos, id_table.size - 1)
    known = id_table[pos_clipped] == ids
    return np.where(known, pos_clipped + 1, 0).astype(np.int64)


def encode_multi_tokens(spec: FeatureSpec, rows: Sequence[Sequence[str]]) -> np.ndarray:
    """Tuples of tokens -> int64 [len(rows), max_values], padded with 0.

    Unknown tokens are dropped; a row longer than ``max_values`` is an error, since
    silently cutting it would change the model's input.
    """
    out = np.zeros((len(rows), spec.max_values), dtype=np.int64)
    for i, row in enumerate(rows):
        if len(row) > spec.max_values:
            raise ValueError(
                f"{spec.name}: row {i} has {len(row)} values, the schema allows {spec.max_values}"
            )
        codes = encode_tokens(spec, list(row))
        codes = codes[codes > 0]
        out[i, : codes.size] = codes
    return out


def encode_value(spec: FeatureSpec, value: str) -> int:
    """One context value sent by a client (always a string on the wire) -> index."""
    if spec.kind == "token":
        return int(encode_tokens(spec, [value])[0])
    if spec.kind == "bucket":
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"feature {spec.name!r} takes a number, got {value!r}") from None
        return int(encode_buckets(spec, [number])[0])
    raise ValueError(f"feature {spec.name!r} is an id feature; send it as the request's id")
