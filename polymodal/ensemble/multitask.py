"""Multi-task ensembles: one sub-ensemble per label, sharing the features, the folds and the members.

- a matrix member (trees, linear, k-NN) fits one model per label on the rows labelled for that label
  (`PerTask`); a fusion member trains the fit pipeline's multi-task network once per fold (one head per
  label); either way a member's output is the labels' blocks side by side, in `tasks.MultiTask`'s layout
  (class probabilities, per-label probabilities, values in the label's units);
- ensemble selection and temperature scaling run per label, on that label's out-of-fold block and its
  labelled rows, with the label type's default metric (accuracy, macro F1, RMSE), so each label keeps its
  own weights (`TaskBlend`);
- the leaderboard's metric is the multi-task "score" `evaluate` reports: the mean over labels of accuracy
  (single-label), macro F1 (multi-label) or R² (regression).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from polymodal.ensemble.members import Member, Problem, Rows
from polymodal.ensemble.scoring import DEFAULT_METRIC, metric_value
from polymodal.ensemble.selection import apply_temperature, blend, calibrate, caruana
from polymodal.training.pipeline import Log


@dataclass
class TaskBlend:
    """One label's sub-ensemble: its selection metric, member weights, temperature and out-of-fold score."""

    metric: str
    weights: dict[str, float]
    temperature: float
    score: float

    def to_dict(self) -> dict:
        return asdict(self)


def task_target(y: np.ndarray, problem: Problem, label: str) -> tuple[np.ndarray, np.ndarray]:
    """(rows labelled for `label`, their targets in that label's form: class ids, (n, L) 0/1, or values in the
    label's units) from the encoded multi-task target (NaN where a row has no label)."""
    _, cols = problem.slices()[label]
    t = np.asarray(y, np.float64)[:, cols]
    known = np.flatnonzero(~np.isnan(t).any(axis=1))
    sub, t = problem.tasks[label], t[known]
    if sub.regression:
        return known, t[:, 0] * sub.target_std + sub.target_mean
    return known, (t if sub.multilabel else t[:, 0]).astype(np.int64)


def task_rows(rows: Rows, problem: Problem, label: str) -> Rows:
    known, t = task_target(rows.y, problem, label)
    out = rows.take(known)
    out.y = t
    return out


class PerTask:
    """A matrix member on a multi-task label: one model per label, fitted on the rows labelled for it."""

    def __init__(self, inner: Member) -> None:
        self.inner, self.name, self.share = inner, inner.name, inner.share

    def fit(self, train: Rows, valid: Rows, problem: Problem, seconds: float, folder: Path, log: Log
            ) -> dict[str, Any]:
        out = {}
        for label, sub in problem.tasks.items():
            tr, va = task_rows(train, problem, label), task_rows(valid, problem, label)
            # a fold whose held-out rows lack this label: LightGBM's early stopping watches the training rows
            out[label] = self.inner.fit(tr, va if len(va.y) else tr, sub, seconds / len(problem.tasks), folder, log)
        return out

    def predict(self, fitted: dict[str, Any], rows: Rows, problem: Problem) -> np.ndarray:
        n = len(rows.matrix.X)
        return np.concatenate([self.inner.predict(fitted[k], rows, sub).reshape(n, -1)
                               for k, sub in problem.tasks.items()], axis=1)

    def save(self, fitted: dict[str, Any], folder: Path) -> None:
        self.inner.save(fitted, folder)

    def load(self, folder: Path) -> dict[str, Any]:
        return self.inner.load(folder)


def for_problem(member: Member, problem: Problem) -> Member:
    """The member as it fits `problem`: matrix members of a multi-task label fit per label."""
    if problem.multitask and not member.name.startswith("fusion:"):
        return PerTask(member)
    return member


def block(pred: np.ndarray, problem: Problem, label: str) -> np.ndarray:
    """A label's columns of a member's output ((n,) for regression)."""
    cols, _ = problem.slices()[label]
    b = np.asarray(pred)[:, cols]
    return b[:, 0] if problem.tasks[label].regression else b


def select_tasks(oof: dict[str, np.ndarray], y: np.ndarray, problem: Problem, rounds: int
                 ) -> dict[str, TaskBlend]:
    """Per label: Caruana selection on its labelled rows with its default metric, then its temperature."""
    blends = {}
    for label, sub in problem.tasks.items():
        known, t = task_target(y, problem, label)
        metric = DEFAULT_METRIC[sub.problem_type]
        preds = {n: block(p, problem, label)[known] for n, p in oof.items()}
        weights, _ = caruana(preds, t, metric, rounds)
        blended = blend(preds, weights)
        temperature, blended = (1.0, blended) if sub.regression else calibrate(blended, t, metric)
        blends[label] = TaskBlend(metric, weights, temperature, metric_value(metric, blended, t))
    return blends


def multitask_output(preds: dict[str, np.ndarray], blends: dict[str, TaskBlend], problem: Problem) -> np.ndarray:
    """Each label's blend (and temperature) of the members' blocks, side by side."""
    parts = []
    for label, sub in problem.tasks.items():
        b = blends[label]
        out = blend({n: block(p, problem, label) for n, p in preds.items() if b.weights.get(n, 0) > 0}, b.weights)
        if not sub.regression:
            out = apply_temperature(out, b.temperature, sub.multilabel)
        parts.append(np.asarray(out).reshape(len(out), -1))
    return np.concatenate(parts, axis=1)


def mean_weights(blends: dict[str, TaskBlend]) -> dict[str, float]:
    """A member's weight over the labels (the leaderboard's; > 0 when any label's blend uses it)."""
    names = sorted({n for b in blends.values() for n in b.weights})
    return {n: float(np.mean([b.weights.get(n, 0.0) for b in blends.values()])) for n in names}
