"""Inference engines (polymodal/compress/engine.py): the ONNX graph of a run answers as PyTorch does for every
problem type and with absent inputs; it is exported once, cached beside the run, re-exported when stale or
damaged, and "auto" falls back to PyTorch (saying why) when the graph fails its parity check."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("onnxruntime")

from polymodal import MultimodalPredictor  # noqa: E402
from polymodal.cli import app  # noqa: E402
from polymodal.compress import engine as E  # noqa: E402
from polymodal.compress.onnx_export import OnnxPredictor, export_predictor, read_meta  # noqa: E402
from polymodal.compress.pipeline import calibration_feeds, compress_run  # noqa: E402
from polymodal.compress.quantize import Int8Options, quantize_onnx  # noqa: E402
from polymodal.data.dataset import Collator, TableDataset  # noqa: E402
from polymodal.errors import PolymodalError  # noqa: E402
from polymodal.runs import load_run  # noqa: E402
from tests.test_golden_run import GOLDEN, _rows  # noqa: E402

FAST = dict(max_epochs=2, batch_size=16, lr=3e-3, patience=2, progress=False, verbose=False)


def _table(n: int = 60, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    return pd.DataFrame({"x0": x[:, 0], "x1": x[:, 1], "shop": rng.choice(list("abc"), n),
                         "cls": np.where(x[:, 0] + x[:, 1] > 0, "yes", "no"),
                         "kind": np.array(list("xyz"))[np.argmax(x, 1)],
                         "y": 2 * x[:, 0] - x[:, 1] + 0.1 * rng.normal(size=n),
                         "tags": ["|".join(t for t, on in zip("pq", row[:2] > 0) if on) or "none" for row in x]})


def _both(p, df, **kw):
    """predict_proba with each engine (the ONNX one must really be ONNX)."""
    assert isinstance(p.inference_module("onnx", df), E.OnnxModule)
    return (p.predict_proba(df, as_pandas=False, engine="torch", **kw),
            p.predict_proba(df, as_pandas=False, engine="onnx", **kw))


@pytest.mark.parametrize("label,problem_type", [("kind", None), ("y", None), ("tags", "multilabel"),
                                                (["cls", "y"], None)],
                         ids=["multiclass", "regression", "multilabel", "multitask"])
def test_onnx_answers_as_pytorch_for_each_problem_type(tmp_path, label, problem_type):
    df = _table()
    keep = [c for c in df if c in ("x0", "x1", "shop") or c in np.atleast_1d(label)]
    MultimodalPredictor(label=label, problem_type=problem_type, path=tmp_path / "run", **FAST).fit(df[keep])
    p = load_run(tmp_path / "run")
    test = _table(40, seed=1)[keep]
    torch_probs, onnx_probs = _both(p, test)
    np.testing.assert_allclose(onnx_probs, torch_probs, atol=1e-5, rtol=0)
    same = pd.testing.assert_frame_equal if isinstance(label, list) else pd.testing.assert_series_equal
    same(p.predict(test, engine="onnx"), p.predict(test, engine="torch"), check_exact=False, atol=1e-5)  # labels exact
    m_torch, m_onnx = p.evaluate(test, engine="torch"), p.evaluate(test, engine="onnx")
    assert m_onnx.keys() == m_torch.keys()
    for k in m_torch:
        assert m_onnx[k] == pytest.approx(m_torch[k], abs=1e-4), k
    report = json.loads((tmp_path / "run" / "onnx" / "parity.json").read_text())
    assert report["passed"] and report["model_id"] == p.model_id and report["answer_agreement"] == 1.0
    assert report["rows_from_table"] == 16 and report["max_abs_diff"] < 1e-4


def test_text_run_with_missing_inputs_and_the_feature_cache(tmp_path):
    """Text (frozen 1-layer MiniLM) + tabular; some rows lack their text and a table lacks the column; 80 rows
    make the PyTorch engine use the feature cache while ONNX runs the whole graph."""
    rng = np.random.default_rng(0)
    words = {"pos": ["great", "excellent", "love it"], "neg": ["awful", "broken", "do not buy"]}
    labels = rng.choice(["pos", "neg"], 80)
    df = pd.DataFrame({"review": [f"{rng.choice(words[c])} item {i}" for i, c in enumerate(labels)],
                       "stars": rng.normal(size=80), "label": labels})
    df.loc[df.index % 5 == 0, "review"] = None  # absent text: presence bit off
    MultimodalPredictor(label="label", path=tmp_path / "run", encoder_opts={"text": {"num_layers": 1}},
                        **FAST).fit(df)
    p = load_run(tmp_path / "run")
    assert "review" in p.model.encoders
    torch_probs, onnx_probs = _both(p, df)
    np.testing.assert_allclose(onnx_probs, torch_probs, atol=1e-5, rtol=0)
    no_text = df.drop(columns=["review"]).head(7)
    torch_probs, onnx_probs = _both(p, no_text, allow_missing=["review"])
    np.testing.assert_allclose(onnx_probs, torch_probs, atol=1e-5, rtol=0)
    # the absent column is really absent: a row's text changes its answer, and the ONNX graph sees that too
    assert np.abs(onnx_probs - p.predict_proba(df.head(7), as_pandas=False, engine="onnx")).max() > 1e-6


def test_graph_is_cached_and_re_exported_when_stale_or_damaged(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(GOLDEN / "run", run)
    rows = _rows(tmp_path)
    p = load_run(run)
    expected = np.load(GOLDEN / "run-predict_proba.npz")["probs"]
    np.testing.assert_allclose(p.predict_proba(rows, as_pandas=False), expected, atol=1e-6, rtol=0)  # auto
    assert isinstance(p.inference_module(), E.OnnxModule)
    # the server's path (a collated batch -> answer_batch) runs the same graph
    items = [TableDataset(rows.iloc[[i]], p.prep, {}, train=False, with_target=False)[0] for i in range(len(rows))]
    served = [a["probabilities"] for a in p.answer_batch(Collator(p.prep)(items))]
    np.testing.assert_allclose([[s[c] for c in p.task.classes] for s in served], expected, atol=1e-6, rtol=0)
    graph, parity = run / "onnx" / "model.onnx", run / "onnx" / "parity.json"
    report = json.loads(parity.read_text())
    assert report["sha256"] and report["model_id"] == p.model_id == "bf687fc208a10d05"
    stamp = graph.stat().st_mtime_ns
    load_run(run).predict(rows.head(1))  # a new process-like load: the cache is used, not exported again
    assert graph.stat().st_mtime_ns == stamp
    graph.write_bytes(graph.read_bytes()[:-100])  # damaged (half-copied) graph
    q = load_run(run)
    np.testing.assert_allclose(q.predict_proba(rows, as_pandas=False, engine="onnx"), expected, atol=1e-6, rtol=0)
    assert json.loads(parity.read_text())["sha256"] == report["sha256"]  # re-exported: the same graph
    parity.write_text(json.dumps({**report, "model_id": "someone-else"}))  # stale
    q = load_run(run)
    q.predict(rows.head(2))
    assert json.loads(parity.read_text())["model_id"] == p.model_id
    parity.write_text("{not json")  # damaged report
    load_run(run).predict(rows.head(2))
    assert json.loads(parity.read_text())["passed"]


def test_auto_falls_back_to_pytorch_when_parity_fails(tmp_path, monkeypatch, caplog):
    run = tmp_path / "run"
    shutil.copytree(GOLDEN / "run", run)
    rows = _rows(tmp_path)
    monkeypatch.setattr(E, "TOLERANCE", -1.0)  # no graph can pass
    p = load_run(run)
    with caplog.at_level(logging.WARNING, logger=E.__name__):
        auto = p.predict_proba(rows, as_pandas=False)
        p.predict_proba(rows, as_pandas=False)
    assert p.inference_module("auto", rows) is p.model
    np.testing.assert_array_equal(auto, p.predict_proba(rows, as_pandas=False, engine="torch"))
    assert sum("using PyTorch" in r.message and "differs from PyTorch" in r.message for r in caplog.records) == 1
    assert not json.loads((run / "onnx" / "parity.json").read_text())["passed"]
    with pytest.raises(PolymodalError, match="engine 'onnx' is not available.*differs"):
        p.predict(rows, engine="onnx")
    with pytest.raises(PolymodalError, match="engine must be one of"):
        p.predict(rows, engine="tensorrt")
    monkeypatch.setenv("POLYMODAL_ENGINE", "torch")
    assert E.default_engine() == "torch" and E.resolve_engine(None) == "torch"


def test_unsaved_predictor_runs_pytorch_on_auto_and_onnx_on_request(tmp_path):
    df = _table()[["x0", "x1", "shop", "kind"]]
    p = MultimodalPredictor(label="kind", **FAST).fit(df)
    assert p.inference_module("auto", df) is p.model  # no run folder to cache a graph in
    torch_probs, onnx_probs = _both(p, df)
    np.testing.assert_allclose(onnx_probs, torch_probs, atol=1e-5, rtol=0)


def test_cli_engine_option(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(GOLDEN / "run", run)
    _rows(tmp_path).to_csv(tmp_path / "rows.csv", index=False)
    runner = CliRunner()
    outs = {}
    for engine in ("torch", "onnx"):
        res = runner.invoke(app, ["predict", str(run), str(tmp_path / "rows.csv"), "--out",
                                  str(tmp_path / f"{engine}.csv"), "--engine", engine])
        assert res.exit_code == 0, res.output
        outs[engine] = pd.read_csv(tmp_path / f"{engine}.csv")
    pd.testing.assert_frame_equal(outs["onnx"], outs["torch"], atol=1e-5)
    res = runner.invoke(app, ["evaluate", str(run), str(tmp_path / "rows.csv"), "--engine", "nope"])
    assert res.exit_code != 0 and "engine must be one of" in res.output
    res = runner.invoke(app, ["serve", str(run), "--engine", "nope"])  # refused before any server starts
    assert res.exit_code != 0 and "engine must be one of" in res.output
    assert E.physical_cores() >= 1 and E.ort_threads() >= 1


def test_weights_changed_in_memory_are_never_answered_by_the_old_graph(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(GOLDEN / "run", run)
    rows = _rows(tmp_path)
    p = load_run(run)
    before = p.predict_proba(rows, as_pandas=False)  # auto: the graph, exported and cached for model_id
    assert isinstance(p.inference_module(), E.OnnxModule)
    with torch.no_grad():
        for param in p.model.head.parameters():
            param.mul_(3.0)  # in place: same object, same model_id, other answers
    changed = p.predict_proba(rows, as_pandas=False)
    assert p.inference_module() is p.model and np.abs(changed - before).max() > 1e-3
    np.testing.assert_array_equal(changed, p.predict_proba(rows, as_pandas=False, engine="torch"))
    np.testing.assert_allclose(p.predict_proba(rows, as_pandas=False, engine="onnx"), changed, atol=1e-5, rtol=0)
    assert json.loads((run / "onnx" / "parity.json").read_text())["model_id"] == p.model_id  # disk cache untouched
    p.save(tmp_path / "saved")  # saved: the new weights get their own id, and their graph goes beside them
    assert isinstance(p.inference_module(), E.OnnxModule)
    assert json.loads((tmp_path / "saved" / "onnx" / "parity.json").read_text())["model_id"] == p.model_id
    assert json.loads((run / "onnx" / "parity.json").read_text())["model_id"] != p.model_id


def test_a_table_with_only_numeric_columns_exports_compresses_and_predicts(tmp_path):
    """The exporter drops the input of an empty categorical block (nothing reads it): the exported file lists,
    checks and feeds only the inputs its graph kept, and int8 calibration feeds too (onnxruntime refuses a feed
    it does not know: "Invalid input name: tabular__categorical")."""
    df = _table()[["x0", "x1", "kind"]]
    MultimodalPredictor(label="kind", path=tmp_path / "run", **FAST).fit(df)
    p = load_run(tmp_path / "run")
    test = _table(40, seed=1)[["x0", "x1"]]
    report = export_predictor(p, tmp_path / "m.onnx", test)
    assert report.rows_real == 32 and report.max_abs_diff_real < 1e-4 and report.max_abs_diff_random < 1e-4
    names = [d["name"] for d in read_meta(tmp_path / "m.onnx")["inputs"]]
    assert "tabular__categorical" not in names and "tabular__numeric" in names
    want = p.predict_proba(test, as_pandas=False, engine="torch")
    np.testing.assert_allclose(OnnxPredictor(tmp_path / "m.onnx").predict_proba(test, as_pandas=False), want,
                               atol=1e-5)
    # static int8 (dense layers: calibrated) with the feeds compress builds, which name every input
    res = quantize_onnx(tmp_path / "m.onnx", tmp_path / "dense8.onnx", calibration_feeds(p, df),
                        Int8Options(convs="none", dense=True), log=lambda m: None)
    assert res.static_nodes and (OnnxPredictor(res.path).predict(test) == p.predict(test, engine="torch")).mean() >= 0.9
    df.to_csv(tmp_path / "train.csv", index=False)
    compress_run(tmp_path / "run", tmp_path / "int8", train=str(tmp_path / "train.csv"), quantize="int8",
                 report=False)
    q = load_run(tmp_path / "int8")
    assert isinstance(q, OnnxPredictor) and (q.predict(test) == p.predict(test, engine="torch")).mean() >= 0.9
