"""Trains the top-N recommenders (popularity, BPR-MF, GRU4Rec/LSTM) and evaluates them.

Every model is trained on the training part of a leave-one-out split
(``training/evaluation.py``), early-stopped on validation NDCG@10 (the weights of the
best validation epoch are kept), and reported on the test items with the same code.
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
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from recserve.engine.schema import FeatureSchema, FeatureSpec

from .checkpoint import (
    CURVES,
    checkpoint_path,
    load_checkpoint,
    restore_optimizer,
    save_checkpoint,
)
from .data import InteractionData
from .evaluation import LeaveOneOut, evaluate_topn, leave_one_out
from .export import export_embedding, export_generator, export_sequence
from .features import encode_movielens
from .models.bpr import BPRMF, bpr_loss
from .models.cfgan import CFGAN
from .models.gru4rec import GRU4Rec
from .models.popularity import Popularity

SPLIT = "leave-one-out by time (last = test, second last = validation)"
Report = Callable[[str], None]


@dataclass
class PopConfig:
    """Most-popular has nothing to learn; the seed is kept for a uniform interface."""

    seed: int = 42

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class BPRConfig:
    """BPR-MF settings; saved in the artifact's manifest."""

    seed: int = 42
    epochs: int = 100  # upper bound; early stopping usually ends sooner
    patience: int = 5  # epochs without a better validation NDCG@10 before stopping
    batch_size: int = 1024  # (user, positive, negative) triples per step
    learning_rate: float = 5e-3
    embedding_dim: int = 64
    l2: float = 1e-4  # L2 on the embedding rows a batch uses, per triple
    num_threads: int = 1

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class SequenceConfig:
    """GRU4Rec / LSTM settings; saved in the artifact's manifest."""

    seed: int = 42
    cell: str = "gru"  # "gru" (GRU4Rec) or "lstm"
    epochs: int = 40  # upper bound; early stopping usually ends sooner
    patience: int = 3  # epochs without a better validation NDCG@10 before stopping
    batch_size: int = 64  # sequence windows per step
    max_length: int = 50  # items of history the model reads (training windows and serving)
    learning_rate: float = 3e-3
    embedding_dim: int = 64
    hidden_size: int = 128
    num_layers: int = 1
    dropout: float = 0.2
    weight_decay: float = 0.0
    num_threads: int = 1

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class LSTMConfig(SequenceConfig):
    """The LSTM variant of GRU4Rec: the same settings with ``cell="lstm"``."""

    cell: str = "lstm"


@dataclass
class TopNEpochLog:
    epoch: int
    train_loss: float
    val_ndcg: float
    val_hr: float
    seconds: float
    losses: dict[str, float] = field(default_factory=dict)  # every named training loss


@dataclass
class TopNData:
    """A data set prepared for top-N training: split plus the tables an artifact carries."""

    split: LeaveOneOut
    schema: FeatureSchema
    tables: dict[str, np.ndarray]  # user_ids, item_ids, item_titles, seen_*, history_*


def prepare_topn(data: InteractionData) -> TopNData:
    """Encode ids with the ranker's encoding, split leave-one-out, build serving tables."""
    encoded = encode_movielens(data)
    t = encoded.tables
    num_users, num_items = t["user_ids"].size, t["item_ids"].size
    split = leave_one_out(
        encoded.user_rows, encoded.item_rows, data.timestamp, num_users, num_items
    )
    # every interaction, time-ordered per user: what the served model knows of each user
    order = np.lexsort((np.arange(data.timestamp.size), data.timestamp, encoded.user_rows))
    history_indptr = np.zeros(num_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(encoded.user_rows, minlength=num_users), out=history_indptr[1:])
    train_items = split.train_items
    popularity = np.bincount(train_items, minlength=num_items).astype(np.float32)
    tables = {
        key: t[key] for key in ("user_ids", "item_ids", "item_titles", "seen_indptr", "seen_items")
    }
    tables["history_indptr"] = history_indptr
    tables["history_items"] = np.ascontiguousarray(encoded.item_rows[order], dtype=np.int64)
    tables["popularity"] = popularity / max(train_items.size, 1)
    schema = FeatureSchema(
        (
            FeatureSpec.id("user_id", "user", num_users),
            FeatureSpec.id("item_id", "item", num_items),
        )
    )
    return TopNData(split, schema, tables)


