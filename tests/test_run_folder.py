"""Damaged run folders give a clear error naming the file — never a traceback, never a silently different
prediction — and `fit --out` never overwrites a run by accident."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from polymodal.cli import app
from polymodal.errors import PolymodalError
from polymodal.runs import load_run

GOLDEN_RUN = Path(__file__).resolve().parent / "data" / "golden" / "run"


@pytest.fixture
def run(tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(GOLDEN_RUN, out)
    return out


def test_changed_weight_bytes_are_refused(run):
    weights = run / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF  # inside the tensor data: safetensors itself would load it
    weights.write_bytes(bytes(data))
    with pytest.raises(PolymodalError, match=r"model.safetensors is damaged .*does not match the model id"):
        load_run(run)


@pytest.mark.parametrize("content, why", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "a JSON list where an object is expected"),
    ("", "not valid JSON"),
    ('{"model_id": null}', "no 'fit' settings object"),
])
def test_damaged_config_json_names_the_file(run, content, why):
    (run / "config.json").write_text(content)
    with pytest.raises(PolymodalError, match=f"config.json.*{why}"):
        load_run(run)


def test_damaged_preprocess_json_and_truncated_weights_name_the_file(run):
    good = (run / "preprocess.json").read_text()
    (run / "preprocess.json").write_text(json.dumps({"schema": {}}))
    with pytest.raises(PolymodalError, match="preprocess.json is damaged"):
        load_run(run)
    (run / "preprocess.json").write_text(good)
    cfg = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**cfg, "model_id": None}))  # a folder without the id check
    weights = run / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(PolymodalError, match="model.safetensors is damaged"):
        load_run(run)


def test_fit_out_refuses_a_non_empty_folder_unless_overwrite(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("mg", GOLDEN_RUN.parent / "make_golden_run.py")
    mg = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mg)
    mg.make_table(tmp_path).to_csv(tmp_path / "table.csv", index=False)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("an earlier result")
    args = ["fit", str(tmp_path / "table.csv"), "--label", "label", "--out", str(out), "--epochs", "1",
            "--image-encoder", "small-cnn", "--image-size", "32", "--batch-size", "16"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2 and "already exists and is not empty" in r.output
    assert (out / "keep.txt").read_text() == "an earlier result"
    r = CliRunner().invoke(app, args + ["--overwrite"])
    assert r.exit_code == 0, r.output
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").exists()
    assert not list(tmp_path.glob(".out.*"))  # the temporary and the moved-aside folders are gone
    assert load_run(out).predict(str(tmp_path / "table.csv")).notna().all()
