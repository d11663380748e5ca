"""A model's encoded user features, and a request's overrides of them.

Rankers (and the user-tower retriever) read one int64 row of user fields per request:
the stored row of a known user (zeros, "unknown", for a cold-start user), with the
request's ``user_features`` encoded over it by the schema's own functions.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .errors import InvalidRequest
from .schema import FeatureSchema, encode_ids, encode_value
from .validation import check_user_id


class UserFeatures:
    """``table`` int64 [users, Fu]: the single-valued user features of ``schema``, in its
    order, for each row of the sorted ``user_ids``."""

    def __init__(self, schema: FeatureSchema, user_ids: np.ndarray, table: np.ndarray) -> None:
        self.schema = schema
        self.user_ids = user_ids
        self.table = table
        self.columns = {f.name: i for i, f in enumerate(schema.single_valued("user"))}
        if table.shape != (user_ids.size, len(self.columns)):
            raise ValueError("user feature table does not match the schema")

    def encode(self, user_id: int, context: Mapping[str, str]) -> tuple[np.ndarray, int]:
        """The user's encoded feature row and table row (-1 for a cold-start user);
        InvalidRequest for a feature the model does not take or a value it cannot read."""
        check_user_id(user_id)
        row = int(encode_ids(self.user_ids, [user_id])[0]) - 1
        if row >= 0:
            features = self.table[row].copy()
        else:
            features = np.zeros(len(self.columns), dtype=np.int64)
        for name, value in context.items():
            column = self.columns.get(name)
            if column is None:
                takes = [n for n in self.columns if self.schema.by_name(n).kind != "id"]
                raise InvalidRequest(
                    f"unknown user feature {name!r}; this model takes: {', '.join(takes) or 'none'}"
                )
            spec = self.schema.by_name(name)
            if spec.kind == "id":
                raise InvalidRequest(f"{name!r} is the user id; send it as user_id")
            try:
                features[column] = encode_value(spec, value)
            except ValueError as exc:
                raise InvalidRequest(str(exc)) from None
        return features, row
