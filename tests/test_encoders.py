"""Encoders: output/token shapes, cache ids, freezing, gradients, and references for the pretrained ones
(sentence-transformers for MiniLM, ImageNet labels of sklearn's sample photos for the CNNs)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from torch import nn

from polymodal.encoders import DEFAULT_ENCODERS, Encoder, build_encoder, encoder_names
from polymodal.errors import PolymodalError

SENTENCES = ["A cat sits on the mat.", "Multimodal models fuse images, text and audio into one prediction.",
             "hello", "The quick brown fox jumps over the lazy dog near the river bank."]


@pytest.fixture(scope="module")
def effnet() -> Encoder:
    return build_encoder("image", "efficientnet-lite0", image_size=64)


@pytest.fixture(scope="module")
def mobilenet() -> Encoder:
    return build_encoder("image", "mobilenet_v2", image_size=64)


@pytest.fixture(scope="module")
def minilm() -> Encoder:
    return build_encoder("text").eval()


@pytest.fixture(scope="module")
def text_batch() -> dict[str, torch.Tensor]:
    from polymodal.data.text import get_tokenizer

    tok = get_tokenizer("minilm-l6")
    b = tok(SENTENCES, padding=True, truncation=True, max_length=64, return_tensors="pt")
    return {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]}


def tabular_batch(b: int = 4, n_num: int = 3, cards: tuple[int, ...] = (2, 10)) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    cat = torch.stack([torch.randint(0, c + 1, (b,), generator=g) for c in cards], 1) if cards else \
        torch.zeros(b, 0, dtype=torch.long)
    return {"numeric": torch.randn(b, n_num, generator=g),
            "numeric_missing": (torch.rand(b, n_num, generator=g) < 0.3).float(), "categorical": cat}


def small_encoders() -> list[tuple[Encoder, object]]:
    """The from-scratch encoders with a matching random input."""
    torch.manual_seed(0)
    return [(build_encoder("image", "small-cnn", image_size=8), torch.randn(4, 3, 8, 8)),
            (build_encoder("audio"), torch.randn(4, 64, 101)),
            (build_encoder("tabular", n_numeric=3, cardinalities=[2, 10]), tabular_batch())]


def test_builder_names_and_errors():
    assert DEFAULT_ENCODERS == {"image": "efficientnet-lite0", "text": "minilm-l6", "audio": "logmel-cnn",
                                "video": "frames-mean", "timeseries": "ts-cnn", "tabular": "mlp"}
    names = encoder_names()
    assert names["image"] == ["efficientnet-lite0", "mobilenet_v2", "small-cnn"]
    assert names["video"] == ["frames-attn", "frames-mean", "frames-transformer"]
    assert all(DEFAULT_ENCODERS[m] in names[m] for m in DEFAULT_ENCODERS)
    with pytest.raises(PolymodalError, match="modality 'pointcloud'"):
        build_encoder("pointcloud")
    with pytest.raises(PolymodalError, match="unknown image encoder 'resnet9000'"):
        build_encoder("image", "resnet9000")
    with pytest.raises(PolymodalError, match="unknown audio encoder"):
        build_encoder("audio", "wav2vec9")


@pytest.mark.parametrize("prefix,package",
                         [("timm:resnet18", "timm"), ("torchvision:resnet18", "torchvision")])
def test_vision_extras_fail_clearly_when_missing(prefix, package):
    if importlib.util.find_spec(package) is not None:
        pytest.skip(f"{package} is installed here")
    with pytest.raises(ImportError, match=r"pip install polymodal\[vision\]"):
        build_encoder("image", prefix)


def test_pretrained_image_shapes(effnet, mobilenet):
    x = torch.randn(2, 3, 64, 64)
    for enc in (effnet, mobilenet):
        enc.eval()
        with torch.no_grad():
            out, tok = enc(x), enc.tokens(x)
        assert enc.pretrained and enc.out_dim == enc.token_dim == 1280
        assert out.shape == (2, 1280) and out.dtype == torch.float32
        assert tok.shape == (2, 2 * 2, 1280)  # 64 / 32 (total stride) = 2x2 grid
        # the pooled feature is the mean of the grid tokens
        torch.testing.assert_close(out, tok.mean(1), rtol=1e-5, atol=1e-5)
        cfg = enc.preprocess_config()
        assert cfg["image_size"] == 64 and len(cfg["mean"]) == len(cfg["std"]) == 3
        json.dumps(cfg)


def test_small_encoder_shapes():
    (img, xi), (aud, xa), (tab, xt) = small_encoders()
    assert img(xi).shape == (4, 128) and img.tokens(xi).shape == (4, 1, 128)  # 8 → 4 → 2 → 1
    assert img(torch.randn(2, 3, 32, 32)).shape == (2, 128)
    assert aud(xa).shape == (4, 256) and aud.tokens(xa).shape == (4, 7, 128)  # ceil(101 / 2**4) frames
    # variable length, down to the 1-frame placeholder the data layer uses for missing clips
    one = torch.randn(2, 64, 1)
    assert aud(one).shape == (2, 256) and aud.tokens(one).shape == (2, 1, 128)
    assert tab(xt).shape == (4, 128) and tab.tokens(xt).shape == (4, 5, 128)
    for enc, x in ((img, xi), (aud, xa), (tab, xt)):
        assert not enc.pretrained and enc(x).dtype == torch.float32
        json.dumps(enc.preprocess_config())
    assert aud.preprocess_config() == {"sample_rate": 16000, "n_mels": 64, "n_fft": 400, "hop_length": 160,
                                       "max_seconds": 4.0}
    assert build_encoder("audio", sample_rate=8000, n_mels=40).preprocess_config()["sample_rate"] == 8000


def test_cache_id_tracks_weights_and_preprocessing(effnet):
    assert effnet.cache_id == "image:efficientnet-lite0:64"
    assert build_encoder("image", image_size=224).cache_id == "image:efficientnet-lite0:224"
    ids = {build_encoder("image", "small-cnn", image_size=s).cache_id for s in (8, 32)}
    ids |= {build_encoder("image", "mobilenet_v2", image_size=64).cache_id, effnet.cache_id}
    ids |= {build_encoder("audio", sample_rate=s).cache_id for s in (8000, 16000)}
    assert len(ids) == 6


def test_tabular_layout_and_edge_cases():
    from polymodal.encoders.tabular import embedding_dim

    assert [embedding_dim(c) for c in (1, 2, 10, 61, 1000)] == [2, 2, 6, 32, 32]
    tab = build_encoder("tabular", n_numeric=3, cardinalities=[2, 10], hidden=16, out_dim=8, token_dim=4)
    assert tab.mlp[0].in_features == 2 * 3 + 2 + 6
    assert [e.num_embeddings for e in tab.embeddings] == [3, 11]  # row 0 = missing/unseen
    x = tabular_batch()
    assert tab(x).shape == (4, 8) and tab.tokens(x).shape == (4, 5, 4)
    # numeric-only and categorical-only tables
    only_num = build_encoder("tabular", n_numeric=2, cardinalities=[])
    assert only_num(tabular_batch(n_num=2, cards=())).shape == (4, 128)
    only_cat = build_encoder("tabular", n_numeric=0, cardinalities=[5])
    xc = tabular_batch(n_num=0, cards=(5,))
    assert only_cat(xc).shape == (4, 128) and only_cat.tokens(xc).shape == (4, 1, 128)
    with pytest.raises(PolymodalError, match="at least one"):
        build_encoder("tabular", n_numeric=0, cardinalities=[])
    # the missing bit reaches the output even where the standardised value is 0
    tab.eval()
    x0 = {"numeric": torch.zeros(1, 3), "numeric_missing": torch.zeros(1, 3),
          "categorical": torch.zeros(1, 2, dtype=torch.long)}
    x1 = {**x0, "numeric_missing": torch.tensor([[1.0, 0.0, 0.0]])}
    assert not torch.allclose(tab(x0), tab(x1))


def test_gradients_reach_every_trainable_parameter():
    for enc, x in small_encoders():
        enc.train()
        (enc(x).square().sum() + enc.tokens(x).square().sum()).backward()
        for name, p in enc.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{enc.cache_id}: no gradient for {name}"


def test_freeze_keeps_eval_and_statistics(mobilenet):
    for enc, x in [*small_encoders(), (mobilenet, torch.randn(2, 3, 64, 64))]:
        parent = nn.ModuleDict({"enc": enc})
        assert enc.freeze() is enc
        parent.train()  # what Lightning does every epoch
        assert not any(p.requires_grad for p in enc.parameters())
        assert not any(m.training for m in enc.modules())
        bn = [m for m in enc.modules() if isinstance(m, nn.BatchNorm2d)]
        before = [m.running_mean.clone() for m in bn]
        with torch.no_grad():
            a, b = enc(x), enc(x)
        torch.testing.assert_close(a, b)  # no dropout
        for m, r in zip(bn, before, strict=True):
            torch.testing.assert_close(m.running_mean, r)  # BN statistics not updated
    unfrozen, _ = small_encoders()[0]
    nn.ModuleDict({"e": unfrozen}).train()
    assert unfrozen.training and all(p.requires_grad for p in unfrozen.parameters())


def test_minilm_matches_sentence_transformers(minilm, text_batch):
    st = pytest.importorskip("sentence_transformers")
    from polymodal.data.text import resolve

    ref = st.SentenceTransformer(resolve("minilm-l6"), device="cpu").encode(SENTENCES, convert_to_tensor=True)
    with torch.no_grad():
        ours = torch.nn.functional.normalize(minilm(text_batch), dim=-1)
    assert minilm.out_dim == 384 and ours.shape == (4, 384)
    assert (ours - ref.cpu()).abs().max().item() < 1e-4


def test_text_tokens_config_and_tokenizer(minilm, text_batch):
    from polymodal.data.text import get_tokenizer

    with torch.no_grad():
        tok = minilm.tokens(text_batch)
    assert tok.shape == (*text_batch["input_ids"].shape, 384) and minilm.token_dim == 384
    cfg = minilm.preprocess_config()
    assert cfg == {"tokenizer": "minilm-l6", "max_length": 64}
    assert get_tokenizer(cfg["tokenizer"]) is get_tokenizer("minilm-l6")  # cached
    assert minilm.pretrained and minilm.cache_id == "text:minilm-l6:L6:len64"


def test_text_num_layers_equals_intermediate_hidden_state(minilm, text_batch):
    student = build_encoder("text", num_layers=2).eval()
    assert student.cache_id != minilm.cache_id and student.model.config.num_hidden_layers == 2
    assert sum(p.numel() for p in student.parameters()) < sum(p.numel() for p in minilm.parameters())
    from polymodal.encoders.text import masked_mean

    with torch.no_grad():
        hidden = minilm.model(**text_batch, output_hidden_states=True).hidden_states[2]
        torch.testing.assert_close(student(text_batch), masked_mean(hidden, text_batch["attention_mask"]),
                                   rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="num_layers"):
        build_encoder("text", num_layers=7)


def _sample_crops(name: str, n: int = 8, size: int = 224) -> torch.Tensor:
    """n fixed square crops of one of sklearn's sample photos, as (n, 3, size, size) on [0, 1]."""
    from PIL import Image
    from sklearn.datasets import load_sample_image

    a = load_sample_image(name)
    h, w, _ = a.shape
    rng = np.random.default_rng(0)
    boxes = [(0, 0, w, h)]
    for _ in range(n - 1):
        s = int(rng.integers(200, min(h, w)))
        x0, y0 = int(rng.integers(0, w - s)), int(rng.integers(0, h - s))
        boxes.append((x0, y0, x0 + s, y0 + s))
    crops = [np.asarray(Image.fromarray(a).crop(b).resize((size, size), Image.BILINEAR), np.float32) / 255
             for b in boxes]
    return torch.tensor(np.stack(crops)).permute(0, 3, 1, 2)


