"""`--label-groups COL`: a group classifier and a head per class group whose output is log p(group) + log p(class |
group); a training-only column, recorded in the run folder, not needed to predict."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from polymodal import MultimodalPredictor
from polymodal.cli import app
from polymodal.errors import DataError, PolymodalError
from polymodal.model import GroupedHead
from polymodal.runs import load_run
from polymodal.training.build import class_groups

FAST = dict(max_epochs=2, batch_size=16, lr=3e-3, patience=2, progress=False, verbose=False)


def test_output_is_log_p_group_plus_log_p_class_given_group():
    torch.manual_seed(0)
    groups = [1, 0, 2, 1, 0, 1]  # classes interleaved across groups; group 2 has a single class
    head = GroupedHead(8, groups, hidden=16, dropout=0.0).eval()
    x = torch.randn(5, 8)
    out = head(x)
    p_group = torch.softmax(head.group_head(x), dim=-1)
    expected = torch.empty(5, len(groups))
    for k, h in enumerate(head.heads):
        members = [c for c, g in enumerate(groups) if g == k]
        expected[:, members] = p_group[:, k:k + 1] * torch.softmax(h(x), dim=-1)
    np.testing.assert_allclose(torch.softmax(out, -1).detach(), expected.detach(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.exp().sum(-1).detach(), np.ones(5), atol=1e-5)  # already normalised
    np.testing.assert_allclose(torch.softmax(out, -1).sum(-1).detach(), np.ones(5), atol=1e-5)
    assert class_groups(["b", "a", "c"], {"a": "open", "b": "closed", "c": "open"}) == [0, 1, 1]


def _table(n: int = 96, seed: int = 0) -> pd.DataFrame:
    """Closed answers (yes / no) and open ones (red / green / blue), told apart by a feature; "kind" says which."""
    rng = np.random.default_rng(seed)
    closed = rng.random(n) < 0.5
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    answer = np.where(closed, np.where(x2 > 0, "yes", "no"),
                      np.array(["red", "green", "blue"])[np.digitize(x2, [-0.5, 0.5])])
    kind = np.where(closed, "closed", "open")
    kind[0] = "open" if closed[0] else "closed"  # one row disagrees: its class still goes to its usual group
    # "site": a categorical input too (an all-numeric tabular model does not export to ONNX today)
    return pd.DataFrame({"is_closed": closed.astype(float) + 0.1 * x1, "x2": x2, "site": rng.choice(["a", "b"], n),
                         "kind": kind, "answer": answer})


def test_fit_saves_reloads_and_predicts_without_the_group_column(tmp_path):
    df = _table()
    p = MultimodalPredictor(label="answer", path=tmp_path / "run", label_groups="kind", **FAST).fit(df)
    assert isinstance(p.model.head, GroupedHead)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["fit"]
    assert saved["label_groups"] == "kind"
    assert saved["label_group_map"] == {"blue": "open", "green": "open", "red": "open", "no": "closed",
                                        "yes": "closed"}
    assert "kind" not in p.prep.feature_columns()
    test = _table(40, seed=1).drop(columns=["kind"])  # a training-only column: not needed to predict or evaluate
    probs = p.predict_proba(test, as_pandas=False)
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    loaded = load_run(tmp_path / "run")
    np.testing.assert_allclose(loaded.predict_proba(test, as_pandas=False), probs, atol=1e-6)
    assert list(loaded.predict(test)) == list(p.predict(test))
    assert "accuracy" in loaded.evaluate(test)


def test_onnx_export_of_a_grouped_head_passes_parity(tmp_path):
    pytest.importorskip("onnxruntime")
    from polymodal.compress import export_predictor

    df = _table(48)
    p = MultimodalPredictor(label="answer", path=tmp_path / "run", label_groups="kind", **FAST).fit(df)
    rep = export_predictor(p, tmp_path / "m.onnx", df.drop(columns=["kind"]))
    assert rep.max_abs_diff_random < 1e-4 and rep.max_abs_diff_real < 1e-4, str(rep)


def test_clear_errors(tmp_path):
    df = _table(32)
    with pytest.raises(DataError, match=r"--label-groups \(label_groups\): column 'type' not found"):
        MultimodalPredictor(label="answer", label_groups="type", **FAST).fit(df)
    with pytest.raises(PolymodalError, match=r"label_groups.*single-label classifier.*regression"):
        MultimodalPredictor(label="x2", label_groups="kind", **FAST).fit(df)
    with pytest.raises(PolymodalError, match=r"label_groups"):
        MultimodalPredictor(label=["answer", "x2"], label_groups="kind", **FAST)
    with pytest.raises(PolymodalError, match=r"label_groups"):
        MultimodalPredictor(label="answer", label_groups="answer", **FAST)
    df.to_csv(tmp_path / "t.csv", index=False)
    r = CliRunner().invoke(app, ["fit", str(tmp_path / "t.csv"), "--label", "answer", "--out", str(tmp_path / "r"),
                                 "--label-groups", "type"])
    assert r.exit_code != 0 and "--label-groups" in r.output and "Traceback" not in r.output
