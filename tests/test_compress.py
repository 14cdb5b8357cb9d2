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
    # images: one per distinct file (their own dynamic count), read per row through the index
    assert dims["image"] == ["image_images", 3, 32, 32] and dims["image__index"] == ["batch"]
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


# --- channel pruning of the CNN image encoders (inverted-residual blocks) ------------------------------

@pytest.fixture(scope="module")
def trained_cnn(tmp_path_factory):
    """mobilenet_v2 (frozen, ImageNet weights) at 32 px + tabular, on generated red/blue images."""
    from conftest import color_table

    root = tmp_path_factory.mktemp("compress_cnn")
    color_table(root, n=48)
    p = MultimodalPredictor(label="label", path=root / "run", encoders={"image": "mobilenet_v2"},
                            encoder_opts={"image": {"image_size": 32}}, verbose=False, **FAST)
    p.fit(root / "train.csv")
    return p, root


def _block_shapes(b):
    return (b.expand.out_channels, b.expand.weight.shape[0], b.bn0.num_features, b.bn0.running_mean.shape[0],
            b.depthwise.out_channels, b.depthwise.in_channels, b.depthwise.groups, b.depthwise.weight.shape[0],
            b.bn1.num_features, b.bn1.weight.shape[0], b.project.in_channels, b.project.weight.shape[1])


@pytest.mark.parametrize("zero", ["gamma", "project"])
def test_cnn_block_pruning_removes_zero_importance_channels_exactly(zero):
    """MobileNetV2 block features.2 (96 hidden): 24 channels given zero importance by hand (bn1 gamma = 0,
    which leaves the constant relu6(beta) that pruning folds into bn2; or a zero project column), then
    pruned by 25 %: exactly those go, and the block's output is the unpruned reference's."""
    from polymodal.encoders.image import MobileNetV2Encoder

    torch.manual_seed(0)
    enc = MobileNetV2Encoder(image_size=32).eval()
    block = enc.features[2]
    b = next(b for b in P.inverted_blocks(enc) if b.where == "features.2")
    gone = torch.randperm(96)[:24]
    with torch.no_grad():
        if zero == "gamma":
            b.bn1.weight[gone] = 0
            b.bn1.bias[gone] = torch.linspace(-1, 8, 24)  # below 0, inside [0, 6] and clipped at 6
        else:
            b.project.weight[:, gone] = 0
        x = torch.randn(3, 16, 16, 16)
        reference = block(x)
        keep = P.prune_block(b, 0.25)
        assert sorted(set(range(96)) - set(keep.tolist())) == sorted(gone.tolist())
        assert set(_block_shapes(b)) == {72}
        assert b.project.out_channels == 24 and b.bn2.num_features == 24
        torch.testing.assert_close(block(x), reference, atol=1e-5, rtol=0)
        # the whole encoder still runs, at its output size
        assert enc(torch.randn(2, 3, 32, 32)).shape == (2, 1280)


def test_cnn_pruning_halves_every_expanded_block_of_both_cnns():
    from polymodal.encoders.image import EfficientNetLite0, MobileNetV2Encoder

    for enc, n_blocks in ((MobileNetV2Encoder(image_size=32), 16), (EfficientNetLite0(image_size=32), 15)):
        enc.freeze()
        x = torch.randn(2, 3, 32, 32)
        before = {b.where: b.hidden for b in P.inverted_blocks(enc)}
        params = P.count_params(enc)
        old_id = enc.cache_id
        sizes = P.prune_cnn_channels(enc, 0.5)
        assert len(sizes) == n_blocks and sizes == {w: (h, h - round(0.5 * h)) for w, h in before.items()}
        for b in P.inverted_blocks(enc):
            assert set(_block_shapes(b)) == {sizes[b.where][1]}
            assert not any(p.requires_grad for p in (b.expand.weight, b.depthwise.weight, b.bn1.weight))
        assert P.count_params(enc) < 0.8 * params
        with torch.no_grad():
            assert enc(x).shape == (2, 1280) and torch.isfinite(enc(x)).all()
        # (b) a new feature-cache key that says how it was pruned
        assert enc.cache_id != old_id and enc.cache_id.startswith(old_id + ":pruned-0.5-")


