"""DIN-style ranker of a retriever's candidates: target attention over the user's recent
items, a user-item match, and a learned blend with the retriever's own score."""

from __future__ import annotations

import math

import torch
from torch import nn

BLEND_INPUTS = ("retriever_score", "user_match", "interest", "log_popularity")


class DIN(nn.Module):
    """Scores candidates for "the user interacts with this item next".

    Two learned signals, then a blend:

    - ``user_match``: <user embedding, item embedding>, collaborative filtering;
    - ``interest``: target attention as in DIN: each candidate attends over the user's
      last items (dot-product attention of a projection of the candidate's embedding on
      the history's embeddings), and the pooled history is matched with the candidate;
    - ``blend``: a linear map of [the retriever's score standardised within the request's
      candidates, user_match, interest, log popularity] to the final score.

    Inputs: ``users`` int64 [B] (user row + 1, 0 = unknown), ``history`` int64 [B, L]
    (item rows + 1, 0 = padding), ``candidates`` int64 [B, C] (item rows + 1),
    ``retriever_scores`` float32 [B, C]. Output float32 [B, C].

        >>> model = DIN(num_users=3, num_items=5, popularity=torch.ones(5) / 5).eval()
        >>> model(torch.tensor([1]), torch.tensor([[0, 2, 3]]), torch.tensor([[1, 4]]),
        ...       torch.tensor([[0.5, 0.1]])).shape
        torch.Size([1, 2])
    """

    def __init__(
        self, num_users: int, num_items: int, popularity: torch.Tensor, embedding_dim: int = 64
    ) -> None:
        super().__init__()
        if popularity.shape != (num_items,):
            raise ValueError(
                f"popularity {tuple(popularity.shape)} does not match {num_items} items"
            )
        self.user_embedding = nn.Embedding(num_users + 1, embedding_dim, padding_idx=0)
        self.item_embedding = nn.Embedding(num_items + 1, embedding_dim, padding_idx=0)
        for table in (self.user_embedding, self.item_embedding):
            nn.init.normal_(table.weight, std=0.05)
            with torch.no_grad():
                table.weight[0].zero_()
        self.query = nn.Linear(embedding_dim, embedding_dim, bias=False)
        self.scale = 1.0 / math.sqrt(embedding_dim)
        # log share of training interactions, row 0 (padding) 0
        log_popularity = torch.log(popularity.float().clamp(min=1e-7))
        self.register_buffer("log_popularity", torch.cat([torch.zeros(1), log_popularity]))
        self.blend = nn.Linear(len(BLEND_INPUTS), 1)
        with torch.no_grad():  # before the blend is fitted: the learned signals alone
            self.blend.weight.copy_(torch.tensor([[0.0, 1.0, 1.0, 0.0]]))
            self.blend.bias.zero_()

    def signals(
        self, users: torch.Tensor, history: torch.Tensor, candidates: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(user_match, interest), each float32 [B, C]."""
        items = self.item_embedding(candidates)  # [B, C, d]
        user_match = (self.user_embedding(users).unsqueeze(1) * items).sum(-1)  # [B, C]
        past = self.item_embedding(history)  # [B, L, d]
        logits = torch.einsum("bcd,bld->bcl", self.query(items), past) * self.scale
        padding = (history == 0).unsqueeze(1)  # [B, 1, L]
        weights = torch.softmax(logits.masked_fill(padding, -1e9), dim=-1)  # [B, C, L]
        pooled = torch.einsum("bcl,bld->bcd", weights, past)  # [B, C, d]
        known = (history > 0).any(dim=1, keepdim=True).to(items.dtype)  # [B, 1]: no history
        interest = (pooled * items).sum(-1) * known  # [B, C]
        return user_match, interest

    def forward(
        self,
        users: torch.Tensor,
        history: torch.Tensor,
        candidates: torch.Tensor,
        retriever_scores: torch.Tensor,
    ) -> torch.Tensor:
        user_match, interest = self.signals(users, history, candidates)
        return self.blended(user_match, interest, candidates, retriever_scores)

    def blended(
        self,
        user_match: torch.Tensor,
        interest: torch.Tensor,
        candidates: torch.Tensor,
        retriever_scores: torch.Tensor,
    ) -> torch.Tensor:
        """The final score from the signals (the blend's training reuses the signals)."""
        mean = retriever_scores.mean(dim=1, keepdim=True)
        spread = retriever_scores.std(dim=1, keepdim=True, unbiased=False)
        standardised = (retriever_scores - mean) / (spread + 1e-6)
        inputs = torch.stack(
            [standardised, user_match, interest, self.log_popularity[candidates]], dim=-1
        )  # [B, C, 4]
        return self.blend(inputs).squeeze(-1)
