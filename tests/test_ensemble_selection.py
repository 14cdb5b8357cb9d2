"""Ensemble selection that cannot fall below its best member: ties on the eval metric broken by log loss
(sklearn's), the single best member kept when no blend beats it, on random out-of-fold predictions of every
problem type."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax
from sklearn.metrics import accuracy_score, f1_score, log_loss, mean_squared_error, roc_auc_score

from polymodal.ensemble.selection import blend, caruana


def reference(metric: str, p: np.ndarray, y: np.ndarray) -> float:
    """sklearn's value, signed so that higher is better."""
    if metric == "accuracy":
        return accuracy_score(y, p.argmax(1))
    if metric == "f1_macro":
        return f1_score(y, p >= 0.5, average="macro", zero_division=0) if y.ndim == 2 else \
            f1_score(y, p.argmax(1), average="macro", labels=range(p.shape[1]), zero_division=0)
    if metric == "roc_auc":
        return roc_auc_score(y, p[:, 1])
    if metric == "log_loss":
        return -log_loss(y, p, labels=range(p.shape[1]))
    return -np.sqrt(mean_squared_error(y, p))


def ml_log_loss(p, y):
    return np.mean([log_loss(y[:, j], p[:, j], labels=[0, 1]) for j in range(y.shape[1])])


def test_accuracy_ties_prefer_lower_log_loss():
    y = np.array([0, 0, 1, 1])
    timid = np.array([[0.6, 0.4], [0.6, 0.4], [0.4, 0.6], [0.4, 0.6]])  # right everywhere, unsure
    sure = np.array([[0.9, 0.1], [0.9, 0.1], [0.1, 0.9], [0.1, 0.9]])  # right everywhere, sure
    weights, best = caruana({"a_timid": timid, "b_sure": sure}, y, "accuracy")
    # "a_timid" comes first by name and ties on accuracy: the lower log loss wins, and no blend beats it
    assert weights == {"a_timid": 0.0, "b_sure": 1.0} and best == 1.0
    assert log_loss(y, sure) < log_loss(y, (sure + timid) / 2) < log_loss(y, timid)


@pytest.mark.parametrize("metric", ["accuracy", "f1_macro", "roc_auc", "log_loss", "rmse", "multilabel_f1"])
def test_never_worse_than_best_member_and_ties_break_on_log_loss(metric):
    rng = np.random.default_rng(0)
    for trial in range(15):
        n = int(rng.integers(20, 60))
        members = int(rng.integers(2, 6))
        if metric == "rmse":
            y = rng.normal(size=n)
            preds = {f"m{i}": y + rng.normal(scale=rng.uniform(0.3, 2), size=n) for i in range(members)}
        elif metric == "multilabel_f1":
            y = (rng.random((n, 3)) < 0.4).astype(np.int64)
            preds = {f"m{i}": np.clip(y * rng.uniform(0.1, 0.6) + rng.random((n, 3)) * 0.6, 0.01, 0.99)
                     for i in range(members)}
        else:
            c = 2 if metric == "roc_auc" else 3
            y = rng.integers(0, c, n)
            preds = {f"m{i}": softmax(np.eye(c)[y] * rng.uniform(0, 3) + rng.normal(size=(n, c)) * 1.5, axis=1)
                     for i in range(members)}
        name = "f1_macro" if metric == "multilabel_f1" else metric
        weights, best = caruana(preds, y, name, rounds=10)
        out = blend(preds, weights)
        singles = {k: reference(name, p, y) for k, p in preds.items()}
        assert reference(name, out, y) == pytest.approx(best, abs=1e-9)
        assert best >= max(singles.values()) - 1e-9, (trial, best, singles)
        if metric in ("accuracy", "f1_macro", "multilabel_f1"):  # discrete: ties are broken by log loss
            loss = ml_log_loss if metric == "multilabel_f1" else (lambda p, t: log_loss(t, p, labels=range(3)))
            tied = [k for k, v in singles.items() if abs(v - best) <= 1e-9]
            if tied:  # the kept blend is at least as sure as every member that ties it
                assert loss(out, y) <= min(loss(preds[k], y) for k in tied) + 1e-9
