"""What happens to a model version around its time in service: warmed up on real requests
before it serves (a version that loads but fails on use is refused), and its memory given
back to the system once it is unloaded."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys
from collections.abc import Callable

from recserve.engine.pipeline import CatalogPipeline

WARM_UP_CALLS = 2  # TorchScript profiles its first call and optimises on the second


class WarmUpError(RuntimeError):
    """A freshly loaded version failed on a real request: it must not serve."""


def warm_up(pipeline: CatalogPipeline) -> None:
    """Runs a few real Rank and Recommend calls with ids from the model's own tables, so a
    client never pays for the first call's lazy set-up, and a version that loads but
    crashes on use is refused. Raises WarmUpError with the call that failed."""
    limits = pipeline.limits
    user_id = int(pipeline.user_ids[0]) if pipeline.num_users else 0
    items = pipeline.item_ids[: min(16, pipeline.num_items, limits.max_candidates)].tolist()
    k = min(5, len(items), limits.max_k)
    for _ in range(WARM_UP_CALLS):
        try:
            if not pipeline.answers_alone:  # a cascade's second stage: as in a cascade
                scores = [float(-i) for i in range(len(items))]
                pipeline.rank_retrieved(user_id, items, scores, k=k, recent_item_ids=items[:2])
                continue
            if items:  # an empty catalog has nothing to rank
                pipeline.rank(user_id, items, k=k)
            pipeline.recommend(user_id, k=k, recent_item_ids=items[:2])  # type: ignore[attr-defined]
        except Exception as exc:
            raise WarmUpError(f"a warm-up request failed: {type(exc).__name__}: {exc}") from exc


def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None


_MALLOC_TRIM = _malloc_trim()


def release_memory() -> None:
    """Frees what an unloaded version left: cycles first, then glibc's free lists, which
    otherwise keep the freed tables' pages resident."""
    gc.collect()
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
