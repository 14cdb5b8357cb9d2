"""Partial fine-tuning over a cached prefix (`--finetune image:top=k,text:top=k`): the split encoder computes
what the whole one does, the cached path gives the same gradients, and a fitted run reloads identically."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import color_table
from typer.testing import CliRunner

from polymodal.cli import app
from polymodal.cli_options import finetune_settings
from polymodal.data.readers import read_table
from polymodal.data.text import get_tokenizer
from polymodal.encoders import build_encoder
from polymodal.encoders.base import unique_rows
from polymodal.errors import PolymodalError
from polymodal.predictor import MultimodalPredictor
from polymodal.runs import load_run


def _grads(enc, loss_of) -> dict[str, torch.Tensor]:
    enc.zero_grad()
    loss_of().backward()
    return {n: p.grad.clone() for n, p in enc.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("name", ["efficientnet-lite0", "mobilenet_v2"])
def test_split_cnn_equals_the_whole_and_gives_the_same_gradients(name):
    torch.manual_seed(0)
    enc = build_encoder("image", name, image_size=64, train_top=2).freeze()
    x = torch.randn(3, 3, 64, 64)
    trainable = {n for n, p in enc.named_parameters() if p.requires_grad}
    assert trainable and len(trainable) < len(list(enc.parameters()))  # the top only
    enc.train()
    assert not any(m.training for m in enc.modules() if isinstance(m, torch.nn.BatchNorm2d))
    in_top = {id(m) for t in enc.top_modules() for m in t.modules()}
    assert all(m.training for m in enc.top_modules() if not isinstance(m, torch.nn.BatchNorm2d))
    assert not any(m.training for m in enc.modules() if id(m) not in in_top and list(m.parameters(recurse=False)))
    enc.eval()
    with torch.no_grad():
        h = enc.prefix(x)
        torch.testing.assert_close(enc.from_prefix(h), enc(x), rtol=0, atol=1e-5)
        torch.testing.assert_close(enc.from_prefix(h, tokens=True), enc.tokens(x), rtol=0, atol=1e-5)
    enc.train()  # drop-connect / dropout on: the same random draws in both passes
    target = torch.randn(3, enc.out_dim)
    torch.manual_seed(1)
    whole = _grads(enc, lambda: ((enc(x) - target) ** 2).sum())
    torch.manual_seed(1)
    cached = _grads(enc, lambda: ((enc.from_prefix(h) - target) ** 2).sum())
    assert whole.keys() == cached.keys() == trainable
    for n in whole:
        torch.testing.assert_close(cached[n], whole[n], rtol=1e-4, atol=1e-5)


def test_split_text_encoder_equals_the_whole_and_gives_the_same_gradients():
    enc = build_encoder("text", "minilm-l6", max_length=16, train_top=2).freeze()
    tok = get_tokenizer("minilm-l6")
    b = tok(["a chest x ray", "is there a pleural effusion on the left side"], padding=True, return_tensors="pt")
    x = {k: b[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        h = enc.prefix(x)
        assert h.shape == (2, 16, 384)
        torch.testing.assert_close(enc.from_prefix(h), enc(x), rtol=0, atol=1e-5)
        whole_tokens = enc.tokens(x) * x["attention_mask"].unsqueeze(-1)
        torch.testing.assert_close(enc.from_prefix(h, tokens=True)[:, :whole_tokens.shape[1]], whole_tokens,
                                   rtol=0, atol=1e-5)
    trainable = {n for n, p in enc.named_parameters() if p.requires_grad}
    assert trainable and all(".layer.4." in n or ".layer.5." in n for n in trainable)
    target = torch.randn(2, 384)
    enc.eval()  # dropout off so the two passes are the same function
    whole = _grads(enc, lambda: ((enc(x) - target) ** 2).sum())
    cached = _grads(enc, lambda: ((enc.from_prefix(h) - target) ** 2).sum())
    for n in whole:
        # the cached path attends over max_length positions (the extra ones masked): float sums differ slightly
        torch.testing.assert_close(cached[n], whole[n], rtol=1e-3, atol=2e-5)


def test_bad_splits_are_clear_errors():
    with pytest.raises(PolymodalError, match="between 1 and 16"):
        build_encoder("image", "efficientnet-lite0", image_size=32, train_top=40)
    with pytest.raises(PolymodalError, match="cannot be fine-tuned in part"):
        build_encoder("image", "small-cnn", image_size=16, train_top=1)
    with pytest.raises(PolymodalError, match="between 1 and 6"):
        build_encoder("text", "minilm-l6", train_top=7)
    assert finetune_settings("image:top=3,text") == ({"text": False}, {"image": {"train_top": 3}})
    assert finetune_settings("text:lora=4") == ({"text": False}, {"text": {"adapter": "lora", "lora_rank": 4}})
    assert finetune_settings("text:bitfit") == ({"text": False}, {"text": {"adapter": "bitfit"}})
    for bad in ("image:top=0", "image:last=2", "audio:top=1", "image:lora", "text:lora=0", "text:top=2,text:lora"):
        with pytest.raises(PolymodalError, match="--finetune"):
            finetune_settings(bad)


def test_partly_fine_tuned_run_trains_the_top_only_and_reloads_identically(tmp_path):
    table = color_table(tmp_path, n=40, caption_words={"red": ["warm", "ruby"], "blue": ["cold", "navy"]})
    df = read_table(table)
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["fit", str(table), "--label", "label", "--out", str(out), "--image-size", "32",
                                 "--finetune", "image:top=2,text:top=1", "--epochs", "2", "--batch-size", "8",
                                 "--seed", "0"])
    assert r.exit_code == 0, r.output
    p = load_run(out)
    img, txt = p.model.encoders["image"], p.model.encoders["caption"]
    assert img.train_top == 2 and txt.train_top == 1
    fresh = build_encoder("image", "efficientnet-lite0", image_size=32)
    trained, pre = dict(img.named_parameters()), dict(fresh.named_parameters())
    top = {n for n, q in img.named_parameters() if q.requires_grad}
    changed = {n for n in trained if not torch.equal(trained[n], pre[n])}
    assert changed and changed <= top  # the prefix kept its pretrained weights; the top learned
    proba = p.predict_proba(df, as_pandas=False)
    again = MultimodalPredictor.load(out).predict_proba(df, as_pandas=False)
    np.testing.assert_array_equal(proba, again)
    assert np.isfinite(proba).all()


@pytest.mark.parametrize("adapter", ["lora", "bitfit"])
def test_text_adapters_train_few_parameters_and_reload_identically(adapter, tmp_path):
    pytest.importorskip("peft") if adapter == "lora" else None
    enc = build_encoder("text", "minilm-l6", max_length=16, adapter=adapter, lora_rank=4)
    trainable = [n for n, p in enc.named_parameters() if p.requires_grad]
    total = sum(p.numel() for p in enc.parameters())
    share = sum(p.numel() for p in enc.parameters() if p.requires_grad) / total
    assert trainable and share < 0.02
    assert all(("lora_" in n) if adapter == "lora" else n.endswith("bias") for n in trainable)
    # at initialisation LoRA is the identity (B = 0): the pretrained model's outputs
    plain = build_encoder("text", "minilm-l6", max_length=16).eval()
    b = get_tokenizer("minilm-l6")(["a chest x ray"], return_tensors="pt")
    x = {k: b[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        torch.testing.assert_close(enc.eval()(x), plain(x), rtol=0, atol=1e-6)

    table = color_table(tmp_path, n=24, caption_words={"red": ["warm", "ruby"], "blue": ["cold", "navy"]})
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["fit", str(table), "--label", "label", "--out", str(out), "--column-types",
                                 "image=id", "--finetune", f"text:{adapter}", "--epochs", "2", "--batch-size", "8"])
    assert r.exit_code == 0, r.output
    p = load_run(out)
    caption = p.model.encoders["caption"]
    assert caption.adapter == adapter
    fresh = dict(build_encoder("text", "minilm-l6", adapter=adapter, lora_rank=8).named_parameters())
    moved = {n for n, q in caption.named_parameters() if not torch.equal(q, fresh[n])}
    # only adapter parameters moved (LoRA's A matrices start random, so those differ between builds anyway)
    assert moved and moved <= {n for n, q in fresh.items() if q.requires_grad}
    assert any("lora_B" in n for n in moved) if adapter == "lora" else True  # B starts at 0: it learned
    df = read_table(table)
    np.testing.assert_array_equal(p.predict_proba(df, as_pandas=False),
                                  MultimodalPredictor.load(out).predict_proba(df, as_pandas=False))


def _dedupe_pair(enc, h: torch.Tensor, target: torch.Tensor, tokens: bool = False):
    """(outputs, gradients) of the top over `h`, once per distinct row (dedupe) and once per row."""
    out = {}
    for dedupe in (True, False):
        enc.dedupe = dedupe
        enc.zero_grad()
        y = enc.from_prefix(h, tokens)
        ((y - target) ** 2).sum().backward()
        out[dedupe] = (y.detach(), {n: p.grad.clone() for n, p in enc.named_parameters() if p.requires_grad})
    enc.dedupe = True
    return out[True], out[False]


@pytest.mark.parametrize("tokens", [False, True])
def test_top_runs_once_per_distinct_prefix_with_the_per_row_outputs_and_gradients(tokens):
    torch.manual_seed(0)
    enc = build_encoder("image", "efficientnet-lite0", image_size=64, train_top=2).freeze().eval()
    with torch.no_grad():
        h = enc.prefix(torch.randn(3, 3, 64, 64)).half().float()  # as the cache stores it
    rows = torch.tensor([2, 0, 2, 1, 0, 2, 2])  # 7 rows, 3 images (VQA: questions sharing an image)
    calls = []
    hook = enc.top_modules()[0].register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    target = torch.randn(7, 4, enc.out_dim) if tokens else torch.randn(7, enc.out_dim)
    (y, g), (y_row, g_row) = _dedupe_pair(enc, h[rows], target, tokens)
    hook.remove()
    assert calls == [3, 7]  # the top saw 3 distinct rows, then all 7
    torch.testing.assert_close(y, y_row, rtol=0, atol=1e-6)
    assert g.keys() == g_row.keys() and g
    scale = max(float(v.abs().max()) for v in g_row.values())
    for n in g:  # equal to 1e-6 of the gradients' scale (float32 sums in another order)
        torch.testing.assert_close(g[n], g_row[n], rtol=0, atol=1e-6 * scale)


def test_text_top_dedupe_and_unique_rows():
    enc = build_encoder("text", "minilm-l6", max_length=16, train_top=1).freeze().eval()
    b = get_tokenizer("minilm-l6")(["a chest x ray", "is there an effusion"], padding=True, return_tensors="pt")
    with torch.no_grad():
        h = enc.prefix({k: b[k] for k in ("input_ids", "attention_mask")})
    rows = torch.tensor([1, 1, 0, 1])
    (y, g), (y_row, g_row) = _dedupe_pair(enc, h[rows], torch.randn(4, 384))
    torch.testing.assert_close(y, y_row, rtol=0, atol=1e-6)
    scale = max(float(v.abs().max()) for v in g_row.values())
    for n in g:  # equal to 1e-6 of the gradients' scale (float32 sums in another order)
        torch.testing.assert_close(g[n], g_row[n], rtol=0, atol=1e-6 * scale)
    uniq, inverse = unique_rows(h[rows])
    assert torch.equal(uniq[inverse], h[rows]) and len(uniq) == 2
    assert unique_rows(h)[1] is None  # all distinct: nothing to undo
