"""End-to-end: fit / evaluate / predict / save / load on small generated tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from polymodal import MultimodalPredictor
from polymodal.data.readers import read_table

FAST = dict(max_epochs=6, batch_size=16, lr=3e-3, patience=6, progress=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from conftest import color_table

    root = tmp_path_factory.mktemp("fit")
    color_table(root)
    p = MultimodalPredictor(label="label", path=root / "run", encoders={"image": "small-cnn"},
                            encoder_opts={"image": {"image_size": 32}}, verbose=False, **FAST)
    p.fit(root / "train.csv")
    return p, root


def test_learns_and_writes_run_folder(trained):
    p, root = trained
    assert p.metrics["valid"]["accuracy"] >= 0.9
    run = root / "run"
    for name in ("config.json", "preprocess.json", "model.safetensors", "metrics.json", "README.md",
                 "history.csv", "plots/confusion_matrix.png", "plots/training_curves.png"):
        assert (run / name).exists(), name
    hist = pd.read_csv(run / "history.csv")
    assert {"epoch", "train_loss", "val_loss", "val_accuracy"} <= set(hist.columns)
    assert "predicts `label`" in (run / "README.md").read_text()


def test_save_load_round_trip_identical(trained):
    p, root = trained
    df = read_table(root / "train.csv")
    q = MultimodalPredictor.load(root / "run")
    np.testing.assert_array_equal(p.predict_proba(df, as_pandas=False), q.predict_proba(df, as_pandas=False))
    assert (p.predict(df) == q.predict(df)).all()
    assert list(q.predict_proba(df.head(3)).columns) == ["blue", "red"]


def test_evaluate_and_missing_modality_rows(trained, tmp_path):
    p, root = trained
    df = read_table(root / "train.csv")
    m = p.evaluate(df, plots_dir=tmp_path)
    assert m["accuracy"] >= 0.9 and m["rows"] == 80 and (tmp_path / "confusion_matrix.png").exists()
    df.loc[[0, 1], "image"] = np.nan  # a row without its image still gets a prediction
    pred = p.predict(df.head(4))
    assert len(pred) == 4 and set(pred) <= {"red", "blue"}


def test_single_row_predict_does_not_build_a_trainer(trained, monkeypatch):
    import lightning

    p, root = trained

    def boom(*a, **k):
        raise AssertionError("a Trainer was built for predict")

    monkeypatch.setattr(lightning, "Trainer", boom)
    row = read_table(root / "train.csv").head(1)
    assert p.predict(row).iloc[0] in {"red", "blue"}


def test_regression_on_tabular(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 2))
    df = pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "cat": rng.choice(["u", "v"], 200)})
    df["y"] = 3 * df["a"] - 2 * df["b"] + (df["cat"] == "u") * 1.5 + rng.normal(scale=0.1, size=200)
    p = MultimodalPredictor(label="y", verbose=False, max_epochs=40, batch_size=32, lr=3e-3, patience=40,
                            progress=False).fit(df)
    assert p.task.problem_type == "regression"
    assert p.metrics["valid"]["r2"] > 0.9
    pred = p.predict(df.head(5))
    assert np.abs(pred.to_numpy() - df["y"].head(5).to_numpy()).max() < 1.5


def test_multilabel(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(240, 3))
    labels = ["|".join(n for n, on in zip("abc", row > 0) if on) or "none" for row in x]
    df = pd.DataFrame({"x0": x[:, 0], "x1": x[:, 1], "x2": x[:, 2], "tags": labels})
    p = MultimodalPredictor(label="tags", verbose=False, max_epochs=30, batch_size=32, lr=3e-3, patience=30,
                            progress=False).fit(df)
    assert p.task.problem_type == "multilabel"
    assert p.metrics["valid"]["f1_micro"] > 0.85
    assert isinstance(p.predict(df.head(2)).iloc[0], str)


def test_audio_and_late_fusion(audio_table, tmp_path):
    p = MultimodalPredictor(label="label", fusion="late", verbose=False,
                            encoder_opts={"audio": {"sample_rate": 8000, "max_seconds": 0.5}},
                            **{**FAST, "max_epochs": 15, "patience": 15, "batch_size": 8})
    p.fit(audio_table)
    assert p.prep.schema.columns["clip"] == "audio"
    assert p.metrics["valid"]["accuracy"] >= 0.85


def test_text_run_loads_without_pretrained_weights(tmp_path, monkeypatch):
    """A text model's run folder rebuilds from its own config + weights: no hub, no package weights."""
    rng = np.random.default_rng(0)
    good = ["great product, works well", "love it, excellent quality", "very happy with this purchase"]
    bad = ["terrible, broke after a day", "awful quality, do not buy", "very disappointed with this"]
    rows = [{"review": (good if i % 2 else bad)[i % 3] + f" #{i}", "stars": float(rng.normal()),
             "label": "pos" if i % 2 else "neg"} for i in range(60)]
    df = pd.DataFrame(rows)
    p = MultimodalPredictor(label="label", path=tmp_path / "run", verbose=False,
                            encoder_opts={"text": {"num_layers": 1}}, **FAST).fit(df)
    assert p.prep.schema.columns["review"] == "text"
    import transformers

    def no_download(*a, **k):
        raise AssertionError("pretrained weights were loaded")

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", no_download)
    q = MultimodalPredictor.load(tmp_path / "run")
    np.testing.assert_allclose(p.predict_proba(df, as_pandas=False), q.predict_proba(df, as_pandas=False),
                               atol=1e-6)
    assert p.metrics["valid"]["accuracy"] >= 0.9


