"""A request's work in three parts, so that concurrent requests can share the middle one.

1. *prepare*, per request: validate, encode the user, run the C++ crossing kernel. A bad
   request fails here, alone.
2. *batch compute*, shared by a batch of requests of one model: the head program on the
   requests' rows concatenated, at most :data:`MAX_HEAD_ROWS` per call
   (:func:`run_head_rows`), or, for embedding and sequence
   retrieval, the fused top-k inner product over the catalog with the requests' user
   vectors stacked (:func:`run_inner_products`).
3. *finish*, per request: scores from the head's output, top-k selection, the Ranking.

A pipeline's ``prepare_rank``/``prepare_recommend`` return a :class:`Prepared` and its
``compute_batch`` runs part 2 for several of them; ``rank``/``recommend`` are the three
parts with a batch of one. The server's batcher (recserve.server.batching) runs part 2
for many requests at once.

Batch composition never changes a request's answer, bit for bit:

- The head's matrix products (MKL/oneDNN GEMM) handle a row count that is not a
  multiple of the micro-kernel width with other code, so without care a row's last bit
  depends on how many rows share the call (measured: about 1 row in 100 differs). The
  rows are therefore zero-padded to a multiple of :data:`HEAD_ROW_MULTIPLE`, which every
  common micro-kernel width (4, 6, 8, 16) divides; every row then goes through the same
  code whatever its batch-mates (checked bitwise in tests/python/test_batch_plan.py).
  A ranker's whole ``model`` program (no crossing block) instead runs once per request
  on exactly its rows, as the trained model would: its served scores then stay equal to
  the trained model's forward bit for bit (tests/python/test_artifact.py), which no
  padding keeps. The server runs such a ranker's requests each on its own thread, not
  through the batcher (recserve.server.batching.runner_factory).
- The top-k inner product uses the same per-query arithmetic for every batch smaller
  than ``kernels.topk_small_batch()`` (see recserve.core.kernels), so queries run in chunks
  below it; a batch of one is such a chunk too. Each chunk selects the largest k of its
  queries and each query keeps its first k: ties go to the smaller index, so that prefix
  is exactly the query's own top-k.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..core import kernels
from ..results import Ranking
from .request_context import RequestContext

HEAD_ROW_MULTIPLE = 48
# Most rows one head call takes: a larger batch runs as several calls, each padded as
# above, so answers stay the same bit for bit. Past a few thousand rows the head's
# activations leave the caches and each row costs more: bench/head_batching.py measured
# 1000-candidate DeepFM requests in batches of 8 to 32 at 1.19-1.50x the CPU per request
# in one call than in calls of at most 2048 rows (no change at 100 candidates).
MAX_HEAD_ROWS = 2048
# Selection over a request's own scores runs on the host: they are small, and a GPU round
# trip only adds latency. The catalog scan of retrieval models runs where its items are.
SCORES_BACKEND = "cpu"
DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class Prepared:
    """One request after its per-request work.

    ``work`` is its share of the batch computation (None: it has none, e.g. a cold-start
    user answered by popularity) and ``finish`` turns that share's output (None when
    there is no work) into the answer."""

    work: Any
    finish: Callable[[Any], Ranking]
    request_context: RequestContext | None = None


@dataclass(frozen=True)
class HeadRows:
    """Rows for a head program: its inputs, each ``[N, ...]`` with the same N > 0."""

    inputs: tuple[torch.Tensor, ...]

    @property
    def rows(self) -> int:
        return int(self.inputs[0].shape[0])


@dataclass(frozen=True)
class InnerProductQuery:
    """One user vector ``[d]`` for the catalog's top ``k`` by inner product, with item rows
    ``exclude`` never returned (None: nothing excluded)."""

    vector: np.ndarray
    k: int
    exclude: np.ndarray | None = None


def stage(request_context: RequestContext | None, name: str) -> Any:
    """``request_context.stage(name)`` (deadline check, then timing), or nothing."""
    return nullcontext() if request_context is None else request_context.stage(name)


@contextmanager
def timed_batch(batch: Sequence[Prepared], name: str) -> Iterator[None]:
    """Adds the block's wall time to stage ``name`` of every request of the batch: each
    of them waited for it."""
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds = time.perf_counter() - start
        for prepared in batch:
            if prepared.request_context is not None:
                prepared.request_context.add_time(name, seconds)


def run_head_rows(
    program: Callable[..., torch.Tensor], works: Sequence[HeadRows], shared: bool = True
) -> list[torch.Tensor]:
    """The program's outputs ``[N_i]`` for each work.

    ``program`` maps inputs ``[M, ...]`` to ``[M]``. With ``shared`` it is called once,
    on the works' rows concatenated and zero-padded to a multiple of HEAD_ROW_MULTIPLE
    rows (see the module: a row's result then never depends on the other rows);
    otherwise once per work, on exactly its rows."""
    if not shared:
        with torch.inference_mode():
            return [program(*work.inputs).reshape(-1) for work in works]
    return [out for group in row_groups(works) for out in _run_shared(program, group)]


def row_groups(works: Sequence[HeadRows], max_rows: int | None = None) -> list[list[HeadRows]]:
    """The works in order, cut into consecutive groups of at most ``max_rows`` rows (default
    :data:`MAX_HEAD_ROWS`; a work with more rows is a group of its own)."""
    limit = MAX_HEAD_ROWS if max_rows is None else max_rows
    groups: list[list[HeadRows]] = []
    rows = 0
    for work in works:
        if not groups or rows + work.rows > limit:
            groups.append([])
            rows = 0
        groups[-1].append(work)
        rows += work.rows
    return groups


def _run_shared(program: Callable[..., torch.Tensor], works: list[HeadRows]) -> list[torch.Tensor]:
    """One call of ``program`` on the works' rows, concatenated and zero-padded."""
    sizes = [work.rows for work in works]
    total = sum(sizes)
    padded = -(-total // HEAD_ROW_MULTIPLE) * HEAD_ROW_MULTIPLE
    inputs = []
    for column in zip(*(work.inputs for work in works), strict=True):
        buffer = torch.empty(  # [M, ...], where the rows are (host or device)
            (padded, *column[0].shape[1:]), dtype=column[0].dtype, device=column[0].device
        )
        start = 0
        for part, size in zip(column, sizes, strict=True):
            buffer[start : start + size] = part
            start += size
        buffer[total:] = 0
        inputs.append(buffer)
    with torch.inference_mode():
        out = program(*inputs).reshape(-1)  # [M]
    return list(out[:total].split(sizes))


def run_inner_products(
    items: np.ndarray | kernels.DeviceItemMatrix, queries: Sequence[InnerProductQuery]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(scores [k], item rows [k]) of each query's top-k over ``items`` [I, d] (host, or
    resident on a CUDA device), following recserve.core.kernels' contract; on the host bitwise
    what a query gets alone (see the module)."""
    backend = "cuda" if isinstance(items, kernels.DeviceItemMatrix) else SCORES_BACKEND
    chunk = max(1, kernels.topk_small_batch() - 1)
    results: list[tuple[np.ndarray, np.ndarray]] = []
    for start in range(0, len(queries), chunk):
        part = queries[start : start + chunk]
        k = max(q.k for q in part)
        vectors = np.stack([q.vector for q in part])  # [b, d]
        exclude = None
        if any(q.exclude is not None for q in part):
            empty = np.empty(0, dtype=np.int64)
            exclude = [empty if q.exclude is None else q.exclude for q in part]
        values, rows = kernels.topk_inner_product(
            vectors, items, k, exclude, backend=backend
        )  # [b, k] each, numpy
        results += [(values[i, : q.k], rows[i, : q.k]) for i, q in enumerate(part)]
    return results
