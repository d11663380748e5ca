"""Fixtures for the ranker model tests: a learnability check on synthetic data."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from recserve.training.data import InteractionData
from recserve.training.features import encode_movielens, random_split
from recserve.training.metrics import roc_auc
from recserve.training.ranker import train_ranker
from recserve.training.registry import MODELS

LEARN_CONFIG = dict(
    epochs=8,
    patience=8,
    embedding_dim=8,
    hidden=[16],
    learning_rate=1e-2,
    batch_size=256,
    num_threads=1,
)


def item_rate_auc(data: InteractionData, seed: int = 42) -> float:
    """Test AUC of the popularity baseline: each item's smoothed positive rate in train."""
    encoded = encode_movielens(data)
    train, _, test = random_split(encoded.labels.size, seed)
    n_items = encoded.tables["item_ids"].size
    positives = np.bincount(encoded.item_rows[train], encoded.labels[train], n_items)
    counts = np.bincount(encoded.item_rows[train], minlength=n_items)
    rate = (positives + 1) / (counts + 2)
    return roc_auc(encoded.labels[test], rate[encoded.item_rows[test]])


@pytest.fixture
def learnability(synthetic_data: InteractionData) -> Callable[[str], tuple[float, float]]:
    """(test AUC of ranker ``name`` trained briefly, test AUC of the popularity baseline)."""

    def run(name: str) -> tuple[float, float]:
        config = MODELS[name].config_type(**LEARN_CONFIG)
        trained = train_ranker(name, synthetic_data, config, show_progress=False)
        return trained.metrics["test_auc"], item_rate_auc(synthetic_data)

    return run
