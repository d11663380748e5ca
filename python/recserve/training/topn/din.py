"""The DIN ranker of a sequence retriever's candidates, trained for what a cascade asks:
which of the retrieved items the user interacts with next.

Two stages, each on positions the other parts of the model have not been fitted to:

1. The learned signals (user match, target attention over the last items) are trained on
   the positions of each user's training sequence: the label is the next item, the
   negatives are the retriever's best items at that position that were not next (hard
   ones) plus uniform ones, with a softmax over each list.
2. The blend of those signals with the retriever's score is fitted on the two positions
   the retriever itself held out of its training (each user's validation and test item of
   the same leave-one-out split), over the retriever's top ``retrieve_n``: there the
   retriever's score is as good as it will be in serving, not over-fitted. A share of the
   users (``1 - blend_users``) is kept out of the blend and gives the test metrics,
   next to the retriever alone on the same lists.

The retriever is read from the model repository (newest version) and must have been
trained on the same data, so its held-out positions are the ones used here.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from recserve.engine.artifact import Artifact, list_versions, load_artifact

from ..data import InteractionData
from ..evaluation import LeaveOneOut
from ..export import EXAMPLE_ROWS, TOPN_TABLES, program_of, save_artifact
from ..models.din import DIN
from .config import DINConfig
from .loop import Report, epoch_bar
from .prepare import SPLIT, TopNData, start_run
from .scorers import pad_right


class Retriever:
    """A served sequence retriever's scores for item windows, as the server computes them."""

    def __init__(self, artifact: Artifact) -> None:
        if artifact.family != "sequence":
            raise ValueError(
                f"the DIN ranker learns from a sequence retriever's candidates (gru4rec, "
                f"lstm, sasrec); {artifact.name!r} is a {artifact.family!r} model"
            )
        self.artifact = artifact
        self.encoder = artifact.modules["encoder"]
        self.item_vectors = torch.from_numpy(np.asarray(artifact.tables["item_vectors"]))
        self.max_history = int(artifact.manifest.get("max_history", 50))

    def scores(self, sequences: list[np.ndarray]) -> torch.Tensor:
        """float32 [len(sequences), I]: each item sequence's scores over the catalog."""
        with torch.no_grad():
            state = self.encoder(right_aligned(sequences, self.max_history))
            return state @ self.item_vectors.T


def load_retriever(model_repo: str | os.PathLike[str], name: str, prepared: TopNData) -> Retriever:
    """The newest version of ``name``, checked to be trained on ``prepared``'s data."""
    model_dir = Path(model_repo) / name
    versions = list_versions(model_dir)
    if not versions:
        raise ValueError(
            f"no model {name!r} in {model_repo}: the DIN ranker learns from its candidates; "
            f"train it first on the same data (`recserve train --model {name} --model-repo "
            f"{model_repo}`)"
        )
    retriever = Retriever(load_artifact(model_dir / str(versions[-1])))
    for key in ("user_ids", "item_ids", "history_indptr", "history_items"):
        if not np.array_equal(retriever.artifact.tables[key], prepared.tables[key]):
            raise ValueError(
                f"{model_dir}/{versions[-1]} was trained on other data ({key} differ); "
                f"retrain {name} on this data set first"
            )
    return retriever


def right_aligned(sequences: list[np.ndarray], width: int) -> torch.Tensor:
    """Item rows + 1, newest last, the last ``width`` of each, 0 = left padding: exactly
    [N, width], so the lists of all users stack."""
    padded = pad_right(sequences, width)
    return F.pad(padded, (width - padded.shape[1], 0))


@dataclass
class SignalLists:
    """Stage 1: per training position, the user, history, and [next item, negatives]."""

    users: torch.Tensor  # int64 [N], user row + 1
    history: torch.Tensor  # int64 [N, L]
    candidates: torch.Tensor  # int64 [N, 1 + H + R], item rows + 1; the next item first


def signal_lists(
    split: LeaveOneOut, retriever: Retriever, config: DINConfig, rng: np.random.Generator
) -> SignalLists:
    users, histories, candidates = [], [], []
    num_items = split.num_items
    for user in range(split.num_users):
        sequence = split.train_sequence(user)
        if sequence.size < 2:
            continue
        prefixes = [sequence[:t] for t in range(1, sequence.size)]
        scores = retriever.scores(prefixes).numpy()  # [T - 1, I]
        first_seen = np.full(num_items, sequence.size)
        first_seen[sequence[::-1]] = np.arange(sequence.size)[::-1]
        positions = np.arange(1, sequence.size)
        scores[first_seen[None, :] < positions[:, None]] = -np.inf  # seen before t
        nexts = sequence[1:]
        scores[np.arange(nexts.size), nexts] = -np.inf  # the next item is no negative
        # With fewer unseen items than hard_negatives, the rest are seen items or the next
        # item itself, which the loss masks.
        n_hard = min(config.hard_negatives, num_items - 1)
        hard = np.argpartition(-scores, n_hard, axis=1)[:, :n_hard]
        uniform = rng.integers(0, num_items, (nexts.size, config.random_negatives))
        candidates.append(np.concatenate([nexts[:, None], hard, uniform], axis=1) + 1)
        histories.append(right_aligned(prefixes, config.max_length))
        users.append(np.full(nexts.size, user + 1))
    if not users:
        raise ValueError("no user has two training interactions; nothing to learn from")
    return SignalLists(
        torch.from_numpy(np.concatenate(users)),
        torch.cat(histories),
        torch.from_numpy(np.concatenate(candidates)),
    )


