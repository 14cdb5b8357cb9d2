"""Multi-task presets: one sub-ensemble per label (binary, regression with unlabelled rows, multi-label) over
shared features and folds; predict / predict_proba / evaluate as a `--preset fast` multi-task run; each
label's blend never below its best member on that label's out-of-fold rows; reload and serving."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, f1_score, mean_squared_error

from polymodal.ensemble import EnsemblePredictor, EnsembleSettings
from polymodal.ensemble.multitask import block, task_target
from polymodal.predictor import MultimodalPredictor
from polymodal.problem_types import MULTITASK
from polymodal.runs import load_run
from polymodal.training.config import FitConfig

LABELS = ["kind", "value", "tags"]


def table(n: int = 170, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    df = pd.DataFrame(x, columns=["x0", "x1", "x2", "x3"])
    df["kind"] = np.where(x[:, 0] + 0.3 * rng.normal(size=n) > 0, "p", "q")
    df["value"] = 2 * x[:, 1] - x[:, 2] + 0.2 * rng.normal(size=n) + 10
    df.loc[::7, "value"] = np.nan  # rows without this label still train the others
    df["tags"] = ["|".join(t for t, on in zip("ab", (r[2] > 0, r[3] > 0)) if on) or "c" for r in x]
    return df


def test_multitask_preset_per_label_blends_predict_like_fast(tmp_path):
    df = table()
    train, test = df.iloc[:130], df.iloc[130:]
    settings = EnsembleSettings(preset="balanced", repeats=1, members=["linear", "knn", "lightgbm", "fusion:concat"])
    p = EnsemblePredictor.train(train, None, test, FitConfig(label=LABELS, max_epochs=4), settings,
                                str(tmp_path / "run"), lambda m: None)
    ens = p.ensemble
    assert ens.problem.problem_type == MULTITASK and ens.metric == "score"
    assert all(r.status == "ok" for r in ens.results.values()), {n: r.status for n, r in ens.results.items()}
    assert set(ens.tasks) == set(LABELS)
    refs = {"accuracy": lambda q, t: accuracy_score(t, q.argmax(1)),
            "rmse": lambda q, t: -np.sqrt(mean_squared_error(t, q)),
            "f1_macro": lambda q, t: f1_score(t, q >= 0.5, average="macro", zero_division=0)}
    for label, b in ens.tasks.items():
        assert b.metric == {"kind": "accuracy", "value": "rmse", "tags": "f1_macro"}[label]
        assert sum(b.weights.values()) == pytest.approx(1.0)
        known, t = task_target(ens.y, ens.problem, label)
        if label == "value":
            assert len(known) == 130 - len(range(0, 130, 7))  # the unlabelled rows are left out
        singles = [refs[b.metric](block(r.oof, ens.problem, label)[known], t) for r in ens.results.values()]
        sign = -1 if b.metric == "rmse" else 1
        assert sign * b.score >= max(singles) - 1e-9, (label, b.score, singles)  # never below its best member
    # so the mean over labels (evaluate's "score") is never below any member's either
    assert ens.scores["ensemble"] >= max(v for n, v in ens.scores.items() if n != "ensemble") - 1e-6

    fast = MultimodalPredictor(label=LABELS, verbose=False, max_epochs=2, progress=False).fit(train)
    pred, fast_pred = p.predict(test), fast.predict(test)
    assert list(pred.columns) == list(fast_pred.columns) == LABELS and list(pred.index) == list(test.index)
    assert set(pred["kind"]) <= {"p", "q"} and pred["value"].dtype.kind == "f"
    probs = p.predict_proba(test)
    assert list(probs.columns) == list(fast.predict_proba(test).columns)
    metrics = p.evaluate(test)
    assert set(metrics) == set(fast.evaluate(test))
    assert metrics["kind/accuracy"] == pytest.approx(accuracy_score(test["kind"], pred["kind"]))
    labelled = test["value"].notna()
    assert metrics["value/rmse"] == pytest.approx(
        np.sqrt(mean_squared_error(test["value"][labelled], pred["value"][labelled])), rel=1e-5)
    assert metrics["score"] > 0.8
    q = load_run(tmp_path / "run")
    assert np.array_equal(q.predict_proba(test, as_pandas=False), probs.to_numpy())
    assert q.predict(test).equals(pred)
    assert q.leaderboard(test).loc[0, "score_test"] == pytest.approx(metrics["score"], rel=1e-6)

    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from polymodal.serve.app import app_from_run

    with TestClient(app_from_run(tmp_path / "run", max_wait_ms=2)) as client:
        row = test.iloc[0]
        r = client.post("/predict", json={c: float(row[c]) for c in ["x0", "x1", "x2", "x3"]})
        assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["prediction"]["kind"] == pred["kind"].iloc[0] and answer["prediction"]["tags"] == pred["tags"].iloc[0]
    assert answer["prediction"]["value"] == pytest.approx(pred["value"].iloc[0], abs=1e-4)
    np.testing.assert_allclose([answer["probabilities"][c] for c in probs.columns], probs.iloc[0], atol=1e-4)
