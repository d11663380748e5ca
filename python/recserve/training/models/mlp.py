"""Plain MLP ranker over concatenated field embeddings (the simplest ranker, a baseline for the others).

Reference: Covington et al., "Deep Neural Networks for YouTube Recommendations",
RecSys 2016 (embeddings of categorical features, concatenated, through a ReLU tower).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .layers import FieldEmbedding, mlp_tower


class MLP(nn.Module):
    r"""logit = MLP(dropout([v_1, …, v_F])), the field vectors v_f concatenated.

    The seed's Keras model: embeddings of every field, concatenated, dropout, then dense
    layers (64, 32) with ReLU and dropout, and one output unit (sigmoid in the loss).

    Args:
        user_cardinalities: rows per user field (index 0 included).
        item_cardinalities: rows per single-valued item field.
        item_multi_cardinalities: rows per multi-valued item field.
        item_multi_widths: columns of each multi-valued item field in ``item_multi``.
        embedding_dim: size of each field's vector.
        hidden: sizes of the hidden layers.
        dropout: dropout on the concatenated embeddings and after each hidden layer.

    Example::

        >>> model = MLP([5, 3], [7], [4], [2], embedding_dim=4, hidden=[8])
        >>> user, item = torch.tensor([[1, 2]]), torch.tensor([[3]])
        >>> model(user, item, torch.tensor([[1, 3]])).shape
        torch.Size([1])
    """

    def __init__(
        self,
        user_cardinalities: Sequence[int],
        item_cardinalities: Sequence[int],
        item_multi_cardinalities: Sequence[int],
        item_multi_widths: Sequence[int],
        embedding_dim: int = 16,
        hidden: Sequence[int] = (64, 32),
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        single = [*user_cardinalities, *item_cardinalities]
        self.embedding = FieldEmbedding(
            single, item_multi_cardinalities, item_multi_widths, dim=embedding_dim
        )
        n_fields = len(single) + len(item_multi_widths)
        self.input_dropout = nn.Dropout(dropout)
        self.mlp = mlp_tower(n_fields * embedding_dim, hidden, dropout)

    def forward(
        self, user: torch.Tensor, item: torch.Tensor, item_multi: torch.Tensor
    ) -> torch.Tensor:
        # user: [B, Fu], item: [B, Fi], item_multi: [B, M] -> logits [B]
        single = torch.cat([user, item], dim=1)  # [B, Fu + Fi]
        v = self.embedding(single, item_multi)  # [B, F, d]
        x = self.input_dropout(v.flatten(start_dim=1))  # [B, F d]
        return self.mlp(x).squeeze(-1)  # [B]

    @torch.jit.unused
    def embedding_penalty(
        self, user: torch.Tensor, item: torch.Tensor, item_multi: torch.Tensor
    ) -> torch.Tensor:
        """Σ of squared embedding rows a batch uses, per example."""
        v = self.embedding(torch.cat([user, item], dim=1), item_multi)  # [B, F, d]
        return v.pow(2).sum() / user.shape[0]
