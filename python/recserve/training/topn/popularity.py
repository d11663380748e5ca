"""Most-popular: item frequency in the training part, nothing to learn."""

from __future__ import annotations

import time

import torch

from ..data import InteractionData
from ..models.popularity import Popularity
from .config import PopConfig
from .loop import Report, topn_metrics
from .prepare import prepare_topn
from .scorers import user_scorer
from .trained import TrainedTopN


def train_popularity(
    data: InteractionData, config: PopConfig, report: Report | None = None, progress: bool = False
) -> TrainedTopN:
    started = time.perf_counter()
    prepared = prepare_topn(data)
    model = Popularity(prepared.split.num_items)
    model.fit(torch.from_numpy(prepared.split.train_items))
    metrics = topn_metrics(user_scorer(model), prepared.split, 1, started)
    return TrainedTopN("pop", model, prepared, config, [], metrics)
