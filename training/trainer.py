"""Trains a ranker on encoded interactions with early stopping on validation AUC."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .features import EncodedData
from .metrics import log_loss, roc_auc
from .models import DeepFM


@dataclass
class TrainConfig:
    """Everything that decides a training run; saved in the artifact's manifest."""

    seed: int = 42
    epochs: int = 30  # upper bound; early stopping usually ends sooner
    patience: int = 3  # epochs without a better validation AUC before stopping
    batch_size: int = 1024
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    embedding_dim: int = 16
    hidden: list[int] = field(default_factory=lambda: [256, 128, 64])
    dropout: float = 0.3
    embedding_l2: float = 1e-5  # L2 on the embedding rows a batch uses, per example
    positive_rating: float = 4.0  # label = rating >= this
    num_threads: int = 2

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class EpochLog:
    epoch: int
    train_loss: float
    val_auc: float
    val_logloss: float
    seconds: float


class RankerInputs:
    """Gathers model inputs for interaction rows from the encoded tables."""

    def __init__(self, encoded: EncodedData) -> None:
        t = encoded.tables
        self.user_features = torch.from_numpy(t["user_features"])
        self.item_features = torch.from_numpy(t["item_features"])
        self.item_multi = torch.from_numpy(t["item_multi"])
        self.user_rows = torch.from_numpy(encoded.user_rows)
        self.item_rows = torch.from_numpy(encoded.item_rows)
        self.labels = torch.from_numpy(encoded.labels)

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        users, items = self.user_rows[index], self.item_rows[index]
        return (
            self.user_features[users],
            self.item_features[items],
            self.item_multi[items],
            self.labels[index],
        )


def build_deepfm(encoded: EncodedData, config: TrainConfig) -> DeepFM:
    schema = encoded.schema
    return DeepFM(
        [f.cardinality for f in schema.single_valued("user")],
        [f.cardinality for f in schema.single_valued("item")],
        [f.cardinality for f in schema.multi_valued("item")],
        [f.max_values for f in schema.multi_valued("item")],
        embedding_dim=config.embedding_dim,
        hidden=config.hidden,
        dropout=config.dropout,
    )


@torch.inference_mode()
def predict(
    model: nn.Module, inputs: RankerInputs, rows: np.ndarray, batch: int = 8192
) -> np.ndarray:
    """Probabilities for interaction rows, in row order."""
    model.eval()
    out = []
    for start in range(0, rows.size, batch):
        user, item, multi, _ = inputs.batch(torch.from_numpy(rows[start : start + batch]))
        out.append(torch.sigmoid(model(user, item, multi)).numpy())
    return np.concatenate(out) if out else np.empty(0, dtype=np.float32)


def evaluate(model: nn.Module, inputs: RankerInputs, rows: np.ndarray) -> dict[str, float]:
    probabilities = predict(model, inputs, rows)
    labels = inputs.labels[torch.from_numpy(rows)].numpy()
    return {"auc": roc_auc(labels, probabilities), "logloss": log_loss(labels, probabilities)}


def fit(
    model: DeepFM,
    inputs: RankerInputs,
    train_rows: np.ndarray,
    val_rows: np.ndarray,
    config: TrainConfig,
    on_epoch: Callable[[EpochLog], None] | None = None,
    show_progress: bool = True,
) -> list[EpochLog]:
    """Train with Adam; keep the weights of the epoch with the best validation AUC."""
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    loss_fn = nn.BCEWithLogitsLoss()
    train_index = torch.from_numpy(train_rows)
    history: list[EpochLog] = []
    best_auc, best_state, stale = -1.0, copy.deepcopy(model.state_dict()), 0

    for epoch in range(1, config.epochs + 1):
        model.train()
        start = time.perf_counter()
        order = train_index[torch.randperm(train_index.numel(), generator=generator)]
        batches = order.split(config.batch_size)
        bar = tqdm(
            batches,
            desc=f"epoch {epoch}/{config.epochs}",
            unit="batch",
            disable=not show_progress,
            leave=False,
        )
        total_loss, seen = 0.0, 0
        for index in bar:
            user, item, multi, labels = inputs.batch(index)
            logits = model(user, item, multi)
            loss = loss_fn(logits, labels)
            if config.embedding_l2 > 0:
                loss = loss + config.embedding_l2 * model.embedding_penalty(user, item, multi)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * index.numel()
            seen += index.numel()
            elapsed = time.perf_counter() - start
            bar.set_postfix(loss=f"{total_loss / seen:.4f}", rows_per_s=f"{seen / elapsed:,.0f}")
        val = evaluate(model, inputs, val_rows)
        log = EpochLog(
            epoch,
            total_loss / max(seen, 1),
            val["auc"],
            val["logloss"],
            time.perf_counter() - start,
        )
        history.append(log)
        if on_epoch:
            on_epoch(log)
        if val["auc"] > best_auc:
            best_auc, best_state, stale = val["auc"], copy.deepcopy(model.state_dict()), 0
        else:
            stale += 1
            if stale >= config.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    return history
