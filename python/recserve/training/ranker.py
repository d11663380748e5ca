"""Trains a CTR ranker (MLP, Wide&Deep, DeepFM, DCN-v2) on an interaction data set and
exports it."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from recserve.engine.artifact import Artifact
from recserve.engine.crossing import crossing_from_artifact

from . import distributed
from .data import InteractionData
from .export import export_ranker
from .features import EncodedData, encode_movielens, random_split
from .metrics import roc_auc
from .trainer import EpochLog, RankerInputs, TrainConfig, build_ranker, evaluate, fit


@dataclass
class TrainedRanker:
    model: nn.Module
    encoded: EncodedData
    config: TrainConfig
    history: list[EpochLog]
    metrics: dict[str, float]  # test_auc, test_logloss, val_auc, train_seconds, ...
    family: str = "deepfm"  # the model name, e.g. "dcnv2"

    def export(
        self,
        repo: str | os.PathLike[str],
        name: str,
        data_name: str,
        program_format: str = "torchscript",
        aoti_target: str | None = None,
    ) -> Path:
        return export_ranker(
            self.model,
            self.encoded,
            repo,
            name,
            family=self.family,
            metrics=self.metrics,
            config={**self.config.to_json(), "data": data_name, "split": "random 80/10/10"},
            extra={"label": f"rating >= {self.config.positive_rating:g}"},
            program_format=program_format,
            aoti_target=aoti_target,
        )


def _metrics(
    model: nn.Module, inputs: RankerInputs, rows: tuple[np.ndarray, ...], history: list[EpochLog]
) -> dict[str, float]:
    _, val_rows, test_rows = rows
    workers = distributed.current()  # in a process group: scored in parts, gathered
    val = evaluate(model, inputs, val_rows, workers)
    test = evaluate(model, inputs, test_rows, workers)
    best = max(history, key=lambda h: h.val_auc) if history else None
    return {
        "test_auc": test["auc"],
        "test_logloss": test["logloss"],
        "val_auc": val["auc"],
        "val_logloss": val["logloss"],
        "epochs": float(len(history)),
        "best_epoch": float(best.epoch if best else 0),
        "train_seconds": history[-1].elapsed if history else 0.0,
    }


def labelled_data(data: InteractionData, config: TrainConfig) -> EncodedData:
    """``data`` encoded for a ranker, labels from ``config.positive_rating``, with the
    torch threads the run asks for; refuses data whose labels are all the same."""
    torch.set_num_threads(config.num_threads)
    encoded = encode_movielens(data, config.positive_rating)
    if encoded.labels.min() == encoded.labels.max():
        raise ValueError(
            f"{data.name}: every interaction gets the same label (rating >= "
            f"{config.positive_rating:g} is {'true' if encoded.labels[0] else 'false'} for all); "
            "a CTR ranker needs rated data. For implicit feedback use --model pop, bpr, "
            "gru4rec or lstm, or add a rating column to the log's schema"
        )
    return encoded


def train_ranker(
    name: str,
    data: InteractionData,
    config: TrainConfig,
    on_epoch: Callable[[EpochLog], None] | None = None,
    show_progress: bool = True,
    run_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    run_info: dict[str, Any] | None = None,
) -> TrainedRanker:
    """Random 80/10/10 split by ``config.seed``, train ranker ``name``, report test AUC
    and LogLoss. ``run_dir``/``resume``: checkpoints and curves, see ``trainer.fit``."""
    encoded = labelled_data(data, config)
    rows = random_split(encoded.labels.size, config.seed)
    inputs = RankerInputs(encoded)
    torch.manual_seed(config.seed)
    model = build_ranker(name, encoded, config)
    info = {"model_name": name, **(run_info or {})}
    history = fit(
        model, inputs, rows[0], rows[1], config, on_epoch, show_progress, run_dir, resume, info
    )
    return TrainedRanker(
        model, encoded, config, history, _metrics(model, inputs, rows, history), name
    )


def served_auc(
    artifact: Artifact, encoded: EncodedData, rows: np.ndarray, head_dtype: str = "float32"
) -> float:
    """AUC of interaction ``rows`` of ``encoded`` scored as the server scores them: through
    the artifact's crossing path with its head in ``head_dtype`` (recserve.engine.crossing), one
    call per user. ``encoded`` must be the data the artifact was exported from."""
    crossing = crossing_from_artifact(artifact, head_dtype)
    if crossing is None:
        raise ValueError(f"{artifact.path}: no crossing block to score with")
    users, items = encoded.user_rows[rows], encoded.item_rows[rows]
    order = np.argsort(users, kind="stable")
    bounds = np.flatnonzero(np.diff(users[order])) + 1
    logits = np.empty(rows.size, dtype=np.float32)
    for group in np.split(order, bounds) if rows.size else []:
        user_features = encoded.tables["user_features"][users[group[0]]]
        logits[group] = crossing.logits(user_features, items[group])
    return roc_auc(encoded.labels[rows], logits)


def ranker_from_checkpoint(
    state: dict[str, Any], data: InteractionData, config_type: type[TrainConfig]
) -> TrainedRanker:
    """The best state of a run's checkpoint as a trained ranker, metrics recomputed on
    ``data`` (the run's data set, split again by the run's seed)."""
    known = {f.name for f in fields(config_type)}
    config = config_type(**{k: v for k, v in state["config"].items() if k in known})
    encoded = labelled_data(data, config)
    rows = random_split(encoded.labels.size, config.seed)
    model = build_ranker(state["model_name"], encoded, config)
    model.load_state_dict(state["best_state"])
    model.eval()
    history = [EpochLog(**h) for h in state["history"]]
    metrics = _metrics(model, RankerInputs(encoded), rows, history)
    return TrainedRanker(model, encoded, config, history, metrics, state["model_name"])
