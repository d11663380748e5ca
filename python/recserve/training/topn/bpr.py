"""BPR-MF: pairwise ranking loss on (user, positive, sampled negative) triples."""

from __future__ import annotations

import os
import time
from typing import Any

import torch

from ..data import InteractionData
from ..models.bpr import BPRMF, bpr_loss
from .config import BPRConfig
from .loop import Report, epoch_bar, fit_topn, topn_metrics, with_run_info
from .prepare import start_run
from .scorers import user_scorer
from .trained import TrainedTopN


def sample_negatives(
    users: torch.Tensor, positives: torch.Tensor, num_items: int, generator: torch.Generator
) -> torch.Tensor:
    """Uniform items per user, resampled (up to 10 rounds) where the user interacted."""
    negatives = torch.randint(num_items, users.shape, generator=generator)
    for _ in range(10):
        clash = positives[users, negatives]
        if not bool(clash.any()):
            break
        negatives[clash] = torch.randint(num_items, (int(clash.sum()),), generator=generator)
    return negatives


def train_bpr(
    data: InteractionData,
    config: BPRConfig,
    report: Report | None = None,
    progress: bool = False,
    run_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    run_info: dict[str, Any] | None = None,
) -> TrainedTopN:
    started, prepared, generator = start_run(data, config)
    split = prepared.split
    model = BPRMF(split.num_users, split.num_items, config.embedding_dim)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    users_np, items_np = split.train_pairs()
    users, items = torch.from_numpy(users_np), torch.from_numpy(items_np)
    positives = torch.zeros(split.num_users, split.num_items, dtype=torch.bool)
    positives[users, items] = True

    def run_epoch(epoch: int) -> float:
        order = torch.randperm(users.numel(), generator=generator)
        bar = epoch_bar(order.split(config.batch_size), epoch, config.epochs, progress)
        total, seen, start = 0.0, 0, time.perf_counter()
        for index in bar:
            u, i = users[index], items[index]
            j = sample_negatives(u, positives, split.num_items, generator)
            loss = bpr_loss(model.score_pairs(u, i), model.score_pairs(u, j))
            if config.l2 > 0:
                rows = (
                    model.user_embedding(u).pow(2).sum()
                    + model.item_embedding(i).pow(2).sum()
                    + model.item_embedding(j).pow(2).sum()
                )
                loss = loss + config.l2 * rows / u.numel()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * u.numel()
            seen += u.numel()
            rate = seen / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{total / seen:.4f}", triples_per_s=f"{rate:,.0f}")
        return total / max(seen, 1)

    score = user_scorer(model)
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
        run_info=with_run_info("bpr", config, run_info),
    )
    metrics = topn_metrics(score, split, len(history), started)
    return TrainedTopN("bpr", model, prepared, config, history, metrics)
