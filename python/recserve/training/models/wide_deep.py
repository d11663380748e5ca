"""Wide & Deep ranker: a linear model over the fields beside an MLP over their embeddings.

Reference: Cheng et al., "Wide & Deep Learning for Recommender Systems", DLRS 2016.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .layers import FieldEmbedding, mlp_tower, split_tower


class WideDeep(nn.Module):
    r"""logit = b + Σ_f w_f + MLP([v_1, …, v_F]).

    The wide part is the first-order weight ``w_f`` of each field's value (a
    multi-valued field contributes the mean of its values' weights); the deep part is an
    MLP over the concatenated field vectors ``v_f``. Both are trained jointly.

    Args:
        user_cardinalities: rows per user field (index 0 included).
        item_cardinalities: rows per single-valued item field.
        item_multi_cardinalities: rows per multi-valued item field.
        item_multi_widths: columns of each multi-valued item field in ``item_multi``.
        embedding_dim: size of each field's vector.
        hidden: sizes of the MLP's hidden layers.
        dropout: dropout after each hidden layer.

    Example::

        >>> model = WideDeep([5, 3], [7], [4], [2], embedding_dim=4, hidden=[8])
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
        hidden: Sequence[int] = (256, 128, 64),
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        single = [*user_cardinalities, *item_cardinalities]
        args = (single, item_multi_cardinalities, item_multi_widths)
        self.embedding = FieldEmbedding(*args, dim=embedding_dim)
        self.wide = FieldEmbedding(*args, dim=1)
        self.bias = nn.Parameter(torch.zeros(1))
        n_fields = len(single) + len(item_multi_widths)
        self.mlp = mlp_tower(n_fields * embedding_dim, hidden, dropout)

    def forward(
        self, user: torch.Tensor, item: torch.Tensor, item_multi: torch.Tensor
    ) -> torch.Tensor:
        # user: [B, Fu], item: [B, Fi], item_multi: [B, M] -> logits [B]
        single = torch.cat([user, item], dim=1)  # [B, Fu + Fi]
        wide = self.wide(single, item_multi).sum(dim=(1, 2))  # [B]
        v = self.embedding(single, item_multi)  # [B, F, d]
        deep = self.mlp(v.flatten(start_dim=1)).squeeze(-1)  # [B]
        return self.bias + wide + deep

    @torch.jit.unused
    def split_mlp(self) -> tuple[nn.Linear, nn.Sequential]:
        """The MLP as (first Linear, head), ``mlp(x) == head(relu(first(x)))`` in eval mode;
        as ``DeepFM.split_mlp`` (the serving path precomputes the first layer's item side)."""
        return split_tower(self.mlp)

    @torch.jit.unused
    def embedding_penalty(
        self, user: torch.Tensor, item: torch.Tensor, item_multi: torch.Tensor
    ) -> torch.Tensor:
        """Σ of squared embedding rows and wide weights a batch uses, per example."""
        single = torch.cat([user, item], dim=1)
        v = self.embedding(single, item_multi)  # [B, F, d]
        w = self.wide(single, item_multi)  # [B, F, 1]
        return (v.pow(2).sum() + w.pow(2).sum()) / user.shape[0]
