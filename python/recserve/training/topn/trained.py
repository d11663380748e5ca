"""A trained top-N model with its metrics, and how each kind is exported."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..export import export_embedding, export_generator, export_sequence
from ..models.bpr import BPRMF
from ..models.cfgan import CFGAN
from ..models.gru4rec import GRU4Rec
from ..models.popularity import Popularity
from ..models.sasrec import SASRec
from .loop import TopNEpochLog
from .prepare import SPLIT, TopNData


@dataclass
class TrainedTopN:
    """A trained top-N model with its metrics; ``export`` writes its artifact."""

    name: str  # pop, bpr, gru4rec, lstm, sasrec, cfgan
    model: nn.Module
    prepared: TopNData
    config: Any
    history: list[TopNEpochLog]
    metrics: dict[str, float]  # test_/val_ hr@10, ndcg@10, mrr@10; epochs; train_seconds

    def export(
        self,
        repo: str | os.PathLike[str],
        name: str,
        data_name: str,
        program_format: str = "torchscript",
        aoti_target: str | None = None,
    ) -> Path:
        """The artifact of the model's family; ``program_format`` applies to the sequence
        and generator programs (the embedding family has none)."""
        if aoti_target is not None:
            raise ValueError("AOTInductor compilations are stored for rankers' programs only")
        config = {**self.config.to_json(), "model": self.name, "data": data_name, "split": SPLIT}
        if isinstance(self.model, GRU4Rec | SASRec):
            return export_sequence(
                self.model,
                self.prepared.schema,
                self.prepared.tables,
                repo,
                name,
                max_length=self.config.max_length,
                metrics=self.metrics,
                config=config,
                program_format=program_format,
            )
        if isinstance(self.model, CFGAN):
            return export_generator(
                self.model.generator,
                self.prepared.schema,
                self.prepared.tables,
                repo,
                name,
                metrics=self.metrics,
                config=config,
                program_format=program_format,
            )
        if isinstance(self.model, BPRMF):
            users, items = self.model.vectors()
        elif isinstance(self.model, Popularity):
            users = torch.ones(self.prepared.split.num_users, 1)
            items = self.model.frequency.unsqueeze(1)
        else:
            raise TypeError(f"cannot export {type(self.model).__name__}")
        return export_embedding(
            users.numpy(),
            items.numpy(),
            self.prepared.schema,
            self.prepared.tables,
            repo,
            name,
            metrics=self.metrics,
            config=config,
        )
