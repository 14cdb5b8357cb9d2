"""Metrics against scikit-learn as the reference."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from polymodal.training.metrics import compute_metrics, confusion_matrix


def _probs(rng, n, c):
    x = rng.normal(size=(n, c))
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.mark.parametrize("c", [2, 4])
def test_classification_matches_sklearn(c):
    rng = np.random.default_rng(c)
    p = _probs(rng, 200, c)
    t = rng.integers(0, c, 200)
    m = compute_metrics("binary" if c == 2 else "multiclass", p, t)
    pred = p.argmax(1)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(t, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(t, pred))
    for avg in ("macro", "weighted"):
        assert m[f"precision_{avg}"] == pytest.approx(skm.precision_score(t, pred, average=avg, zero_division=0))
        assert m[f"recall_{avg}"] == pytest.approx(skm.recall_score(t, pred, average=avg))
        assert m[f"f1_{avg}"] == pytest.approx(skm.f1_score(t, pred, average=avg))
    auc = skm.roc_auc_score(t, p[:, 1]) if c == 2 else skm.roc_auc_score(t, p, multi_class="ovr")
    assert m["roc_auc"] == pytest.approx(auc, abs=1e-6)
    assert m["log_loss"] == pytest.approx(skm.log_loss(t, p, labels=list(range(c))))
    np.testing.assert_array_equal(confusion_matrix(p, t), skm.confusion_matrix(t, pred, labels=list(range(c))))


def test_regression_matches_sklearn():
    rng = np.random.default_rng(0)
    y = rng.normal(size=100)
    p = y + rng.normal(scale=0.3, size=100)
    m = compute_metrics("regression", p, y)
    assert m["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(y, p)))
    assert m["mae"] == pytest.approx(skm.mean_absolute_error(y, p))
    assert m["r2"] == pytest.approx(skm.r2_score(y, p))


def test_multilabel_matches_sklearn():
    rng = np.random.default_rng(1)
    t = rng.integers(0, 2, (150, 5))
    p = np.clip(t * 0.6 + rng.uniform(0, 0.5, (150, 5)), 0, 1)
    m = compute_metrics("multilabel", p, t)
    pred = (p >= 0.5).astype(int)
    assert m["subset_accuracy"] == pytest.approx(skm.accuracy_score(t, pred))
    for avg in ("micro", "macro"):
        assert m[f"f1_{avg}"] == pytest.approx(skm.f1_score(t, pred, average=avg))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(t, p, average="macro"), abs=1e-6)
