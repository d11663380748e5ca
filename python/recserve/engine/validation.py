"""Request limits and the checks every pipeline shares: the same request gets the same
error message whichever model family serves it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import InvalidRequest


@dataclass(frozen=True)
class Limits:
    """Per-request bounds, set by the server's options."""

    max_candidates: int = 10_000
    max_k: int = 1_000


def check_k(k: int, limits: Limits) -> None:
    if k < 0 or k > limits.max_k:
        raise InvalidRequest(f"k must be between 0 and {limits.max_k} (0 = default); got {k}")


def check_ids(ids: np.ndarray, what: str) -> None:
    negative = ids[ids < 0]
    if negative.size:
        raise InvalidRequest(f"{what} must be non-negative; got {int(negative[0])}")


def check_user_id(user_id: int) -> None:
    if user_id < 0:
        raise InvalidRequest(f"user_id must be non-negative; got {user_id}")


def check_candidates(candidate_item_ids: Sequence[int], limits: Limits) -> np.ndarray:
    """The candidates of a Rank request as int64 [N]: non-empty, within the limit, no
    negative or duplicate ids."""
    candidates = np.asarray(candidate_item_ids, dtype=np.int64).reshape(-1)
    if candidates.size == 0:
        raise InvalidRequest("candidate_item_ids is empty; send the items to rank")
    if candidates.size > limits.max_candidates:
        raise InvalidRequest(
            f"{candidates.size} candidates exceed the limit of {limits.max_candidates}; "
            "split the request"
        )
    check_ids(candidates, "candidate_item_ids")
    unique, counts = np.unique(candidates, return_counts=True)
    if unique.size != candidates.size:
        raise InvalidRequest(
            f"candidate_item_ids has duplicates, e.g. {int(unique[counts > 1][0])}; "
            "send each item once"
        )
    return candidates


def check_recent(recent_item_ids: Sequence[int], limits: Limits) -> np.ndarray:
    """The recent items of a Recommend request as int64 [N], in request order."""
    recent = np.asarray(recent_item_ids, dtype=np.int64).reshape(-1)
    if recent.size > limits.max_candidates:
        raise InvalidRequest(
            f"{recent.size} recent_item_ids exceed the limit of "
            f"{limits.max_candidates}; send the most recent ones"
        )
    check_ids(recent, "recent_item_ids")
    return recent
