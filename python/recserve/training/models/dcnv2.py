"""DCN-v2 ranker: full-rank cross layers stacked with an MLP over the field embeddings.

Reference: Wang et al., "DCN V2: Improved Deep & Cross Network and Practical Lessons for
Web-scale Learning to Rank Systems", WWW 2021.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .layers import FieldEmbedding, mlp_tower


class CrossNet(nn.Module):
    r"""Full-rank cross layers: x_{l+1} = x_0 ⊙ (W_l x_l + b_l) + x_l.

    Each layer multiplies the input ``x_0`` element-wise with a linear map of the
    previous layer's output, so layer ``l`` holds feature crosses up to degree ``l + 1``;
    the residual ``+ x_l`` keeps the lower degrees.

    Args:
        in_features: width of ``x_0``.
        num_layers: number of cross layers.

    Example::

        >>> cross = CrossNet(in_features=6, num_layers=2)
        >>> cross(torch.randn(3, 6)).shape
        torch.Size([3, 6])
    """

    def __init__(self, in_features: int, num_layers: int) -> None:
        super().__init__()
        self.num_layers = num_layers
        self.kernels = nn.ParameterList(
            nn.Parameter(nn.init.xavier_normal_(torch.empty(in_features, in_features)))
            for _ in range(num_layers)
        )
        self.bias = nn.ParameterList(
            nn.Parameter(torch.zeros(in_features)) for _ in range(num_layers)
        )

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        # x0: [B, D] -> [B, D]
        x = x0
        for kernel, bias in zip(self.kernels, self.bias, strict=True):
            x = x0 * (x @ kernel.t() + bias) + x  # [B, D]
        return x


class CrossHead(nn.Module):
    r"""What follows the first cross layer of a stacked DCN-v2: the other cross layers
    ``x_{l+1} = x_0 ⊙ (W_l x_l + b_l) + x_l`` from ``x_1``, then the MLP tower.

    Args:
        kernels: ``W_l`` of the cross layers after the first, each [D, D].
        biases: their ``b_l``, each [D].
        mlp: the tower after the cross network (ends in one output unit).

    Example::

        >>> cross = CrossNet(in_features=6, num_layers=2)
        >>> head = CrossHead(list(cross.kernels)[1:], list(cross.bias)[1:], nn.Linear(6, 1))
        >>> head(torch.randn(3, 6), torch.randn(3, 6)).shape
        torch.Size([3, 1])
    """

    def __init__(
        self, kernels: Sequence[nn.Parameter], biases: Sequence[nn.Parameter], mlp: nn.Module
    ) -> None:
        super().__init__()
        self.kernels = nn.ParameterList(kernels)
        self.bias = nn.ParameterList(biases)
        self.mlp = mlp

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        # x0, x1: [B, D] -> logits [B, 1]
        x = x1
        for kernel, bias in zip(self.kernels, self.bias, strict=True):
            # CrossNet's x0 * (x W^T + b) + x in two fused passes (bias in the GEMM)
            x = torch.addcmul(x, x0, torch.addmm(bias, x, kernel.t()))  # [B, D]
        return self.mlp(x)  # [B, 1]


class DCNv2(nn.Module):
    r"""logit = w^T MLP(CrossNet(x_0)) + b, with x_0 = [v_1, …, v_F].

    The stacked structure of DCN-v2: the concatenated field vectors go through
    ``cross_layers`` full-rank cross layers, then a ReLU MLP, then one output unit.
    With ``hidden=[]`` it is the cross network alone followed by a linear output.

    Args:
        user_cardinalities: rows per user field (index 0 included).
        item_cardinalities: rows per single-valued item field.
        item_multi_cardinalities: rows per multi-valued item field.
        item_multi_widths: columns of each multi-valued item field in ``item_multi``.
        embedding_dim: size of each field's vector.
        hidden: sizes of the MLP's hidden layers after the cross network.
        dropout: dropout after each hidden layer.
        cross_layers: number of cross layers.

    Example::

        >>> model = DCNv2([5, 3], [7], [4], [2], embedding_dim=4, hidden=[8], cross_layers=2)
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
        cross_layers: int = 3,
    ) -> None:
        super().__init__()
        single = [*user_cardinalities, *item_cardinalities]
        self.embedding = FieldEmbedding(
            single, item_multi_cardinalities, item_multi_widths, dim=embedding_dim
        )
        width = (len(single) + len(item_multi_widths)) * embedding_dim
        self.cross = CrossNet(width, cross_layers)
        self.mlp = mlp_tower(width, hidden, dropout)

    def forward(
        self, user: torch.Tensor, item: torch.Tensor, item_multi: torch.Tensor
    ) -> torch.Tensor:
        # user: [B, Fu], item: [B, Fi], item_multi: [B, M] -> logits [B]
        single = torch.cat([user, item], dim=1)  # [B, Fu + Fi]
        x0 = self.embedding(single, item_multi).flatten(start_dim=1)  # [B, F d]
        crossed = self.cross(x0)  # [B, F d]
        return self.mlp(crossed).squeeze(-1)  # [B]

    @torch.jit.unused
    def split_cross(self) -> tuple[torch.Tensor, torch.Tensor, CrossHead]:
        """(W_0 [D, D], b_0 [D], head) with ``forward == head(x0, x0 ⊙ (W_0 x0 + b_0) + x0)``
        in eval mode: the first cross layer is linear in ``x0`` inside the product, so its
        user and item columns can be computed apart (the serving path precomputes the item
        side). The head shares this model's parameters. Needs a cross layer."""
        if self.cross.num_layers < 1:
            raise ValueError("a DCN-v2 without cross layers has no first layer to split off")
        kernels, biases = list(self.cross.kernels), list(self.cross.bias)
        return kernels[0], biases[0], CrossHead(kernels[1:], biases[1:], self.mlp)

    @torch.jit.unused
    def embedding_penalty(
        self, user: torch.Tensor, item: torch.Tensor, item_multi: torch.Tensor
    ) -> torch.Tensor:
        """Σ of squared embedding rows a batch uses, per example."""
        v = self.embedding(torch.cat([user, item], dim=1), item_multi)  # [B, F, d]
        return v.pow(2).sum() / user.shape[0]
