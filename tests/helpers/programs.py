"""Ranker programs for the program-format tests: weights spread like a trained model's,
and the eager model's scores to compare served ones with."""

from __future__ import annotations

import numpy as np
import torch


def spread_weights(model: torch.nn.Module) -> torch.nn.Module:
    """Every weight drawn wider than at initialisation, so that the logits spread over
    several units both ways as a trained model's do (at initialisation they sit within
    0.1 of one value, where any rounding passes a relative bound)."""
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return model


def eager_scores(model, tables, user_row: int, item_rows: np.ndarray) -> np.ndarray:
    """The eager ranker's scores (sigmoids, float64) of one user against item rows."""
    n = item_rows.size
    with torch.no_grad():
        logits = model(
            torch.from_numpy(tables["user_features"][user_row : user_row + 1]).expand(n, -1),
            torch.from_numpy(tables["item_features"][item_rows]),
            torch.from_numpy(tables["item_multi"][item_rows]),
        ).double()
    return torch.sigmoid(logits).numpy()
