"""Trains a ranker on encoded interactions with early stopping on validation AUC.

One ``fit`` for every ranker: the model is built by name (``RANKERS``), the settings
are one dataclass per model (``TrainConfig`` and its subclasses). With a run directory,
every epoch writes a checkpoint (``training.checkpoint``) and the training curves
(``training.curves``), and ``resume=True`` continues from the checkpoint to the same
weights as an uninterrupted run.

Under ``torchrun`` (``python -m recserve.training``) ``fit`` trains the model wrapped in
``DistributedDataParallel``, each worker on its part of every global batch; the rules are
in ``training.distributed`` and docs/distributed.md. Without a process group nothing of
that runs and the result is the one-process result.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from . import distributed
from .checkpoint import (
    CURVES,
    checkpoint_path,
    load_checkpoint,
    restore_optimizer,
    save_checkpoint,
)
from .features import EncodedData
from .metrics import log_loss, roc_auc
from .models import MLP, DCNv2, DeepFM, WideDeep

OPTIMIZERS = ("adam", "adagrad")


@dataclass
class TrainConfig:
    """Everything that decides a training run; saved in the artifact's manifest.

    These are DeepFM's settings; the other rankers' dataclasses below change defaults
    or add their own fields.
    """

    seed: int = 42
    epochs: int = 30  # upper bound; early stopping usually ends sooner
    patience: int = 3  # epochs without a better validation AUC before stopping
    batch_size: int = 1024
    optimizer: str = "adam"  # "adam" or "adagrad"
    learning_rate: float = 2e-3  # tuned on validation AUC, see docs/results.md
    weight_decay: float = 0.0
    embedding_dim: int = 16
    hidden: list[int] = field(default_factory=lambda: [256, 128, 64])
    dropout: float = 0.3
    embedding_l2: float = 1e-5  # L2 on the embedding rows a batch uses, per example
    positive_rating: float = 4.0  # label = rating >= this
    num_threads: int = 2

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class MLPConfig(TrainConfig):
    """The seed's MLP: dense 64-32-1 with dropout on the concatenated embeddings."""

    hidden: list[int] = field(default_factory=lambda: [64, 32])
    dropout: float = 0.1  # tuned on validation AUC, see docs/results.md
    embedding_l2: float = 1e-4


@dataclass
class WideDeepConfig(TrainConfig):
    """Wide & Deep: first-order weights over the fields beside DeepFM's MLP."""

    learning_rate: float = 1e-3


@dataclass
class DCNv2Config(TrainConfig):
    """DCN-v2: full-rank cross layers, then the MLP."""

    learning_rate: float = 1e-3
    dropout: float = 0.1  # tuned on validation AUC, see docs/results.md
    cross_layers: int = 1


def _field_sizes(encoded: EncodedData) -> tuple[list[int], list[int], list[int], list[int]]:
    schema = encoded.schema
    return (
        [f.cardinality for f in schema.single_valued("user")],
        [f.cardinality for f in schema.single_valued("item")],
        [f.cardinality for f in schema.multi_valued("item")],
        [f.max_values for f in schema.multi_valued("item")],
    )


def _common(config: TrainConfig) -> dict[str, Any]:
    return dict(embedding_dim=config.embedding_dim, hidden=config.hidden, dropout=config.dropout)


@dataclass(frozen=True)
class Ranker:
    """A CTR ranker family on the training side: its settings and how to build the model
    for a data set's schema."""

    config_type: type[TrainConfig]
    build: Callable[[EncodedData, Any], nn.Module]


# Every ranker family, declared once for training (the registry, the trainer and the
# export read it); serving knows the same names from recserve.engine.artifact
# (RANKER_FAMILIES, and CROSSING_ROLES for those with a fused crossing path), which
# tests/training/test_registry.py holds equal to this.
RANKERS: dict[str, Ranker] = {
    "mlp": Ranker(MLPConfig, lambda e, c: MLP(*_field_sizes(e), **_common(c))),
    "wide_deep": Ranker(WideDeepConfig, lambda e, c: WideDeep(*_field_sizes(e), **_common(c))),
    "deepfm": Ranker(TrainConfig, lambda e, c: DeepFM(*_field_sizes(e), **_common(c))),
    "dcnv2": Ranker(
        DCNv2Config,
        lambda e, c: DCNv2(*_field_sizes(e), **_common(c), cross_layers=c.cross_layers),
    ),
}


