"""`polymodal compare` on a small table: every candidate, seeds, robustness columns, outputs."""

from __future__ import annotations

import pandas as pd
from typer.testing import CliRunner

from polymodal.cli import app


def test_compare_cli(image_table, tmp_path):
    out = tmp_path / "cmp"
    r = CliRunner().invoke(app, ["compare", str(image_table), "--label", "label", "--fusions", "concat,late,lmf",
                                 "--seeds", "0,1", "--robustness", "--image-encoder", "small-cnn",
                                 "--image-size", "32", "--epochs", "3", "--batch-size", "16", "--out", str(out)])
    assert r.exit_code == 0, r.output
    res = pd.read_csv(out / "compare.csv")
    models = set(res["model"])
    assert {"only image", "only tabular", "fusion: concat", "fusion: late", "fusion: lmf",
            "ensemble of unimodal models"} <= models
    assert (res.groupby("model")["seed"].nunique() == 2).all()
    fused = res[res["model"].str.startswith("fusion")]
    for col in ("image removed", "image noised", "tabular removed", "tabular noised"):
        assert fused[col].between(0, 1).all()
    # the label is the image colour: removing the image must hurt a fused model that learned it
    best = fused.sort_values("accuracy").iloc[-1]
    assert best["image removed"] < best["accuracy"] or best["accuracy"] < 0.6
    assert (out / "compare.png").exists() and "± " in (out / "compare.md").read_text()


def test_unknown_fusion_is_a_clear_error(image_table, tmp_path):
    r = CliRunner().invoke(app, ["compare", str(image_table), "--label", "label", "--fusions", "concat,magic"])
    assert r.exit_code == 2 and "unknown fusions" in r.output
