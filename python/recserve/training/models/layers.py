"""Layers the model families share: the field embedding every CTR model starts from, the
ReLU tower (with its split into first layer and head, which the fused crossing kernel
needs), and the alignment of item sequences the sequence models read. A new model
imports them from here."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class FieldEmbedding(nn.Module):
    r"""Embeds single- and multi-valued categorical fields into one vector per field.

    All fields share one table with per-field offsets. Index 0 of every field means
    "unknown" (or padding) and contributes a zero vector, so a cold-start user is
    scored from the fields that are known. A multi-valued field is the mean of its
    values' vectors.

    Args:
        cardinalities: rows per single-valued field (index 0 included).
        multi_cardinalities: rows per multi-valued field.
        multi_widths: columns each multi-valued field occupies in its input.
        dim: embedding size (1 gives the FM first-order weights).

    Example::

        >>> emb = FieldEmbedding([3, 4], [5], [2], dim=8)
        >>> emb(torch.tensor([[1, 2]]), torch.tensor([[3, 0]])).shape
        torch.Size([1, 3, 8])
    """

    def __init__(
        self,
        cardinalities: Sequence[int],
        multi_cardinalities: Sequence[int],
        multi_widths: Sequence[int],
        dim: int,
    ) -> None:
        super().__init__()
        sizes = [*cardinalities, *multi_cardinalities]
        offsets = torch.tensor([0, *sizes[:-1]], dtype=torch.int64).cumsum(0)
        n_single = len(cardinalities)
        column_field = [f for f, width in enumerate(multi_widths) for _ in range(width)]
        pool = torch.zeros(len(column_field), len(multi_widths))
        pool[torch.arange(len(column_field)), torch.tensor(column_field, dtype=torch.int64)] = 1.0
        self.register_buffer("single_offsets", offsets[:n_single].clone(), persistent=False)
        self.register_buffer(
            "multi_offsets",
            offsets[n_single:][torch.tensor(column_field, dtype=torch.int64)],
            persistent=False,
        )
        self.register_buffer("pool", pool, persistent=False)
        self.table = nn.Embedding(sum(sizes), dim)
        nn.init.normal_(self.table.weight, std=0.01)

    def forward(self, single: torch.Tensor, multi: torch.Tensor) -> torch.Tensor:
        # single: [B, Fs] int64; multi: [B, M] int64 -> [B, Fs + Fm, dim]
        single_mask = (single > 0).unsqueeze(-1).to(self.table.weight.dtype)  # [B, Fs, 1]
        single_vec = self.table(single + self.single_offsets) * single_mask  # [B, Fs, d]
        multi_mask = (multi > 0).to(self.table.weight.dtype)  # [B, M]
        multi_vec = self.table(multi + self.multi_offsets) * multi_mask.unsqueeze(-1)  # [B, M, d]
        pooled = torch.einsum("bmd,mf->bfd", multi_vec, self.pool)  # [B, Fm, d]
        counts = (multi_mask @ self.pool).clamp(min=1.0).unsqueeze(-1)  # [B, Fm, 1]
        return torch.cat([single_vec, pooled / counts], dim=1)  # [B, F, d]


def mlp_tower(
    width: int, hidden: Sequence[int], dropout: float, out: int | None = 1
) -> nn.Sequential:
    """``[Linear, ReLU, Dropout] * len(hidden)`` from ``width`` inputs, then ``Linear(·, out)``.

    With ``out=None`` the tower ends after the last hidden layer.
    """
    layers: list[nn.Module] = []
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
        width = size
    if out is not None:
        layers.append(nn.Linear(width, out))
    return nn.Sequential(*layers)


def split_tower(mlp: nn.Sequential) -> tuple[nn.Linear, nn.Sequential]:
    """A tower of ``mlp_tower`` as (first Linear, head): ``mlp(x) == head(relu(first(x)))``
    in eval mode (the first dropout is identity there). The head shares the tower's
    parameters. Needs a hidden layer."""
    if len(mlp) < 4:
        raise ValueError("a tower without hidden layers has no first layer to split off")
    first = mlp[0]
    assert isinstance(first, nn.Linear) and isinstance(mlp[1], nn.ReLU)
    return first, nn.Sequential(*list(mlp)[3:])


def items_first(items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-aligned sequences (item rows + 1, newest last, 0 = left padding) moved to the
    front, and the position of each one's newest item: (int64 [B, L], int64 [B]).

    A sequence model that reads the result from the front never sees padding before an
    item, so its state does not depend on how much padding a sequence carries."""
    length = (items > 0).sum(dim=1)  # [B]
    width = items.shape[1]
    shift = width - length  # [B]: leading padding
    positions = torch.arange(width, device=items.device).unsqueeze(0)  # [1, L]
    source = (positions + shift.unsqueeze(1)) % width  # [B, L]
    return torch.gather(items, 1, source), (length - 1).clamp(min=0)


def state_at(states: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """``states[b, last[b]]`` for every b: [B, L, d], [B] -> [B, d]."""
    index = last.view(-1, 1, 1).expand(-1, 1, states.shape[2])  # [B, 1, d]
    return states.gather(1, index).squeeze(1)
