"""Feature cache: a second run reuses every feature; content keys; atomic shards."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn

from polymodal.data.preprocess import Preprocessor
from polymodal.data.readers import read_table
from polymodal.data.schema import infer_schema
from polymodal.encoders.cache import FeatureCache, precompute_features


class CountingImageEncoder(nn.Module):
    """Contract-following encoder that counts how many images it has seen."""

    out_dim = 3
    cache_id = "image:counting:v1"
    pretrained = True

    def __init__(self) -> None:
        super().__init__()
        self.seen = 0
        self.lin = nn.Linear(3, 3)

    def preprocess_config(self) -> dict:
        return {"image_size": 8, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += len(x)
        return x.mean(dim=(2, 3))


def _setup(table):
    df = read_table(table)
    schema = infer_schema(df, "label", column_types="shop=id,size=id")
    enc = CountingImageEncoder()
    prep = Preprocessor.fit(df, schema, {"image": enc.preprocess_config()})
    return df, prep, enc


def test_second_run_does_not_reencode(image_table, tmp_path):
    df, prep, enc = _setup(image_table)
    cache = tmp_path / "c"
    f1, problems, s1 = precompute_features(df, prep, {"image": enc}, ["image"], cache)
    assert not problems and s1 == {"computed": 60, "reused": 0} and enc.seen == 60
    f2, _, s2 = precompute_features(df, prep, {"image": CountingImageEncoder()}, ["image"], cache)
    assert s2 == {"computed": 0, "reused": 60}
    np.testing.assert_allclose(f1["image"][0], f2["image"][0])
    # red images have a large mean red channel, blue ones a large blue channel: features are the right rows
    red = (df["label"] == "red").to_numpy()
    assert (f1["image"][0][red, 0] > f1["image"][0][red, 2]).all()


def test_keys_follow_content_not_names(image_table, tmp_path):
    df, prep, enc = _setup(image_table)
    cache = tmp_path / "c"
    precompute_features(df.iloc[:10], prep, {"image": enc}, ["image"], cache)
    # A copy of an image under a new name hits the cache; an edited image misses it.
    src = image_table.parent / "imgs" / "0.png"
    (image_table.parent / "copy.png").write_bytes(src.read_bytes())
    from conftest import write_image

    write_image(image_table.parent / "imgs" / "1.png", "green", seed=99)
    df2 = pd.DataFrame({"image": ["copy.png", "imgs/1.png"], "label": ["red", "blue"]})
    df2.attrs.update(base_dir=str(image_table.parent))
    _, _, stats = precompute_features(df2, prep, {"image": enc}, ["image"], cache)
    assert stats == {"computed": 1, "reused": 1}


def test_missing_values_are_absent_not_errors(image_table, tmp_path):
    df, prep, enc = _setup(image_table)
    df.loc[3, "image"] = np.nan
    feats, problems, _ = precompute_features(df, prep, {"image": enc}, ["image"], tmp_path / "c")
    present = feats["image"][1]
    assert not problems and not present[3] and present.sum() == 59


def test_cache_ignores_half_written_shards(tmp_path):
    cache = FeatureCache(tmp_path, "ns")
    cache.put(["a", "b"], np.ones((2, 4)))
    # a shard without its keys file (killed mid-write) is invisible to readers
    np.save(cache.dir / "000007.npy", np.zeros((1, 4)))
    fresh = FeatureCache(tmp_path, "ns")
    assert len(fresh) == 2 and set(fresh.get(["a", "b", "c"])) == {"a", "b"}
    fresh.put(["c"], np.full((1, 4), 2.0))
    assert FeatureCache(tmp_path, "ns").get(["c"])["c"].tolist() == [2.0] * 4


def test_large_feature_arrays_are_memory_mapped(tmp_path, monkeypatch, image_table):
    """Above POLYMODAL_MEMMAP_BYTES the row-aligned features live in a disk-backed array, with equal values."""
    from polymodal.encoders import build_encoder

    df = read_table(image_table)
    enc = build_encoder("image", "small-cnn", image_size=16)
    prep = Preprocessor.fit(df, infer_schema(df, "label"), {"image": enc.preprocess_config()})
    ram, _, _ = precompute_features(df, prep, {"image": enc}, ["image"], tmp_path / "c")
    monkeypatch.setenv("POLYMODAL_MEMMAP_BYTES", "100")
    mapped, _, stats = precompute_features(df, prep, {"image": enc}, ["image"], tmp_path / "c")
    assert stats["reused"] == 60 and isinstance(mapped["image"][0], np.memmap)
    assert not isinstance(ram["image"][0], np.memmap)
    np.testing.assert_array_equal(mapped["image"][0], ram["image"][0])
    assert not list((tmp_path / "c" / "rows").iterdir())  # the backing file is already unlinked


def test_undecodable_input_is_recorded_and_not_decoded_again(image_table, tmp_path):
    df, prep, enc = _setup(image_table)
    (image_table.parent / "bad.png").write_bytes(b"not an image")
    df.loc[5, "image"] = "bad.png"
    cache = tmp_path / "c"
    _, p1, s1 = precompute_features(df, prep, {"image": enc}, ["image"], cache)
    assert [(p.row, p.column) for p in p1] == [(5, "image")] and s1["computed"] == 59
    enc2 = CountingImageEncoder()
    feats, p2, s2 = precompute_features(df, prep, {"image": enc2}, ["image"], cache)
    # the same problem, from the cache's record (what other ranks read), without decoding anything
    assert [(p.row, p.column, p.message) for p in p2] == [(p.row, p.column, p.message) for p in p1]
    assert enc2.seen == 0 and s2 == {"computed": 0, "reused": 59} and not feats["image"][1][5]
