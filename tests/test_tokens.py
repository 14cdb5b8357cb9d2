"""Token-level inputs to the transformer and FiLM fusions: token features, masks, cache, trimming, ONNX."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import color_table

from polymodal import MultimodalPredictor
from polymodal.encoders import build_encoder
from polymodal.encoders.tokens import AUDIO_TOKENS, token_features, token_mask
from polymodal.errors import PolymodalError

WORDS = {"red": ["crimson", "scarlet", "ruby", "cherry"], "blue": ["navy", "azure", "cobalt", "sky"]}
FAST = dict(encoder_opts={"image": {"image_size": 32}}, max_epochs=6, batch_size=16, lr=2e-3, patience=6,
            progress=False, verbose=False)


def test_token_features_shapes_and_padding():
    img = build_encoder("image", image_size=64).freeze()
    t = token_features(img, torch.randn(2, 3, 64, 64), "image", {})
    assert t.shape == (2, 4, img.token_dim) and token_mask(t).all()
    txt = build_encoder("text").freeze()
    from polymodal.data.text import get_tokenizer

    enc = get_tokenizer("minilm-l6")(["a red thing", "a much longer caption about a blue thing"], padding=True,
                                     return_tensors="pt")
    x = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    with torch.no_grad():
        t = token_features(txt, x, "text", {"max_length": 16})
    assert t.shape == (2, 16, 384)
    assert token_mask(t).sum(1).tolist() == enc["attention_mask"].sum(1).tolist()  # padding is exactly zero
    aud = build_encoder("audio")
    with torch.no_grad():
        t = token_features(aud, torch.randn(2, 64, 400), "audio", {})
    assert t.shape == (2, AUDIO_TOKENS, aud.token_dim)


@pytest.fixture(scope="module")
def token_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    path = color_table(root, n=80, caption_words=WORDS)
    p = MultimodalPredictor(label="label", fusion="transformer", path=root / "run", **FAST)
    p.fit(path)
    return p, path, root


def test_transformer_fusion_gets_token_inputs_and_learns(token_run):
    p, path, _ = token_run
    assert p.model.token_inputs == {"image": "image", "caption": "text"}
    assert p.model.fusion.in_dims["caption"] == 384 and p.model.fusion.in_dims["image"] == 1280
    assert p.evaluate(path)["accuracy"] >= 0.9


def test_cached_tokens_match_computed_tokens_and_reload(token_run):
    p, path, root = token_run
    cached = p.predict_proba(path).to_numpy()  # > 64 rows: frozen encoders' tokens come from the cache (fp16)
    from polymodal.data.readers import read_table

    df = read_table(path)
    direct = np.concatenate([p.predict_proba(df.iloc[i:i + 40]).to_numpy() for i in (0, 40)])  # ≤ 64: computed
    np.testing.assert_allclose(cached, direct, atol=2e-2)
    loaded = MultimodalPredictor.load(root / "run")
    assert loaded.model.token_inputs == p.model.token_inputs
    np.testing.assert_allclose(loaded.predict_proba(path).to_numpy(), cached, atol=1e-5)


def test_trimming_padded_positions_does_not_change_the_output(token_run):
    p, _, _ = token_run
    model = p.model.eval()
    torch.manual_seed(0)
    feats = {"image": torch.randn(3, 1, 1280), "caption": torch.randn(3, 10, 384),
             "tabular": torch.randn(3, model.fusion.in_dims["tabular"])}
    feats["caption"][:, 4:] = 0  # 6 padded positions in every row
    present = {k: torch.ones(3, dtype=torch.bool) for k in feats}
    padded = {**feats, "caption": torch.cat([feats["caption"], torch.zeros(3, 20, 384)], 1)}
    with torch.no_grad():
        a, b = model.fuse(feats, present), model.fuse(padded, present)
        masks = {k: token_mask(v) for k, v in padded.items() if v.dim() == 3}
        c = model.fusion(padded, present, masks)  # the untrimmed sequence, masked
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-4)


def test_film_takes_tokens_and_pooled_fusions_refuse_them(tmp_path):
    path = color_table(tmp_path, n=40, caption_words=WORDS)
    p = MultimodalPredictor(label="label", fusion="film", **{**FAST, "max_epochs": 2})
    p.fit(path)
    assert set(p.model.token_inputs) == {"image", "caption"} and p.model.fusion.conditioned == "image"
    with pytest.raises(PolymodalError, match="token inputs need"):
        MultimodalPredictor(label="label", fusion="concat", tokens=True, **FAST).fit(path)
    q = MultimodalPredictor(label="label", fusion="transformer", tokens=False, **{**FAST, "max_epochs": 1})
    q.fit(path)
    assert q.model.token_inputs == {}


def test_onnx_export_of_a_token_model_matches_pytorch(token_run, tmp_path):
    pytest.importorskip("onnxruntime")
    from polymodal.compress import export_predictor

    p, path, _ = token_run
    rep = export_predictor(p, tmp_path / "tok.onnx", path)
    assert rep.max_abs_diff_random < 1e-3 and rep.max_abs_diff_real < 1e-3
