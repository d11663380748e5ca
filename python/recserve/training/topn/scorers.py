"""Scorers for the evaluation protocol: every item's score for a batch of users."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..models.gru4rec import GRU4Rec
from .loop import Scorer


def user_scorer(model: nn.Module) -> Scorer:
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


def sequence_scorer(model: GRU4Rec, max_length: int) -> Scorer:
    @torch.inference_mode()
    def score(users: np.ndarray, histories: list[np.ndarray]) -> np.ndarray:
        model.eval()
        return model.scores(model(pad_right(histories, max_length))).numpy()

    return score
