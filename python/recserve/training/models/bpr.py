"""Matrix factorisation trained with Bayesian Personalized Ranking.

Reference: Rendle et al., "BPR: Bayesian Personalized Ranking from Implicit Feedback",
UAI 2009.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BPRMF(nn.Module):
    r"""User and item embeddings plus an item bias, scored by inner product.

    .. math:: s(u, i) = \langle p_u, q_i \rangle + b_i

    trained on triples (u, i, j) of a user, an item they interacted with and a uniformly
    sampled item they did not, with :func:`bpr_loss`.

    Args:
        num_users: users; user rows are ``0 .. num_users - 1``.
        num_items: items; item rows are ``0 .. num_items - 1``.
        embedding_dim: size d of ``p_u`` and ``q_i``.

    Example::

        >>> _ = torch.manual_seed(0)
        >>> model = BPRMF(num_users=3, num_items=5, embedding_dim=4)
        >>> model(torch.tensor([0, 2])).shape
        torch.Size([2, 5])
        >>> model.score_pairs(torch.tensor([0]), torch.tensor([4])).shape
        torch.Size([1])
    """

    def __init__(self, num_users: int, num_items: int, embedding_dim: int = 64) -> None:
        super().__init__()
        self.user_embedding = nn.Embedding(num_users, embedding_dim)
        self.item_embedding = nn.Embedding(num_items, embedding_dim)
        self.item_bias = nn.Embedding(num_items, 1)
        nn.init.normal_(self.user_embedding.weight, std=0.1)
        nn.init.normal_(self.item_embedding.weight, std=0.1)
        nn.init.zeros_(self.item_bias.weight)

    def score_pairs(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        # users, items: int64 [B]
        p = self.user_embedding(users)  # [B, d]
        q = self.item_embedding(items)  # [B, d]
        return (p * q).sum(-1) + self.item_bias(items).squeeze(-1)  # [B]

    def forward(self, users: torch.Tensor) -> torch.Tensor:
        # users: int64 [B]
        p = self.user_embedding(users)  # [B, d]
        return p @ self.item_embedding.weight.T + self.item_bias.weight.T  # [B, I]

    def vectors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(user [U, d + 1], item [I, d + 1]) with the bias folded in: s = <u, x>."""
        users = self.user_embedding.weight
        ones = torch.ones(users.shape[0], 1, dtype=users.dtype)
        items = torch.cat([self.item_embedding.weight, self.item_bias.weight], dim=1)
        return torch.cat([users, ones], dim=1).detach(), items.detach()


def bpr_loss(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    r""":math:`-\frac{1}{B}\sum \ln \sigma(s_{ui} - s_{uj})`."""
    return -F.logsigmoid(positive - negative).mean()
