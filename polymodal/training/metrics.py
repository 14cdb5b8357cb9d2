"""Evaluation metrics through torchmetrics' functional API, on whole-dataset predictions."""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torchmetrics.functional as tmf
from torchmetrics.functional import classification as tmc

from polymodal.problem_types import MULTILABEL, REGRESSION


def compute_metrics(problem_type: str, probs: np.ndarray, target: np.ndarray,
                    pred: np.ndarray | None = None) -> dict[str, float]:
    """All metrics for a problem type. `probs`: (N, C) probabilities, or (N,) predictions for regression.
    `pred`: class ids to score instead of the argmax (a tuned binary decision threshold)."""
    p = torch.as_tensor(np.asarray(probs), dtype=torch.float64)
    t = torch.as_tensor(np.asarray(target))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchmetrics warns about absent classes; the numbers are still right
        if problem_type == REGRESSION:
            t = t.double()
            return {"rmse": float(tmf.mean_squared_error(p, t).sqrt()),
                    "mae": float(tmf.mean_absolute_error(p, t)),
                    "r2": float(tmf.r2_score(p, t)) if len(t) > 1 else float("nan")}
        if problem_type == MULTILABEL:
            return _multilabel(p, t.long())
        return _multiclass(p, t.long(), None if pred is None else torch.as_tensor(np.asarray(pred)).long())


def _multiclass(p: torch.Tensor, t: torch.Tensor, pred: torch.Tensor | None = None) -> dict[str, float]:
    c = p.shape[1]
    kw = {"num_classes": c}
    y = p.argmax(1) if pred is None else pred  # torchmetrics scores integer predictions as given
    out = {"accuracy": float(tmc.multiclass_accuracy(y, t, average="micro", **kw)),
           # balanced accuracy = mean per-class recall over the classes that occur in the targets (sklearn's rule)
           "balanced_accuracy": _balanced_accuracy(y, t, c)}
    for avg in ("macro", "weighted"):
        out[f"precision_{avg}"] = float(tmc.multiclass_precision(y, t, average=avg, **kw))
        out[f"recall_{avg}"] = float(tmc.multiclass_recall(y, t, average=avg, **kw))
        out[f"f1_{avg}"] = float(tmc.multiclass_f1_score(y, t, average=avg, **kw))
    present = torch.unique(t)
    if len(present) >= 2:
        if c == 2:
            out["roc_auc"] = float(tmc.binary_auroc(p[:, 1], t))
        elif len(present) == c:
            out["roc_auc"] = float(tmc.multiclass_auroc(p, t, average="macro", **kw))
    out["log_loss"] = float(-torch.log(p[torch.arange(len(t)), t].clamp(1e-15, 1.0)).mean())
    return out


def _balanced_accuracy(pred: torch.Tensor, t: torch.Tensor, c: int) -> float:
    recalls = [float((pred[t == k] == k).double().mean()) for k in range(c) if (t == k).any()]
    return float(np.mean(recalls))


def _multilabel(p: torch.Tensor, t: torch.Tensor) -> dict[str, float]:
    n = p.shape[1]
    pred = (p >= 0.5).long()
    out = {"subset_accuracy": float((pred == t).all(dim=1).double().mean()),
           "hamming_accuracy": float((pred == t).double().mean())}
    for avg in ("micro", "macro"):
        out[f"precision_{avg}"] = float(tmc.multilabel_precision(p, t, num_labels=n, average=avg))
        out[f"recall_{avg}"] = float(tmc.multilabel_recall(p, t, num_labels=n, average=avg))
        out[f"f1_{avg}"] = float(tmc.multilabel_f1_score(p, t, num_labels=n, average=avg))
    if bool(((t.sum(0) > 0) & (t.sum(0) < len(t))).all()):
        out["roc_auc"] = float(tmc.multilabel_auroc(p, t, num_labels=n, average="macro"))
    q = p.clamp(1e-15, 1 - 1e-15)
    out["log_loss"] = float(-(t * q.log() + (1 - t) * (1 - q).log()).mean())
    return out


def confusion_matrix(probs: np.ndarray, target: np.ndarray) -> np.ndarray:
    p = torch.as_tensor(np.asarray(probs))
    return tmc.multiclass_confusion_matrix(p.argmax(1), torch.as_tensor(target).long(),
                                           num_classes=p.shape[1]).numpy()
