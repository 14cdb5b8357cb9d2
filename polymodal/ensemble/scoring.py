"""The metric an ensemble is judged on (`--eval-metric`): member ranking, ensemble selection and the
leaderboard all use it. Scores are sklearn's, on probabilities (classification) or values in the label's units
(regression); `score` returns them with higher = better so the selection loop has one direction.

Multi-label (targets (N, L) 0/1, predictions (N, L) per-label probabilities): F1 scores threshold each label at
0.5, as `--preset fast` multi-label runs predict and evaluate; log loss is the mean binary log loss over every
(row, label); ROC AUC the mean over labels that have both values. The default is macro F1, the metric a
`--preset fast` multi-label fit monitors (problem_types.TABLE), so the two presets are judged alike."""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

from polymodal.errors import PolymodalError
from polymodal.problem_types import BINARY, MULTICLASS, MULTILABEL, MULTITASK, REGRESSION

CLASSES = (BINARY, MULTICLASS, MULTILABEL)
# name → (problem types it applies to, greater is better)
EVAL_METRICS: dict[str, tuple[tuple[str, ...], bool]] = {
    "accuracy": ((BINARY, MULTICLASS), True),
    "balanced_accuracy": ((BINARY, MULTICLASS), True),
    "f1_macro": (CLASSES, True),
    "f1_micro": ((MULTILABEL,), True),
    "f1_weighted": (CLASSES, True),
    "roc_auc": (CLASSES, True),
    "log_loss": (CLASSES, False),
    "rmse": ((REGRESSION,), False),
    "mae": ((REGRESSION,), False),
    "r2": ((REGRESSION,), True),
    # multi-task: evaluate's "score", the mean over labels of accuracy / macro F1 / R² (each label's blend is
    # selected on its own type's default below: ensemble/multitask.py)
    "score": ((MULTITASK,), True),
}
DEFAULT_METRIC = {BINARY: "accuracy", MULTICLASS: "accuracy", MULTILABEL: "f1_macro", REGRESSION: "rmse",
                  MULTITASK: "score"}


def check_metric(name: str | None, problem_type: str) -> str:
    """The eval metric to use: `name`, or the problem type's default; a clear error when it does not apply."""
    if name is None:
        return DEFAULT_METRIC[problem_type]
    if name not in EVAL_METRICS:
        raise PolymodalError(f"--eval-metric must be one of {', '.join(EVAL_METRICS)}, not {name!r}")
    if problem_type not in EVAL_METRICS[name][0]:
        fits = [m for m, (types, _) in EVAL_METRICS.items() if problem_type in types]
        raise PolymodalError(f"--eval-metric {name} does not apply to a {problem_type} label (use one of "
                             f"{', '.join(fits)})")
    return name


def metric_value(name: str, pred: np.ndarray, y: np.ndarray, task=None) -> float:
    """The metric as usually reported (log loss and RMSE: lower is better). `pred`: (N, C) probabilities or
    (N,) values; `y`: class ids, values, or (N, L) 0/1 for multi-label; "score" (multi-task): the encoded
    target, scored by `task` (a tasks.MultiTask) as `evaluate` does."""
    if name == "score":
        return float(task.metrics(np.asarray(pred), y)["score"])
    if np.ndim(y) == 2:
        return multilabel_value(name, np.asarray(pred, np.float64), np.asarray(y))
    if name in ("rmse", "mae", "r2"):
        p = np.asarray(pred, np.float64).reshape(-1)
        if name == "rmse":
            return float(np.sqrt(skm.mean_squared_error(y, p)))
        return float(skm.mean_absolute_error(y, p) if name == "mae" else skm.r2_score(y, p))
    p = np.asarray(pred, np.float64)
    labels = np.arange(p.shape[1])
    if name == "log_loss":
        q = np.clip(p, 1e-15, 1.0)  # float sums drift from 1 by ~1e-8 after blending; sklearn warns on that
        return float(skm.log_loss(y, q / q.sum(1, keepdims=True), labels=labels))
    if name == "roc_auc":
        if len(np.unique(y)) < 2:
            return float("nan")
        if p.shape[1] == 2:
            return float(skm.roc_auc_score(y, p[:, 1]))
        present = np.unique(y)  # macro one-vs-rest over the classes that occur
        return float(np.mean([skm.roc_auc_score(y == k, p[:, k]) for k in present]))
    hat = p.argmax(1)
    if name == "accuracy":
        return float(np.mean(hat == y))
    if name == "balanced_accuracy":
        return float(np.mean([np.mean(hat[y == k] == k) for k in np.unique(y)]))
    return float(skm.f1_score(y, hat, labels=labels, average=name.split("_")[1], zero_division=0))


def multilabel_value(name: str, p: np.ndarray, y: np.ndarray) -> float:
    if name == "log_loss":
        q = np.clip(p, 1e-15, 1 - 1e-15)
        return float(-np.mean(y * np.log(q) + (1 - y) * np.log1p(-q)))
    if name == "roc_auc":
        both = [j for j in range(y.shape[1]) if 0 < y[:, j].sum() < len(y)]
        return float(np.mean([skm.roc_auc_score(y[:, j], p[:, j]) for j in both])) if both else float("nan")
    return float(skm.f1_score(y, (p >= 0.5).astype(np.int64), average=name.split("_")[1], zero_division=0))


def score(name: str, pred: np.ndarray, y: np.ndarray) -> float:
    """`metric_value` signed so that higher is better."""
    v = metric_value(name, pred, y)
    return v if EVAL_METRICS[name][1] else -v
