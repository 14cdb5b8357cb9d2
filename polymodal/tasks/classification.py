"""Classification tasks: binary, multiclass (softmax) and multi-label (sigmoid)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from polymodal.data.schema import MULTILABEL_SEP
from polymodal.problem_types import BINARY, MULTILABEL
from polymodal.problem_types import TABLE as PROBLEM_TABLE
from polymodal.training.metrics import compute_metrics

LOSSES = ("cross_entropy", "focal")


@dataclass
class ClassificationTask:
    """Head size, loss, probabilities, metrics and decoding for a classification label.

    Binary problems use two logits and softmax, so binary and multiclass share one code path.
    ``loss="focal"``: focal loss (Lin et al. 2017), ``(1 - p_t)^gamma`` times the (class-weighted) cross
    entropy, which down-weights easy examples; for multi-label the sigmoid form per label.
    ``threshold``: decision threshold on the positive class (binary; tuned on validation data by
    ``tune_threshold``) or on each label (multi-label).
    """

    problem_type: str  # "binary" | "multiclass" | "multilabel"
    classes: list[str]
    class_weights: torch.Tensor | None = None
    label_smoothing: float = 0.0
    threshold: float = 0.5
    loss_kind: str = "cross_entropy"
    focal_gamma: float = 2.0

    def __post_init__(self) -> None:
        if self.loss_kind not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, not {self.loss_kind!r}")

    @property
    def num_outputs(self) -> int:
        return len(self.classes)

    @property
    def monitor(self) -> tuple[str, str]:
        """Validation metric for early stopping and checkpoint selection, and its direction."""
        pt = PROBLEM_TABLE[self.problem_type]
        return pt.metric, pt.mode

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        w = self.class_weights.to(logits.device) if self.class_weights is not None else None
        logits = logits.float()
        if self.problem_type == MULTILABEL:
            if self.loss_kind == "focal":
                return _sigmoid_focal(logits, target.float(), self.focal_gamma, w)
            return F.binary_cross_entropy_with_logits(logits, target.float(), pos_weight=w)
        target = target.long().reshape(-1)
        if self.loss_kind == "focal":
            # hand-written: torchvision's sigmoid_focal_loss has no softmax form, and torchvision does not
            # install beside the small CPU torch
            logp = F.log_softmax(logits, dim=-1)
            logp_t = logp.gather(1, target[:, None]).squeeze(1)
            ce = F.nll_loss(logp, target, weight=w, reduction="none")
            loss = (1 - logp_t.exp()).pow(self.focal_gamma) * ce
            return loss.sum() / (w[target].sum() if w is not None else len(target))
        return F.cross_entropy(logits, target, weight=w, label_smoothing=self.label_smoothing)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        if self.problem_type == MULTILABEL:
            return torch.sigmoid(logits.float())
        return torch.softmax(logits.float(), dim=-1)

    def decode(self, probs: np.ndarray) -> np.ndarray:
        """Class ids (multi-hot rows for multi-label)."""
        if self.problem_type == MULTILABEL:
            return (probs >= self.threshold).astype(np.int64)
        if self.problem_type == BINARY and self.threshold != 0.5:
            return (probs[:, 1] >= self.threshold).astype(np.int64)
        return probs.argmax(axis=-1)

    def labels(self, probs: np.ndarray) -> list:
        """Predicted labels in the user's terms (class names; "a|b" for multi-label)."""
        ids = self.decode(probs)
        if self.problem_type == MULTILABEL:
            return [MULTILABEL_SEP.join(c for c, on in zip(self.classes, row) if on) for row in ids]
        return [self.classes[int(i)] for i in ids]

    def output_columns(self, label: str) -> list[str]:
        """Names of predict_proba's columns: the classes."""
        return list(self.classes)

    def metrics(self, probs: np.ndarray, target: np.ndarray) -> dict[str, float]:
        """All metrics; threshold-dependent ones use this task's decision threshold."""
        pred = self.decode(probs) if self.problem_type == BINARY and self.threshold != 0.5 else None
        return compute_metrics(self.problem_type, probs, np.asarray(target).reshape(len(probs), -1).squeeze(1)
                               if self.problem_type != MULTILABEL else target, pred=pred)


def _sigmoid_focal(logits: torch.Tensor, target: torch.Tensor, gamma: float, pos_weight: torch.Tensor | None):
    bce = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight, reduction="none")
    p = torch.sigmoid(logits)
    p_t = p * target + (1 - p) * (1 - target)
    return ((1 - p_t).pow(gamma) * bce).mean()


def balanced_class_weights(target: np.ndarray, num_classes: int, multilabel: bool = False) -> torch.Tensor:
    """Inverse-frequency weights (sklearn's 'balanced' rule); for multi-label, BCE pos_weight = neg/pos."""
    if multilabel:
        pos = target.sum(axis=0)
        return torch.tensor((len(target) - pos) / np.maximum(pos, 1), dtype=torch.float32)
    counts = np.bincount(target, minlength=num_classes).astype(np.float64)
    w = len(target) / (num_classes * np.maximum(counts, 1))
    return torch.tensor(w, dtype=torch.float32)


def tune_threshold(probs: np.ndarray, target: np.ndarray, metric: str = "f1") -> float:
    """The decision threshold on the positive-class probability that maximises ``metric`` ("f1" of the
    positive class, or "balanced_accuracy") on validation data; candidates are the midpoints between sorted
    distinct probabilities (every distinct decision), ties broken towards 0.5."""
    p, t = np.asarray(probs)[:, 1], np.asarray(target).astype(int).reshape(-1)
    if len(np.unique(t)) < 2:
        return 0.5
    u = np.unique(p)
    cands = np.concatenate([[0.5], (u[:-1] + u[1:]) / 2]) if len(u) > 1 else np.array([0.5])
    best, best_score = 0.5, -np.inf
    for th in cands:
        pred = p >= th
        tp, fp = np.sum(pred & (t == 1)), np.sum(pred & (t == 0))
        fn, tn = np.sum(~pred & (t == 1)), np.sum(~pred & (t == 0))
        if metric == "f1":
            score = 2 * tp / max(2 * tp + fp + fn, 1)
        elif metric == "balanced_accuracy":
            score = 0.5 * (tp / max(tp + fn, 1) + tn / max(tn + fp, 1))
        else:
            raise ValueError(f"threshold metric must be f1 or balanced_accuracy, not {metric!r}")
        if score > best_score + 1e-12 or (abs(score - best_score) <= 1e-12 and abs(th - 0.5) < abs(best - 0.5)):
            best, best_score = float(th), score
    return best