def build_ranker(name: str, encoded: EncodedData, config: TrainConfig) -> nn.Module:
    """The ranker ``name`` (a key of ``RANKERS``) sized for ``encoded``'s schema."""
    if name not in RANKERS:
        raise ValueError(f"unknown ranker {name!r}; available: {', '.join(RANKERS)}")
    return RANKERS[name].build(encoded, config)


@dataclass
class EpochLog:
    epoch: int
    train_loss: float
    val_auc: float
    val_logloss: float
    seconds: float  # this epoch, validation included
    elapsed: float = 0.0  # training time of the run so far, across resumes
    remaining: float = 0.0  # estimate for the epochs left up to the maximum


def format_epoch(log: EpochLog) -> str:
    """The per-epoch progress line (also what a log file gets when stderr is no TTY)."""
    return (
        f"epoch {log.epoch:>2}: train loss {log.train_loss:.4f}  val AUC {log.val_auc:.4f}"
        f"  val LogLoss {log.val_logloss:.4f}  ({log.seconds:.1f}s, elapsed "
        f"{_clock(log.elapsed)}, at most {_clock(log.remaining)} left)"
    )


def _clock(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}"


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


@torch.inference_mode()
def predict(
    model: nn.Module,
    inputs: RankerInputs,
    rows: np.ndarray,
    batch: int = 8192,
    workers: distributed.Workers | None = None,
) -> np.ndarray:
    """Probabilities for interaction rows, in row order. With ``workers`` of a process
    group, each worker scores its part of ``rows`` and every worker gets them all."""
    if workers is not None and workers.grouped:
        part = predict(model, inputs, distributed.split_rows(rows, workers), batch)
        return distributed.gather_rows(part, rows.size, workers)
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, rows.size, batch):
        index = torch.from_numpy(rows[start : start + batch])
        user, item, multi, _ = (t.to(device) for t in inputs.batch(index))
        out.append(torch.sigmoid(model(user, item, multi)).cpu().numpy())
    return np.concatenate(out) if out else np.empty(0, dtype=np.float32)


def evaluate(
    model: nn.Module,
    inputs: RankerInputs,
    rows: np.ndarray,
    workers: distributed.Workers | None = None,
) -> dict[str, float]:
    """AUC and LogLoss of ``rows``; with ``workers``, scored in parts (see ``predict``)."""
    probabilities = predict(model, inputs, rows, workers=workers)
    labels = inputs.labels[torch.from_numpy(rows)].numpy()
    return {"auc": roc_auc(labels, probabilities), "logloss": log_loss(labels, probabilities)}


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(
            model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
        )
    if config.optimizer == "adagrad":
        return torch.optim.Adagrad(
            model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
        )
    raise ValueError(f"optimizer {config.optimizer!r} is not one of {OPTIMIZERS}")


