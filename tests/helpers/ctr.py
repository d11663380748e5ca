"""The small field layout the CTR model tests share, and random inputs for it."""

from __future__ import annotations

from typing import Any

import torch

USER, ITEM, MULTI, WIDTHS = [6, 3], [9, 4], [7], [3]


def make_ctr_model(model_type: type[torch.nn.Module], **kwargs: Any) -> torch.nn.Module:
    """A ``model_type`` over the shared layout, seeded, in eval mode."""
    torch.manual_seed(0)
    model = model_type(USER, ITEM, MULTI, WIDTHS, embedding_dim=5, hidden=[8, 4], **kwargs)
    return model.eval()


def random_inputs(batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    user = torch.stack([torch.randint(0, c, (batch,)) for c in USER], dim=1)
    item = torch.stack([torch.randint(0, c, (batch,)) for c in ITEM], dim=1)
    multi = torch.randint(0, MULTI[0], (batch, WIDTHS[0]))
    return user, item, multi
