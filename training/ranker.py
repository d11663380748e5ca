"""Trains a DeepFM ranker on an interaction data set and exports it."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .data import InteractionData
from .export import export_ranker
from .features import EncodedData, encode_movielens, random_split
from .models import DeepFM
from .trainer import EpochLog, RankerInputs, TrainConfig, build_deepfm, evaluate, fit


@dataclass
class TrainedRanker:
    model: DeepFM
    encoded: EncodedData
    config: TrainConfig
    history: list[EpochLog]
    metrics: dict[str, float]  # test_auc, test_logloss, val_auc, train_seconds, ...

    def export(self, repo: str | os.PathLike[str], name: str, data_name: str) -> Path:
        return export_ranker(
            self.model,
            self.encoded,
            repo,
            name,
            family="deepfm",
            metrics=self.metrics,
            config={**self.config.to_json(), "data": data_name, "split": "random 80/10/10"},
            extra={"label": f"rating >= {self.config.positive_rating:g}"},
        )


def train_deepfm(
    data: InteractionData,
    config: TrainConfig,
    on_epoch: Callable[[EpochLog], None] | None = None,
    show_progress: bool = True,
) -> TrainedRanker:
    """Random 80/10/10 split by ``config.seed``, train, report test AUC and LogLoss."""
    torch.set_num_threads(config.num_threads)
    started = time.perf_counter()
    encoded = encode_movielens(data, config.positive_rating)
    train_rows, val_rows, test_rows = random_split(encoded.labels.size, config.seed)
    inputs = RankerInputs(encoded)
    torch.manual_seed(config.seed)
    model = build_deepfm(encoded, config)
    history = fit(model, inputs, train_rows, val_rows, config, on_epoch, show_progress)
    val = evaluate(model, inputs, val_rows)
    test = evaluate(model, inputs, test_rows)
    metrics = {
        "test_auc": test["auc"],
        "test_logloss": test["logloss"],
        "val_auc": val["auc"],
        "val_logloss": val["logloss"],
        "epochs": float(len(history)),
        "train_seconds": time.perf_counter() - started,
    }
    return TrainedRanker(model, encoded, config, history, metrics)