def fit(
    model: nn.Module,
    inputs: RankerInputs,
    train_rows: np.ndarray,
    val_rows: np.ndarray,
    config: TrainConfig,
    on_epoch: Callable[[EpochLog], None] | None = None,
    show_progress: bool = True,
    run_dir: str | Path | None = None,
    resume: bool = False,
    run_info: dict[str, Any] | None = None,
) -> list[EpochLog]:
    """Train; keep the weights of the epoch with the best validation AUC.

    ``model`` must have ``embedding_penalty(user, item, item_multi)`` when
    ``config.embedding_l2 > 0``. With ``run_dir``, each epoch writes
    ``checkpoint.pt`` (with ``run_info``, e.g. the model name and data set, stored
    beside the state) and ``curves.png``; ``resume`` continues from that checkpoint.

    In a process group (``training.distributed``) every worker calls ``fit``; worker 0
    alone writes the run directory and calls ``on_epoch``.
    """
    workers = distributed.current()
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    model.to(workers.device)
    optimizer = make_optimizer(model, config)
    loss_fn = nn.BCEWithLogitsLoss()
    train_index = torch.from_numpy(train_rows)
    history: list[EpochLog] = []
    best_auc, best_state, stale = -1.0, copy.deepcopy(model.state_dict()), 0
    first_epoch, prior_seconds = 1, 0.0

    if resume:
        if run_dir is None:
            raise ValueError("resume needs the run directory that holds the checkpoint")
        state = load_checkpoint(checkpoint_path(run_dir))
        model.load_state_dict(state["model_state"])
        restore_optimizer(optimizer, state["optimizer"])
        history = [EpochLog(**h) for h in state["history"]]
        best_auc, best_state, stale = state["best_auc"], state["best_state"], state["stale"]
        torch.set_rng_state(state["torch_rng"])
        generator.set_state(state["shuffle_rng"])
        first_epoch = state["epoch"] + 1
        prior_seconds = history[-1].elapsed if history else 0.0
        if stale >= config.patience:
            first_epoch = config.epochs + 1  # it had stopped early; nothing left to do

    train_model = _data_parallel(model, workers)
    started = time.perf_counter()
    for epoch in range(first_epoch, config.epochs + 1):
        model.train()
        if workers.rank > 0:  # worker 0 keeps the one-process (checkpointed) stream
            torch.manual_seed(distributed.worker_seed(config.seed, workers.rank, epoch))
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
            part = distributed.shard(index, workers)  # all of it with one worker
            rows = part.numel()
            if rows == 0:  # a last batch smaller than the group: one row, weighted 0
                part = index[:1]
            user, item, multi, labels = (t.to(workers.device) for t in inputs.batch(part))
            logits = train_model(user, item, multi)
            loss = loss_fn(logits, labels)
            if config.embedding_l2 > 0:
                loss = loss + config.embedding_l2 * model.embedding_penalty(user, item, multi)
            objective = loss
            if workers.world_size > 1:  # DDP averages: weight by the share of the batch
                objective = loss * distributed.share_weight(rows, index.numel(), workers)
            optimizer.zero_grad(set_to_none=True)
            objective.backward()
            optimizer.step()
            total_loss += loss.item() * rows
            seen += rows
            elapsed = time.perf_counter() - start
            bar.set_postfix(
                loss=f"{total_loss / max(seen, 1):.4f}", rows_per_s=f"{seen / elapsed:,.0f}"
            )
        total_loss, seen = distributed.all_reduce_sums([total_loss, seen], workers)
        val = evaluate(model, inputs, val_rows, workers)
        # worker 0's numbers decide for everyone, so early stopping cannot disagree
        val["auc"], val["logloss"] = distributed.broadcast_floats(
            [val["auc"], val["logloss"]], workers
        )
        now = time.perf_counter()
        epochs_done = epoch - first_epoch + 1
        log = EpochLog(
            epoch,
            total_loss / max(seen, 1),
            val["auc"],
            val["logloss"],
            now - start,
            prior_seconds + now - started,
            (now - started) / epochs_done * (config.epochs - epoch),
        )
        history.append(log)
        if val["auc"] > best_auc:
            best_auc, best_state, stale = val["auc"], copy.deepcopy(model.state_dict()), 0
        else:
            stale += 1
        if stale >= config.patience:
            log.remaining = 0.0
        if on_epoch and workers.is_main:
            on_epoch(log)
        if run_dir is not None and workers.is_main:
            save_checkpoint(
                {
                    **(run_info or {}),
                    "config": config.to_json(),
                    "epoch": epoch,
                    "model_state": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "history": [asdict(h) for h in history],
                    "best_auc": best_auc,
                    "best_state": best_state,
                    "stale": stale,
                    "torch_rng": torch.get_rng_state(),
                    "shuffle_rng": generator.get_state(),
                },
                checkpoint_path(run_dir),
            )
            from .curves import plot_curves

            plot_curves(
                history, Path(run_dir) / CURVES, str((run_info or {}).get("model_name", ""))
            )
        if run_dir is not None:
            distributed.barrier()  # the others wait for worker 0's checkpoint
        if stale >= config.patience:
            break
    model.load_state_dict(best_state)
    model.to("cpu")  # export and the artifact are CPU-side
    model.eval()
    return history


def _data_parallel(model: nn.Module, workers: distributed.Workers) -> nn.Module:
    """``model`` wrapped in ``DistributedDataParallel`` inside a process group, else itself.
    The wrapper shares the model's parameters; checkpoints keep the unwrapped state."""
    if not workers.grouped:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [workers.device.index] if workers.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)
