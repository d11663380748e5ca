"""Catalogs that do not fit one process, the offline side: split a model's item table.

Each shard is an ordinary artifact whose item table is a contiguous slice of the full
model's item rows (:func:`split_artifact`); one replica (or group of replicas) serves each
shard under the model's own name, and recserve.client.sharded.ShardedCatalog asks every
shard and merges their answers exactly (see that module for why the merge is exact).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from pathlib import Path

import numpy as np

from .artifact import load_artifact, save_artifact

__all__ = ["SHARDABLE_FAMILIES", "shard_bounds", "split_artifact"]

# Families whose item side is a table of independent rows. "sequence" and "generator"
# models read the whole catalog in their program (the encoder's item embeddings, the
# generator's output layer), so a slice of their tables is not a smaller model.
SHARDABLE_FAMILIES = ("embedding",)


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
