from __future__ import annotations

import numpy as np
import pytest

from recserve.training.metrics import log_loss, roc_auc


def brute_force_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return wins / (pos.size * neg.size)


@pytest.mark.parametrize("n", [2, 7, 300])
def test_auc_matches_pair_counting_with_ties(n: int) -> None:
    rng = np.random.default_rng()
    labels = np.r_[0, 1, rng.integers(0, 2, n - 2)].astype(np.float64)
    scores = rng.integers(0, 5, n).astype(np.float64)  # many ties
    assert roc_auc(labels, scores) == pytest.approx(brute_force_auc(labels, scores), abs=1e-12)


def test_auc_extremes_and_errors() -> None:
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert roc_auc(np.array([1, 1, 0, 0]), np.array([0.1, 0.2, 0.3, 0.4])) == 0.0
    with pytest.raises(ValueError, match="both positive and negative"):
        roc_auc(np.ones(3), np.arange(3.0))


def test_log_loss_matches_formula() -> None:
    y = np.array([1.0, 0.0, 1.0])
    p = np.array([0.9, 0.2, 0.6])
    expected = -(np.log(0.9) + np.log(0.8) + np.log(0.6)) / 3
    assert log_loss(y, p) == pytest.approx(expected)
