"""Ensemble core: selection and calibration against hand computations and sklearn, folds, members dropped on
error, an ensemble never worse than its best member out of fold, and a run folder that reloads identically."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
from scipy.special import softmax
from sklearn.datasets import load_breast_cancer, load_diabetes
from sklearn.metrics import accuracy_score, log_loss, mean_squared_error

from polymodal.ensemble import EnsemblePredictor, EnsembleSettings
from polymodal.ensemble.bagging import make_folds
from polymodal.ensemble.fit import fit_ensemble
from polymodal.ensemble.members import MatrixMember
from polymodal.ensemble.scoring import metric_value, score
from polymodal.ensemble.selection import apply_temperature, caruana, fit_temperature
from polymodal.errors import PolymodalError
from polymodal.runs import load_run, run_kind
from polymodal.training.config import FitConfig


def cancer(n: int = 200, cols: int = 8) -> pd.DataFrame:
    d = load_breast_cancer(as_frame=True)
    df = d.frame.iloc[:, list(range(cols)) + [-1]].rename(columns={"target": "y"})
    df["y"] = df["y"].map({0: "malignant", 1: "benign"})
    return df.sample(n=n, random_state=0).reset_index(drop=True)


class Exploding:
    """A member that raises: it must be dropped, never the fit."""

    name, share = "exploding", 1.0

    def fit(self, *args, **kwargs):
        raise RuntimeError("boom")


def test_caruana_hand_computed_and_never_worse():
    y = np.array([0, 0, 1, 1])
    # a: right on rows 0,1,2; b: right on rows 1,2,3; c: always wrong-ish
    a = np.array([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.6, 0.4]])
    b = np.array([[0.4, 0.6], [0.6, 0.4], [0.2, 0.8], [0.1, 0.9]])
    c = np.array([[0.3, 0.7], [0.3, 0.7], [0.7, 0.3], [0.7, 0.3]])
    weights, best = caruana({"a": a, "b": b, "c": c}, y, "log_loss", rounds=10)
    assert sum(weights.values()) == pytest.approx(1.0)
    blended = sum(w * p for w, p in zip(weights.values(), (a, b, c)))
    assert best == pytest.approx(-log_loss(y, blended))
    singles = [-log_loss(y, p) for p in (a, b, c)]
    assert best >= max(singles)
    assert weights["c"] == 0.0 and weights["a"] > 0 and weights["b"] > 0  # a and b complement each other
    # hand check of the first step: a + b averaged beats a twice (the second pick is b)
    assert -log_loss(y, (a + b) / 2) > -log_loss(y, a)


def test_temperature_scaling_minimises_nll_and_keeps_argmax():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(300, 3)) * 4
    y = np.array([rng.choice(3, p=softmax(row / 4)) for row in logits])  # true temperature 4: over-confident
    probs = softmax(logits, axis=1)
    t = fit_temperature(probs, y)
    grid = np.exp(np.linspace(-3, 3, 601))
    nll = [log_loss(y, softmax(np.log(probs) / g, axis=1), labels=[0, 1, 2]) for g in grid]
    assert t == pytest.approx(grid[int(np.argmin(nll))], rel=0.02)
    calibrated = apply_temperature(probs, t)
    assert log_loss(y, calibrated) < log_loss(y, probs)
    assert (calibrated.argmax(1) == probs.argmax(1)).all()


def test_metrics_match_sklearn():
    y = np.array([0, 1, 1, 2])
    p = np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]])
    assert metric_value("accuracy", p, y) == accuracy_score(y, p.argmax(1))
    assert metric_value("log_loss", p, y) == pytest.approx(log_loss(y, p))
    assert score("log_loss", p, y) == -metric_value("log_loss", p, y)
    v = np.array([1.0, 2.0, 4.0])
    assert metric_value("rmse", v, np.array([1.0, 3.0, 3.0])) == pytest.approx(
        np.sqrt(mean_squared_error([1, 3, 3], v)))


def test_group_folds_never_split_a_group():
    y = np.array([0, 1] * 30)
    groups = np.repeat(np.arange(15), 4)
    for tr, va in make_folds(y, True, 5, 0, groups):
        assert not set(groups[tr]) & set(groups[va])
        assert sorted(np.concatenate([tr, va])) == list(range(60))


def test_member_that_raises_is_dropped_and_ensemble_beats_members(tmp_path):
    df = cancer()
    log: list[str] = []
    members = [MatrixMember("linear", 1.0), MatrixMember("knn", 1.0), MatrixMember("lightgbm", 1.0), Exploding()]
    ens = fit_ensemble(df, None, FitConfig(label="y"), EnsembleSettings(preset="balanced", eval_metric="log_loss"),
                       tmp_path, log.append, members)
    assert ens.results["exploding"].status.startswith("dropped: raised RuntimeError: boom")
    assert any("exploding dropped" in line for line in log)
    oof = {n: r.oof for n, r in ens.results.items() if r.status == "ok"}
    assert set(oof) == {"linear", "knn", "lightgbm"}
    best_member = min(log_loss(ens.y, p) for p in oof.values())
    assert ens.scores["ensemble"] <= best_member + 1e-12  # never worse than the best member, out of fold
    # the recorded scores are sklearn's on the out-of-fold predictions
    assert ens.scores["linear"] == pytest.approx(log_loss(ens.y, oof["linear"]))


def test_regression_ensemble_reloads_identically(tmp_path):
    d = load_diabetes(as_frame=True).frame.rename(columns={"target": "y"}).sample(n=240, random_state=0)
    train, test = d.iloc[:200], d.iloc[200:]
    p = EnsemblePredictor.train(train, None, test, FitConfig(label="y"),
                                EnsembleSettings(preset="balanced", members=["linear", "knn", "lightgbm"]),
                                str(tmp_path / "run"), lambda m: None)
    assert run_kind(tmp_path / "run") == "ensemble"
    q = load_run(tmp_path / "run")
    a, b = p.predict_proba(test, as_pandas=False), q.predict_proba(test, as_pandas=False)
    assert np.array_equal(a, b)
    assert q.evaluate(test)["rmse"] == pytest.approx(np.sqrt(mean_squared_error(test["y"], a)), rel=1e-5)
    board = pd.read_csv(tmp_path / "run" / "leaderboard.csv")
    assert list(board["model"]) == ["ensemble", "linear", "knn", "lightgbm"]
    assert board["weight"].iloc[1:].sum() == pytest.approx(1.0)
    assert board.loc[0, "score_val"] <= board["score_val"].iloc[1:].min() + 1e-9  # rmse: lower is better
    with_test = q.leaderboard(test)
    assert with_test.loc[0, "score_test"] == pytest.approx(np.sqrt(mean_squared_error(test["y"], a)), rel=1e-6)
    with pytest.raises(PolymodalError, match="is an ensemble"):
        _ = q.model  # export / compress / serve take a single-model run


def test_time_limit_holds_with_networks(tmp_path):
    df = cancer(160, 6)
    limit = 25.0
    t0 = time.time()
    p = EnsemblePredictor.train(df, None, None, FitConfig(label="y", max_epochs=30),
                                EnsembleSettings(preset="best", time_limit=limit), None, lambda m: None)
    took = time.time() - t0
    assert took <= 1.1 * limit, took
    assert p.ensemble.fit_seconds <= limit
    networks = [r for r in p.ensemble.results.values() if r.member.name.startswith("fusion:")]
    assert len(networks) == 2  # the preset's two fusions were in the portfolio: trained, or dropped with a reason
    assert all(r.status == "ok" and r.folds or r.status.startswith("dropped: ") for r in networks)


def test_image_embeddings_feed_the_trees(image_table, tmp_path):
    df = pd.read_csv(image_table)
    df.attrs["base_dir"] = str(image_table.parent)
    config = FitConfig(label="label", encoder_opts={"image": {"image_size": 64}})
    log: list[str] = []
    ens = fit_ensemble(df, None, config, EnsembleSettings(preset="balanced", members=["linear", "lightgbm"]),
                       tmp_path, log.append)
    layout = ens.featurizer.matrix(df.iloc[:3]).layout
    assert "emb:image" in layout and "categorical" in layout
    assert ens.scores["linear"] >= 0.9  # colour is in the image only: the embedding carries it


def test_tiny_time_limit_still_ends_with_a_model(tmp_path):
    log: list[str] = []
    t0 = time.time()
    ens = fit_ensemble(cancer(120, 5), None, FitConfig(label="y"), EnsembleSettings(preset="best", time_limit=0.5),
                       tmp_path, log.append)
    assert time.time() - t0 < 15  # the networks and later repeats are skipped, not run past the limit
    assert ens.results["linear"].status == "ok" and ens.weights["linear"] > 0
    assert any("dropped" in r.status or not r.folds for r in ens.results.values() if r.member.name != "linear")
