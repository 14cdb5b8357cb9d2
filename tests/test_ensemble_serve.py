"""Serving an ensemble run: POST /predict through the FastAPI test client answers what predict_proba gives
for the same rows (image uploads, numbers, categories, a missing image); answers are formatted as a single
model's; export and compress refuse an ensemble with a clear message."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("fastapi")
pytest.importorskip("multipart")

from fastapi.testclient import TestClient  # noqa: E402

from polymodal.cli import app as cli  # noqa: E402
from polymodal.contracts import outputs_to_answers  # noqa: E402
from polymodal.data.dataset import Collator, TableDataset  # noqa: E402
from polymodal.ensemble import EnsemblePredictor, EnsembleSettings  # noqa: E402
from polymodal.ensemble.serving import answers  # noqa: E402
from polymodal.runs import load_run  # noqa: E402
from polymodal.serve.app import app_from_run  # noqa: E402
from polymodal.tasks import ClassificationTask, MultiTask, RegressionTask  # noqa: E402
from polymodal.training.config import FitConfig  # noqa: E402


def test_ensemble_run_serves_predict_proba(image_table, tmp_path):
    df = pd.read_csv(image_table)
    df.attrs["base_dir"] = str(image_table.parent)
    df = df.drop(columns=["id"])
    config = FitConfig(label="label", encoder_opts={"image": {"image_size": 64}}, max_epochs=3)
    settings = EnsembleSettings(preset="balanced", repeats=1, members=["linear", "lightgbm", "fusion:concat"])
    p = EnsemblePredictor.train(df, None, None, config, settings, None, lambda m: None)
    assert all(r.status == "ok" for r in p.ensemble.results.values())
    p.ensemble.weights = {"linear": 0.3, "lightgbm": 0.3, "fusion:concat": 0.4}  # every member's path answers
    run = p.save(tmp_path / "run")
    q = load_run(run)
    rows = df.iloc[:6].copy()
    rows.attrs["base_dir"] = str(image_table.parent)
    no_image = rows.iloc[:2].assign(image=np.nan)
    no_image.attrs["base_dir"] = str(image_table.parent)
    expected = pd.concat([q.predict_proba(rows), q.predict_proba(no_image)])
    with TestClient(app_from_run(run, max_wait_ms=2)) as client:
        assert client.get("/ready").json() == {"ready": True}  # the probe row's answer is finite
        assert client.get("/schema").json()["problem_type"] == "binary"
        got = []
        for _, row in rows.iterrows():
            files = {"image": ("x.png", (image_table.parent / row["image"]).read_bytes(), "image/png")}
            r = client.post("/predict", files=files, data={"size": str(row["size"]), "shop": row["shop"]})
            assert r.status_code == 200, r.text
            got.append(r.json())
        for _, row in no_image.iterrows():
            r = client.post("/predict", json={"size": row["size"], "shop": row["shop"]})
            assert r.status_code == 200, r.text
            got.append(r.json())
    probs = np.array([[a["probabilities"][c] for c in expected.columns] for a in got])
    np.testing.assert_allclose(probs, expected.to_numpy(), atol=1e-4)
    assert [a["prediction"] for a in got] == list(expected.columns[expected.to_numpy().argmax(1)])
    # rows collated from a table that share images (each encoded once, read back through the index) answer
    # as the same rows collated one image per row
    rep = rows.iloc[[0, 1, 0, 0, 1]].reset_index(drop=True)
    rep.attrs["base_dir"] = str(image_table.parent)
    ds = TableDataset(rep, q.prep, train=False, with_target=False)
    shared, plain = Collator(q.prep)(ds.__getitems__(list(range(5)))), Collator(q.prep)([ds[i] for i in range(5)])
    assert shared["index"]["image"].tolist() == [0, 1, 0, 0, 1] and "index" not in plain
    a, b = q.answer_batch(shared), q.answer_batch(plain)
    assert [x["prediction"] for x in a] == [x["prediction"] for x in b]
    np.testing.assert_allclose([list(x["probabilities"].values()) for x in a],
                               [list(x["probabilities"].values()) for x in b], atol=1e-6)

    r = CliRunner().invoke(cli, ["export", str(run), "--out", str(tmp_path / "m.onnx")])
    assert r.exit_code == 2 and "is an ensemble" in r.output and "export and compress" in r.output
    r = CliRunner().invoke(cli, ["compress", str(run), "--out", str(tmp_path / "c"), "--quantize", "int8",
                                 "--valid", str(image_table)])
    assert r.exit_code == 2 and "is an ensemble" in r.output, r.output
    r = CliRunner().invoke(cli, ["compress", str(tmp_path / "elsewhere"), "--out", str(tmp_path / "c"),
                                 "--distill-from", str(run), "--train", str(image_table)])
    assert r.exit_code == 2 and "is an ensemble" in r.output, r.output


def test_answers_match_the_single_model_format():
    logits = torch.tensor([[2.0, -1.0, 0.5], [-0.5, 0.3, 1.5]])
    for task in (ClassificationTask("multiclass", ["a", "b", "c"]), ClassificationTask("multilabel", ["a", "b", "c"])):
        probs = task.probabilities(logits).numpy()
        assert answers(task, probs, "y") == outputs_to_answers(task, logits, "y")
    reg = RegressionTask(target_mean=3.0, target_std=2.0)
    assert answers(reg, reg.probabilities(logits[:, :1]).numpy(), "y") == outputs_to_answers(reg, logits[:, :1], "y")
    multi = MultiTask({"k": ClassificationTask("binary", ["p", "q"]), "v": RegressionTask()}, {"k": 1, "v": 1})
    assert answers(multi, multi.probabilities(logits).numpy(), "y") == outputs_to_answers(multi, logits, "y")