def test_unknown_fit_setting_is_a_clear_error(tmp_path):
    from polymodal.errors import PolymodalError

    p = MultimodalPredictor(label="y", verbose=False)
    with pytest.raises(PolymodalError, match="epochz: not a setting of a classifier or regressor"):
        p.fit(tmp_path / "never-read.csv", epochz=3)
    g = MultimodalPredictor(label="caption", task="caption", verbose=False)
    with pytest.raises(PolymodalError, match="stream: not a setting of task 'caption'"):
        g.fit(tmp_path / "never-read.csv", stream=True)


def test_cli_predict_streams_parquet_shards_like_the_whole_table(trained, tmp_path):
    from typer.testing import CliRunner

    from polymodal.cli import app

    p, root = trained
    df = read_table(root / "train.csv")
    for i, part in enumerate(np.array_split(np.arange(len(df)), 3)):  # beside train.csv: same relative paths
        df.iloc[part].to_parquet(root / f"part-{i}.parquet", index=False)
    r = CliRunner().invoke(app, ["predict", str(root / "run"), str(root / "part-*.parquet"), "--stream",
                                 "--chunk-rows", "7", "--out", str(tmp_path / "s.csv")])
    assert r.exit_code == 0, r.output
    got = pd.read_csv(tmp_path / "s.csv")
    assert len(got) == len(df) and got["shard"].nunique() == 3
    assert (got["predicted_label"].to_numpy() == p.predict(df).to_numpy()).all()
    np.testing.assert_allclose(got[["proba_blue", "proba_red"]].to_numpy(),
                               p.predict_proba(df)[["blue", "red"]].to_numpy(), atol=1e-5)
    # a bad row in the last shard: a clear error naming it, and the earlier output file is left as it was
    bad = df.iloc[-5:].copy()
    bad.loc[bad.index[2], "image"] = "imgs/missing.png"
    bad.to_parquet(root / "part-2.parquet", index=False)
    before = (tmp_path / "s.csv").read_bytes()
    r = CliRunner().invoke(app, ["predict", str(root / "run"), str(root / "part-*.parquet"), "--stream",
                                 "--out", str(tmp_path / "s.csv")])
    assert r.exit_code != 0 and "part-2.parquet" in r.output and "image" in r.output, r.output
    assert (tmp_path / "s.csv").read_bytes() == before
    assert not list(tmp_path.glob("*.tmp"))
