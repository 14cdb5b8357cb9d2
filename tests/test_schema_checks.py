"""Schema and number problems that used to pass silently (issue 16): repeated or mis-delimited headers,
mixed number/text columns, trained columns absent at prediction, numbers out of range, non-finite outputs."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from polymodal.cli import app
from polymodal.data.dataset import check_rows
from polymodal.data.readers import read_table
from polymodal.data.schema import infer_schema
from polymodal.data.stats import MAX_ABS, TableStats
from polymodal.errors import DataError
from polymodal.runs import load_run
from polymodal.training.pipeline import join_history

GOLDEN = Path(__file__).resolve().parent / "data" / "golden"
runner = CliRunner()


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    """(a copy of the golden run, its table as a CSV path, the table)."""
    root = tmp_path_factory.mktemp("golden")
    spec = importlib.util.spec_from_file_location("mg", GOLDEN / "make_golden_run.py")
    mg = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mg)
    df = mg.make_table(root)
    df.to_csv(root / "table.csv", index=False)
    shutil.copytree(GOLDEN / "run", root / "run")
    return root / "run", root / "table.csv", df


def test_a_repeated_header_is_an_error_not_a_renamed_input(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,label,label\n1,x,y\n2,z,w\n")
    with pytest.raises(DataError, match=r"duplicate column names \['label'\]") as e:
        read_table(path)
    assert str(path) in str(e.value)
    r = runner.invoke(app, ["validate", str(path), "--label", "label"])
    assert r.exit_code == 2 and "duplicate column names" in r.output and "Traceback" not in r.output


def test_a_semicolon_separated_csv_gets_a_delimiter_hint(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a;b;label\n1;2;x\n3;4;y\n")
    df = read_table(path)  # a one-column table named "a;b;label" is legal on its own
    with pytest.raises(DataError, match="label column 'label' not found.*separated by ';'"):
        infer_schema(df, "label")
    r = runner.invoke(app, ["fit", str(path), "--label", "label", "--out", str(tmp_path / "run")])
    assert r.exit_code == 2 and "separated by ';'" in r.output and "Traceback" not in r.output


def test_numbers_with_a_few_words_are_reported_with_their_rows(tmp_path):
    values = [f"{i * 1.37:.2f}" for i in range(40)]
    for r in (3, 17, 29):
        values[r] = ["n/a", "about 5", "?"][(r - 3) % 3]
    df = pd.DataFrame({"price": values, "other": np.arange(40) % 3, "label": ["a", "b"] * 20})
    with pytest.raises(DataError, match=r"numbers except in 3 row\(s\) \(row 3: 'n/a'.*--column-types price="):
        infer_schema(df, "label")
    schema = infer_schema(df, "label", column_types={"price": "numeric"})  # the user decides
    assert schema.columns["price"] == "numeric"


def test_a_trained_column_absent_at_prediction_is_an_error_unless_allowed(golden, tmp_path):
    run, table, df = golden
    p = load_run(run)
    rows = df.drop(columns=["x2"]).head(6)
    rows.attrs["base_dir"] = str(table.parent)
    with pytest.raises(DataError, match=r"trained on column\(s\) 'x2'.*--allow-missing x2"):
        p.predict(rows)
    got = p.predict_proba(rows, allow_missing=["x2"])
    assert got.shape == (6, 3) and np.isfinite(got.to_numpy()).all()
    with pytest.raises(DataError, match="does not take"):
        p.predict(rows, allow_missing=["nope"])
    rows.drop(columns=["label"]).to_csv(tmp_path / "no_x2.csv", index=False)
    shutil.copytree(table.parent / "img", tmp_path / "img")
    out = tmp_path / "pred.csv"
    r = runner.invoke(app, ["predict", str(run), str(tmp_path / "no_x2.csv"), "--out", str(out)])
    assert r.exit_code == 2 and "--allow-missing x2" in r.output and not out.exists()
    r = runner.invoke(app, ["predict", str(run), str(tmp_path / "no_x2.csv"), "--out", str(out),
                            "--allow-missing", "x2"])
    assert r.exit_code == 0, r.output
    assert len(pd.read_csv(out)) == 6


def test_numbers_out_of_range_are_bad_values_at_fit_and_predict(golden):
    run, table, df = golden
    p = load_run(run)
    rows = df.head(6).copy()
    rows.attrs["base_dir"] = str(table.parent)
    rows.loc[4, "x1"] = 1e308
    with pytest.raises(DataError, match=r"out of range") as e:
        p.predict(rows)
    assert e.value.row == 4 and e.value.column == "x1"
    rows.loc[4, "x1"] = 1e39  # within MAX_ABS, but standardised it overflows the float32 network
    with pytest.raises(DataError, match="out of range for this model") as e:
        p.predict_proba(rows)
    assert e.value.column == "x1"
    rows.loc[4, "x1"] = 1e37  # fits float32, but PyTorch's sums overflow: its outputs are refused
    with pytest.raises(DataError, match="non-finite outputs") as e:
        p.predict_proba(rows, engine="torch")
    assert e.value.row == 4
    try:  # onnxruntime's fused kernels may keep it finite; either way never a NaN probability
        assert np.isfinite(p.predict_proba(rows, as_pandas=False)).all()
    except DataError as exc:
        assert "non-finite outputs" in str(exc) and exc.row == 4
    # at fit time the statistics skip such values and the row checks name them
    train = df.copy()
    train.loc[2, "x1"] = 1e308
    stats = TableStats(infer_schema(train, "label")).update(train)
    mean, std = stats.scalers()
    assert np.isfinite(mean["x1"]) and np.isfinite(std["x1"]) and abs(mean["x1"]) < 10
    problems = check_rows(train.assign(photo=[str(table.parent / v) for v in train["photo"]]), p.prep)
    assert [(q.row, q.column) for q in problems] == [(2, "x1")] and f"{MAX_ABS:g}" in problems[0].message


def test_non_finite_outputs_are_an_error_never_a_prediction(golden):
    run, table, df = golden
    p = load_run(run)
    rows = df.head(4).copy()
    rows.attrs["base_dir"] = str(table.parent)
    with torch.no_grad():
        next(p.model.head.parameters()).fill_(float("nan"))
    with pytest.raises(DataError, match=r"non-finite outputs for 4 row\(s\)"):
        p.predict(rows)


def test_evaluate_does_not_offer_an_option_it_lacks(golden):
    run, table, df = golden
    rows = df.head(6).copy()
    rows.attrs["base_dir"] = str(table.parent)
    rows.loc[[1, 2], "label"] = "c9"
    with pytest.raises(DataError, match="was not seen in training") as e:
        load_run(run).evaluate(rows)
    assert "--on-bad-rows" not in str(e.value) and "polymodal validate" in str(e.value)


def test_history_keeps_the_epochs_before_a_resume():
    before = pd.DataFrame({"epoch": [0, 1, 2], "val_accuracy": [0.1, 0.2, 0.3]})  # killed during epoch 3
    after = pd.DataFrame({"epoch": [2, 3, 4], "val_accuracy": [0.31, 0.4, 0.5]})
    joined = join_history(before, after)
    assert joined["epoch"].tolist() == [0, 1, 2, 3, 4] and joined["val_accuracy"].tolist()[2] == 0.31
    assert join_history(pd.DataFrame(), after).equals(after)
