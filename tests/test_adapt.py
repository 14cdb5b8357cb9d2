"""`polymodal adapt`: SimCLR continued pre-training of an image encoder's top on a table's own images, and
`fit --image-encoder adapted:DIR` on the result."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import color_table
from typer.testing import CliRunner

from polymodal.cli import app
from polymodal.data.readers import read_table
from polymodal.encoders import build_encoder
from polymodal.errors import PolymodalError
from polymodal.runs import load_run
from polymodal.training.adapt import AdaptConfig, adapt, nt_xent


def test_nt_xent_matches_the_formula():
    torch.manual_seed(0)
    z1, z2, t = torch.randn(3, 4), torch.randn(3, 4), 0.5
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    losses = []
    for i in range(6):
        pos = (i + 3) % 6
        others = [j for j in range(6) if j != i]
        denom = sum(torch.exp(z[i] @ z[j] / t) for j in others)
        losses.append(-torch.log(torch.exp(z[i] @ z[pos] / t) / denom))
    torch.testing.assert_close(nt_xent(z1, z2, t), torch.stack(losses).mean())


def test_adapt_trains_the_top_and_fit_uses_it(tmp_path):
    table = color_table(tmp_path, n=24)
    enc_dir = tmp_path / "enc"
    r = CliRunner().invoke(app, ["adapt", str(table), "--column", "image", "--out", str(enc_dir), "--image-size",
                                 "32", "--top", "2", "--epochs", "2", "--batch-size", "8"])
    assert r.exit_code == 0, r.output
    meta = json.loads((enc_dir / "adapted.json").read_text())
    assert meta["values"] == 24 and meta["modality"] == "image"
    assert len(meta["loss_history"]) == 2 and np.isfinite(meta["loss_history"]).all()

    adapted = build_encoder("image", f"adapted:{enc_dir}")
    base = build_encoder("image", "efficientnet-lite0", image_size=32)
    assert adapted.cache_id != base.cache_id and meta["sha256"][:16] in adapted.cache_id
    a, b = dict(adapted.named_parameters()), dict(base.named_parameters())
    changed = {n for n in a if not torch.equal(a[n], b[n])}
    top = {n for n, _ in build_encoder("image", "efficientnet-lite0", image_size=32, train_top=2)
           .freeze().named_parameters() if _.requires_grad}
    assert changed and changed <= top  # only the top adapted

    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["fit", str(table), "--label", "label", "--out", str(out), "--image-encoder",
                                 f"adapted:{enc_dir}", "--epochs", "1", "--batch-size", "8"])
    assert r.exit_code == 0, r.output
    df = read_table(table)
    p = load_run(out)
    np.testing.assert_array_equal(p.predict_proba(df, as_pandas=False),
                                  load_run(out).predict_proba(df, as_pandas=False))


def test_adapt_errors_are_clear(tmp_path):
    table = color_table(tmp_path, n=6)
    r = CliRunner().invoke(app, ["adapt", str(table), "--column", "photo", "--out", str(tmp_path / "e")])
    assert r.exit_code == 2 and "column 'photo' not found" in r.output and "Traceback" not in r.output
    with pytest.raises(PolymodalError, match="adapt trains the top blocks"):
        AdaptConfig(column="image", encoder="small-cnn").resolved("image")
    with pytest.raises(PolymodalError, match="adapt takes image or text columns"):
        AdaptConfig(column="size").resolved("numeric")
    with pytest.raises(PolymodalError, match="adapted.json not found"):
        build_encoder("image", f"adapted:{tmp_path / 'nowhere'}")
    enc_dir = tmp_path / "enc"
    adapt(table, AdaptConfig(column="image", image_size=32, train_top=1, epochs=1, batch_size=3), enc_dir,
          log=lambda _: None)
    with pytest.raises(PolymodalError, match="adapted at 32 px"):
        build_encoder("image", f"adapted:{enc_dir}", image_size=64)
    weights = enc_dir / "encoder.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(PolymodalError, match="does not match"):
        build_encoder("image", f"adapted:{enc_dir}")


def test_text_adaptation_simcse_then_fit(tmp_path):
    table = color_table(tmp_path, n=24, caption_words={"red": ["warm", "ruby", "fire"], "blue": ["cold", "navy"]})
    enc_dir = tmp_path / "tenc"
    meta = adapt(table, AdaptConfig(column="caption", max_length=16, epochs=2, batch_size=8), enc_dir,
                 log=lambda _: None)
    assert meta["modality"] == "text" and meta["base"] == "minilm-l6" and np.isfinite(meta["loss_history"]).all()
    adapted = build_encoder("text", f"adapted:{enc_dir}")
    base = build_encoder("text", "minilm-l6", max_length=16)
    assert adapted.max_length == 16 and adapted.cache_id != base.cache_id
    a, b = dict(adapted.named_parameters()), dict(base.named_parameters())
    changed = {n for n in a if not torch.equal(a[n], b[n])}
    assert changed and all(".layer.4." in n or ".layer.5." in n for n in changed)  # the top 2 layers only
    with pytest.raises(PolymodalError, match="adapted text encoder, not a image"):
        build_encoder("image", f"adapted:{enc_dir}")
    lora = build_encoder("text", f"adapted:{enc_dir}", adapter="bitfit")  # an adapter on top of the adapted weights
    assert lora.adapter == "bitfit" and torch.equal(dict(lora.named_parameters())[next(iter(changed))],
                                                    a[next(iter(changed))])
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["fit", str(table), "--label", "label", "--out", str(out), "--column-types",
                                 "image=id", "--text-encoder", f"adapted:{enc_dir}", "--epochs", "1"])
    assert r.exit_code == 0, r.output
    df = read_table(table)
    np.testing.assert_array_equal(load_run(out).predict_proba(df, as_pandas=False),
                                  load_run(out).predict_proba(df, as_pandas=False))
