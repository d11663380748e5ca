"""Top-N evaluation: leave-one-out by time, full ranking, one protocol for every model.

Protocol (the same code runs for every top-N model):

- each user's interactions are ordered by timestamp, ties broken by their order in the
  log; the last one is the test item, the one before it the validation item, the rest is
  training data (a user with fewer than three interactions is all training data and is
  not evaluated);
- every item of the catalog is scored (full ranking, no sampled negatives);
- the user's other interactions are excluded from the ranking: the training items when
  validating, the training items plus the validation item when testing (the target
  itself is never excluded, even when the user interacted with it before);
- with one relevant item at 0-based rank ``r`` among the selectable items (ties go to
  the smaller item index, as in ``recserve.core.kernels``): ``HR@K = [r < K]``,
  ``NDCG@K = [r < K] / log2(r + 2)``, ``MRR@K = [r < K] / (r + 1)``, averaged over the
  evaluated users.

Scores come in batches of users; the top-K with the exclusions applied is selected by
the C++ kernel ``recserve.core.kernels.topk_scores``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from recserve.core import kernels

TOP_K = 10
STAGES = ("val", "test")

# score(user_rows [B], histories: B time-ordered int64 arrays of item rows) -> float32 [B, I]
ScoreFunction = Callable[[np.ndarray, list[np.ndarray]], np.ndarray]


@dataclass(frozen=True)
class LeaveOneOut:
    """A leave-one-out split of an interaction log, by user, in table rows.

    ``train_indptr``/``train_items`` is a CSR of each user's training items in time order;
    ``val_items``/``test_items`` hold each user's held-out item row (-1: not evaluated).
    """

    num_users: int
    num_items: int
    train_indptr: np.ndarray  # int64 [U + 1]
    train_items: np.ndarray  # int64 [n_train], time-ordered per user
    val_items: np.ndarray  # int64 [U]
    test_items: np.ndarray  # int64 [U]

    def train_sequence(self, user: int) -> np.ndarray:
        return self.train_items[self.train_indptr[user] : self.train_indptr[user + 1]]

    def history(self, user: int, stage: str) -> np.ndarray:
        """The user's known items before the ``stage`` target, oldest first."""
        train = self.train_sequence(user)
        if stage == "val":
            return train
        if stage == "test":
            val = self.val_items[user]
            return np.append(train, val) if val >= 0 else train
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")

    def targets(self, stage: str) -> np.ndarray:
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        return self.val_items if stage == "val" else self.test_items

    def train_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """(user rows, item rows) of every training interaction."""
        counts = np.diff(self.train_indptr)
        return np.repeat(np.arange(self.num_users, dtype=np.int64), counts), self.train_items


def leave_one_out(
    user_rows: np.ndarray,
    item_rows: np.ndarray,
    timestamps: np.ndarray,
    num_users: int,
    num_items: int,
) -> LeaveOneOut:
    """Split interactions (given as table rows) by the protocol of the module docstring."""
    user_rows = np.asarray(user_rows, dtype=np.int64)
    item_rows = np.asarray(item_rows, dtype=np.int64)
    timestamps = np.asarray(timestamps, dtype=np.int64)
    if not user_rows.shape == item_rows.shape == timestamps.shape:
        raise ValueError("user_rows, item_rows and timestamps must have the same length")
    # by user, then timestamp, then position in the log
    order = np.lexsort((np.arange(user_rows.size), timestamps, user_rows))
    users, items = user_rows[order], item_rows[order]
    counts = np.bincount(users, minlength=num_users)
    starts = np.zeros(num_users + 1, dtype=np.int64)
    np.cumsum(counts, out=starts[1:])
    evaluated = counts >= 3
    val_items = np.full(num_users, -1, dtype=np.int64)
    test_items = np.full(num_users, -1, dtype=np.int64)
    test_items[evaluated] = items[starts[1:][evaluated] - 1]
    val_items[evaluated] = items[starts[1:][evaluated] - 2]
    keep = np.ones(items.size, dtype=bool)
    ends = starts[1:][evaluated]
    keep[ends - 1] = False
    keep[ends - 2] = False
    train_counts = counts - 2 * evaluated
    train_indptr = np.zeros(num_users + 1, dtype=np.int64)
    np.cumsum(train_counts, out=train_indptr[1:])
    return LeaveOneOut(
        num_users, num_items, train_indptr, np.ascontiguousarray(items[keep]), val_items, test_items
    )


def rank_metrics(ranks: np.ndarray, k: int = TOP_K) -> dict[str, float]:
    """HR@k, NDCG@k and MRR@k from 0-based ranks of the relevant item (>= k: a miss)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    hit = ranks < k
    return {
        f"hr@{k}": float(hit.mean()) if ranks.size else 0.0,
        f"ndcg@{k}": float(np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0).mean())
        if ranks.size
        else 0.0,
        f"mrr@{k}": float(np.where(hit, 1.0 / (ranks + 1.0), 0.0).mean()) if ranks.size else 0.0,
    }


def evaluate_topn(
    score: ScoreFunction,
    split: LeaveOneOut,
    stage: str,
    k: int = TOP_K,
    batch_size: int = 256,
) -> dict[str, float]:
    """HR@k, NDCG@k, MRR@k of ``score`` on the ``stage`` ("val" or "test") targets."""
    targets = split.targets(stage)
    users = np.flatnonzero(targets >= 0)
    ranks = np.full(users.size, k, dtype=np.int64)  # k = not in the top k
    for start in range(0, users.size, batch_size):
        batch = users[start : start + batch_size]
        histories = [split.history(int(u), stage) for u in batch]
        scores = np.asarray(score(batch, histories), dtype=np.float32)
        if scores.shape != (batch.size, split.num_items):
            raise ValueError(
                f"score returned shape {scores.shape}, expected {(batch.size, split.num_items)}"
            )
        batch_targets = targets[batch]
        exclude = [h[h != t] for h, t in zip(histories, batch_targets, strict=True)]
        _, top = kernels.topk_scores(scores, k, exclude, backend="cpu")
        found = top == batch_targets[:, None]
        hit = found.any(axis=1)
        ranks[start : start + batch.size][hit] = found[hit].argmax(axis=1)
    return rank_metrics(ranks, k)