def _normalise(x: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


PALACE, DAISY = 698, 985  # ImageNet class ids


def test_mobilenet_v2_loads_strictly_and_classifies_plausibly():
    from polymodal.encoders.image import IMAGENET_MEAN, IMAGENET_STD, load_mobilenet_v2, mobilenet_v2_weights

    model = load_mobilenet_v2().eval()  # load_state_dict(strict=True) inside
    assert set(model.state_dict()) == set(torch.load(mobilenet_v2_weights(), weights_only=True))
    with torch.no_grad():
        top1 = model(_normalise(_sample_crops("china.jpg"), IMAGENET_MEAN, IMAGENET_STD)).argmax(-1)
    assert (top1 == PALACE).sum() >= 5  # measured: 6 of 8 crops of the Summer Palace photo


def test_efficientnet_lite_expects_half_normalisation():
    from polymodal.encoders import image

    model = image.load_efficientnet_lite0().eval()
    lite_norm, imagenet_norm = (image.LITE_MEAN, image.LITE_STD), (image.IMAGENET_MEAN, image.IMAGENET_STD)
    x = _sample_crops("flower.jpg")
    with torch.no_grad():
        lite = (model(_normalise(x, *lite_norm)).argmax(-1) == DAISY).sum().item()
        imnet = (model(_normalise(x, *imagenet_norm)).argmax(-1) == DAISY).sum().item()
    assert lite >= 6 and lite > imnet  # measured: 7 vs 3 of 8


def test_log_mel_reference():
    import librosa

    from polymodal.data.audio import log_mel

    sr, f0 = 8000, 1000.0
    t = np.arange(sr // 2) / sr
    mel = log_mel(0.3 * np.sin(2 * np.pi * f0 * t), sr, n_mels=40, n_fft=256, hop_length=80)
    assert mel.shape == (40, 1 + len(t) // 80) and mel.dtype == np.float32
    assert mel.max() == pytest.approx(2.0) and mel.min() >= -2.0 - 1e-6
    # the loudest band is the one whose centre is nearest the tone's frequency
    centres = librosa.mel_frequencies(n_mels=40 + 2, fmax=sr / 2)[1:-1]
    assert abs(int(mel.mean(1).argmax()) - int(np.abs(centres - f0).argmin())) <= 1
    # silence is the floor, not the loudest level; clips shorter than one window still work
    assert np.all(log_mel(np.zeros(1000), sr, 40, 256, 80) == -2.0)
    assert log_mel(np.ones(100) * 0.1, sr, 40, 256, 80).shape[0] == 40
