"""The leave-one-out protocol against a float64 brute-force reference."""

from __future__ import annotations

import numpy as np
import pytest

from recserve.training.evaluation import evaluate_topn, leave_one_out, rank_metrics


def test_leave_one_out_orders_by_time_then_log_position() -> None:
    # user 0: items 5 (t=3), 1 (t=1), 2 (t=3), 4 (t=2) -> time order 1, 4, 5, 2
    # user 1: two interactions only -> all training, not evaluated
    users = np.array([0, 1, 0, 0, 1, 0])
    items = np.array([5, 3, 1, 2, 0, 4])
    times = np.array([3, 9, 1, 3, 8, 2])
    split = leave_one_out(users, items, times, num_users=2, num_items=6)
    assert split.train_sequence(0).tolist() == [1, 4]
    assert (split.val_items.tolist(), split.test_items.tolist()) == ([5, -1], [2, -1])
    assert split.train_sequence(1).tolist() == [0, 3]
    assert split.history(0, "test").tolist() == [1, 4, 5]
    assert split.history(0, "val").tolist() == [1, 4]


def _reference_ranks(scores: np.ndarray, split, stage: str) -> np.ndarray:
    """0-based rank of each evaluated user's target among the selectable items, in float64;
    ties go to the smaller item index."""
    targets = split.targets(stage)
    ranks = []
    for user in np.flatnonzero(targets >= 0):
        s = scores[user].astype(np.float64)
        target = targets[user]
        excluded = set(split.history(user, stage).tolist()) - {int(target)}
        better = sum(
            1
            for i in range(s.size)
            if i not in excluded
            and i != target
            and (s[i] > s[target] or (s[i] == s[target] and i < target))
        )
        ranks.append(better)
    return np.array(ranks)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("stage", ["val", "test"])
def test_metrics_match_brute_force_reference(seed: int, stage: str) -> None:
    rng = np.random.default_rng(seed)
    num_users, num_items, n = 40, 30, 500
    users = rng.integers(0, num_users, n)
    items = rng.integers(0, num_items, n)  # repeats allowed: a target may be seen before
    times = rng.integers(0, 50, n)  # many ties in time
    split = leave_one_out(users, items, times, num_users, num_items)
    # few distinct values: many score ties, which the kernel and reference break alike
    scores = rng.integers(0, 6, (num_users, num_items)).astype(np.float32)

    def score(batch: np.ndarray, histories: list[np.ndarray]) -> np.ndarray:
        return scores[batch]

    got = evaluate_topn(score, split, stage, batch_size=7)
    want = rank_metrics(_reference_ranks(scores, split, stage))
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-12), key


def test_rank_metrics_standard_definitions() -> None:
    m = rank_metrics(np.array([0, 1, 9, 10, 500]))
    assert m["hr@10"] == pytest.approx(3 / 5)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / np.log2(3) + 1 / np.log2(11)) / 5)
    assert m["mrr@10"] == pytest.approx((1 + 1 / 2 + 1 / 10) / 5)


def test_wrong_score_shape_is_reported() -> None:
    split = leave_one_out(np.zeros(3), np.arange(3), np.arange(3), 1, 3)
    with pytest.raises(ValueError, match="expected"):
        evaluate_topn(lambda b, h: np.zeros((b.size, 2)), split, "test")
