"""Layer-wise learning-rate decay over a fine-tuned top (`--finetune text:top=2,text:llrd=0.8`): the optimiser's
groups carry the hand-computed learning rates, and a run trained with it reloads and predicts identically."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import color_table
from typer.testing import CliRunner

from polymodal.cli import app
from polymodal.cli_options import finetune_settings
from polymodal.data.readers import read_table
from polymodal.encoders import build_encoder
from polymodal.errors import PolymodalError
from polymodal.predictor import MultimodalPredictor
from polymodal.runs import load_run
from polymodal.training.module import param_groups


class _Model(torch.nn.Module):
    def __init__(self, encoders: dict) -> None:
        super().__init__()
        self.encoders = torch.nn.ModuleDict(encoders)
        self.head = torch.nn.Linear(4, 2)


def test_param_groups_decay_by_layer_from_the_top():
    img = build_encoder("image", "efficientnet-lite0", image_size=32, train_top=2, layer_decay=0.5).freeze()
    txt = build_encoder("text", "minilm-l6", max_length=8, train_top=2, layer_decay=0.8).freeze()
    plain = build_encoder("text", "minilm-l6", max_length=8, train_top=1).freeze()  # no decay: one group
    model = _Model({"image": img, "caption": txt, "title": plain})
    lr, scale = 1e-3, 0.1
    got = {id(p): g["lr"] for g in param_groups(model, lr, scale) for p in g["params"]}
    net, layers = img.net, txt.model.encoder.layer
    expected = {}
    for m, e in [(net._conv_head, 1.0), (net._bn1, 1.0), (net._blocks[15], 0.5), (net._blocks[14], 0.25)]:
        expected.update({id(p): lr * scale * e for p in m.parameters()})
    for m, e in [(layers[5], 1.0), (layers[4], 0.8)]:
        expected.update({id(p): lr * scale * e for p in m.parameters()})
    expected.update({id(p): lr * scale for p in plain.model.encoder.layer[5].parameters()})
    expected.update({id(p): lr for p in model.head.parameters()})
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert set(got) == trainable == set(expected)  # every trainable parameter in exactly one group
    for k, v in expected.items():
        assert got[k] == pytest.approx(v, rel=1e-12)


def test_llrd_option_parsing_and_errors():
    assert finetune_settings("text:top=2,text:llrd=0.8") == ({}, {"text": {"train_top": 2, "layer_decay": 0.8}})
    for bad in ("text:llrd=0.8", "text:top=2,text:llrd=0", "text:top=2,text:llrd=1.5", "image:top=1,image:llrd=x",
                "audio:llrd=0.5"):
        with pytest.raises(PolymodalError, match="--finetune"):
            finetune_settings(bad)
    with pytest.raises(PolymodalError, match="add top=K"):
        build_encoder("text", "minilm-l6", layer_decay=0.5)


def test_run_with_llrd_saves_reloads_and_predicts_identically(tmp_path):
    table = color_table(tmp_path, n=32, caption_words={"red": ["warm", "ruby"], "blue": ["cold", "navy"]})
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["fit", str(table), "--label", "label", "--out", str(out), "--image-size", "32",
                                 "--finetune", "image:top=2,image:llrd=0.5,text:top=2,text:llrd=0.8",
                                 "--epochs", "2", "--batch-size", "8", "--seed", "0"])
    assert r.exit_code == 0, r.output
    p = load_run(out)
    img, txt = p.model.encoders["image"], p.model.encoders["caption"]
    assert (img.train_top, img.layer_decay, txt.train_top, txt.layer_decay) == (2, 0.5, 2, 0.8)
    fresh = dict(build_encoder("text", "minilm-l6").named_parameters())
    moved = {n for n, q in txt.named_parameters() if not torch.equal(q, fresh[n])}
    assert moved and all(".layer.4." in n or ".layer.5." in n for n in moved)  # both decayed layers learned
    assert any(".layer.4." in n for n in moved)
    df = read_table(table)
    proba = p.predict_proba(df, as_pandas=False)
    np.testing.assert_array_equal(proba, MultimodalPredictor.load(out).predict_proba(df, as_pandas=False))
    assert np.isfinite(proba).all()
