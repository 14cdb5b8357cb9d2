"""`polymodal validate` lists every problem without training."""

from __future__ import annotations

import pandas as pd
from typer.testing import CliRunner

from polymodal.cli import app
from polymodal.data.readers import read_table
from polymodal.data.validate import validate_tables

runner = CliRunner()


def test_clean_table_passes(image_table):
    r = runner.invoke(app, ["validate", str(image_table), "--label", "label"])
    assert r.exit_code == 0, r.output
    assert "no problems found" in r.output and "image=image" in r.output


def test_reports_every_problem(image_table, tmp_path):
    df = pd.read_csv(image_table)
    df.loc[2, "image"] = "imgs/missing.png"
    df.loc[4, "label"] = None
    df["size"] = df["size"].astype(object)
    df.loc[6, "size"] = "n/a?"
    df.to_csv(image_table, index=False)
    (image_table.parent / "imgs" / "8.png").write_bytes(b"junk")
    test = df.iloc[10:14].copy()
    test.to_csv(tmp_path / "test.csv", index=False)
    r = runner.invoke(app, ["validate", str(image_table), "--label", "label", "--test", str(tmp_path / "test.csv"),
                            "--out", str(tmp_path / "p.csv")])
    assert r.exit_code == 1
    p = pd.read_csv(tmp_path / "p.csv")
    found = {(s, str(row), c) for s, row, c in p[["split", "row", "column"]].itertuples(index=False)}
    assert {("train", "2", "image"), ("train", "4", "label"), ("train", "6", "size"), ("train", "8", "image")} <= found
    assert any("leakage" in m for m in p["problem"])


def test_conflicting_duplicates(tmp_path):
    df = pd.DataFrame({"a": [1.5, 1.5, 2.5, 3.5] * 5, "b": ["x", "x", "y", "z"] * 5,
                       "y": ["p", "q", "p", "q"] * 5})
    df.to_csv(tmp_path / "t.csv", index=False)
    problems, _ = validate_tables({"train": read_table(tmp_path / "t.csv")}, "y")
    assert problems["problem"].str.contains("identical inputs with different labels").any()
