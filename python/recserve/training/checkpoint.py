"""Training checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint is one ``torch.save`` of a dict of tensors and plain types (model and
optimizer state, epoch, history, best state, RNG states, settings), written after each
epoch to ``<run dir>/checkpoint.pt`` through a temporary file renamed into place, so a
crash mid-write leaves the previous checkpoint intact and no partial file behind.
Checkpoints are a training-side convenience; artifacts stay pickle-free.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

CHECKPOINT = "checkpoint.pt"
CURVES = "curves.png"


def checkpoint_path(run_dir: str | os.PathLike[str]) -> Path:
    return Path(run_dir) / CHECKPOINT


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``state`` to ``path`` atomically: a temporary file beside it, then os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The state saved by :func:`save_checkpoint` (tensors and plain types only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no checkpoint at {path}; train with --run-dir {path.parent} first"
        )
    return torch.load(path, map_location="cpu", weights_only=True)


def restore_optimizer(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """Load an optimizer's running state (moments, step counts) from a checkpoint but keep
    the settings it was built with, so a changed learning rate applies on ``--resume``."""
    settings = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    optimizer.load_state_dict(saved)
    for group, setting in zip(optimizer.param_groups, settings, strict=True):
        group.update(setting)