@dataclass
class RetrievedLists:
    """Stage 2: per held-out position, the retriever's top ``retrieve_n`` for the user."""

    users: torch.Tensor  # int64 [N], user row + 1
    history: torch.Tensor  # int64 [N, L]
    candidates: torch.Tensor  # int64 [N, C], item rows + 1, the retriever's order
    retriever_scores: torch.Tensor  # float32 [N, C]
    target: torch.Tensor  # int64 [N]: the next item's place in candidates, -1 = absent

    def subset(self, keep: np.ndarray) -> RetrievedLists:
        index = torch.from_numpy(np.flatnonzero(keep))
        return RetrievedLists(*(t[index] for t in vars(self).values()))


def retrieved_lists(
    split: LeaveOneOut, retriever: Retriever, config: DINConfig, stage: str
) -> RetrievedLists:
    """Lists at the ``stage`` ("val" or "test") position of every user who has one."""
    targets = split.targets(stage)
    users = np.flatnonzero(targets >= 0)
    histories = [split.history(int(u), stage) for u in users]
    scores = retriever.scores(histories)
    for row, history in enumerate(histories):
        scores[row, torch.from_numpy(history)] = -torch.inf  # served answers exclude them
    n = min(config.retrieve_n, split.num_items)
    values, rows = torch.topk(scores, n, dim=1)
    hits = rows == torch.from_numpy(targets[users])[:, None]
    target = torch.where(hits.any(dim=1), hits.int().argmax(dim=1), -1)
    lists = RetrievedLists(
        torch.from_numpy(users + 1),
        right_aligned(histories, config.max_length),
        rows + 1,
        values.float(),
        target,
    )
    # A user with fewer unseen items than retrieve_n gets a shorter answer from the
    # server; such lists (only in catalogs this small) are left out.
    return lists.subset(torch.isfinite(values).all(dim=1).numpy())


def list_metrics(scores: torch.Tensor, target: torch.Tensor, k: int = 10) -> dict[str, float]:
    """HR/NDCG/MRR@k of the target's place when each list is ordered by ``scores``."""
    mine = scores.gather(1, target.clamp(min=0)[:, None])
    found = (target >= 0) & torch.isfinite(mine[:, 0])  # a NaN score ranks nowhere
    rank = (scores > mine).sum(dim=1).float()  # places ahead of the target
    hit = found & (rank < k)
    n = max(int(target.numel()), 1)
    return {
        f"hr@{k}": float(hit.sum()) / n,
        f"ndcg@{k}": float((hit / torch.log2(rank + 2)).sum()) / n,
        f"mrr@{k}": float((hit / (rank + 1)).sum()) / n,
    }


def ranked(model: DIN, lists: RetrievedLists) -> torch.Tensor:
    with torch.no_grad():
        return model(lists.users, lists.history, lists.candidates, lists.retriever_scores)


def fit_signals(
    model: DIN, lists: SignalLists, config: DINConfig, report: Report, progress: bool
) -> list[float]:
    optimizer = torch.optim.Adam(
        [p for name, p in model.named_parameters() if not name.startswith("blend")],
        lr=config.learning_rate,
    )
    losses = []
    for epoch in range(1, config.epochs + 1):
        started = time.perf_counter()
        model.train()
        order = torch.randperm(lists.users.numel())
        batches = order.split(config.batch_size)
        total = 0.0
        for batch in epoch_bar(batches, epoch, config.epochs, progress):
            candidates = lists.candidates[batch]
            user_match, interest = model.signals(
                lists.users[batch], lists.history[batch], candidates
            )
            logits = user_match + interest
            # a uniform negative that is the next item itself is no negative
            clash = candidates == candidates[:, :1]
            clash[:, 0] = False
            loss = F.cross_entropy(logits.masked_fill(clash, -1e9), torch.zeros_like(batch))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * batch.numel()
        losses.append(total / lists.users.numel())
        report(
            f"epoch {epoch:2d}: learned signals, train loss {losses[-1]:.4f}  "
            f"({time.perf_counter() - started:.1f}s)"
        )
    model.eval()
    return losses