@dataclass
class TrainedTopN:
    """A trained top-N model with its metrics; ``export`` writes its artifact."""

    name: str  # pop, bpr, gru4rec, lstm, cfgan
    model: nn.Module
    prepared: TopNData
    config: Any
    history: list[TopNEpochLog]
    metrics: dict[str, float]  # test_/val_ hr@10, ndcg@10, mrr@10; epochs; train_seconds

    def export(self, repo: str | os.PathLike[str], name: str, data_name: str) -> Path:
        config = {**self.config.to_json(), "model": self.name, "data": data_name, "split": SPLIT}
        if isinstance(self.model, GRU4Rec):
            return export_sequence(
                self.model,
                self.prepared.schema,
                self.prepared.tables,
                repo,
                name,
                max_length=self.config.max_length,
                metrics=self.metrics,
                config=config,
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


# -- scoring for the evaluation protocol ---------------------------------------------


def user_scorer(model: nn.Module) -> Callable[[np.ndarray, list[np.ndarray]], np.ndarray]:
    """Scores of models that take user rows (popularity, BPR-MF)."""

    @torch.inference_mode()
    def score(users: np.ndarray, histories: list[np.ndarray]) -> np.ndarray:
        model.eval()
        return model(torch.from_numpy(users)).numpy()

    return score


def pad_right(histories: list[np.ndarray], max_length: int) -> torch.Tensor:
    """Item rows -> int64 [B, L] of rows + 1, newest last, left-padded with 0."""
    width = max(1, min(max_length, max((h.size for h in histories), default=1)))
    out = np.zeros((len(histories), width), dtype=np.int64)
    for b, history in enumerate(histories):
        tail = history[-width:]
        if tail.size:
            out[b, width - tail.size :] = tail + 1
    return torch.from_numpy(out)


def sequence_scorer(
    model: GRU4Rec, max_length: int
) -> Callable[[np.ndarray, list[np.ndarray]], np.ndarray]:
    @torch.inference_mode()
    def score(users: np.ndarray, histories: list[np.ndarray]) -> np.ndarray:
        model.eval()
        return model.scores(model(pad_right(histories, max_length))).numpy()

    return score


def topn_metrics(
    score: Callable[[np.ndarray, list[np.ndarray]], np.ndarray],
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


# -- popularity ------------------------------------------------------------------------


def train_popularity(
    data: InteractionData, config: PopConfig, report: Report | None = None, progress: bool = False
) -> TrainedTopN:
    started = time.perf_counter()
    prepared = prepare_topn(data)
    model = Popularity(prepared.split.num_items)
    model.fit(torch.from_numpy(prepared.split.train_items))
    metrics = topn_metrics(user_scorer(model), prepared.split, 1, started)
    return TrainedTopN("pop", model, prepared, config, [], metrics)


# -- early stopping loop shared by BPR and the sequence models -------------------------


def fit_topn(
    model: nn.Module,
    run_epoch: Callable[[int], float | dict[str, float]],
    score: Callable[[np.ndarray, list[np.ndarray]], np.ndarray],
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
            from .curves import plot_curves

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


# -- BPR-MF ----------------------------------------------------------------------------


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


def start_run(data: InteractionData, config: Any) -> tuple[float, TopNData, torch.Generator]:
    """What every epoch-trained top-N model does first: threads, clock, data, seeds.

    Returns the start time, the prepared data and the generator that drives shuffling
    and negative sampling (saved in checkpoints so a resumed run draws the same)."""
    torch.set_num_threads(config.num_threads)
    started = time.perf_counter()
    prepared = prepare_topn(data)
    torch.manual_seed(config.seed)
    return started, prepared, torch.Generator().manual_seed(config.seed)


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


# -- GRU4Rec / LSTM --------------------------------------------------------------------


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
    model = GRU4Rec(
        split.num_items,
        embedding_dim=config.embedding_dim,
        hidden_size=config.hidden_size,
        num_layers=config.num_layers,
        dropout=config.dropout,
        cell=config.cell,
    )
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

    name = config.cell if config.cell == "lstm" else "gru4rec"
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
