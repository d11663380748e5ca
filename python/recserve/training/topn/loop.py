"""The early-stopping loop every epoch-trained top-N model shares, and its metrics.

Each epoch is scored on validation NDCG@10; the weights of the best epoch are kept, and
the test metrics come from the same evaluation code (``training/evaluation.py``).
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..checkpoint import (
    CURVES,
    checkpoint_path,
    load_checkpoint,
    restore_optimizer,
    save_checkpoint,
)
from ..evaluation import LeaveOneOut, evaluate_topn

Report = Callable[[str], None]
# Scores of every item for a batch of users (rows) with their histories: float [B, I].
Scorer = Callable[[np.ndarray, list[np.ndarray]], np.ndarray]


@dataclass
class TopNEpochLog:
    epoch: int
    train_loss: float
    val_ndcg: float
    val_hr: float
    seconds: float
    losses: dict[str, float] = field(default_factory=dict)  # every named training loss


def fit_topn(
    model: nn.Module,
    run_epoch: Callable[[int], float | dict[str, float]],
    score: Scorer,
    split: LeaveOneOut,
    epochs: int,
    patience: int,
    report: Report | None,
    *,
    optimizers: dict[str, torch.optim.Optimizer] | None = None,
    generator: torch.Generator | None = None,
    run_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    run_info: dict[str, Any] | None = None,
) -> list[TopNEpochLog]:
    """Run epochs; keep the weights of the best validation NDCG@10; stop after
    ``patience`` epochs without improvement.

    ``run_epoch`` returns the epoch's training loss, or named losses (a GAN's G and D
    losses; the first one is logged as ``train_loss``). With ``run_dir``, each epoch
    writes ``checkpoint.pt`` (model, ``optimizers``, history, best state, stale count,
    the torch RNG and ``generator`` states, plus ``run_info``) and ``curves.png``;
    ``resume`` continues from that checkpoint to the weights of an uninterrupted run."""
    optimizers = optimizers or {}
    history: list[TopNEpochLog] = []
    best, best_state, stale = -1.0, copy.deepcopy(model.state_dict()), 0
    first_epoch = 1
    if resume:
        if run_dir is None:
            raise ValueError("resume needs the run directory that holds the checkpoint")
        state = load_checkpoint(checkpoint_path(run_dir))
        model.load_state_dict(state["model_state"])
        for name, optimizer in optimizers.items():
            restore_optimizer(optimizer, state["optimizers"][name])
        history = [TopNEpochLog(**h) for h in state["history"]]
        best, best_state, stale = state["best_ndcg"], state["best_state"], state["stale"]
        torch.set_rng_state(state["torch_rng"])
        if generator is not None:
            generator.set_state(state["shuffle_rng"])
        first_epoch = state["epoch"] + 1
        if stale >= patience:
            first_epoch = epochs + 1  # it had stopped early; nothing left to do
    for epoch in range(first_epoch, epochs + 1):
        start = time.perf_counter()
        model.train()
        losses = run_epoch(epoch)
        named = losses if isinstance(losses, dict) else {"train loss": losses}
        loss = next(iter(named.values()))
        val = evaluate_topn(score, split, "val")
        log = TopNEpochLog(
            epoch, loss, val["ndcg@10"], val["hr@10"], time.perf_counter() - start, dict(named)
        )
        history.append(log)
        if report:
            text = "  ".join(f"{name} {value:.4f}" for name, value in named.items())
            report(
                f"epoch {epoch:>2}: {text}  val NDCG@10 {log.val_ndcg:.4f}"
                f"  val HR@10 {log.val_hr:.4f}  ({log.seconds:.1f}s)"
            )
        if log.val_ndcg > best:
            best, best_state, stale = log.val_ndcg, copy.deepcopy(model.state_dict()), 0
        else:
            stale += 1
        if run_dir is not None:
            save_checkpoint(
                {
                    **(run_info or {}),
                    "epoch": epoch,
                    "model_state": model.state_dict(),
                    "optimizers": {name: o.state_dict() for name, o in optimizers.items()},
                    "history": [asdict(h) for h in history],
                    "best_ndcg": best,
                    "best_state": best_state,
                    "stale": stale,
                    "torch_rng": torch.get_rng_state(),
                    "shuffle_rng": generator.get_state() if generator is not None else None,
                },
                checkpoint_path(run_dir),
            )
            from ..curves import plot_curves

            plot_curves(
                history, Path(run_dir) / CURVES, str((run_info or {}).get("model_name", ""))
            )
        if stale >= patience:
            break
    model.load_state_dict(best_state)
    model.eval()
    return history


def with_run_info(name: str, config: Any, run_info: dict[str, Any] | None) -> dict[str, Any]:
    """What a top-N checkpoint stores beside the state: model name, settings, data set."""
    return {"model_name": name, **(run_info or {}), "config": config.to_json()}


def epoch_bar(batches: Any, epoch: int, epochs: int, progress: bool) -> tqdm:
    return tqdm(
        batches, desc=f"epoch {epoch}/{epochs}", unit="batch", disable=not progress, leave=False
    )


def topn_metrics(
    score: Scorer,
    split: LeaveOneOut,
    epochs: int,
    started: float,
) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for stage in ("val", "test"):
        for key, value in evaluate_topn(score, split, stage).items():
            metrics[f"{stage}_{key}"] = value
    metrics["epochs"] = float(epochs)
    metrics["train_seconds"] = time.perf_counter() - started
    return metrics
