"""A PNG of a run's training curves: train loss and validation AUC / LogLoss per epoch."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def plot_curves(history: Sequence[Any], path: str | os.PathLike[str], title: str = "") -> Path:
    """Write the curves of ``history`` (items with ``epoch``, ``train_loss``, ``val_auc``,
    ``val_logloss``) to ``path`` as PNG. matplotlib (the ``train`` extra) is imported here."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    epochs = [h.epoch for h in history]
    fig, (loss_ax, auc_ax) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    loss_ax.plot(epochs, [h.train_loss for h in history], marker="o", label="train loss")
    loss_ax.plot(epochs, [h.val_logloss for h in history], marker="o", label="val LogLoss")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("binary cross-entropy")
    loss_ax.legend()
    auc_ax.plot(epochs, [h.val_auc for h in history], marker="o", color="tab:green")
    auc_ax.set_xlabel("epoch")
    auc_ax.set_ylabel("validation AUC")
    if title:
        fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
