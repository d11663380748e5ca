"""SASRec: causal self-attention over the user's item sequence, next-item prediction.

Reference: Kang and McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018 (full
softmax training, as RecBole's ``sasrec.py`` with ``loss_type = CE``).
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import items_first, state_at


class SASRec(nn.Module):
    r"""Item + position embeddings -> causal Transformer blocks -> the last position's
    output, scored against the item table.

    .. math::

        z = \mathrm{Blocks}(E x_{1..T} + P_{1..T})_T, \qquad s(i) = \langle z, E_i \rangle

    with ``E`` the item embedding table (row 0 is padding) and ``P`` learned positions.
    Each position attends to itself and the items before it (pre-norm blocks: multi-head
    attention and a ReLU feed-forward layer, each with a residual). Trained next-item with
    a full softmax over the catalog (:meth:`sequence_logits` at every position).

    The same interface as :class:`~recserve.training.models.gru4rec.GRU4Rec`, so the
    trainer, the export (family ``sequence``) and the server treat them alike. Input
    sequences hold item rows + 1, 0 = padding, newest last, padded on the left; the
    encoder moves the items to the front first, so with the causal mask no item ever sees
    padding and the state does not depend on how much padding a sequence carries.

    Args:
        num_items: catalog size I (item rows ``0 .. I - 1``, sequence values ``1 .. I``).
        max_length: longest sequence (number of learned positions).
        embedding_dim: size d of item embeddings, of every block and of the user state.
        num_heads: attention heads (must divide ``embedding_dim``).
        num_layers: Transformer blocks.
        hidden_size: width of each block's feed-forward layer.
        dropout: dropout on the embeddings and inside the blocks (training only).

    Example::

        >>> _ = torch.manual_seed(0)
        >>> model = SASRec(num_items=6, max_length=4, embedding_dim=8, num_heads=2).eval()
        >>> state = model(torch.tensor([[0, 0, 3, 1], [2, 5, 6, 4]]))
        >>> state.shape, model.scores(state).shape
        (torch.Size([2, 8]), torch.Size([2, 6]))
        >>> bool(torch.allclose(model(torch.tensor([[3, 1]])), state[:1], atol=1e-5))
        True
    """

    def __init__(
        self,
        num_items: int,
        max_length: int,
        embedding_dim: int = 64,
        num_heads: int = 2,
        num_layers: int = 2,
        hidden_size: int = 128,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        if embedding_dim % num_heads:
            raise ValueError(f"num_heads ({num_heads}) must divide embedding_dim ({embedding_dim})")
        self.item_embedding = nn.Embedding(num_items + 1, embedding_dim, padding_idx=0)
        nn.init.normal_(self.item_embedding.weight[1:], std=0.05)
        self.position_embedding = nn.Embedding(max_length, embedding_dim)
        nn.init.normal_(self.position_embedding.weight, std=0.05)
        self.dropout = nn.Dropout(dropout)
        block = nn.TransformerEncoderLayer(
            embedding_dim, num_heads, hidden_size, dropout, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(block, num_layers, enable_nested_tensor=False)
        self.final_norm = nn.LayerNorm(embedding_dim)  # pre-norm blocks end un-normalised

    def sequence_states(self, items: torch.Tensor) -> torch.Tensor:
        """User states after every prefix of left-aligned sequences (padding at the end)."""
        # items: int64 [B, L], left-aligned, 0 = padding; L <= max_length
        width = items.shape[1]
        positions = torch.arange(width, device=items.device)
        x = self.item_embedding(items) + self.position_embedding(positions).unsqueeze(0)
        causal = torch.triu(
            torch.full((width, width), float("-inf"), device=items.device), diagonal=1
        )
        # is_causal: the mask is causal, and saying so spares the encoder from comparing
        # it with one, a data-dependent check that torch.export cannot trace
        states = self.blocks(self.dropout(x), mask=causal, is_causal=True)
        return self.final_norm(states)  # [B, L, d]

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
