"""Compression: ONNX export parity, int8 quantisation, pruning that stays pruned, distillation, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from polymodal import MultimodalPredictor
from polymodal.compress import (
    OnnxPredictor,
    compress_run,
    distill_predictor,
    export_predictor,
    load_compressed,
    prune_predictor,
    quantize_predictor_torch,
)
from polymodal.compress import prune as P
from polymodal.compress.report import state_size_mb
from polymodal.data.readers import read_table

FAST = dict(max_epochs=6, batch_size=16, lr=3e-3, patience=6, progress=False)
WORDS = {"red": ["crimson", "ruby", "cherry"], "blue": ["navy", "azure", "cobalt"]}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """small-cnn image (32 px) + MiniLM cut to 1 layer (frozen) + tabular, trained in a few seconds."""
    from conftest import color_table

    root = tmp_path_factory.mktemp("compress")
    color_table(root, caption_words=WORDS)
    p = MultimodalPredictor(label="label", path=root / "run", encoders={"image": "small-cnn"},
                            encoder_opts={"image": {"image_size": 32}, "text": {"num_layers": 1}},
                            column_types={"caption": "text"}, verbose=False, **FAST)
    p.fit(root / "train.csv")
    return p, root


def _probs(p, df):
    return np.asarray(p.predict_proba(df, as_pandas=False))


def test_onnx_export_parity_random_and_real(trained, tmp_path):
    p, root = trained
    df = read_table(root / "train.csv")
    rep = export_predictor(p, tmp_path / "m.onnx", df)
    assert rep.max_abs_diff_random < 1e-4 and rep.max_abs_diff_real < 1e-4, str(rep)
    o = OnnxPredictor(tmp_path / "m.onnx", batch_size=7)  # dynamic batch (7 and a last batch of 3)
    np.testing.assert_allclose(_probs(o, df), _probs(p, df), atol=1e-4)
    assert (o.predict(df) == p.predict(df)).all()
    assert o.evaluate(df)["accuracy"] == pytest.approx(p.evaluate(df)["accuracy"])


def test_onnx_graph_has_dynamic_batch_and_text_length(trained, tmp_path):
    import onnx

    p, _ = trained
    export_predictor(p, tmp_path / "m.onnx")
    g = onnx.load(str(tmp_path / "m.onnx")).graph
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in g.input}
    assert dims["caption__input_ids"] == ["batch", "caption_length"]
    assert dims["image"][0] == "batch" and dims["image"][1:] == [3, 32, 32]
    assert {"tabular__numeric", "tabular__categorical", "present__image", "present__caption"} <= set(dims)


def test_torch_int8_predicts_agrees_and_is_smaller(trained, tmp_path):
    p, root = trained
    df = read_table(root / "train.csv")
    q = quantize_predictor_torch(p)
    assert any("quantized" in type(m).__module__ for m in q.model.modules())
    agree = (q.predict(df) == p.predict(df)).mean()
    assert agree >= 0.9
    assert state_size_mb(q.model) < 0.6 * state_size_mb(p.model)
    # saved and reloaded through the compressed-run path: the same int8 predictions (up to the per-batch
    # activation scales of dynamic quantisation, which depend on how rows are batched)
    compress_run(root / "run", tmp_path / "q", train=root / "train.csv", valid=root / "train.csv",
                 quantize="int8", backend="torch", log=lambda m: None)
    r = load_compressed(tmp_path / "q")
    np.testing.assert_allclose(_probs(r, df), _probs(q, df), atol=1e-3)
    assert (tmp_path / "q" / "report.md").exists() and (tmp_path / "q" / "report.png").exists()
    assert (tmp_path / "q" / "model.int8.pt").stat().st_size < 0.6 * (root / "run" / "model.safetensors").stat().st_size


@pytest.mark.slow
def test_onnx_static_int8_smaller_and_agrees(trained, tmp_path):
    p, root = trained
    df = read_table(root / "train.csv")
    compress_run(root / "run", tmp_path / "q8", train=root / "train.csv", quantize="int8", backend="onnx",
                 log=lambda m: None)
    o = load_compressed(tmp_path / "q8")
    assert isinstance(o, OnnxPredictor)
    export_predictor(p, tmp_path / "fp.onnx")
    assert (tmp_path / "q8" / "model.int8.onnx").stat().st_size < 0.5 * (tmp_path / "fp.onnx").stat().st_size
    assert (o.predict(df) == p.predict(df)).mean() >= 0.9
    md = (tmp_path / "q8" / "report.md").read_text()
    assert "p50 b1 (ms)" in md and "compressed" in md


def test_unstructured_pruned_weights_stay_zero_after_finetuning(trained):
    p, root = trained
    res = prune_predictor(p, root / "train.csv", root / "train.csv", amount=0.5, mode="unstructured", epochs=2,
                          log=lambda m: None)
    model = res.predictor.model
    assert res.masked and res.sparsity == pytest.approx(0.5, abs=0.01)
    changed = False
    original = dict(p.model.named_parameters())
    for name, mask in res.masked.items():
        w = model.get_parameter(name)
        assert mask.any() and torch.all(w[mask] == 0), name  # exact zeros where pruned
        changed |= not torch.equal(w[~mask], original[name][~mask])  # the rest was fine-tuned
        assert not any(b.endswith("_mask") for b, _ in model.named_buffers())  # prune.remove was applied
    assert changed
    assert (res.predictor.predict(read_table(root / "train.csv")) == p.predict(read_table(root / "train.csv"))
            ).mean() >= 0.9


def test_structured_pruning_shrinks_layers_and_keeps_accuracy(trained, tmp_path):
    p, root = trained
    df = read_table(root / "train.csv")
    res = prune_predictor(p, root / "train.csv", root / "train.csv", amount=0.5, mode="structured", epochs=2,
                          log=lambda m: None)
    assert res.params_after < res.params_before
    assert res.sizes["head.net.2"] == (256, 128)  # MLPHead hidden layer: half its neurons removed
    assert res.predictor.model.head.net[2].out_features == 128 and res.predictor.model.head.net[5].in_features == 128
    assert (res.predictor.predict(df) == df["label"]).mean() >= 0.9
    # saved and reloaded (shrunk shapes rebuilt from the file)
    compress_run(root / "run", tmp_path / "pr", train=root / "train.csv", valid=root / "train.csv", prune=0.5,
                 epochs=1, log=lambda m: None)
    r = load_compressed(tmp_path / "pr")
    assert r.model.head.net[2].out_features == 128
    assert (r.predict(df) == df["label"]).mean() >= 0.8


def test_shrink_is_exact_for_masked_neurons():
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Linear(6, 10), nn.GELU(), nn.Dropout(0.1), nn.Linear(10, 3)).eval()
    pairs = P.linear_pairs(seq)
    assert len(pairs) == 1
    P.structured_masks(pairs, 0.4)
    x = torch.randn(5, 6)
    before = seq(x)
    P.make_permanent(seq)
    sizes = P.shrink(pairs)
    assert sizes[".0"] == (10, 6) and seq[0].out_features == 6
    torch.testing.assert_close(seq(x), before, atol=1e-6, rtol=0)


def test_hf_ffn_pairs_found_and_exact(trained):
    p, _ = trained
    text = p.model.encoders["caption"]
    pairs = P.linear_pairs(text, encoders=True)
    assert len(pairs) == 1 and pairs[0].first.out_features == 1536  # MiniLM FFN, 1 kept layer
    import copy

    enc = copy.deepcopy(text)
    pairs = P.linear_pairs(enc, encoders=True)
    P.structured_masks(pairs, 0.5)
    x = {"input_ids": torch.tensor([[101, 2417, 102, 0]]), "attention_mask": torch.tensor([[1, 1, 1, 0]])}
    with torch.no_grad():
        before = enc(x)
        P.make_permanent(enc)
        P.shrink(pairs)
        after = enc(x)
    assert pairs[0].owner_first.dense.out_features == 768
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)


def test_distillation_loss_decreases_and_student_is_smaller(trained):
    p, root = trained
    student, history = distill_predictor(p, root / "train.csv", root / "train.csv", "small", epochs=5,
                                         log=lambda m: None)
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    assert {"train_soft", "train_hard", "train_feature"} <= set(history.columns)
    assert history["train_feature"].iloc[-1] < history["train_feature"].iloc[0]
    assert P.count_params(student.model) < P.count_params(p.model)
    assert student.prep.inputs["image"].config["image_size"] == 16
    df = read_table(root / "train.csv")
    assert (student.predict(df) == p.predict(df)).mean() >= 0.8


def test_fast_student_trains_its_text_tower_and_reloads(trained, tmp_path):
    p, root = trained
    compress_run(root / "run", tmp_path / "s", train=root / "train.csv", valid=root / "train.csv",
                 distill_from=root / "run", student="fast", epochs=3, log=lambda m: None)
    s = load_compressed(tmp_path / "s")
    assert s.config.frozen.get("caption") is False or s.config.frozen.get("text") is False
    # the loaded text tower is the trained one: it moved away from the teacher's (the same pretrained layer)
    before = dict(p.model.encoders["caption"].named_parameters())
    moved = [n for n, w in s.model.encoders["caption"].named_parameters()
             if n in before and w.shape == before[n].shape and not torch.equal(w, before[n])]
    assert moved
    df = read_table(root / "train.csv")
    assert (s.predict(df) == p.predict(df)).mean() >= 0.8


@pytest.mark.slow
def test_cli_compress_and_export(trained, tmp_path):
    import typer
    from typer.testing import CliRunner

    from polymodal.compress.cli import compress, export

    p, root = trained
    app = typer.Typer()
    app.command()(compress)
    app.command()(export)
    r = CliRunner().invoke(app, ["export", str(root / "run"), "--out", str(tmp_path / "m.onnx"),
                                 "--check", str(root / "train.csv")])
    assert r.exit_code == 0, r.output
    assert "max |onnxruntime - PyTorch|" in r.output and (tmp_path / "m.onnx").exists()
    # the command: distil → prune → int8, with its report
    r = CliRunner().invoke(app, ["compress", str(root / "run"), "--out", str(tmp_path / "s"), "--quantize", "int8",
                                 "--prune", "0.5", "--distill-from", str(root / "run"), "--student", "small",
                                 "--epochs", "2", "--train", str(root / "train.csv"),
                                 "--valid", str(root / "train.csv")])
    assert r.exit_code == 0, r.output
    steps = [s["step"] for s in json.loads((tmp_path / "s" / "compression.json").read_text())["steps"]]
    assert steps == ["distill", "prune", "quantize"]
    df = read_table(root / "train.csv")
    assert (load_compressed(tmp_path / "s").predict(df) == df["label"]).mean() >= 0.8
    assert (tmp_path / "s" / "report.md").exists() and (tmp_path / "s" / "report.png").exists()
    # the compressed folder works wherever a run folder does: predict and evaluate (onnxruntime here)
    from polymodal.cli import app as main_app

    r = CliRunner().invoke(main_app, ["predict", str(tmp_path / "s"), str(root / "train.csv"), "--out",
                                      str(tmp_path / "pred.csv")])
    assert r.exit_code == 0, r.output
    pred = read_table(tmp_path / "pred.csv")
    assert (pred["predicted_label"] == load_compressed(tmp_path / "s").predict(df).to_numpy()).all()
    r = CliRunner().invoke(main_app, ["evaluate", str(tmp_path / "s"), str(root / "train.csv"), "--out",
                                      str(tmp_path / "ev" / "metrics.json")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["rows"] == len(df)
    assert (tmp_path / "ev" / "confusion_matrix.png").exists()
    r = CliRunner().invoke(app, ["compress", str(root / "run"), "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "nothing to do" in r.output
    r = CliRunner().invoke(app, ["compress", str(root / "run"), "--out", str(tmp_path / "x"), "--prune", "0.5"])
    assert r.exit_code == 2 and "--train" in r.output


def _float_onnx_and_feeds(p, root, tmp_path):
    from polymodal.compress.pipeline import calibration_feeds, validation_feeds

    fp = tmp_path / "fp.onnx"
    export_predictor(p, fp)
    return fp, calibration_feeds(p, root / "train.csv", rows=32), validation_feeds(p, root / "train.csv", rows=64)


def test_graph_parts_classifies_nodes_by_role(trained, tmp_path):
    import onnx

    from polymodal.compress.quantize import graph_parts

    p, root = trained
    fp, _, _ = _float_onnx_and_feeds(p, root, tmp_path)
    model = onnx.load(str(fp))
    parts = graph_parts(model)
    ops = {n.name: n.op_type for n in model.graph.node}
    all_convs = [c for cs in parts.convs.values() for c in cs]
    assert all_convs and all(ops[c] == "Conv" for c in all_convs)
    assert len(parts.edge_convs) == 2 and set(parts.edge_convs) <= set(all_convs)  # one CNN: its first and last
    # MiniLM cut to one layer: q/k/v/output + two FFN MatMuls, one of them fed by the GELU
    assert len(parts.text_matmuls) == 6 and len(parts.gelu_matmuls) == 1
    assert set(parts.gelu_matmuls) <= set(parts.text_matmuls)
    assert parts.embeddings and all(ops[n] == "Gather" for n in parts.embeddings)
    # fusion and head layers, plus Gemms inside an encoder (the tabular MLP), which are treated alike
    assert any(n.startswith("/model/fusion/") for n in parts.dense) and any(n.startswith("/model/head/")
                                                                           for n in parts.dense)
    assert all(n.startswith(("/model/fusion/", "/model/head/")) or ops[n] == "Gemm" for n in parts.dense)


def test_int8_auto_sweep_keeps_agreement_and_respects_exclusions(trained, tmp_path):
    from polymodal.compress.quantize import Int8Options, _agreement, _run, quantize_onnx

    p, root = trained
    fp, calib, valid = _float_onnx_and_feeds(p, root, tmp_path)
    opts = Int8Options(convs="auto", min_agreement=1.0, exclude=("/model/head/",), dense=True)
    res = quantize_onnx(fp, tmp_path / "q.onnx", calib, opts, valid, log=lambda m: None)
    # the chosen model is re-measured here against the float one: it keeps every validation decision
    measured = _agreement(_run(res.path, valid), _run(fp, valid))
    assert measured == pytest.approx(res.validation_agreement) and measured == 1.0
    assert res.sweep is not None and len(res.sweep) == 1 + len(res.conv_groups) + len(res.float_conv_groups)
    assert not any(n.startswith("/model/head/") for n in res.static_nodes + res.dynamic_nodes)
    assert any(n.startswith("/model/fusion/") for n in res.static_nodes)  # dense=True quantises the rest
    assert res.dynamic_nodes  # text MatMuls: dynamic int8 by default
    assert (tmp_path / "q.onnx").stat().st_size < fp.stat().st_size


def test_int8_options_reject_bad_values(trained, tmp_path):
    from polymodal.compress.quantize import Int8Options, quantize_onnx
    from polymodal.errors import PolymodalError

    with pytest.raises(PolymodalError, match="calibration must be one of"):
        Int8Options(calibration="mean")
    with pytest.raises(PolymodalError, match="not a regular expression"):
        Int8Options(exclude=("(",))
    p, root = trained
    fp, calib, _ = _float_onnx_and_feeds(p, root, tmp_path)
    with pytest.raises(PolymodalError, match="validation rows"):
        quantize_onnx(fp, tmp_path / "q.onnx", calib, Int8Options(convs="auto"))
    with pytest.raises(PolymodalError, match="calibration rows"):
        quantize_onnx(fp, tmp_path / "q.onnx", [], Int8Options(convs="none"))
