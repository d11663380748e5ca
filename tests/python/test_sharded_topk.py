"""merge_topk over per-shard top-k lists equals one top-k over the whole catalog, exactly."""

from __future__ import annotations

import numpy as np
import pytest

from recserve.client.sharded import merge_topk
from recserve.core import kernels
from recserve.engine.sharding import shard_bounds


def _scores(rng: np.random.Generator, rows: int, n: int) -> np.ndarray:
    """float32 scores with ties (few distinct values), NaN, -inf and +inf mixed in."""
    scores = rng.integers(-4, 5, size=(rows, n)).astype(np.float32) / 4
    scores += rng.standard_normal((rows, n)).astype(np.float32) * (rng.random((rows, n)) < 0.3)
    special = rng.random((rows, n))
    scores[special < 0.08] = np.nan
    scores[(special >= 0.08) & (special < 0.14)] = -np.inf
    scores[(special >= 0.14) & (special < 0.16)] = np.inf
    return scores


def _reference(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """float64 numpy: per row, non-NaN entries by (value descending, index ascending)."""
    rows = scores.shape[0]
    values = np.full((rows, k), -np.inf)
    indices = np.full((rows, k), -1, dtype=np.int64)
    for b in range(rows):
        row = scores[b].astype(np.float64)
        candidates = np.flatnonzero(~np.isnan(row))
        best = sorted(candidates.tolist(), key=lambda i: (-row[i], i))[:k]
        values[b, : len(best)] = row[best]
        indices[b, : len(best)] = best
    return values, indices


def _sharded(scores: np.ndarray, sizes: list[int], k: int) -> tuple[np.ndarray, np.ndarray]:
    partials = []
    start = 0
    for size in sizes:
        shard = np.ascontiguousarray(scores[:, start : start + size])
        values, local = kernels.topk_scores(shard, k, backend="cpu")
        partials.append((values, np.where(local >= 0, local + start, -1)))
        start += size
    assert start == scores.shape[1]
    return merge_topk(partials, k)


SHARD_SIZES = [
    [40],  # one shard
    [13, 27],
    [1, 0, 25, 14],  # with an empty shard and a single-item one
    [0, 0, 40],
    [5, 5, 5, 5, 5, 5, 5, 5],  # k > every shard
    [37, 3],
]


@pytest.mark.parametrize("rows", [1, 7])
@pytest.mark.parametrize("sizes", SHARD_SIZES, ids=lambda s: "-".join(map(str, s)))
@pytest.mark.parametrize("k", [0, 1, 3, 8, 40, 55])  # 55 > the whole catalog: padding
def test_merge_equals_one_topk(rows: int, sizes: list[int], k: int) -> None:
    rng = np.random.default_rng(hash((rows, tuple(sizes), k)) % 2**32)
    scores = _scores(rng, rows, sum(sizes))
    values, indices = _sharded(scores, sizes, k)
    whole_values, whole_indices = kernels.topk_scores(scores, k, backend="cpu")
    assert values.dtype == np.float32 and indices.dtype == np.int64
    assert values.shape == indices.shape == (rows, k)
    np.testing.assert_array_equal(indices, whole_indices)
    np.testing.assert_array_equal(values, whole_values)
    ref_values, ref_indices = _reference(scores, k)
    np.testing.assert_array_equal(indices, ref_indices)
    np.testing.assert_array_equal(values.astype(np.float64), ref_values)


def test_all_nan_and_all_inf_rows() -> None:
    scores = np.full((3, 12), np.nan, dtype=np.float32)
    scores[1] = -np.inf  # every item -inf: still selectable, smaller index first
    scores[2, [3, 9]] = [-np.inf, 2.0]
    values, indices = _sharded(scores, [5, 0, 7], 4)
    np.testing.assert_array_equal(indices, [[-1] * 4, [0, 1, 2, 3], [9, 3, -1, -1]])
    np.testing.assert_array_equal(values[1], [-np.inf] * 4)
    assert values[2, 0] == 2.0 and np.all(np.isneginf(values[2, 1:]))
    whole = kernels.topk_scores(scores, 4, backend="cpu")
    np.testing.assert_array_equal(indices, whole[1])
    np.testing.assert_array_equal(values, whole[0])


def test_ties_across_shards_go_to_the_smaller_global_index() -> None:
    scores = np.ones((1, 10), dtype=np.float32)
    _, indices = _sharded(scores, [3, 3, 4], 5)
    np.testing.assert_array_equal(indices, [[0, 1, 2, 3, 4]])
    # the same partials given in another order merge to the same result
    parts = [
        (np.ones((1, 3), np.float32), np.array([[6, 7, 8]])),
        (np.ones((1, 3), np.float32), np.array([[0, 1, 2]])),
    ]
    np.testing.assert_array_equal(merge_topk(parts, 4)[1], [[0, 1, 2, 6]])


def test_nan_in_a_partial_is_never_selected_and_one_row_stays_1d() -> None:
    parts = [
        (np.array([np.nan, 1.0], np.float32), np.array([4, 5])),
        (np.array([0.5, -np.inf], np.float32), np.array([0, -1])),  # -1: padding
    ]
    values, indices = merge_topk(parts, 3)
    np.testing.assert_array_equal(indices, [5, 0, -1])
    np.testing.assert_array_equal(values, np.array([1.0, 0.5, -np.inf], np.float32))


def test_inner_product_shards_match_the_whole_catalog() -> None:
    """What a sharded Recommend does: each shard's fused inner-product top-k, merged."""
    rng = np.random.default_rng(5)
    items = rng.standard_normal((301, 16)).astype(np.float32)
    items[150] = items[10]  # a tie across shards
    queries = rng.standard_normal((7, 16)).astype(np.float32)
    exclude = [rng.choice(301, size=20, replace=False) for _ in range(7)]
    k = 25
    partials = []
    for start, stop in shard_bounds(301, 3):
        local_exclude = [e[(e >= start) & (e < stop)] - start for e in exclude]
        values, local = kernels.topk_inner_product(
            queries, items[start:stop], k, local_exclude, backend="cpu"
        )
        partials.append((values, np.where(local >= 0, local + start, -1)))
    values, indices = merge_topk(partials, k)
    whole = kernels.topk_inner_product(queries, items, k, exclude, backend="cpu")
    np.testing.assert_array_equal(indices, whole[1])
    np.testing.assert_array_equal(values, whole[0])


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="k must be"):
        merge_topk([(np.zeros((1, 1)), np.zeros((1, 1)))], -1)
    with pytest.raises(ValueError, match="same B"):
        merge_topk([(np.zeros((1, 2)), np.zeros((1, 2))), (np.zeros((2, 2)), np.zeros((2, 2)))], 1)
    with pytest.raises(ValueError, match="at least one"):
        merge_topk([], 1)
    assert shard_bounds(10, 3) == [(0, 3), (3, 6), (6, 10)]
