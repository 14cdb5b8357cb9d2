"""Run-folder plots: confusion matrix and training curves (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from polymodal.problem_types import ONE_CLASS_PER_ROW
from polymodal.training.metrics import confusion_matrix


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(cm: np.ndarray, classes: list[str], path: Path, title: str = "Confusion matrix") -> None:
    plt = _plt()
    n = len(classes)
    size = min(14, 3 + 0.4 * n)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(cm, cmap="Blues")
    if n <= 40:
        ax.set_xticks(range(n), [str(c)[:18] for c in classes], rotation=90, fontsize=7)
        ax.set_yticks(range(n), [str(c)[:18] for c in classes], fontsize=7)
        if n <= 20:
            for i in range(n):
                for j in range(n):
                    ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def evaluation_plots(task, classes: list[str], probs: np.ndarray, target: np.ndarray,
                     plots_dir: str | Path | None) -> None:
    """What `evaluate(plots_dir=...)` draws: the confusion matrix of a binary or multiclass task."""
    if plots_dir and task.problem_type in ONE_CLASS_PER_ROW:
        plot_confusion(confusion_matrix(probs, target), classes, Path(plots_dir) / "confusion_matrix.png")


def plot_curves(history: pd.DataFrame, path: Path, monitor: str) -> None:
    """Train/valid loss and the monitored validation metric per epoch."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for col in ("train_loss", "val_loss"):
        if col in history:
            h = history[["epoch", col]].dropna()
            axes[0].plot(h["epoch"], h[col], marker="o", label=col)
    axes[0].set_xlabel("epoch")
    axes[0].set_title("loss")
    axes[0].legend()
    col = f"val_{monitor}"
    if col in history:
        h = history[["epoch", col]].dropna()
        axes[1].plot(h["epoch"], h[col], marker="o", color="C2")
    axes[1].set_xlabel("epoch")
    axes[1].set_title(col)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
