"""Most-popular baseline: every user gets the catalog ordered by training interactions.

Reference: the non-personalised "POP" baseline of Rendle et al., "BPR: Bayesian
Personalized Ranking from Implicit Feedback", UAI 2009.
"""

from __future__ import annotations

import torch
from torch import nn


class Popularity(nn.Module):
    r"""Scores every item by how often it occurs in the training data.

    .. math:: s(u, i) = \frac{|\{(v, i) \in \mathcal{D}_{train}\}|}{|\mathcal{D}_{train}|}

    Args:
        num_items: catalog size; item rows are ``0 .. num_items - 1``.

    Example::

        >>> model = Popularity(4)
        >>> model.fit(torch.tensor([1, 1, 3, 1]))
        >>> model(torch.tensor([0, 7]))
        tensor([[0.0000, 0.7500, 0.0000, 0.2500],
                [0.0000, 0.7500, 0.0000, 0.2500]])
    """

    def __init__(self, num_items: int) -> None:
        super().__init__()
        self.register_buffer("frequency", torch.zeros(num_items))

    def fit(self, item_rows: torch.Tensor) -> None:
        """Count the training interactions' item rows."""
        counts = torch.bincount(item_rows, minlength=self.frequency.numel()).to(torch.float32)
        self.frequency.copy_(counts / max(item_rows.numel(), 1))

    def forward(self, users: torch.Tensor) -> torch.Tensor:
        # users: int64 [B] (unused: the same order for everyone)
        return self.frequency.unsqueeze(0).expand(users.shape[0], -1)  # [B, I]
