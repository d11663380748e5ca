"""GRU4Rec / LSTM / SASRec: next-item cross-entropy over windows of each user's sequence."""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..data import InteractionData
from ..evaluation import LeaveOneOut
from ..models.gru4rec import GRU4Rec
from ..models.sasrec import SASRec
from .config import SASRecConfig, SequenceConfig
from .loop import Report, epoch_bar, fit_topn, topn_metrics, with_run_info
from .prepare import start_run
from .scorers import sequence_scorer
from .trained import TrainedTopN


def sequence_windows(split: LeaveOneOut, max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-item training windows: (inputs, targets) int64 [W, L], left-aligned.

    Each user's training sequence is cut from its end into windows of ``max_length``
    steps; ``inputs`` hold item rows + 1 (0 = padding), ``targets`` the next item's row
    (-100 = padding, ignored by the loss).
    """
    inputs, targets = [], []
    for user in range(split.num_users):
        sequence = split.train_sequence(user)
        end = sequence.size - 1  # positions 0 .. end-1 have a next item
        while end > 0:
            begin = max(0, end - max_length)
            window_in = np.zeros(max_length, dtype=np.int64)
            window_out = np.full(max_length, -100, dtype=np.int64)
            window_in[: end - begin] = sequence[begin:end] + 1
            window_out[: end - begin] = sequence[begin + 1 : end + 1]
            inputs.append(window_in)
            targets.append(window_out)
            end = begin
    if not inputs:
        raise ValueError("no user has two training interactions; nothing to learn from")
    return torch.from_numpy(np.stack(inputs)), torch.from_numpy(np.stack(targets))


def sequence_model(num_items: int, config: SequenceConfig) -> GRU4Rec | SASRec:
    """The untrained model ``config.cell`` names: SASRec, or GRU4Rec with a GRU or LSTM."""
    if isinstance(config, SASRecConfig):
        return SASRec(
            num_items,
            config.max_length,
            embedding_dim=config.embedding_dim,
            num_heads=config.num_heads,
            num_layers=config.num_layers,
            hidden_size=config.hidden_size,
            dropout=config.dropout,
        )
    return GRU4Rec(
        num_items,
        embedding_dim=config.embedding_dim,
        hidden_size=config.hidden_size,
        num_layers=config.num_layers,
        dropout=config.dropout,
        cell=config.cell,
    )


def train_sequence(
    data: InteractionData,
    config: SequenceConfig,
    report: Report | None = None,
    progress: bool = False,
    run_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    run_info: dict[str, Any] | None = None,
) -> TrainedTopN:
    started, prepared, generator = start_run(data, config)
    split = prepared.split
    model = sequence_model(split.num_items, config)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    inputs, targets = sequence_windows(split, config.max_length)

    def run_epoch(epoch: int) -> float:
        order = torch.randperm(inputs.shape[0], generator=generator)
        bar = epoch_bar(order.split(config.batch_size), epoch, config.epochs, progress)
        total, seen, start = 0.0, 0, time.perf_counter()
        for index in bar:
            x, y = inputs[index], targets[index]
            width = int((x > 0).sum(dim=1).max())
            x, y = x[:, :width], y[:, :width]  # drop all-padding columns
            logits = model.sequence_logits(x)  # [B, L, I]
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps = int((y >= 0).sum())
            total += loss.item() * steps
            seen += steps
            rate = seen / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{total / seen:.4f}", steps_per_s=f"{rate:,.0f}")
        return total / max(seen, 1)

    name = {"gru": "gru4rec"}.get(config.cell, config.cell)  # gru4rec, lstm, sasrec
    score = sequence_scorer(model, config.max_length)
    history = fit_topn(
        model,
        run_epoch,
        score,
        split,
        config.epochs,
        config.patience,
        report,
        optimizers={"optimizer": optimizer},
        generator=generator,
        run_dir=run_dir,
        resume=resume,
        run_info=with_run_info(name, config, run_info),
    )
    metrics = topn_metrics(score, split, len(history), started)
    return TrainedTopN(name, model, prepared, config, history, metrics)
