from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from polymodal.data.readers import read_table
from polymodal.data.schema import infer_problem_type, infer_schema
from polymodal.errors import DataError


def test_infers_every_modality(image_table, audio_table, tmp_path):
    df = read_table(image_table)
    audio = read_table(audio_table)
    df["clip"] = [str(audio_table.parent / p) for p in list(audio["clip"]) * 2][: len(df)]
    df["review"] = [f"this is a fairly long review number {i} with words" for i in range(len(df))]
    df["video"] = [f"v{i}.mp4" for i in range(len(df))]
    df["empty"] = np.nan
    df["const"] = 3
    df.attrs.update(base_dir=str(image_table.parent), source=str(image_table))
    s = infer_schema(df, "label")
    assert s.columns == {"id": "id", "image": "image", "size": "numeric", "shop": "categorical", "clip": "audio",
                         "review": "text", "video": "video", "empty": "id", "const": "id"}
    assert s.problem_type == "binary"


def test_relative_paths_resolve_from_table_folder(image_table, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path.parent)  # cwd elsewhere: paths must resolve against the table's folder
    s = infer_schema(read_table(image_table), "label")
    assert s.columns["image"] == "image"
    assert "100% exist" in s.reasons["image"]


def test_overrides_win(image_table):
    s = infer_schema(read_table(image_table), "label", column_types="size=categorical,shop=text")
    assert s.columns["size"] == "categorical" and s.columns["shop"] == "text"


def test_bad_override_and_missing_label(image_table):
    df = read_table(image_table)
    with pytest.raises(DataError, match="unknown modality 'picture'"):
        infer_schema(df, "label", column_types="image=picture")
    with pytest.raises(DataError, match="names column 'nope'"):
        infer_schema(df, "label", column_types="nope=image")
    with pytest.raises(DataError, match="label column 'answer' not found") as e:
        infer_schema(df, "answer")
    assert str(image_table) in str(e.value)


@pytest.mark.parametrize("values, expected", [
    (["a", "b"] * 10, "binary"),
    (["a", "b", "c"] * 10, "multiclass"),
    ([0.5, 1.25, 3.0, 2.2] * 5, "regression"),
    (list(range(50)), "regression"),
    ([1, 2, 3] * 5, "multiclass"),
    (["a|b", "b", "a|c", "c|b"] * 5, "multilabel"),
    ([["a", "b"], ["c"]] * 5, "multilabel"),
])
def test_problem_type(values, expected):
    assert infer_problem_type(pd.Series(values)) == expected


def test_single_class_label_is_an_error():
    with pytest.raises(DataError, match="single class"):
        infer_problem_type(pd.Series(["yes"] * 10), column="answer")


def test_text_vs_categorical():
    df = pd.DataFrame({"cat": ["red", "blue", "green"] * 20,
                       "txt": [f"a sentence that is long enough number {i}" for i in range(60)],
                       "y": [0, 1] * 30})
    s = infer_schema(df, "y")
    assert s.columns == {"cat": "categorical", "txt": "text"}
