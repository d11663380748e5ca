"""CFGAN: a conditional GAN whose generator writes a user's whole purchase vector.

Reference: Chae et al., "CFGAN: A Generic Collaborative Filtering Framework based on
Generative Adversarial Networks", CIKM 2018 (the "ZP" variant: zero-reconstruction
regularisation plus partial masking).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .layers import mlp_tower


class CFGANGenerator(nn.Module):
    r"""G(c_u): the user's purchase vector in, a score in (0, 1) per catalog item out.

    .. math:: \hat r_u = \sigma(\mathrm{MLP}(c_u)), \qquad c_u \in \{0, 1\}^I

    The condition ``c_u`` is the multi-hot of the items the user interacted with (the
    paper's setting: the condition is the user's own history); no noise is added. The
    served score of item ``i`` is ``\hat r_{ui}``.

    Args:
        num_items: catalog size I.
        hidden: sizes of the ReLU hidden layers.

    Example::

        >>> _ = torch.manual_seed(0)
        >>> generator = CFGANGenerator(num_items=6, hidden=[4])
        >>> purchases = torch.tensor([[1.0, 0, 0, 1, 0, 0], [0, 1, 1, 0, 0, 0]])
        >>> scores = generator(purchases)
        >>> scores.shape, bool(((scores > 0) & (scores < 1)).all())
        (torch.Size([2, 6]), True)
    """

    def __init__(self, num_items: int, hidden: Sequence[int] = (400,)) -> None:
        super().__init__()
        self.mlp = mlp_tower(num_items, list(hidden), dropout=0.0, out=num_items)

    def forward(self, purchases: torch.Tensor) -> torch.Tensor:
        # purchases: float32 [B, I], 1 = interacted
        return torch.sigmoid(self.mlp(purchases))  # [B, I]


class CFGANDiscriminator(nn.Module):
    r"""D(r, c_u): the probability that ``r`` is the real purchase vector of the user
    whose condition is ``c_u``.

    .. math:: D(r \mid c_u) = \sigma(\mathrm{MLP}([r, c_u]))

    Args:
        num_items: catalog size I (the input is 2 I wide).
        hidden: sizes of the ReLU hidden layers.

    Example::

        >>> _ = torch.manual_seed(0)
        >>> discriminator = CFGANDiscriminator(num_items=6, hidden=[8, 4])
        >>> condition = torch.tensor([[1.0, 0, 0, 1, 0, 0]])
        >>> discriminator(condition, condition).shape
        torch.Size([1])
    """

    def __init__(self, num_items: int, hidden: Sequence[int] = (128,)) -> None:
        super().__init__()
        self.mlp = mlp_tower(2 * num_items, list(hidden), dropout=0.0, out=1)

    def logits(self, vector: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        # vector, condition: float32 [B, I]
        return self.mlp(torch.cat([vector, condition], dim=1)).squeeze(1)  # [B]

    def forward(self, vector: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(vector, condition))  # [B]


class CFGAN(nn.Module):
    r"""Generator and discriminator of CFGAN; ``forward`` is the generator (the scores).

    Trained adversarially with :func:`discriminator_loss` and :func:`generator_loss`:

    .. math::

        J^D = -\frac{1}{B}\sum_u \Big(\log D(e_u \mid c_u)
              + \log\big(1 - D(\hat r_u \odot (e_u + k_u) \mid c_u)\big)\Big)

        J^G = \frac{1}{B}\sum_u \Big(\log\big(1 - D(\hat r_u \odot (e_u + k_u) \mid c_u)\big)
              + \alpha \sum_{j \in N^{ZR}_u} \hat r_{uj}^2\Big)

    (by default G minimises :math:`-\log D(\cdot)` in place of :math:`\log(1 - D(\cdot))`,
    see :func:`generator_loss`)

    with ``e_u`` the real purchase vector (here equal to ``c_u``), ``k_u`` the partial-
    masking (PM) indicator of a sample of the user's non-purchased items, and
    ``N^{ZR}_u`` a second sample of them, pushed to 0 (zero reconstruction, ZR).

    Args:
        num_items: catalog size I.
        generator_hidden: hidden layer sizes of G.
        discriminator_hidden: hidden layer sizes of D.

    Example::

        >>> _ = torch.manual_seed(0)
        >>> model = CFGAN(num_items=5, generator_hidden=[4], discriminator_hidden=[4])
        >>> purchases = torch.tensor([[1.0, 0, 1, 0, 0]])
        >>> model(purchases).shape
        torch.Size([1, 5])
        >>> pm = torch.tensor([[0.0, 1, 0, 0, 1]])
        >>> zr = torch.tensor([[0.0, 0, 0, 1, 1]])
        >>> loss = generator_loss(model, purchases, pm, zr, alpha=0.1)
        >>> loss.shape, bool(discriminator_loss(model, purchases, pm) > 0)
        (torch.Size([]), True)
    """

    def __init__(
        self,
        num_items: int,
        generator_hidden: Sequence[int] = (400,),
        discriminator_hidden: Sequence[int] = (128,),
    ) -> None:
        super().__init__()
        self.generator = CFGANGenerator(num_items, generator_hidden)
        self.discriminator = CFGANDiscriminator(num_items, discriminator_hidden)

    def forward(self, purchases: torch.Tensor) -> torch.Tensor:
        # purchases: float32 [B, I]
        return self.generator(purchases)  # [B, I]


def sample_negative_masks(
    purchases: torch.Tensor, zr_rate: float, pm_rate: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ZR mask, PM mask), float32 [B, I]: each non-purchased item is drawn into each
    sample independently with probability ``zr_rate`` / ``pm_rate`` (purchased: 0)."""
    negative = purchases == 0  # [B, I]
    zr = (torch.rand(purchases.shape, generator=generator) < zr_rate) & negative  # [B, I]
    pm = (torch.rand(purchases.shape, generator=generator) < pm_rate) & negative  # [B, I]
    return zr.to(purchases.dtype), pm.to(purchases.dtype)


