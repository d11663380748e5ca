"""Catalogs that do not fit one process: the item table split across replicas.

Each shard is an ordinary artifact whose item table is a contiguous slice of the full
model's item rows (:func:`split_artifact`); one replica (or group of replicas) serves each
shard under the model's own name. A query then asks every shard for its top k and merges
the partial lists into the global top k (:func:`merge_topk` for kernel results,
:class:`ShardedCatalog` for Recommend over gRPC).

Exactness: each shard returns its k best under the kernels' result contract (descending,
ties to the smaller index, NaN never selected, padded with -1/-inf), so every item of the
global top k is in its own shard's top k, and sorting the union by (score descending,
global index ascending) gives exactly what one top-k over the whole catalog gives, values
and indices (tests/python/test_sharded_topk.py). Item scores do not depend on which other
items share a shard (an embedding score is the inner product of the user's and the item's
vectors), so a sharded Recommend equals the unsharded one (tests/server/test_replicas.py).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
from numpy.typing import ArrayLike, NDArray

from .client import Answer, Client, RecserveError
from .results import ScoredItem

__all__ = ["SHARDABLE_FAMILIES", "ShardedCatalog", "merge_topk", "shard_bounds", "split_artifact"]

# Families whose item side is a table of independent rows. "sequence" and "generator"
# models read the whole catalog in their program (the encoder's item embeddings, the
# generator's output layer), so a slice of their tables is not a smaller model.
SHARDABLE_FAMILIES = ("embedding",)
DEFAULT_RECOMMEND_K = 10  # the server's default k (recserve.pipeline.DEFAULT_RECOMMEND_K)


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


def shard_bounds(num_items: int, n_shards: int) -> list[tuple[int, int]]:
    """Contiguous ``[start, stop)`` item rows of each shard, sizes differing by at most 1."""
    if n_shards < 1:
        raise ValueError(f"n_shards must be >= 1, got {n_shards}")
    edges = [num_items * s // n_shards for s in range(n_shards + 1)]
    return list(itertools.pairwise(edges))


def _slice_csr(
    indptr: np.ndarray, items: np.ndarray, start: int, stop: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the entries in [start, stop), renumbered from 0; row order kept."""
    keep = (items >= start) & (items < stop)
    row_of_entry = np.repeat(np.arange(indptr.size - 1), np.diff(indptr))
    counts = np.bincount(row_of_entry[keep], minlength=indptr.size - 1)
    new_indptr = np.zeros(indptr.size, dtype=indptr.dtype)
    np.cumsum(counts, out=new_indptr[1:])
    return new_indptr, np.ascontiguousarray(items[keep] - start, dtype=items.dtype)


def split_artifact(
    artifact_dir: str | os.PathLike[str],
    n_shards: int,
    out_dir: str | os.PathLike[str],
) -> list[Path]:
    """Writes ``n_shards`` artifacts, each with a contiguous slice of the item rows.

    Shard ``s`` goes to ``out_dir/shard-<s>/<name>/<version>/`` (the source's name and
    version): a model repository for the replicas of that shard. Its tables are the slice
    of ``item_ids``, ``item_titles``, ``item_vectors`` and ``popularity`` (scores unchanged,
    not renormalised), the ``seen`` table keeps each user's items of the slice renumbered
    to the shard's rows, and the user tables are whole. The manifest gains a ``shard``
    entry (index, count, item rows, source). Written with :func:`save_artifact`, so every
    checksum is that of the new files and the publish is atomic.

    Only the ``embedding`` family (most-popular, BPR-MF) can be sharded; others raise
    ValueError saying why.
    """
    from .artifact import load_artifact, save_artifact

    source = load_artifact(artifact_dir)
    if source.family not in SHARDABLE_FAMILIES:
        raise ValueError(
            f"{source.path}: family {source.family!r} cannot be sharded by item rows (its "
            f"program reads the whole catalog); shardable: {', '.join(SHARDABLE_FAMILIES)}"
        )
    tables = source.tables
    num_items = int(tables["item_ids"].size)
    if not 1 <= n_shards <= num_items:
        raise ValueError(f"n_shards must be between 1 and the {num_items} items, got {n_shards}")
    per_item = [key for key, t in tables.items() if key.startswith("item_") or key == "popularity"]
    for key in per_item:
        if tables[key].shape[:1] != (num_items,):
            raise ValueError(f"{source.path}: table {key} {tables[key].shape} is not per item")
    manifest = source.manifest
    written = []
    for index, (start, stop) in enumerate(shard_bounds(num_items, n_shards)):
        shard_tables = dict(tables)
        for key in per_item:
            shard_tables[key] = np.ascontiguousarray(tables[key][start:stop])
        shard_tables["seen_indptr"], shard_tables["seen_items"] = _slice_csr(
            tables["seen_indptr"], tables["seen_items"], start, stop
        )
        features = tuple(
            dataclasses.replace(f, cardinality=stop - start + 1)
            if f.side == "item" and f.kind == "id"
            else f
            for f in source.schema.features
        )
        reserved = {"format_version", "name", "version", "family", "program_format"}
        reserved |= {"created_at", "schema", "files", "metrics", "config"}
        extra = {key: value for key, value in manifest.items() if key not in reserved}
        extra["shard"] = {
            "index": index,
            "count": n_shards,
            "item_rows": [start, stop],
            "source": f"{source.name}/{source.version}",
        }
        written.append(
            save_artifact(
                Path(out_dir) / f"shard-{index}",
                source.name,
                family=source.family,
                schema=dataclasses.replace(source.schema, features=features),
                modules=dict(source.modules),
                tables=shard_tables,
                metrics=source.metrics,
                config=dict(manifest.get("config", {})),
                extra=extra,
                version=source.version,
            )
        )
    return written


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
