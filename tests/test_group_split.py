"""Grouped validation: rows sharing a group (an image's questions, a patient's visits) never sit on both sides."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from polymodal.data.split import NO_GROUPS, row_groups, split_rows
from polymodal.errors import DataError
from polymodal.training.config import FitConfig
from polymodal.training.fit import TableRecipe


@settings(max_examples=60, deadline=None)
@given(groups=st.lists(st.integers(0, 12), min_size=8, max_size=80), seed=st.integers(0, 10_000),
       fraction=st.floats(0.1, 0.5), missing=st.lists(st.booleans(), min_size=80, max_size=80))
def test_grouped_split_never_cuts_a_group(groups, seed, fraction, missing):
    n = len(groups)
    values = pd.Series([None if missing[i] else f"g{g}" for i, g in enumerate(groups)], dtype=object)
    df = pd.DataFrame({"g": values, "y": np.arange(n) % 2, "i": np.arange(n)})
    keys, _ = row_groups(df, {"g": "categorical"}, "g")
    if len(pd.unique(keys)) < 4:
        with pytest.raises(DataError):
            split_rows(df, "y", "binary", fraction, seed, keys)
        return
    tr, va = split_rows(df, "y", "binary", fraction, seed, keys)
    assert sorted(tr["i"].tolist() + va["i"].tolist()) == list(range(n))  # every row once
    assert len(tr) and len(va)
    shared = set(tr["g"].dropna()) & set(va["g"].dropna())
    assert not shared  # no group value on both sides
    # rows with a missing group value are groups of their own (not one big "nan" group)
    assert list(keys[values.isna().to_numpy()]) == [f"\x00row{i}" for i in np.flatnonzero(values.isna())]


def _vqa_table(n_images: int = 12, per_image: int = 5) -> pd.DataFrame:
    rows = [{"image": f"img/{i}.png", "question": f"q{j} about {i}?", "patient": i % 7,
             "answer": ["yes", "no"][(i + j) % 2]} for i in range(n_images) for j in range(per_image)]
    return pd.DataFrame(rows)


COLUMNS = {"image": "image", "question": "text", "patient": "numeric"}


def test_repeated_images_group_by_default_and_say_so():
    df = _vqa_table()
    keys, note = row_groups(df, COLUMNS, None)
    assert note.startswith("60 rows share 12 distinct values of 'image'") and "--group-column none" in note
    tr, va = split_rows(df, "answer", "binary", 0.25, 0, keys)
    assert not set(tr["image"]) & set(va["image"])
    assert len(va) % 5 == 0  # whole images (5 questions each) go to validation
    # "none" splits by row: with this many rows an image's questions land on both sides
    keys, note = row_groups(df, COLUMNS, NO_GROUPS)
    assert keys is None and "by row" in note
    tr, va = split_rows(df, "answer", "binary", 0.25, 0, keys)
    assert set(tr["image"]) & set(va["image"])


def test_unique_images_split_by_row_silently():
    df = _vqa_table(per_image=1)
    assert row_groups(df, COLUMNS, None) == (None, "")


def test_explicit_group_column_and_unknown_column():
    df = _vqa_table()
    keys, note = row_groups(df, COLUMNS, "patient")
    assert len(set(keys)) == 7 and "'patient'" in note
    tr, va = split_rows(df, "answer", "binary", 0.3, 1, keys)
    assert not set(tr["patient"]) & set(va["patient"])
    with pytest.raises(DataError, match="group column 'subject' not found"):
        row_groups(df, COLUMNS, "subject")


def test_fit_recipe_groups_and_drops_an_id_like_group_column():
    df = _vqa_table().drop(columns="image")
    logs: list[str] = []
    config = FitConfig(label="answer", group_column="patient", column_types={"question": "text"})
    recipe = TableRecipe()
    schema = recipe.schema(df, config, logs.append)
    assert schema.columns["patient"] == "id"  # a group identifier is not a feature
    assert any("groups: validation keeps the rows of each 'patient' value together (7 groups)" in m for m in logs)
    tr, va = recipe.split(df, schema, config)
    assert not set(tr["patient"]) & set(va["patient"])


def test_cli_group_column_reaches_the_run(image_table, tmp_path):
    """`polymodal fit --group-column patient`: logged, stored in config.json, and the column is no feature."""
    import json

    from typer.testing import CliRunner

    from polymodal.cli import app

    df = pd.read_csv(image_table)
    df["patient"] = df["id"] // 5  # 12 patients with 5 rows each
    df.drop(columns="id").to_csv(image_table, index=False)
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["fit", str(image_table), "--label", "label", "--out", str(out), "--group-column",
                                 "patient", "--image-encoder", "small-cnn", "--image-size", "32", "--epochs", "1",
                                 "--batch-size", "16"])
    assert r.exit_code == 0, r.output
    assert "validation keeps the rows of each 'patient' value together (12 groups)" in r.output
    assert json.loads((out / "config.json").read_text())["fit"]["group_column"] == "patient"
    assert json.loads((out / "preprocess.json").read_text())["schema"]["columns"]["patient"] == "id"


def test_row_split_keeps_rows_whose_stratifying_label_is_missing():
    """A multi-task table's first label can be missing on some rows: they split like any other stratum (this
    raised sklearn's bare 'Input contains NaN' before)."""
    n = 60
    y = pd.Series(["p", "q", None] * (n // 3), dtype=object)
    df = pd.DataFrame({"y": y, "i": np.arange(n)})
    tr, va = split_rows(df, "y", "multiclass", 0.25, 0)
    assert sorted(tr["i"].tolist() + va["i"].tolist()) == list(range(n))
    assert va["y"].isna().sum() == 5 and set(va["y"].dropna()) == {"p", "q"}  # stratified, missing included
