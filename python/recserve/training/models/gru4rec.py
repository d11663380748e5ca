"""GRU4Rec: a recurrent network over the user's item sequence, next-item prediction.

Reference: Hidasi et al., "Session-based Recommendations with Recurrent Neural
Networks", ICLR 2016 (and RecBole's ``gru4rec.py`` for the full-softmax variant).
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import items_first, state_at


class GRU4Rec(nn.Module):
    r"""Embedding -> GRU (or LSTM) -> last hidden state, scored against the item table.

    .. math::

        h_t = \mathrm{RNN}(E x_t, h_{t-1}), \qquad z = W h_T + b, \qquad
        s(i) = \langle z, E_i \rangle

    with ``E`` the item embedding table (row 0 is padding). Trained next-item with a
    full softmax over the catalog (:meth:`sequence_logits` at every position).

    Input sequences hold item rows + 1, 0 = padding, newest last, padded on the left
    (``[0, 0, a, b, c]``); the encoder moves the items to the front before the RNN, so the
    state does not depend on how much padding a sequence carries.

    Args:
        num_items: catalog size I (item rows ``0 .. I - 1``, sequence values ``1 .. I``).
        embedding_dim: size d of item embeddings and of the user state.
        hidden_size: RNN state size.
        num_layers: stacked RNN layers.
        dropout: dropout on the embeddings (training only).
        cell: ``"gru"`` (GRU4Rec) or ``"lstm"`` (the LSTM variant).

    Example::

        >>> _ = torch.manual_seed(0)
        >>> model = GRU4Rec(num_items=6, embedding_dim=4, hidden_size=8).eval()
        >>> state = model(torch.tensor([[0, 0, 3, 1], [2, 5, 6, 4]]))
        >>> state.shape, model.scores(state).shape
        (torch.Size([2, 4]), torch.Size([2, 6]))
        >>> bool(torch.allclose(model(torch.tensor([[3, 1]])), state[:1], atol=1e-6))
        True
    """

    def __init__(
        self,
        num_items: int,
        embedding_dim: int = 64,
        hidden_size: int = 128,
        num_layers: int = 1,
        dropout: float = 0.2,
        cell: str = "gru",
    ) -> None:
        super().__init__()
        if cell not in ("gru", "lstm"):
            raise ValueError(f"cell must be 'gru' or 'lstm', got {cell!r}")
        self.cell = cell
        self.item_embedding = nn.Embedding(num_items + 1, embedding_dim, padding_idx=0)
        nn.init.normal_(self.item_embedding.weight[1:], std=0.05)
        self.dropout = nn.Dropout(dropout)
        rnn = nn.GRU if cell == "gru" else nn.LSTM
        self.rnn = rnn(embedding_dim, hidden_size, num_layers, batch_first=True)
        self.projection = nn.Linear(hidden_size, embedding_dim)

    def sequence_states(self, items: torch.Tensor) -> torch.Tensor:
        """User states after every prefix of left-aligned sequences (padding at the end)."""
        # items: int64 [B, L], left-aligned, 0 = padding
        x = self.dropout(self.item_embedding(items))  # [B, L, d]
        out, _ = self.rnn(x)  # [B, L, H]
        return self.projection(out)  # [B, L, d]

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        # items: int64 [B, L], right-aligned (newest last), 0 = padding
        aligned, last = items_first(items)  # items first, then padding
        return state_at(self.sequence_states(aligned), last)  # [B, d]

    def item_vectors(self) -> torch.Tensor:
        return self.item_embedding.weight[1:]  # [I, d]

    def scores(self, state: torch.Tensor) -> torch.Tensor:
        # state: [B, d]
        return state @ self.item_vectors().T  # [B, I]

    def sequence_logits(self, items: torch.Tensor) -> torch.Tensor:
        """Next-item logits over the catalog after every prefix (for training)."""
        # items: int64 [B, L], left-aligned
        return self.sequence_states(items) @ self.item_vectors().T  # [B, L, I]
