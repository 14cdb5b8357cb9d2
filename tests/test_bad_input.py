"""Every user mistake gets a clear message naming file, row and column; never a traceback."""

from __future__ import annotations

import pandas as pd
import pytest
from typer.testing import CliRunner

from polymodal.cli import app

runner = CliRunner()
ARGS = ["--image-encoder", "small-cnn", "--image-size", "32", "--epochs", "1", "--batch-size", "16"]


def fit(table, tmp_path, *extra):
    return runner.invoke(app, ["fit", str(table), "--label", "label", "--out", str(tmp_path / "run"), *ARGS,
                               *extra])


def _edit(table, fn):
    df = pd.read_csv(table)
    fn(df)
    df.to_csv(table, index=False)


def assert_clear(result, *needles):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for n in needles:
        assert n in result.output, (n, result.output)


def test_missing_label_column(image_table, tmp_path):
    r = runner.invoke(app, ["fit", str(image_table), "--label", "answer", "--out", str(tmp_path / "r"), *ARGS])
    assert_clear(r, "label column 'answer' not found", str(image_table))


def test_missing_image_file(image_table, tmp_path):
    _edit(image_table, lambda df: df.__setitem__("image", df["image"].where(df.index != 7, "imgs/nope.png")))
    assert_clear(fit(image_table, tmp_path), "file not found", "row 7", "column 'image'", str(image_table))


def test_unreadable_image(image_table, tmp_path):
    (image_table.parent / "imgs" / "5.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    assert_clear(fit(image_table, tmp_path), "cannot decode image", "row 5", "column 'image'")


def test_empty_table(tmp_path):
    (tmp_path / "e.csv").write_text("image,label\n")
    assert_clear(fit(tmp_path / "e.csv", tmp_path), "no rows", "e.csv")


def test_one_class_label(image_table, tmp_path):
    _edit(image_table, lambda df: df.__setitem__("label", "red"))
    assert_clear(fit(image_table, tmp_path), "single class", "column 'label'")


def test_wrong_type_in_numeric_column(image_table, tmp_path):
    def bad(df):
        df["size"] = df["size"].astype(object)
        df.loc[11, "size"] = "twelve"
    _edit(image_table, bad)
    assert_clear(fit(image_table, tmp_path), "'twelve' is not a number", "row 11", "column 'size'")


def test_missing_label_value(image_table, tmp_path):
    _edit(image_table, lambda df: df.__setitem__("label", df["label"].where(df.index != 3, None)))
    assert_clear(fit(image_table, tmp_path), "label is missing", "row 3", "column 'label'")


def test_unknown_run_folder(tmp_path, image_table):
    r = runner.invoke(app, ["predict", str(tmp_path / "nope"), str(image_table), "--out", str(tmp_path / "p.csv")])
    assert_clear(r, "not a polymodal run folder")


@pytest.mark.parametrize("mode", ["missing", "corrupt"])
def test_skip_mode_drops_and_reports(image_table, tmp_path, mode):
    if mode == "missing":
        _edit(image_table, lambda df: df.__setitem__("image", df["image"].where(df.index != 7, "imgs/nope.png")))
    else:
        (image_table.parent / "imgs" / "7.png").write_bytes(b"not an image")
    r = fit(image_table, tmp_path, "--on-bad-rows", "skip")
    assert r.exit_code == 0, r.output
    bad = pd.read_csv(tmp_path / "run" / "bad_rows.csv")
    assert bad[["row", "column"]].values.tolist() == [[7, "image"]]


def test_bad_option_values(image_table, tmp_path):
    assert_clear(fit(image_table, tmp_path, "--on-bad-rows", "ignore"), "--on-bad-rows")
    assert_clear(fit(image_table, tmp_path, "--column-types", "image"), "name=value")