def masked_fake(model: CFGAN, purchases: torch.Tensor, pm_mask: torch.Tensor) -> torch.Tensor:
    r""":math:`\hat r_u \odot (e_u + k_u)`: G's output on the purchased and PM items only."""
    return model.generator(purchases) * (purchases + pm_mask)  # [B, I]


def discriminator_loss(
    model: CFGAN, purchases: torch.Tensor, pm_mask: torch.Tensor
) -> torch.Tensor:
    """:math:`J^D` of :class:`CFGAN`, averaged over the batch (G is not trained by it)."""
    with torch.no_grad():
        fake = masked_fake(model, purchases, pm_mask)  # [B, I]
    real_logits = model.discriminator.logits(purchases, purchases)  # [B]
    fake_logits = model.discriminator.logits(fake, purchases)  # [B]
    # -log D(real) - log(1 - D(fake)) = softplus(-real) + softplus(fake)
    return (F.softplus(-real_logits) + F.softplus(fake_logits)).mean()


def generator_loss(
    model: CFGAN,
    purchases: torch.Tensor,
    pm_mask: torch.Tensor,
    zr_mask: torch.Tensor,
    alpha: float,
    non_saturating: bool = True,
) -> torch.Tensor:
    r""":math:`J^G` of :class:`CFGAN`, averaged over the batch (D is not updated by it).

    With ``non_saturating`` the adversarial term is :math:`-\log D(\cdot)` instead of
    the paper's :math:`\log(1 - D(\cdot))`: the same fixed point, but its gradient does
    not vanish while D rejects G's vectors (Goodfellow et al., 2014, section 3)."""
    scores = model.generator(purchases)  # [B, I]
    fake = scores * (purchases + pm_mask)  # [B, I]
    fake_logits = model.discriminator.logits(fake, purchases)  # [B]
    # -log D(fake) or log(1 - D(fake)), [B]
    adversarial = F.softplus(-fake_logits) if non_saturating else -F.softplus(fake_logits)
    zero_reconstruction = (scores.pow(2) * zr_mask).sum(dim=1)  # [B]
    return (adversarial + alpha * zero_reconstruction).mean()
