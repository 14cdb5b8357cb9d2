"""`--cached-views`: augmented views of cached images, so frozen / prefix-cached image encoders see augmentation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from polymodal.cli import app
from polymodal.data.dataset import TableDataset
from polymodal.data.preprocess import Preprocessor
from polymodal.data.readers import read_table
from polymodal.data.schema import infer_schema
from polymodal.encoders.cache import precompute_features
from polymodal.errors import PolymodalError
from polymodal.runs import load_run
from polymodal.training.config import FitConfig
from tests.conftest import color_table
from tests.test_cache import CountingImageEncoder


def _setup(table):
    df = read_table(table)
    schema = infer_schema(df, "label", column_types="shop=id,size=id")
    enc = CountingImageEncoder()
    return df, Preprocessor.fit(df, schema, {"image": enc.preprocess_config()}), enc


def test_a_view_is_cached_deterministic_and_differs_from_the_plain_image(image_table, tmp_path):
    df, prep, enc = _setup(image_table)
    cache = tmp_path / "c"
    plain, _, _ = precompute_features(df, prep, {"image": enc}, ["image"], cache)
    v1, problems, s1 = precompute_features(df, prep, {"image": enc}, ["image"], cache, view=1)
    assert not problems and s1 == {"computed": 60, "reused": 0}  # its own namespace: not the plain features
    again, _, s2 = precompute_features(df, prep, {"image": CountingImageEncoder()}, ["image"], cache, view=1)
    assert s2 == {"computed": 0, "reused": 60}
    v2, _, _ = precompute_features(df, prep, {"image": enc}, ["image"], cache, view=2)
    np.testing.assert_array_equal(v1["image"][0], again["image"][0])
    for other in (plain, v2):  # brightness/contrast/crop change the colour means of (almost) every image
        assert (np.abs(v1["image"][0] - other["image"][0]).max(axis=1) > 1e-4).mean() > 0.9
    # still the same images: a red image's view is red
    red = (df["label"] == "red").to_numpy()
    assert (v1["image"][0][red, 0] > v1["image"][0][red, 2]).all()


def _dataset(train: bool, n: int = 12, views: int = 2) -> TableDataset:
    df = pd.DataFrame({"image": [f"{i}.png" for i in range(n)], "label": ["a", "b"] * (n // 2)})
    schema = infer_schema(df, "label", column_types="image=image")
    prep = Preprocessor.fit(df, schema, {"image": CountingImageEncoder().preprocess_config()})
    plain = np.zeros((n, 2), np.float32)
    stack = np.stack([np.full((n, 2), v, np.float32) for v in range(1, views + 1)])  # view v holds v
    return TableDataset(df, prep, {"image": (plain, np.ones(n, bool), stack)}, train=train)


@pytest.mark.parametrize("batched", [True, False])
def test_training_rows_draw_plain_or_view_per_epoch_deterministically(batched):
    ds, n = _dataset(train=True), 12

    def epoch(e):
        idx = [e * n + i for i in range(n)]
        if batched:
            return ds.__getitems__(idx)["features"]["image"][:, 0].numpy()
        return np.array([ds[j]["features"]["image"][0] for j in idx])

    drawn = np.stack([epoch(e) for e in range(20)])
    assert set(np.unique(drawn)) == {0.0, 1.0, 2.0}  # the plain features and both views are all used
    assert (drawn != drawn[0]).any(axis=0).all()  # each row changes view across epochs
    np.testing.assert_array_equal(epoch(3), epoch(3))  # a function of (seed, epoch, rows): resumable
    valid = _dataset(train=False)
    assert not valid.views and (valid.__getitems__(list(range(n)))["features"]["image"] == 0).all()


def test_cached_views_must_be_a_small_count():
    for bad in (-1, 33, 1.5, True):
        with pytest.raises(PolymodalError, match="--cached-views"):
            FitConfig(label="y", cached_views=bad)


def test_fit_with_cached_views_trains_reloads_and_predicts_identically(tmp_path):
    table = color_table(tmp_path, n=40)
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["fit", str(table), "--label", "label", "--out", str(out), "--image-size", "32",
                                 "--cached-views", "2", "--epochs", "2", "--batch-size", "8", "--seed", "0"])
    assert r.exit_code == 0, r.output
    assert "augmented views: 2 per image" in r.output
    p = load_run(out)
    assert p.config.cached_views == 2
    df = read_table(table)
    proba = p.predict_proba(df, as_pandas=False, engine="torch")
    np.testing.assert_array_equal(proba, load_run(out).predict_proba(df, as_pandas=False, engine="torch"))
    assert np.isfinite(proba).all()
