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
from .gan import CFGANConfig, train_cfgan
from .ranker import train_ranker
from .topn import (
    BPRConfig,
    DINConfig,
    LSTMConfig,
    PopConfig,
    SASRecConfig,
    SequenceConfig,
    train_bpr,
    train_din,
    train_popularity,
    train_sequence,
)
from .trainer import RANKERS, TrainConfig, format_epoch


class Trained(Protocol):
    metrics: dict[str, float]

    def export(
        self,
        repo: str | os.PathLike[str],
        name: str,
        data_name: str,
        program_format: str = "torchscript",
        aoti_target: str | None = None,
    ) -> Path: ...


# train(data, config, report_line, show_progress) -> Trained
TrainFunction = Callable[[InteractionData, Any, Callable[[str], None], bool], Trained]


@dataclass(frozen=True)
class ModelEntry:
    name: str
    task: str  # "ctr" (random split, AUC/LogLoss) or "topn" (leave-one-out, HR/NDCG/MRR@10)
    config_type: type  # dataclass of the model's settings
    train: TrainFunction
    headline: tuple[tuple[str, str], ...]  # (metric key, label) printed after training
    # True: ``train`` also takes a ``RunOptions`` (run directory, resume) as fifth argument
    # and writes checkpoints and curves there; for rankers ``recserve export --run-dir``
    # then works too.
    checkpoints: bool = False
    # True: ``train`` also takes the model repository (keyword ``model_repo``), where it
    # reads the model it learns from (the DIN ranker: its retriever).
    reads_repo: bool = False


@dataclass(frozen=True)
class RunOptions:
    run_dir: Path
    resume: bool = False
    data: str = ""  # the --data spec and --data-dir, so `recserve export` can load the
    data_dir: str = ""  # data set again


def _ranker_trainer(name: str) -> Callable[..., Trained]:
    def train(
        data: InteractionData,
        config: TrainConfig,
        report: Callable[[str], None],
        progress: bool,
        run: RunOptions | None = None,
    ) -> Trained:
        return train_ranker(
            name,
            data,
            config,
            lambda log: report(format_epoch(log)),
            show_progress=progress,
            run_dir=run.run_dir if run else None,
            resume=run.resume if run else False,
            run_info={"data": run.data, "data_dir": run.data_dir} if run else None,
        )

    return train


def _topn_trainer(train_function: Callable[..., Trained]) -> Callable[..., Trained]:
    def train(
        data: InteractionData,
        config: Any,
        report: Callable[[str], None],
        progress: bool,
        run: RunOptions | None = None,
    ) -> Trained:
        return train_function(
            data,
            config,
            report,
            progress,
            run_dir=run.run_dir if run else None,
            resume=run.resume if run else False,
            run_info={"data": run.data, "data_dir": run.data_dir} if run else None,
        )

    return train


CTR_HEADLINE = (("test_auc", "test AUC"), ("test_logloss", "test LogLoss"))
TOPN_HEADLINE = (
    ("test_ndcg@10", "test NDCG@10"),
    ("test_hr@10", "test HR@10"),
    ("test_mrr@10", "test MRR@10"),
)

MODELS: dict[str, ModelEntry] = {
    entry.name: entry
    for entry in (
        *(
            ModelEntry(
                name,
                "ctr",
                ranker.config_type,
                _ranker_trainer(name),
                CTR_HEADLINE,
                checkpoints=True,
            )
            for name, ranker in RANKERS.items()
        ),
        ModelEntry("pop", "topn", PopConfig, train_popularity, TOPN_HEADLINE),
        *(
            ModelEntry(name, "topn", config, _topn_trainer(train), TOPN_HEADLINE, checkpoints=True)
            for name, config, train in (
                ("bpr", BPRConfig, train_bpr),
                ("gru4rec", SequenceConfig, train_sequence),
                ("lstm", LSTMConfig, train_sequence),
                ("sasrec", SASRecConfig, train_sequence),
                ("cfgan", CFGANConfig, train_cfgan),
            )
        ),
        ModelEntry("din", "topn", DINConfig, train_din, TOPN_HEADLINE, reads_repo=True),
    )
}
