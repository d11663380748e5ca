"""Trains CFGAN (``training/models/cfgan.py``) with the top-N protocol of ``training/topn/``.

Each epoch alternates ``d_steps`` passes of discriminator updates and ``g_steps`` passes
of generator updates over shuffled user mini-batches; every update draws fresh ZR and
PM samples. The condition of a user is the multi-hot of their training items; at
evaluation it is the history of the stage (training items for validation, training +
validation item for test), and the scores are ``G(c_u)``. Early stopping on validation
NDCG@10 keeps the best epoch's weights, as for the other top-N models.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from .data import InteractionData
from .models.cfgan import CFGAN, discriminator_loss, generator_loss, sample_negative_masks
from .topn import (
    Report,
    TrainedTopN,
    epoch_bar,
    fit_topn,
    start_run,
    topn_metrics,
    with_run_info,
)


@dataclass
class CFGANConfig:
    """CFGAN settings; saved in the artifact's manifest."""

    seed: int = 42
    epochs: int = 300  # upper bound; early stopping usually ends sooner
    patience: int = 20  # epochs without a better validation NDCG@10 before stopping
    batch_size: int = 32  # users per update
    generator_hidden: list[int] = field(default_factory=lambda: [400])
    discriminator_hidden: list[int] = field(default_factory=lambda: [128])
    generator_learning_rate: float = 1e-3
    discriminator_learning_rate: float = 1e-4
    g_steps: int = 1  # passes over the users with generator updates per epoch
    d_steps: int = 1  # passes over the users with discriminator updates per epoch
    zr_rate: float = 0.7  # S_zr: share of non-purchased items drawn for zero reconstruction
    pm_rate: float = 0.7  # S_pm: share of non-purchased items drawn for partial masking
    alpha: float = 0.1  # weight of the zero-reconstruction term
    # G minimises -log D(fake) (True) or the paper's log(1 - D(fake)) (False), which
    # stalls here once D wins (validation NDCG@10 stuck at the popularity level)
    non_saturating: bool = True
    weight_decay: float = 0.0  # Adam weight decay of the generator
    num_threads: int = 1

    def to_json(self) -> dict:
        return asdict(self)


def purchase_vectors(histories: list[np.ndarray], num_items: int) -> torch.Tensor:
    """Item rows per user -> float32 [B, I] multi-hot."""
    out = torch.zeros(len(histories), num_items)
    for b, items in enumerate(histories):
        out[b, torch.from_numpy(np.asarray(items, dtype=np.int64))] = 1.0
    return out


def generator_scorer(model: CFGAN, num_items: int):
    @torch.inference_mode()
    def score(users: np.ndarray, histories: list[np.ndarray]) -> np.ndarray:
        model.eval()
        return model(purchase_vectors(histories, num_items)).numpy()

    return score


def train_cfgan(
    data: InteractionData,
    config: CFGANConfig,
    report: Report | None = None,
    progress: bool = False,
    run_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    run_info: dict[str, Any] | None = None,
) -> TrainedTopN:
    for name in ("zr_rate", "pm_rate"):
        if not 0.0 <= getattr(config, name) <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {getattr(config, name)}")
    started, prepared, generator = start_run(data, config)
    split = prepared.split
    model = CFGAN(split.num_items, config.generator_hidden, config.discriminator_hidden)
    g_optimizer = torch.optim.Adam(
        model.generator.parameters(),
        lr=config.generator_learning_rate,
        weight_decay=config.weight_decay,
    )
    d_optimizer = torch.optim.Adam(
        model.discriminator.parameters(), lr=config.discriminator_learning_rate
    )
    purchases = purchase_vectors(
        [split.train_sequence(u) for u in range(split.num_users)], split.num_items
    )  # [U, I]
    has_items = torch.from_numpy(np.flatnonzero(np.diff(split.train_indptr) > 0))
    if has_items.numel() == 0:
        raise ValueError("no user has a training interaction; nothing to learn from")

    def passes(steps: int) -> list[torch.Tensor]:
        return [
            batch
            for _ in range(steps)
            for batch in has_items[torch.randperm(has_items.numel(), generator=generator)].split(
                config.batch_size
            )
        ]

    def run_epoch(epoch: int) -> dict[str, float]:
        plan = [("d", b) for b in passes(config.d_steps)] + [
            ("g", b) for b in passes(config.g_steps)
        ]
        bar = epoch_bar(plan, epoch, config.epochs, progress)
        totals = {"d": 0.0, "g": 0.0}
        counts = {"d": 0, "g": 0}
        start = time.perf_counter()
        for step, users in bar:
            c = purchases[users]  # [B, I]
            zr, pm = sample_negative_masks(c, config.zr_rate, config.pm_rate, generator)
            if step == "d":
                loss = discriminator_loss(model, c, pm)
                d_optimizer.zero_grad(set_to_none=True)
                loss.backward()
                d_optimizer.step()
            else:
                loss = generator_loss(model, c, pm, zr, config.alpha, config.non_saturating)
                g_optimizer.zero_grad(set_to_none=True)
                loss.backward()
                g_optimizer.step()
            totals[step] += loss.item() * users.numel()
            counts[step] += users.numel()
            rate = sum(counts.values()) / (time.perf_counter() - start)
            bar.set_postfix(
                d_loss=f"{totals['d'] / max(counts['d'], 1):.4f}",
                g_loss=f"{totals['g'] / max(counts['g'], 1):.4f}",
                users_per_s=f"{rate:,.0f}",
            )
        return {
            "G loss": totals["g"] / max(counts["g"], 1),
            "D loss": totals["d"] / max(counts["d"], 1),
        }

    score = generator_scorer(model, split.num_items)
    history = fit_topn(
        model,
        run_epoch,
        score,
        split,
        config.epochs,
        config.patience,
        report,
        optimizers={"generator": g_optimizer, "discriminator": d_optimizer},
        generator=generator,
        run_dir=run_dir,
        resume=resume,
        run_info=with_run_info("cfgan", config, run_info),
    )
    metrics = topn_metrics(score, split, len(history), started)
    return TrainedTopN("cfgan", model, prepared, config, history, metrics)
