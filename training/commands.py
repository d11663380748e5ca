"""`recserve train` and `recserve data`: the training side of the command line."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

from .data import (
    InteractionData,
    fetch_movielens_100k,
    load_movielens_100k,
    make_synthetic_movielens,
)
from .registry import MODELS


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


def read_config(config_type: type, path: Path | None, overrides: dict[str, object]) -> Any:
    """The model's settings: dataclass defaults, then ``path`` (JSON), then ``overrides``."""
    values: dict[str, object] = {}
    known = {f.name for f in fields(config_type)}
    if path is not None:
        values = json.loads(path.read_text())
        unknown = sorted(set(values) - known)
        if unknown:
            raise SystemExit(f"{path}: unknown settings {unknown}; known: {sorted(known)}")
    values.update({k: v for k, v in overrides.items() if v is not None and k in known})
    return config_type(**values)


def train_command(args: argparse.Namespace) -> int:
    entry = MODELS.get(args.model)
    if entry is None:
        raise SystemExit(f"unknown model {args.model!r}; available: {', '.join(sorted(MODELS))}")
    config = read_config(entry.config_type, args.config, {"epochs": args.epochs, "seed": args.seed})
    data = load_data(args.data, args.data_dir)
    print_stderr(
        f"training {entry.name} on {data.name}: {data.user_id.size:,} interactions, "
        f"{data.users.user_id.size:,} users, {data.items.item_id.size:,} items"
    )
    trained = entry.train(data, config, print_stderr, sys.stderr.isatty())
    m = trained.metrics
    headline = "  ".join(f"{label} {m[key]:.4f}" for key, label in entry.headline)
    print(f"{headline}  ({m.get('epochs', 0):.0f} epochs, {m.get('train_seconds', 0):.0f}s)")
    path = trained.export(args.model_repo, args.name or entry.name, data.name)
    print(f"exported {path}")
    return 0


def data_command(args: argparse.Namespace) -> int:
    if args.dataset != "ml-100k":
        raise SystemExit(f"unknown data set {args.dataset!r}; available: ml-100k")
    path = fetch_movielens_100k(args.data_dir, progress=print_stderr)
    print(path)
    return 0
