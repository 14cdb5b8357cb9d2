"""Quality presets from Python and the CLI: MultimodalPredictor(preset=...), time limit, leaderboard, reload
with identical predictions, and single-model tools refusing an ensemble with a clear message."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_wine
from typer.testing import CliRunner

from polymodal.cli import app
from polymodal.data.dataset import Collator
from polymodal.ensemble import EnsemblePredictor
from polymodal.errors import PolymodalError
from polymodal.predictor import MultimodalPredictor
from polymodal.runs import load_run
from polymodal.serve.inputs import RowBuilder


def wine() -> tuple[pd.DataFrame, pd.DataFrame]:
    df = load_wine(as_frame=True).frame.rename(columns={"target": "cultivar"})
    df["cultivar"] = df["cultivar"].map({0: "a", 1: "b", 2: "c"})
    df = df.sample(frac=1, random_state=1).reset_index(drop=True)
    return df.iloc[:140], df.iloc[140:]


def test_preset_best_from_python(tmp_path):
    train, test = wine()
    t0 = time.time()
    p = MultimodalPredictor(label="cultivar", preset="best", time_limit=30, path=tmp_path / "run", verbose=False,
                            max_epochs=15).fit(train, test_data=test)
    assert time.time() - t0 <= 33  # within 10% of the limit
    board = p.leaderboard(test)
    assert board.loc[0, "model"] == "ensemble" and "score_test" in board
    ok = board[(board["model"] != "ensemble") & (board["status"] == "ok")]
    assert len(ok) >= 3 and ok["weight"].sum() == pytest.approx(1.0)
    assert board.loc[0, "score_val"] >= ok["score_val"].max() - 1e-12  # accuracy: never below the best member
    probs = p.predict_proba(test)
    assert list(probs.columns) == ["a", "b", "c"]
    np.testing.assert_allclose(probs.to_numpy().sum(1), 1.0, rtol=1e-6)
    q = load_run(tmp_path / "run")
    assert isinstance(q, EnsemblePredictor) and isinstance(MultimodalPredictor.load(tmp_path / "run"),
                                                           EnsemblePredictor)
    assert np.array_equal(q.predict_proba(test, as_pandas=False), probs.to_numpy())
    assert (q.predict(test) == p.predict(test)).all()
    assert q.evaluate(test) == p.evaluate(test)
    assert p.metrics["test"]["accuracy"] == pytest.approx(np.mean(p.predict(test) == test["cultivar"]))
    # what the server calls (serve/runner.py): rows built and collated with the run's Preprocessor
    items = [RowBuilder(p.prep).build({c: float(v) for c, v in row.items() if c != "cultivar"})
             for _, row in test.iloc[:3].iterrows()]
    answers = p.answer_batch(Collator(p.prep)(items))
    np.testing.assert_allclose([[a["probabilities"][c] for c in probs.columns] for a in answers],
                               probs.iloc[:3].to_numpy(), atol=1e-5)


def test_preset_choices_are_checked():
    with pytest.raises(PolymodalError, match="--preset must be one of fast, balanced, best"):
        MultimodalPredictor(label="y", preset="fastest")
    with pytest.raises(PolymodalError, match="task 'caption' takes --preset fast"):
        MultimodalPredictor(label="y", preset="best", task="caption")
    with pytest.raises(PolymodalError, match="--eval-metric rmse does not apply to a multiclass label"):
        MultimodalPredictor(label="cultivar", preset="balanced", eval_metric="rmse", verbose=False).fit(wine()[0])


def test_fast_preset_leaderboard_is_its_one_network():
    train, test = wine()
    p = MultimodalPredictor(label="cultivar", verbose=False, max_epochs=2, progress=False).fit(train)
    board = p.leaderboard(test)
    assert list(board["model"]) == ["fusion:concat"]
    assert board.loc[0, "test_accuracy"] == pytest.approx(p.evaluate(test)["accuracy"])


def test_cli_fit_leaderboard_predict_and_refusals(tmp_path):
    train, test = wine()
    train.to_csv(tmp_path / "train.csv", index=False)
    test.to_csv(tmp_path / "test.csv", index=False)
    run = tmp_path / "run"
    r = CliRunner().invoke(app, ["fit", str(tmp_path / "train.csv"), "--label", "cultivar", "--out", str(run),
                                 "--preset", "balanced", "--time-limit", "25", "--eval-metric", "log_loss",
                                 "--epochs", "10"])
    assert r.exit_code == 0, r.output
    assert "ensemble:" in r.output and "out-of-fold log_loss" in r.output
    assert (run / "leaderboard.csv").exists() and "## Leaderboard" in (run / "README.md").read_text()
    r = CliRunner().invoke(app, ["leaderboard", str(run), str(tmp_path / "test.csv")])
    assert r.exit_code == 0, r.output
    assert "ensemble" in r.output and "lightgbm" in r.output and "score_test" in r.output
    r = CliRunner().invoke(app, ["predict", str(run), str(tmp_path / "test.csv"), "--out", str(tmp_path / "p.csv"),
                                 "--proba"])
    assert r.exit_code == 0, r.output
    pred = pd.read_csv(tmp_path / "p.csv")
    expected = load_run(run).predict(test)
    assert (pred["predicted_cultivar"].to_numpy() == expected.to_numpy()).all()
    r = CliRunner().invoke(app, ["export", str(run), "--out", str(tmp_path / "m.onnx")])
    assert r.exit_code == 2 and "is an ensemble" in r.output
    r = CliRunner().invoke(app, ["fit", str(tmp_path / "train.csv"), "--label", "cultivar", "--out",
                                 str(tmp_path / "x"), "--preset", "huge"])
    assert r.exit_code == 2 and "--preset must be one of" in r.output


def test_cli_multilabel_preset_fit_predict_evaluate(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(150, 3))
    df = pd.DataFrame(x, columns=["x0", "x1", "x2"])
    df["genres"] = ["|".join(g for g, on in zip(("drama", "comedy"), (r[0] > 0, r[1] > 0)) if on) or "other"
                    for r in x]
    df.iloc[:120].to_csv(tmp_path / "train.csv", index=False)
    df.iloc[120:].to_csv(tmp_path / "test.csv", index=False)
    run = tmp_path / "run"
    r = CliRunner().invoke(app, ["fit", str(tmp_path / "train.csv"), "--label", "genres", "--out", str(run),
                                 "--preset", "balanced", "--time-limit", "20", "--epochs", "4"])
    assert r.exit_code == 0, r.output
    assert "problem type: multilabel" in r.output and "out-of-fold f1_macro" in r.output
    r = CliRunner().invoke(app, ["predict", str(run), str(tmp_path / "test.csv"), "--out", str(tmp_path / "p.csv")])
    assert r.exit_code == 0, r.output
    pred = pd.read_csv(tmp_path / "p.csv", keep_default_na=False)
    assert {"proba_drama", "proba_comedy", "proba_other"} <= set(pred.columns)
    expected = load_run(run).predict(df.iloc[120:])
    assert list(pred["predicted_genres"]) == list(expected)
    r = CliRunner().invoke(app, ["evaluate", str(run), str(tmp_path / "test.csv")])
    assert r.exit_code == 0, r.output
    assert "f1_macro" in r.output and "subset_accuracy" in r.output


def test_members_and_folds_replace_the_portfolio(tmp_path):
    with pytest.raises(PolymodalError, match="unknown ensemble member 'lgbm'.*fusion:<fusion>"):
        MultimodalPredictor(label="cultivar", preset="best", members=["lgbm"])  # before any data is read
    with pytest.raises(PolymodalError, match="unknown ensemble member 'fusion:concatenate'"):
        MultimodalPredictor(label="cultivar", preset="best", members=["fusion:concatenate"])
    with pytest.raises(PolymodalError, match="give --preset balanced or best"):
        MultimodalPredictor(label="cultivar", members=["linear"])
    train, test = wine()
    train.to_csv(tmp_path / "train.csv", index=False)
    run = tmp_path / "run"
    r = CliRunner().invoke(app, ["fit", str(tmp_path / "train.csv"), "--label", "cultivar", "--out", str(run),
                                 "--preset", "best", "--members", "linear,knn", "--folds", "3"])
    assert r.exit_code == 0, r.output
    q = load_run(run)
    board = q.leaderboard(test)
    assert set(board["model"]) == {"ensemble", "linear", "knn"}
    assert q.ensemble.settings.folds == 3 and q.ensemble.settings.members == ["linear", "knn"]
    r = CliRunner().invoke(app, ["fit", str(tmp_path / "train.csv"), "--label", "cultivar", "--out",
                                 str(tmp_path / "x"), "--preset", "best", "--members", "svm"])
    assert r.exit_code == 2 and "unknown ensemble member 'svm'" in r.output
