"""Catalogs that do not fit one process, the query side: ask every shard, merge exactly.

Each shard is an ordinary artifact whose item table is a contiguous slice of the full
model's item rows (recserve.engine.sharding.split_artifact writes them); one replica (or
group of replicas) serves each shard under the model's own name. A query then asks every
shard for its top k and merges the partial lists into the global top k (:func:`merge_topk`
for kernel results, :class:`ShardedCatalog` for Recommend over gRPC).

Exactness: each shard returns its k best under the kernels' result contract (descending,
ties to the smaller index, NaN never selected, padded with -1/-inf), so every item of the
global top k is in its own shard's top k, and sorting the union by (score descending,
global index ascending) gives exactly what one top-k over the whole catalog gives, values
and indices (tests/python/test_sharded_topk.py). Item scores do not depend on which other
items share a shard (an embedding score is the inner product of the user's and the item's
vectors), so a sharded Recommend equals the unsharded one (tests/server/test_replicas.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
from numpy.typing import ArrayLike, NDArray

from ..results import ScoredItem
from .client import Answer, Client, RecserveError

__all__ = ["ShardedCatalog", "merge_topk"]

DEFAULT_RECOMMEND_K = 10  # the server's default k (recserve.engine.pipeline.DEFAULT_RECOMMEND_K)


def merge_topk(
    partials: Sequence[tuple[ArrayLike, ArrayLike]], k: int
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """The top k of the union of per-shard top-k lists.

    Args:
        partials: per shard, ``(values [B, k_i], indices [B, k_i])`` (or ``[k_i]`` for one
            row, then the result is ``[k]``) as the kernels return them, with the indices already global (shard offset added); padding (index
            -1) is ignored. Each shard's list must be its own top k (or all its items),
            and shards must be disjoint, for the merge to be exact.
        k: how many to return per row, ``>= 0``.

    Returns:
        ``(values, indices)`` float32 and int64 ``[B, k]`` under the kernels' contract:
        descending, ties to the smaller global index, NaN never selected (a NaN entry is
        dropped), ``-inf`` an ordinary score, rows padded with ``-1`` / ``-inf``.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if not partials:
        raise ValueError("merge_topk needs at least one partial list")
    arrays = [
        (np.asarray(values, dtype=np.float32), np.asarray(indices, dtype=np.int64))
        for values, indices in partials
    ]
    one_row = all(v.ndim == 1 for v, _ in arrays)
    if one_row:
        arrays = [(v[np.newaxis, :], i[np.newaxis, :]) for v, i in arrays]
    rows = arrays[0][0].shape[0] if arrays[0][0].ndim == 2 else -1
    for number, (v, i) in enumerate(arrays):
        if v.ndim != 2 or v.shape != i.shape or v.shape[0] != rows:
            raise ValueError(
                f"partial {number}: values {v.shape} and indices {i.shape} must both be "
                f"[B, k_i], with the same B in every partial (the first has B = {rows})"
            )
    values = np.concatenate([v for v, _ in arrays], axis=1)
    indices = np.concatenate([i for _, i in arrays], axis=1)
    invalid = (indices < 0) | np.isnan(values)
    # lexsort sorts by its last key first: valid before invalid, then the larger value,
    # then the smaller global index.
    order = np.lexsort((indices, -values, invalid), axis=-1)[:, :k]
    picked_invalid = np.take_along_axis(invalid, order, axis=1)
    out_values = np.full((rows, k), -np.inf, dtype=np.float32)
    out_indices = np.full((rows, k), -1, dtype=np.int64)
    take = order.shape[1]
    out_values[:, :take] = np.where(
        picked_invalid, -np.inf, np.take_along_axis(values, order, axis=1)
    )
    out_indices[:, :take] = np.where(picked_invalid, -1, np.take_along_axis(indices, order, axis=1))
    return (out_values[0], out_indices[0]) if one_row else (out_values, out_indices)


class ShardedCatalog:
    """Recommend over a catalog sharded across servers: asks every shard at once, merges.

    ``shards`` holds one :class:`Client` per shard (each may itself balance over that
    shard's replicas), in shard order. Item ids are ascending across shards (the item
    table is sorted and split into contiguous slices), so "ties to the smaller index"
    is "ties to the smaller item id", and the merged answer equals an unsharded server's.
    """

    def __init__(self, shards: Sequence[Client]) -> None:
        if not shards:
            raise ValueError("ShardedCatalog needs at least one shard")
        self.shards = list(shards)
        self._pool = ThreadPoolExecutor(len(self.shards), thread_name_prefix="shard")

    def __enter__(self) -> ShardedCatalog:  # noqa: PYI034 - Self needs Python 3.11
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stops the fan-out threads (the clients stay open; they are the caller's)."""
        self._pool.shutdown(wait=True)

    def recommend(
        self,
        user_id: int,
        k: int = 0,
        *,
        recent_item_ids: Iterable[int] = (),
        include_seen: bool = False,
        user_features: Mapping[str, str] | None = None,
        model: str = "",
        version: int = 0,
    ) -> Answer:
        """The best ``k`` items of the whole catalog (0 = 10), as :meth:`Client.recommend`.

        Every shard must answer with the same model version (pin ``version`` during a
        rollout); otherwise RecserveError FAILED_PRECONDITION. ``unknown_item_ids`` are the
        recent ids no shard knows."""
        recent = list(recent_item_ids)
        k = k or DEFAULT_RECOMMEND_K
        calls = [
            self._pool.submit(
                shard.recommend,
                user_id,
                k,
                recent_item_ids=recent,
                include_seen=include_seen,
                user_features=user_features,
                model=model,
                version=version,
            )
            for shard in self.shards
        ]
        answers = [call.result() for call in calls]
        served = {(a.model_name, a.model_version) for a in answers}
        if len(served) > 1:
            raise RecserveError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"the shards answered with different model versions {sorted(served)}; "
                "pin version= until every shard serves the same one",
            )
        items: list[ScoredItem] = [item for answer in answers for item in answer.items]
        items.sort(key=lambda item: (-item.score, item.item_id))
        unknown_everywhere = set.intersection(*(set(a.unknown_item_ids) for a in answers))
        first = answers[0]
        return Answer(
            items=items[:k],
            model_name=first.model_name,
            model_version=first.model_version,
            cold_start_user=all(a.cold_start_user for a in answers),
            unknown_item_ids=[i for i in first.unknown_item_ids if i in unknown_everywhere],
            request_id=",".join(a.request_id for a in answers),
        )
