"""Alignment on tables: `polymodal align / evaluate / index / search / zero-shot`, AlignedModel, search serving."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import write_image, write_wave
from typer.testing import CliRunner

from polymodal.cli import app
from polymodal.errors import DataError, PolymodalError
from polymodal.retrieval.pipeline import (
    AlignConfig,
    AlignedModel,
    column_modality,
    is_alignment_run,
    load_alignment_run,
    positive_groups,
    split_alignment_pairs,
)

pytest.importorskip("faiss")
runner = CliRunner()
SHAPES = {"red": "square", "blue": "circle", "green": "tree"}


def caption_table(root: Path, n: int = 60, start: int = 0) -> Path:
    """n coloured images, each captioned by its colour ("a red square"): 3 captions, n/3 images each."""
    (root / "imgs").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(start, start + n):
        color = list(SHAPES)[i % 3]
        write_image(root / "imgs" / f"{i}.png", color, seed=i)
        rows.append({"image": f"imgs/{i}.png", "caption": f"a {color} {SHAPES[color]}", "colour": color, "id": i})
    path = root / f"pairs_{start}.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def aligned(tmp_path_factory):
    """An image↔caption run trained through the CLI (EfficientNet-Lite0 at 32 px + MiniLM, locked: LiT)."""
    root = tmp_path_factory.mktemp("align")
    train, test = caption_table(root, 60), caption_table(root, 30, start=100)
    run = root / "run"
    r = runner.invoke(app, ["align", str(train), "--left", "image", "--right", "caption", "--out", str(run),
                            "--image-size", "32", "--epochs", "15", "--batch-size", "32", "--valid", str(test),
                            "--embed-dim", "64"])
    assert r.exit_code == 0, r.output
    return root, run, train, test


def test_align_cli_writes_a_run_that_retrieves(aligned):
    root, run, _, test = aligned
    meta = json.loads((run / "align.json").read_text())
    assert meta["sides"]["left"]["modality"] == "image" and meta["sides"]["right"]["modality"] == "text"
    assert meta["sides"]["left"]["frozen"] and meta["sides"]["right"]["frozen"]  # LiT default
    assert (run / "tokenizers" / "right" / "config.json").exists() and (run / "README.md").exists()
    out = root / "metrics.json"
    r = runner.invoke(app, ["evaluate", str(run), str(test), "--out", str(out)])
    assert r.exit_code == 0, r.output
    m = json.loads(out.read_text())
    # 3 captions, 10 images each: chance caption→image R@1 is 1/3; colour is trivially learnable
    assert m["caption_to_image/R@1"] == 1.0 and m["image_to_caption/R@1"] >= 0.9, m
    assert m["caption_to_image/R@5"] >= m["caption_to_image/R@1"] and m["pairs"] == 30


def test_index_and_search_text_and_image(aligned):
    root, run, _, test = aligned
    index = root / "gallery.index"
    r = runner.invoke(app, ["index", str(run), str(test), "--column", "image", "--out", str(index),
                            "--id-column", "id"])
    assert r.exit_code == 0, r.output
    sidecar = json.loads((root / "gallery.index.json").read_text())
    assert sidecar["source"]["side"] == "left" and sidecar["metadata"][0]["thumbnail"].startswith("data:image/jpeg")
    r = runner.invoke(app, ["search", str(index), "--text", "a blue circle", "-k", "5", "--json"])
    assert r.exit_code == 0, r.output
    hits = [json.loads(line) for line in r.output.strip().splitlines()]
    df = pd.read_csv(test).set_index("id")
    assert len(hits) == 5 and all(df.loc[h["id"], "colour"] == "blue" for h in hits)
    assert hits == sorted(hits, key=lambda h: -h["score"])
    query = root / "imgs" / "101.png"  # a (green) gallery image: it finds itself first
    r = runner.invoke(app, ["search", str(index), "--image", str(query), "-k", "3", "--json"])
    first = json.loads(r.output.strip().splitlines()[0])
    assert first["id"] == 101 and first["score"] == pytest.approx(1.0, abs=1e-4)
    r = runner.invoke(app, ["search", str(index), "--audio", str(query)])
    assert r.exit_code != 0 and "not audio" in r.output


def test_zero_shot_by_prompts(aligned):
    root, run, _, test = aligned
    out = root / "zs.csv"
    r = runner.invoke(app, ["zero-shot", str(run), str(test), "--column", "image", "--classes", "red,blue,green",
                            "--template", "a {label} shape", "--template", "a {label} thing", "--label", "colour",
                            "--out", str(out)])
    assert r.exit_code == 0, r.output
    pred = pd.read_csv(out)
    probs = pred[["proba_red", "proba_blue", "proba_green"]].to_numpy()
    assert np.allclose(probs.sum(1), 1, atol=1e-4)
    assert (pred["predicted"] == pred["colour"]).mean() >= 0.9


def test_loaded_model_embeds_like_the_trained_one_and_refuses_a_foreign_index(aligned, tmp_path):
    root, run, train, test = aligned
    assert is_alignment_run(run) and not is_alignment_run(tmp_path)
    model = load_alignment_run(run)
    assert isinstance(model, AlignedModel) and model.path == run
    emb = model.embed(pd.read_csv(test).assign(image=lambda d: str(root) + "/" + d["image"]), "image")
    assert emb.shape == (30, 64) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    q = model.embed_query({"text": "a red square"})
    assert np.allclose(q, model.embed(["a red square"], "caption"), atol=1e-5)
    # a second run (other seed) has another model id: the first run's index is refused with it
    other = AlignedModel.fit(train, AlignConfig(left="image", right="caption", epochs=2, seed=1, embed_dim=64,
                                                encoder_opts={"image": {"image_size": 32}}), tmp_path / "other",
                             valid=test, log=lambda m: None)
    assert other.model_id != model.model_id
    idx = model.build_index(test, "image")
    idx.save(tmp_path / "g.index")
    from polymodal.retrieval.index import ModelMismatchError
    from polymodal.retrieval.search import load_searcher

    with pytest.raises(ModelMismatchError):
        load_searcher(tmp_path / "g.index", tmp_path / "other")


def test_vector_columns_align_and_beat_chance(tmp_path):
    """Two noisy linear views of one latent (list cells, as from Parquet): trained MLP towers recover it."""
    rng = np.random.default_rng(0)
    z = rng.normal(size=(400, 8))
    a = z @ rng.normal(size=(8, 20)) + 0.05 * rng.normal(size=(400, 20))
    b = np.tanh(z @ rng.normal(size=(8, 12))) + 0.05 * rng.normal(size=(400, 12))
    df = pd.DataFrame({"a": list(a), "b": [json.dumps(x.tolist()) for x in b]})  # arrays and JSON strings
    assert column_modality(df, "a", {}) == "vector" and column_modality(df, "b", {}) == "vector"
    torch.manual_seed(0)
    model = AlignedModel.fit(df.iloc[:320], AlignConfig(left="a", right="b", epochs=60, batch_size=64, lr=3e-3,
                                                         embed_dim=32, vector_hidden=64, weight_decay=0.0),
                             valid=df.iloc[320:], log=lambda m: None)
    m = model.evaluate(df.iloc[320:])
    assert m["a_to_b/R@1"] > 0.3 and m["b_to_a/R@1"] > 0.3, m  # chance: 1/80
    assert not model.sides["left"].frozen and model.sides["left"].config["dim"] == 20
    with pytest.raises(PolymodalError, match="finite numbers"):
        model.embed_query({"vector": [1.0, 2.0]})


def test_positive_groups_and_split_alignment_pairs():
    df = pd.DataFrame({"img": ["a", "b", "c", "d", "a", "e"], "cap": ["x", "y", "x", "z", "w", "z"],
                       "cat": [1, 1, 2, 2, 3, 3]})
    g = positive_groups(df, "img", "cap")
    # rows 0,2 share caption x; rows 0,4 share image a; rows 3,5 share caption z
    assert g[0] == g[2] == g[4] and g[3] == g[5] and len({g[0], g[1], g[3]}) == 3
    assert list(positive_groups(df, "img", "cap", pair_id="cat")) == [0, 0, 1, 1, 2, 2]
    rows = [{"image": f"{i}.png", "caption": f"caption {i % 25}"} for i in range(100)]
    cfg = AlignConfig(left="image", right="caption", valid_fraction=0.3)
    tr, va = split_alignment_pairs(pd.DataFrame(rows), cfg, log=lambda m: None)
    assert not set(tr["caption"]) & set(va["caption"]) and len(tr) + len(va) == 100
    few = pd.DataFrame(rows[:30]).assign(caption=lambda d: d["caption"].str[-1])  # 10 groups: split by row
    tr, va = split_alignment_pairs(few, cfg, log=lambda m: None)
    assert set(tr["caption"]) & set(va["caption"]) and len(tr) + len(va) == 30


def test_bad_files_name_the_row_and_can_be_skipped(tmp_path):
    path = caption_table(tmp_path, 30)
    df = pd.read_csv(path)
    df.loc[4, "image"] = "imgs/missing.png"
    (tmp_path / "imgs" / "7.png").write_bytes(b"not a png")
    df.to_csv(path, index=False)
    cfg = AlignConfig(left="image", right="caption", epochs=1, encoder_opts={"image": {"image_size": 32}})
    with pytest.raises(DataError) as err:
        AlignedModel.fit(path, cfg, log=lambda m: None)
    assert err.value.column == "image" and err.value.row in (4, 7)
    cfg.on_bad_rows = "skip"
    model = AlignedModel.fit(path, cfg, log=lambda m: None)
    assert model.metrics["train_pairs"] + model.metrics["valid_pairs"] == 28


def test_finetune_updates_only_the_unlocked_tower(tmp_path):
    rows = [{"image": f"imgs/{i}.png", "caption": f"a {c} {SHAPES[c]}"}
            for i, c in enumerate(list(SHAPES) * 8)]
    caption_table(tmp_path, 24)
    df = pd.DataFrame(rows)
    df.attrs["base_dir"] = str(tmp_path)
    cfg = AlignConfig(left="image", right="caption", epochs=2, batch_size=16, finetune=["caption"],
                      encoder_opts={"image": {"image_size": 32}}, valid_fraction=0.34)
    from polymodal.encoders import build_encoder

    model = AlignedModel.fit(df, cfg, log=lambda m: None)
    text_delta = [(p - q).abs().max().item() for p, q in zip(model.model.right_tower.parameters(),
                                                             build_encoder("text").parameters())]
    image_delta = [(p - q).abs().max().item() for p, q in zip(model.model.left_tower.parameters(),
                                                              build_encoder("image", image_size=32).parameters())]
    assert max(text_delta) > 0 and max(image_delta) == 0
    assert not model.sides["right"].frozen and model.sides["left"].frozen


def test_search_only_server_from_an_alignment_run(aligned):
    from fastapi.testclient import TestClient

    from polymodal.serve.app import app_from_run
    from polymodal.serve.search import load_index_searcher

    root, run, _, test = aligned
    index = root / "served.index"
    AlignedModel.load(run).build_index(test, "image", id_column="id").save(index)
    with pytest.raises(PolymodalError, match="--index"):
        app_from_run(run)
    app = app_from_run(run, searcher=load_index_searcher(index, run))
    with TestClient(app) as c:
        assert c.get("/ready").json() == {"ready": True}
        schema = c.get("/schema").json()
        assert schema["label"] is None and schema["search"]["modalities"] == ["vector", "image", "text"]
        assert c.post("/predict", json={}).status_code in (404, 405)
        r = c.post("/search", json={"text": "a green tree", "k": 4})
        assert r.status_code == 200, r.text
        df = pd.read_csv(test).set_index("id")
        results = r.json()["results"]
        assert [df.loc[x["id"], "colour"] for x in results] == ["green"] * 4
        assert "path" not in results[0] and results[0]["name"].endswith(".png")  # no server paths leak
        png = (root / "imgs" / "102.png").read_bytes()
        r = c.post("/search", data={"k": "1"}, files={"image": ("q.png", png, "image/png")})
        assert r.status_code == 200 and r.json()["results"][0]["id"] == 102
        wav = root / "q.wav"
        write_wave(wav, 440)
        r = c.post("/search", files={"audio": ("q.wav", wav.read_bytes(), "audio/wav")})
        assert r.status_code == 422 and "not audio" in r.json()["detail"]
        r = c.post("/search", data={"k": "1"}, files={"image": ("q.png", b"garbage", "image/png")})
        assert r.status_code == 422 and "image" in r.json()["detail"]
