"""The one place that turns a trained model into an artifact (program + tables)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from recserve.artifact import save_artifact, torchscript_deprecation_silenced

from .features import EncodedData


def script_model(model: nn.Module) -> torch.jit.ScriptModule:
    """TorchScript program of the inference model, in eval mode."""
    model.eval()
    with torchscript_deprecation_silenced():
        return torch.jit.script(model)


def export_ranker(
    model: nn.Module,
    encoded: EncodedData,
    repo: str | os.PathLike[str],
    name: str,
    *,
    family: str,
    metrics: dict[str, float],
    config: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` and the tables it is served with as a new version of ``name``."""
    return save_artifact(
        repo,
        name,
        family=family,
        schema=encoded.schema,
        modules={"model": script_model(model)},
        tables=encoded.tables,
        metrics=metrics,
        config=config,
        extra=extra,
    )
