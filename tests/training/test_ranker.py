from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from recserve.training.data import InteractionData
from recserve.training.ranker import train_ranker
from recserve.training.trainer import TrainConfig


def test_implicit_feedback_is_refused_with_a_way_out(synthetic_data: InteractionData) -> None:
    implicit = dataclasses.replace(synthetic_data, rating=np.ones_like(synthetic_data.rating))
    with pytest.raises(
        ValueError, match=r"needs rated data\. For implicit feedback use --model pop"
    ):
        train_ranker("deepfm", implicit, TrainConfig(epochs=1), show_progress=False)
