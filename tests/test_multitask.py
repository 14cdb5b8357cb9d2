"""Multi-task labels, focal loss, weighted sampling, threshold tuning, mixup, text augmentation and L1."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import color_rows, write_image
from typer.testing import CliRunner

from polymodal import MultimodalPredictor
from polymodal.cli import app
from polymodal.data.dataset import augment_text
from polymodal.tasks import ClassificationTask, MultiTask, RegressionTask, tune_threshold
from polymodal.training.callbacks import EpochSampler

FAST = dict(encoder_opts={"image": {"image_size": 32}}, max_epochs=12, batch_size=16, lr=3e-3, patience=12,
            progress=False)


def multitask_table(root, n: int = 90, missing: bool = True):
    """image colour → `colour` (binary); numeric `size` → `value` (regression); `shop` → `kind` (3 classes).
    Some rows lack `value` or `kind` (partially labelled)."""
    rng = np.random.default_rng(0)
    rows = []
    for i, color, row in color_rows(root, n, rng):
        rows.append({**row, "colour": color, "value": 3 * row["size"] + 0.1 * rng.normal(), "kind": "xyz"[i % 3]})
    df = pd.DataFrame(rows)
    if missing:
        df.loc[df.index % 7 == 3, "value"] = np.nan
        df.loc[df.index % 11 == 5, "kind"] = None
    path = root / "mt.csv"
    df.to_csv(path, index=False)
    return path


def test_multitask_fit_predict_save_load(tmp_path):
    path = multitask_table(tmp_path)
    p = MultimodalPredictor(label=["colour", "value", "kind"], path=tmp_path / "run", verbose=False,
                            loss_weighting="uncertainty", **FAST)
    p.fit(path)
    assert p.prep.schema.problem_types == {"colour": "binary", "value": "regression", "kind": "multiclass"}
    m = p.evaluate(path)
    assert m["colour/accuracy"] >= 0.95 and m["value/r2"] > 0.8 and m["kind/accuracy"] >= 0.9, m
    assert m["score"] == pytest.approx(np.mean([m["colour/accuracy"], m["value/r2"], m["kind/accuracy"]]))
    assert set(p.task.weights()) == {"colour", "value", "kind"}
    assert len(set(p.task.weights().values())) > 1  # the learned log-variances moved apart
    pred = p.predict(path)
    assert list(pred.columns) == ["colour", "value", "kind"] and len(pred) == 90
    probs = p.predict_proba(path)
    assert list(probs.columns) == ["colour:blue", "colour:red", "value", "kind:x", "kind:y", "kind:z"]
    np.testing.assert_allclose(probs[["kind:x", "kind:y", "kind:z"]].sum(axis=1), 1, atol=1e-5)
    loaded = MultimodalPredictor.load(tmp_path / "run")
    pd.testing.assert_frame_equal(loaded.predict(path), pred)


def test_multitask_loss_ignores_missing_labels_and_weights_tasks():
    tasks = {"a": ClassificationTask("multiclass", ["0", "1", "2"]), "b": RegressionTask(),
             "c": ClassificationTask("multilabel", ["p", "q"])}
    mt = MultiTask(tasks, {"a": 1, "b": 1, "c": 2}, weighting="fixed", weights={"a": 2.0, "c": 0.5})
    torch.manual_seed(0)
    logits = torch.randn(4, 6)
    target = torch.tensor([[0, 0.5, 1, 0], [2, float("nan"), 0, 1], [float("nan"), -1.0, 1, 1],
                           [1, 2.0, float("nan"), float("nan")]])
    la = F.cross_entropy(logits[[0, 1, 3], :3], torch.tensor([0, 2, 1]))
    lb = F.mse_loss(logits[[0, 2, 3], 3], torch.tensor([0.5, -1.0, 2.0]))
    lc = F.binary_cross_entropy_with_logits(logits[[0, 1, 2], 4:], target[[0, 1, 2], 2:])
    assert mt.loss(logits, target).item() == pytest.approx((2 * la + lb + 0.5 * lc).item(), rel=1e-6)
    un = MultiTask(tasks, {"a": 1, "b": 1, "c": 2}, weighting="uncertainty")
    with torch.no_grad():
        un.log_vars.copy_(torch.tensor([0.5, -0.2, 0.0]))
    expected = np.exp(-0.5) * la + 0.5 + np.exp(0.2) * lb - 0.2 + lc
    assert un.loss(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)
    m = mt.metrics(mt.probabilities(logits).numpy(), target.numpy())
    assert {"a/accuracy", "b/rmse", "c/f1_macro", "score"} <= set(m)


def test_focal_loss_matches_hand_computation():
    torch.manual_seed(0)
    logits, y = torch.randn(8, 3), torch.tensor([0, 1, 2, 0, 1, 2, 0, 0])
    w = torch.tensor([0.5, 1.0, 2.0])
    ce = ClassificationTask("multiclass", list("abc"), w)
    assert ClassificationTask("multiclass", list("abc"), w, loss_kind="focal", focal_gamma=0.0).loss(logits, y) \
        .item() == pytest.approx(ce.loss(logits, y).item(), rel=1e-6)
    p = logits.softmax(-1)[torch.arange(8), y]
    expected = ((1 - p) ** 2 * -p.log() * w[y]).sum() / w[y].sum()
    focal = ClassificationTask("multiclass", list("abc"), w, loss_kind="focal", focal_gamma=2.0)
    assert focal.loss(logits, y).item() == pytest.approx(expected.item(), rel=1e-6)
    ml = ClassificationTask("multilabel", ["p", "q"], loss_kind="focal", focal_gamma=2.0)
    t = torch.tensor([[1.0, 0.0]] * 4 + [[0.0, 1.0]] * 4)
    q = torch.sigmoid(logits[:, :2])
    pt = q * t + (1 - q) * (1 - t)
    assert ml.loss(logits[:, :2], t).item() == pytest.approx(((1 - pt) ** 2 * -pt.log()).mean().item(), rel=1e-5)


def test_tune_threshold_finds_the_best_f1_and_balanced_accuracy():
    from sklearn.metrics import balanced_accuracy_score, f1_score

    rng = np.random.default_rng(1)
    t = (rng.random(300) < 0.2).astype(int)
    p1 = np.clip(0.3 * t + rng.normal(0.3, 0.15, 300), 0, 1)
    probs = np.stack([1 - p1, p1], 1)
    for metric, score in (("f1", f1_score), ("balanced_accuracy", balanced_accuracy_score)):
        th = tune_threshold(probs, t, metric)
        grid = max(score(t, (p1 >= g).astype(int)) for g in np.linspace(0, 1, 2001))
        assert score(t, (p1 >= th).astype(int)) >= grid - 1e-9
        assert score(t, (p1 >= th).astype(int)) > score(t, (p1 >= 0.5).astype(int))


def test_tuned_threshold_is_used_saved_and_reported(tmp_path):
    root = tmp_path
    (root / "imgs").mkdir()
    rows = []
    for i in range(80):  # 1 in 5 red: an imbalanced binary label
        color = "red" if i % 5 == 0 else "blue"
        write_image(root / "imgs" / f"{i}.png", color, seed=i)
        rows.append({"image": f"imgs/{i}.png", "label": color})
    pd.DataFrame(rows).to_csv(root / "t.csv", index=False)
    p = MultimodalPredictor(label="label", path=root / "run", verbose=False, tune_threshold="f1", **FAST)
    p.fit(root / "t.csv")
    th = p.config.decision_threshold["label"]
    assert 0 < th < 1 and p.task.threshold == th
    loaded = MultimodalPredictor.load(root / "run")
    assert loaded.task.threshold == th
    probs = loaded.predict_proba(root / "t.csv")
    expected = np.where(probs["red"] >= th, "red", "blue")
    assert (loaded.predict(root / "t.csv").to_numpy() == expected).all()


def test_weighted_sampler_balances_classes_and_is_reproducible():
    y = np.array([0] * 90 + [1] * 10)
    w = 1.0 / np.bincount(y)[y]
    s = EpochSampler(100, seed=3, weights=w)
    s.set_epoch(2)
    a = list(s)
    s.set_epoch(2)
    assert list(s) == a  # same (seed, epoch) → same draw (resume-safe)
    drawn = np.concatenate([y[np.asarray(list(s)) % 100] for e in range(20) if not s.set_epoch(e)])
    assert abs(drawn.mean() - 0.5) < 0.05  # minority class drawn about half the time instead of 10%
    assert all(i // 100 == 19 for i in list(s))  # epoch-encoded indices, as the dataset expects


def test_weighted_sampler_fit_and_cli_options(tmp_path):
    path = multitask_table(tmp_path, missing=False)
    r = CliRunner().invoke(app, ["fit", str(path), "--label", "colour", "--label", "kind", "--out",
                                 str(tmp_path / "run"), "--image-size", "32", "--epochs", "4", "--batch-size", "16",
                                 "--sampler", "weighted", "--loss", "focal", "--mixup", "0.4", "--l1", "1e-4",
                                 "--loss-weighting", "fixed", "--task-weights", "colour=2,kind=1"])
    assert r.exit_code == 0, r.output
    assert "colour/accuracy" in r.output and "kind/accuracy" in r.output
    out = tmp_path / "pred.csv"
    r = CliRunner().invoke(app, ["predict", str(tmp_path / "run"), str(path), "--out", str(out)])
    assert r.exit_code == 0, r.output
    pred = pd.read_csv(out)
    assert {"predicted_colour", "predicted_kind", "proba_colour:red", "proba_kind:x"} <= set(pred.columns)
    r = CliRunner().invoke(app, ["fit", str(path), "--label", "value", "--out", str(tmp_path / "bad"),
                                 "--sampler", "weighted", "--epochs", "1"])
    assert r.exit_code != 0 and "weighted sampler" in r.output
    r = CliRunner().invoke(app, ["fit", str(path), "--label", "colour", "--out", str(tmp_path / "bad"),
                                 "--loss", "hinge"])
    assert r.exit_code != 0 and "--loss must be one of" in r.output


def test_mixup_with_lambda_one_is_the_plain_loss_and_l1_adds_the_penalty(tmp_path, monkeypatch):
    from polymodal.training.module import FitModule

    path = multitask_table(tmp_path, missing=False)
    p = MultimodalPredictor(label="colour", verbose=False, **{**FAST, "max_epochs": 1})
    p.fit(path)
    from polymodal.data.readers import read_table
    from polymodal.training.pipeline import make_loader

    df = read_table(path)
    batch = next(iter(make_loader(df, p.prep, {}, p.config, train=False)))
    p.model.eval()
    plain = FitModule(p.model, p.task)
    mixed = FitModule(p.model, p.task, mixup=0.4)
    monkeypatch.setattr(torch.distributions.Beta, "sample", lambda self, *a: torch.tensor(1.0))
    with torch.no_grad():
        assert mixed._mixup_loss(batch).item() == pytest.approx(p.task.loss(p.model(batch), batch["target"]).item(),
                                                              rel=1e-5)
        monkeypatch.setattr(torch.distributions.Beta, "sample", lambda self, *a: torch.tensor(0.5))
        half = mixed._mixup_loss(batch)  # raw image pixels are blended (no cached features in this batch)
        assert torch.isfinite(half) and half.item() != pytest.approx(p.task.loss(p.model(batch),
                                                                                batch["target"]).item())
        l1 = FitModule(p.model, p.task, l1=0.01)
        l1.log = lambda *a, **k: None
        plain.log = lambda *a, **k: None
        penalty = sum(w.abs().sum() for n, w in p.model.head.named_parameters() if w.ndim > 1)
        assert (l1.training_step(batch, 0) - plain.training_step(batch, 0)).item() == \
            pytest.approx(0.01 * penalty.item(), rel=1e-4)


def test_augment_text_drops_and_swaps_words_reproducibly():
    text = "the quick brown fox jumps over the lazy dog"
    a = augment_text(text, 0.3, np.random.default_rng(1))
    assert a == augment_text(text, 0.3, np.random.default_rng(1)) and a != text
    assert set(a.split()) <= set(text.split()) and a.strip()
    assert augment_text("single", 0.9, np.random.default_rng(0)) == "single"
    assert augment_text(text, 0.0, np.random.default_rng(0)) == text
    assert augment_text("a b", 1.0, np.random.default_rng(0)) in ("a", "b")


def test_multitask_serving_answers_every_label(tmp_path):
    from fastapi.testclient import TestClient

    from polymodal.serve.app import create_app

    path = multitask_table(tmp_path, missing=False)
    p = MultimodalPredictor(label=["colour", "value"], verbose=False, **{**FAST, "max_epochs": 3})
    p.fit(path)
    with TestClient(create_app(p)) as c:
        png = (tmp_path / "imgs" / "0.png").read_bytes()
        r = c.post("/predict", data={"size": "0.5", "shop": "a"}, files={"image": ("0.png", png, "image/png")})
        assert r.status_code == 200, r.text
        out = r.json()
        assert set(out["prediction"]) == {"colour", "value"} and out["prediction"]["colour"] in ("red", "blue")
        assert isinstance(out["prediction"]["value"], float)
        assert set(out["probabilities"]) == {"colour:blue", "colour:red", "value"}
