"""A PNG of a run's training curves per epoch: train loss(es) beside validation AUC /
LogLoss (rankers) or validation NDCG@10 / HR@10 (top-N models)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def plot_curves(history: Sequence[Any], path: str | os.PathLike[str], title: str = "") -> Path:
    """Write the curves of ``history`` to ``path`` as PNG: items with ``epoch``,
    ``train_loss``, ``val_auc`` and ``val_logloss`` (rankers), or with ``epoch``,
    ``train_loss``, ``val_ndcg``, ``val_hr`` and optionally ``losses`` (named training
    losses, e.g. a GAN's G and D losses; top-N models). matplotlib (the ``train`` extra)
    is imported here."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    epochs = [h.epoch for h in history]
    fig, (loss_ax, val_ax) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    if history and not hasattr(history[0], "val_auc"):  # a top-N model
        named = [getattr(h, "losses", None) or {"train loss": h.train_loss} for h in history]
        for name in named[0]:
            loss_ax.plot(epochs, [n.get(name, float("nan")) for n in named], marker="o", label=name)
        loss_ax.set_ylabel("training loss")
        val_ax.plot(epochs, [h.val_ndcg for h in history], marker="o", label="val NDCG@10")
        val_ax.plot(epochs, [h.val_hr for h in history], marker="o", label="val HR@10")
        val_ax.set_ylabel("validation metric @10")
        val_ax.legend()
    else:
        loss_ax.plot(epochs, [h.train_loss for h in history], marker="o", label="train loss")
        loss_ax.plot(epochs, [h.val_logloss for h in history], marker="o", label="val LogLoss")
        loss_ax.set_ylabel("binary cross-entropy")
        val_ax.plot(epochs, [h.val_auc for h in history], marker="o", color="tab:green")
        val_ax.set_ylabel("validation AUC")
    loss_ax.set_xlabel("epoch")
    loss_ax.legend()
    val_ax.set_xlabel("epoch")
    if title:
        fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