def fit_blend(model: DIN, lists: RetrievedLists, config: DINConfig) -> float:
    """Fits only the blend, full batch, on lists that hold the next item (a list without
    it teaches nothing about the order within it)."""
    lists = lists.subset((lists.target >= 0).numpy())
    if lists.target.numel() == 0:
        raise ValueError(
            "no held-out item is among the retriever's top retrieve_n for the users fitting "
            "the blend: nothing to fit it on (raise retrieve_n or use more data)"
        )
    with torch.no_grad():
        user_match, interest = model.signals(lists.users, lists.history, lists.candidates)
    optimizer = torch.optim.Adam(model.blend.parameters(), lr=config.blend_learning_rate)
    loss = torch.zeros(())
    for _ in range(config.blend_steps):
        scores = model.blended(user_match, interest, lists.candidates, lists.retriever_scores)
        loss = F.cross_entropy(scores, lists.target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return loss.item()


def train_din(
    data: InteractionData,
    config: DINConfig,
    report: Report,
    progress: bool,
    model_repo: str | os.PathLike[str],
) -> TrainedDIN:
    started, prepared, _ = start_run(data, config)
    split = prepared.split
    rng = np.random.default_rng(config.seed)
    retriever = load_retriever(model_repo, config.retriever, prepared)
    report(f"ranking the candidates of {retriever.artifact.name} v{retriever.artifact.version}")
    signals = signal_lists(split, retriever, config, rng)
    model = DIN(
        split.num_users,
        split.num_items,
        torch.from_numpy(prepared.tables["popularity"]),
        config.embedding_dim,
    )
    losses = fit_signals(model, signals, config, report, progress)

    held_out = {
        stage: retrieved_lists(split, retriever, config, stage) for stage in ("val", "test")
    }
    blend_users = rng.random(split.num_users) < config.blend_users
    fitting = [lists.subset(blend_users[lists.users.numpy() - 1]) for lists in held_out.values()]
    blend_loss = fit_blend(model, concat(fitting), config)
    report(
        f"blend of {', '.join(f'{w:+.3f}' for w in model.blend.weight[0].tolist())}, "
        f"loss {blend_loss:.4f}"
    )

    metrics: dict[str, float] = {"epochs": float(config.epochs)}
    if losses:  # none with epochs = 0: the blend of the retriever's score and popularity
        metrics["train_loss"] = losses[-1]
    for stage, lists in held_out.items():
        test_users = lists.subset(~blend_users[lists.users.numpy() - 1])
        for key, value in list_metrics(ranked(model, test_users), test_users.target).items():
            metrics[f"{stage}_{key}"] = value
        alone = list_metrics(test_users.retriever_scores, test_users.target)
        for key, value in alone.items():
            metrics[f"{stage}_retriever_{key}"] = value
    report(
        f"on the users kept out of the blend, test NDCG@10 {metrics['test_ndcg@10']:.4f} "
        f"HR@10 {metrics['test_hr@10']:.4f} against {retriever.artifact.name} alone "
        f"{metrics['test_retriever_ndcg@10']:.4f} / {metrics['test_retriever_hr@10']:.4f}"
    )
    metrics["train_seconds"] = time.perf_counter() - started
    return TrainedDIN(model, prepared, config, retriever.artifact, metrics)


def concat(lists: list[RetrievedLists]) -> RetrievedLists:
    fields = [vars(one) for one in lists]
    return RetrievedLists(*(torch.cat([f[key] for f in fields]) for key in fields[0]))


@dataclass
class TrainedDIN:
    model: DIN
    prepared: TopNData
    config: DINConfig
    retriever: Artifact
    metrics: dict[str, float]

    def export(
        self,
        repo: str | os.PathLike[str],
        name: str,
        data_name: str,
        program_format: str = "torchscript",
        aoti_target: str | None = None,
    ) -> Path:
        """The ``din`` artifact; an exported ranker program takes exactly ``max_length``
        history items (the server pads on the left) and any number of candidates."""
        if aoti_target is not None:
            raise ValueError("AOTInductor compilations are stored for rankers' programs only")
        tables = self.prepared.tables
        length, candidates = self.config.max_length, EXAMPLE_ROWS
        example = (
            torch.tensor([1]),
            torch.zeros(1, length, dtype=torch.int64),
            torch.ones(1, candidates, dtype=torch.int64),
            torch.zeros(1, candidates),
        )
        config: dict[str, Any] = {
            **self.config.to_json(),
            "model": "din",
            "data": data_name,
            "split": SPLIT,
        }
        return save_artifact(
            repo,
            name,
            family="din",
            schema=self.prepared.schema,
            modules={"ranker": program_of(self.model, program_format, example, [None, None, 1, 1])},
            tables={key: tables[key] for key in (*TOPN_TABLES, "history_indptr", "history_items")},
            metrics=self.metrics,
            config=config,
            extra={
                "max_history": int(self.config.max_length),
                "retriever": {"name": self.retriever.name, "version": self.retriever.version},
            },
        )
