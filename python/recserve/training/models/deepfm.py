"""DeepFM ranker over user and item fields.

Reference: Guo et al., "DeepFM: A Factorization-Machine based Neural Network for CTR
Prediction", IJCAI 2017.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .layers import FieldEmbedding, mlp_tower, split_tower


class DeepFM(nn.Module):
    r"""logit = b + Σ_f w_f + ½ Σ_d[(Σ_f v_fd)² − Σ_f v_fd²] + MLP([v_1, …, v_F]).

    Fields are the user's single-valued fields, the item's single-valued fields, then
    the item's multi-valued fields, each given as int64 indices (0 = unknown).

    Args:
        user_cardinalities: rows per user field (index 0 included).
        item_cardinalities: rows per single-valued item field.
        item_multi_cardinalities: rows per multi-valued item field.
        item_multi_widths: columns of each multi-valued item field in ``item_multi``.
        embedding_dim: size of each field's vector.
        hidden: sizes of the MLP's hidden layers.
        dropout: dropout after each hidden layer.

    Example::

        >>> model = DeepFM([5, 3], [7], [4], [2], embedding_dim=4, hidden=[8])
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
        self.first_order = FieldEmbedding(*args, dim=1)
        self.bias = nn.Parameter(torch.zeros(1))
        n_fields = len(single) + len(item_multi_widths)
        self.mlp = mlp_tower(n_fields * embedding_dim, hidden, dropout)

    def forward(
        self, user: torch.Tensor, item: torch.Tensor, item_multi: torch.Tensor
    ) -> torch.Tensor:
        # user: [B, Fu], item: [B, Fi], item_multi: [B, M] -> logits [B]
        single = torch.cat([user, item], dim=1)  # [B, Fu + Fi]
        v = self.embedding(single, item_multi)  # [B, F, d]
        first = self.first_order(single, item_multi).sum(dim=(1, 2))  # [B]
        square_of_sum = v.sum(dim=1).pow(2)  # [B, d]
        sum_of_square = v.pow(2).sum(dim=1)  # [B, d]
        fm = 0.5 * (square_of_sum - sum_of_square).sum(dim=1)  # [B]
        deep = self.mlp(v.flatten(start_dim=1)).squeeze(-1)  # [B]
        return self.bias + first + fm + deep

    @torch.jit.unused
    def split_mlp(self) -> tuple[nn.Linear, nn.Sequential]:
        """The MLP as (first Linear, head): ``mlp(x) == head(relu(first(x)))`` in eval mode.

        The first layer is linear in the field vectors, so its user and item columns can
        be computed apart (the serving path precomputes the item side once per model);
        the head is the rest of the MLP after the first ReLU (its dropout is identity in
        eval). The head shares its parameters with this model. Needs a hidden layer.
        """
        return split_tower(self.mlp)

    @torch.jit.unused
    def embedding_penalty(
        self, user: torch.Tensor, item: torch.Tensor, item_multi: torch.Tensor
    ) -> torch.Tensor:
        """Σ of squared embedding rows and first-order weights a batch uses, per example.

        Regularising only the rows a batch touches (rather than weight decay on whole
        tables) shrinks rare ids in proportion to how little evidence they have.
        """
        single = torch.cat([user, item], dim=1)
        v = self.embedding(single, item_multi)  # [B, F, d]
        w = self.first_order(single, item_multi)  # [B, F, 1]
        return (v.pow(2).sum() + w.pow(2).sum()) / user.shape[0]
