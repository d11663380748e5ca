"""`recserve train` and `recserve data`: the training side of the command line."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

from .data import (
    InteractionData,
    fetch_movielens_100k,
    load_movielens_100k,
    make_synthetic_movielens,
)
from .ranker import train_deepfm
from .trainer import EpochLog, TrainConfig

MODELS = ("deepfm",)


def load_data(spec: str, data_dir: Path) -> InteractionData:
    """``ml-100k`` (fetched into ``data_dir`` when missing), ``synthetic``, or a directory."""
    if spec == "ml-100k":
        return load_movielens_100k(fetch_movielens_100k(data_dir, progress=print_stderr))
    if spec == "synthetic":
        return make_synthetic_movielens()
    path = Path(spec)
    if path.is_dir():
        return load_movielens_100k(path)
    raise SystemExit(
        f"--data {spec!r}: expected 'ml-100k', 'synthetic' or a directory holding MovieLens-100k"
    )


def print_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def read_config(path: Path | None, overrides: dict[str, object]) -> TrainConfig:
    values: dict[str, object] = {}
    if path is not None:
        values = json.loads(path.read_text())
        known = {f.name for f in fields(TrainConfig)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SystemExit(f"{path}: unknown settings {unknown}; known: {sorted(known)}")
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**values)


def train_command(args: argparse.Namespace) -> int:
    config = read_config(args.config, {"epochs": args.epochs, "seed": args.seed})
    data = load_data(args.data, args.data_dir)
    print_stderr(
        f"training {args.model} on {data.name}: {data.user_id.size:,} interactions, "
        f"{data.users.user_id.size:,} users, {data.items.item_id.size:,} items"
    )

    def on_epoch(log: EpochLog) -> None:
        print_stderr(
            f"epoch {log.epoch:>2}: train loss {log.train_loss:.4f}  val AUC {log.val_auc:.4f}"
            f"  val LogLoss {log.val_logloss:.4f}  ({log.seconds:.1f}s)"
        )

    trained = train_deepfm(data, config, on_epoch, show_progress=sys.stderr.isatty())
    m = trained.metrics
    print(
        f"test AUC {m['test_auc']:.4f}  test LogLoss {m['test_logloss']:.4f}  "
        f"({m['epochs']:.0f} epochs, {m['train_seconds']:.0f}s)"
    )
    path = trained.export(args.model_repo, args.name or args.model, data.name)
    print(f"exported {path}")
    return 0


def data_command(args: argparse.Namespace) -> int:
    if args.dataset != "ml-100k":
        raise SystemExit(f"unknown data set {args.dataset!r}; available: ml-100k")
    path = fetch_movielens_100k(args.data_dir, progress=print_stderr)
    print(path)
    return 0