def test_cnn_cache_id_depends_on_the_kept_channels():
    from polymodal.encoders.image import MobileNetV2Encoder

    a, b, c = (MobileNetV2Encoder(image_size=32) for _ in range(3))
    with torch.no_grad():
        c.features[2].conv[1][1].weight[:48] = 0  # other channels are the least important
    P.prune_cnn_channels(a, 0.5)
    P.prune_cnn_channels(b, 0.5)
    P.prune_cnn_channels(c, 0.5)
    assert a.cache_id == b.cache_id != c.cache_id


def test_pruned_cnn_folder_reloads_identically_and_exports(trained_cnn, tmp_path):
    from polymodal.compress.artifacts import save_float

    p, root = trained_cnn
    df = read_table(root / "train.csv")
    res = prune_predictor(p, root / "train.csv", root / "train.csv", amount=0.5, encoders=True, epochs=2,
                          log=lambda m: None)
    q = res.predictor
    enc = q.model.encoders["image"]
    assert res.sizes["encoders.image.features.2"] == (96, 48) and enc.features[2].conv[1][0].groups == 48
    assert enc.frozen and not any(w.requires_grad for w in enc.parameters())  # stays frozen
    assert ":pruned-0.5-" in enc.cache_id and ":pruned-" not in p.model.encoders["image"].cache_id
    assert res.params_after < 0.8 * res.params_before
    assert (q.predict(df) == df["label"]).mean() >= 0.8  # the head retrained on the pruned CNN's features
    save_float(q, tmp_path / "pr", {"steps": [{"step": "prune"}]})
    r = load_compressed(tmp_path / "pr")
    assert r.model.encoders["image"].cache_id == enc.cache_id
    assert P.count_params(r.model) == res.params_after < P.count_params(p.model)
    np.testing.assert_allclose(_probs(r, df), _probs(q, df), atol=1e-5)
    rep = export_predictor(r, tmp_path / "m.onnx", df)
    assert rep.max_abs_diff_random < 1e-4 and rep.max_abs_diff_real < 1e-4, str(rep)


def test_compress_run_prunes_cnn_with_prune_encoders(trained_cnn, tmp_path):
    p, root = trained_cnn
    compress_run(root / "run", tmp_path / "c", train=root / "train.csv", prune=0.5, prune_encoders=True,
                 epochs=1, report=False, log=lambda m: None)
    step = json.loads((tmp_path / "c" / "compression.json").read_text())["steps"][0]
    assert step["layers"]["encoders.image.features.2"] == [96, 48]
    r = load_compressed(tmp_path / "c")
    assert r.model.encoders["image"].features[2].conv[0][0].out_channels == 48
    assert P.count_params(r.model) == step["params_after"] < step["params_before"]


def test_calibrated_cnn_pruning_keeps_features_closer_to_the_original(tmp_path):
    """Channels chosen and project convs refitted on calibration images: on other images the pruned CNN's
    features stay much closer to the unpruned CNN's than with the weight-only importance score."""
    import copy

    from conftest import color_table
    from PIL import Image

    from polymodal.encoders.image import MobileNetV2Encoder

    color_table(tmp_path, n=32)
    enc = MobileNetV2Encoder(image_size=32).freeze()
    mean, std = torch.tensor(enc.mean)[:, None, None], torch.tensor(enc.std)[:, None, None]
    x = torch.stack([(torch.from_numpy(np.asarray(Image.open(tmp_path / "imgs" / f"{i}.png").convert("RGB")
                                                  .resize((32, 32)), dtype=np.float32)).permute(2, 0, 1) / 255
                      - mean) / std for i in range(32)])
    calib, held = x[:16], x[16:]
    plain, fitted = copy.deepcopy(enc), copy.deepcopy(enc)
    P.prune_cnn_channels(plain, 0.5)
    sizes = P.prune_cnn_channels(fitted, 0.5, {"": calib})
    assert sizes == {b.where: (h, h // 2) for b, h in ((b, b.hidden * 2) for b in P.inverted_blocks(fitted))}
    with torch.no_grad():
        ref = enc(held)
        cos_plain = nn.functional.cosine_similarity(plain(held), ref).mean()
        cos_fitted = nn.functional.cosine_similarity(fitted(held), ref).mean()
    assert cos_fitted > 0.8 and cos_fitted > cos_plain + 0.2, (cos_fitted, cos_plain)
    assert fitted.cache_id != plain.cache_id  # the refitted weights are part of the cache key
