from __future__ import annotations

import numpy as np
import pytest

from recserve.engine.schema import (
    FeatureSchema,
    FeatureSpec,
    encode_buckets,
    encode_ids,
    encode_multi_tokens,
    encode_tokens,
    encode_value,
)

GENDER = FeatureSpec.token("gender", "user", ["M", "F", "M", ""])
AGE = FeatureSpec.bucket("age", "user", [18, 25, 35])
GENRES = FeatureSpec.token("genres", "item", ["Drama", "Comedy", "War"], max_values=2)


def test_token_vocabulary_is_sorted_and_zero_means_unknown() -> None:
    assert GENDER.vocabulary == ("F", "M")
    assert GENDER.cardinality == 3
    assert encode_tokens(GENDER, ["M", "F", "X", ""]).tolist() == [2, 1, 0, 0]
    assert encode_tokens(GENDER, []).shape == (0,)


def test_buckets_cut_at_boundaries_and_non_positive_is_unknown() -> None:
    values = [0, -3, float("nan"), 1, 17.9, 18, 24, 25, 35, 90]
    assert encode_buckets(AGE, values).tolist() == [0, 0, 0, 1, 1, 2, 2, 3, 4, 4]
    assert AGE.cardinality == 5
    with pytest.raises(ValueError, match="strictly increasing"):
        FeatureSpec.bucket("bad", "user", [3, 1])


def test_ids_map_to_sorted_table_rows_plus_one() -> None:
    table = np.array([3, 10, 42], dtype=np.int64)
    assert encode_ids(table, [42, 3, 5, 100, -1]).tolist() == [3, 1, 0, 0, 0]
    assert encode_ids(np.empty(0, np.int64), [1]).tolist() == [0]


def test_multi_tokens_pad_with_zero_and_refuse_overlong_rows() -> None:
    codes = encode_multi_tokens(GENRES, [("War", "Drama"), ("Comedy",), (), ("Nope",)])
    assert codes.tolist() == [[3, 2], [1, 0], [0, 0], [0, 0]]
    with pytest.raises(ValueError, match="allows 2"):
        encode_multi_tokens(GENRES, [("War", "Drama", "Comedy")])


def test_encode_value_from_the_wire() -> None:
    assert encode_value(AGE, "30") == 3
    assert encode_value(GENDER, "F") == 1
    with pytest.raises(ValueError, match="takes a number"):
        encode_value(AGE, "thirty")
    with pytest.raises(ValueError, match="id feature"):
        encode_value(FeatureSpec.id("user_id", "user", 5), "3")


def test_schema_json_round_trip_and_lookup() -> None:
    schema = FeatureSchema((FeatureSpec.id("user_id", "user", 9), GENDER, AGE, GENRES))
    assert FeatureSchema.from_json(schema.to_json()) == schema
    assert schema.single_valued("user") == schema.features[:3]
    assert schema.multi_valued("item") == (GENRES,)
    with pytest.raises(KeyError, match="user_id, gender, age, genres"):
        schema.by_name("zip")
