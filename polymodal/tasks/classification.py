"""Classification tasks: binary, multiclass (softmax) and multi-label (sigmoid)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class ClassificationTask:
    """Head size, loss, probabilities and decoding for a classification label.

    Binary problems use two logits and softmax, so binary and multiclass share one code path.
    """

    problem_type: str  # "binary" | "multiclass" | "multilabel"
    classes: list[str]
    class_weights: torch.Tensor | None = None
    label_smoothing: float = 0.0
    threshold: float = 0.5  # multi-label decision threshold

    @property
    def num_outputs(self) -> int:
        return len(self.classes)

    @property
    def monitor(self) -> tuple[str, str]:
        """Validation metric for early stopping and checkpoint selection, and its direction."""
        return ("f1_macro", "max") if self.problem_type == "multilabel" else ("accuracy", "max")

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        w = self.class_weights.to(logits.device) if self.class_weights is not None else None
        if self.problem_type == "multilabel":
            return F.binary_cross_entropy_with_logits(logits.float(), target.float(), pos_weight=w)
        return F.cross_entropy(logits.float(), target.long(), weight=w, label_smoothing=self.label_smoothing)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        if self.problem_type == "multilabel":
            return torch.sigmoid(logits.float())
        return torch.softmax(logits.float(), dim=-1)

    def decode(self, probs: np.ndarray) -> np.ndarray:
        if self.problem_type == "multilabel":
            return (probs >= self.threshold).astype(np.int64)
        return probs.argmax(axis=-1)


def balanced_class_weights(target: np.ndarray, num_classes: int, multilabel: bool = False) -> torch.Tensor:
    """Inverse-frequency weights (sklearn's 'balanced' rule); for multi-label, BCE pos_weight = neg/pos."""
    if multilabel:
        pos = target.sum(axis=0)
        return torch.tensor((len(target) - pos) / np.maximum(pos, 1), dtype=torch.float32)
    counts = np.bincount(target, minlength=num_classes).astype(np.float64)
    w = len(target) / (num_classes * np.maximum(counts, 1))
    return torch.tensor(w, dtype=torch.float32)
