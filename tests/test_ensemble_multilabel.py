"""Multi-label presets: iterative-stratified folds, multi-label metrics against training.metrics (what
`evaluate` reports), shared temperature scaling against a grid search, and an ensemble run folder that
predicts, evaluates and reloads like a `--preset fast` multi-label run."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from scipy.special import expit, logit
from sklearn.metrics import f1_score

from polymodal.ensemble import EnsemblePredictor, EnsembleSettings
from polymodal.ensemble.bagging import iterative_folds, make_folds
from polymodal.ensemble.scoring import check_metric, metric_value
from polymodal.ensemble.selection import apply_temperature, fit_temperature
from polymodal.predictor import MultimodalPredictor
from polymodal.problem_types import MULTILABEL
from polymodal.runs import load_run
from polymodal.training.config import FitConfig
from polymodal.training.metrics import compute_metrics


def tagged(n: int = 160, seed: int = 0) -> pd.DataFrame:
    """Three learnable tags from numbers and a category; "d" when none applies (a label is never empty)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    cat = rng.choice(["u", "v"], n)
    tags = []
    for r, c in zip(x, cat):
        on = [t for t, yes in zip("abc", (r[0] > 0, r[1] > 0.3, r[0] + r[2] > 1 or c == "v" and r[3] > 1)) if yes]
        tags.append("|".join(on) or "d")
    df = pd.DataFrame(x, columns=["x0", "x1", "x2", "x3"])
    df["kind"], df["tags"] = cat, tags
    return df


def test_iterative_folds_spread_rare_labels():
    rng = np.random.default_rng(0)
    y = rng.random((300, 6)) < np.array([0.02, 0.05, 0.1, 0.3, 0.5, 0.7])
    folds = iterative_folds(y, 5, 0)
    held = np.concatenate([va for _, va in folds])
    assert sorted(held) == list(range(300))  # every row held out exactly once
    for tr, va in folds:
        assert not set(tr) & set(va)
        assert abs(len(va) - 60) <= 3
    counts = np.array([y[va].sum(0) for _, va in folds])  # fold × label positives
    rarest = np.argsort(y.sum(0))[:2]  # dealt first: within one row of an even share
    assert (np.abs(counts[:, rarest] - y.sum(0)[rarest] / 5) <= 1).all()
    assert (counts[:, 1] > 0).all()  # a 5% label (~15 rows) is in every fold


def test_multilabel_group_folds_keep_groups_whole():
    rng = np.random.default_rng(1)
    y = (rng.random((80, 3)) < 0.4).astype(np.int64)
    groups = np.repeat(np.arange(20), 4)
    for tr, va in make_folds(y, True, 5, 0, groups):
        assert not set(groups[tr]) & set(groups[va])


def test_multilabel_metrics_match_evaluate():
    rng = np.random.default_rng(2)
    y = (rng.random((50, 4)) < 0.4).astype(np.int64)
    p = np.clip(y * 0.6 + rng.random((50, 4)) * 0.5, 0.01, 0.99)
    ref = compute_metrics(MULTILABEL, p, y)
    for name in ("f1_macro", "f1_micro", "log_loss", "roc_auc"):
        assert metric_value(name, p, y) == pytest.approx(ref[name], rel=1e-5), name
    assert metric_value("f1_macro", p, y) == pytest.approx(f1_score(y, p >= 0.5, average="macro"))
    assert check_metric(None, MULTILABEL) == "f1_macro"
    with pytest.raises(Exception, match="does not apply to a multilabel label"):
        check_metric("accuracy", MULTILABEL)


def test_shared_temperature_minimises_binary_nll_and_keeps_decisions():
    rng = np.random.default_rng(3)
    z = rng.normal(size=(400, 3)) * 3
    y = (rng.random((400, 3)) < expit(z / 3)).astype(np.int64)  # true temperature 3: over-confident logits
    p = expit(z)
    t = fit_temperature(p, y)
    grid = np.exp(np.linspace(-3, 3, 601))

    def nll(logits):  # PyTorch's binary cross-entropy on logits as the reference
        return float(F.binary_cross_entropy_with_logits(torch.as_tensor(logits), torch.as_tensor(y, dtype=float)))

    best = grid[int(np.argmin([nll(logit(p) / g) for g in grid]))]
    assert t == pytest.approx(best, rel=0.02) and t == pytest.approx(3, rel=0.25)
    q = apply_temperature(p, t, multilabel=True)
    assert nll(logit(q)) < nll(logit(p))
    assert ((q >= 0.5) == (p >= 0.5)).all()


def test_multilabel_preset_predicts_like_fast_and_reloads(tmp_path):
    df = tagged(180)
    train, test = df.iloc[:140], df.iloc[140:]
    settings = EnsembleSettings(preset="balanced", repeats=1,
                                members=["linear", "knn", "lightgbm", "extra_trees", "fusion:concat"])
    p = EnsemblePredictor.train(train, None, test, FitConfig(label="tags", max_epochs=4), settings,
                                str(tmp_path / "run"), lambda m: None)
    ens = p.ensemble
    assert ens.problem.problem_type == MULTILABEL and ens.metric == "f1_macro"
    ok = {n: r for n, r in ens.results.items() if r.status == "ok"}
    assert set(ok) == {"linear", "knn", "lightgbm", "extra_trees", "fusion:concat"}, ens.results
    assert all(r.oof.shape == (140, 4) for r in ok.values())  # per-label probabilities over a, b, c, d
    assert ens.scores["ensemble"] >= max(ens.scores[n] for n in ok) - 1e-12  # never below its best member
    probs = p.predict_proba(test)
    assert list(probs.columns) == ["a", "b", "c", "d"]
    assert ((probs.to_numpy() >= 0) & (probs.to_numpy() <= 1)).all()
    pred = p.predict(test)
    expected = ["|".join(c for c, on in zip("abcd", row) if on) for row in probs.to_numpy() >= 0.5]
    assert list(pred) == expected and list(pred.index) == list(test.index)
    metrics = p.evaluate(test)
    y = np.array([[c in s.split("|") for c in "abcd"] for s in test["tags"]], np.int64)
    assert metrics["f1_macro"] == pytest.approx(f1_score(y, probs.to_numpy() >= 0.5, average="macro",
                                                         zero_division=0), rel=1e-5)
    assert metrics["f1_macro"] > 0.7  # the tags are learnable from these columns
    fast = MultimodalPredictor(label="tags", verbose=False, max_epochs=2, progress=False).fit(train)
    assert set(metrics) == set(fast.evaluate(test))  # the same keys as a --preset fast multi-label run
    assert type(fast.predict(test)) is type(pred) and fast.predict(test).dtype == pred.dtype
    q = load_run(tmp_path / "run")
    assert np.array_equal(q.predict_proba(test, as_pandas=False), probs.to_numpy())
    assert q.evaluate(test) == metrics
    board = q.leaderboard(test)
    assert board.loc[0, "score_test"] == pytest.approx(metrics["f1_macro"], rel=1e-5)
