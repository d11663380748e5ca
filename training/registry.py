"""Every trainable model by name: what `recserve train --model NAME` runs.

A model family adds one ``ModelEntry`` to ``MODELS``: its settings dataclass (what
``--config FILE`` may set) and a ``train`` function returning something that reports
metrics and exports itself into a model repository.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .data import InteractionData
from .ranker import train_deepfm
from .trainer import EpochLog, TrainConfig


class Trained(Protocol):
    metrics: dict[str, float]

    def export(self, repo: str | os.PathLike[str], name: str, data_name: str) -> Path: ...


# train(data, config, report_line, show_progress) -> Trained
TrainFunction = Callable[[InteractionData, Any, Callable[[str], None], bool], Trained]


@dataclass(frozen=True)
class ModelEntry:
    name: str
    task: str  # "ctr" (random split, AUC/LogLoss) or "topn" (leave-one-out, HR/NDCG/MRR@10)
    config_type: type  # dataclass of the model's settings
    train: TrainFunction
    headline: tuple[tuple[str, str], ...]  # (metric key, label) printed after training


def _train_deepfm(
    data: InteractionData, config: TrainConfig, report: Callable[[str], None], progress: bool
) -> Trained:
    def on_epoch(log: EpochLog) -> None:
        report(
            f"epoch {log.epoch:>2}: train loss {log.train_loss:.4f}  val AUC {log.val_auc:.4f}"
            f"  val LogLoss {log.val_logloss:.4f}  ({log.seconds:.1f}s)"
        )

    return train_deepfm(data, config, on_epoch, show_progress=progress)


CTR_HEADLINE = (("test_auc", "test AUC"), ("test_logloss", "test LogLoss"))

MODELS: dict[str, ModelEntry] = {
    entry.name: entry
    for entry in (ModelEntry("deepfm", "ctr", TrainConfig, _train_deepfm, CTR_HEADLINE),)
}
