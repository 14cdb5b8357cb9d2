"""Damaged run folders give a clear error naming the file — never a traceback, never a silently different
prediction — and `fit --out` never overwrites a run by accident."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from polymodal.cli import app
from polymodal.errors import PolymodalError
from polymodal.runs import load_run
from polymodal.training.artifacts import write_manifest

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
    assert json.loads((out / "manifest.json").read_text())["sha256"].keys() >= {
        "config.json", "preprocess.json", "model.safetensors"}


# ---- the manifest: every model file's SHA-256 ----------------------------------------------------------------
@pytest.fixture
def sealed(run) -> Path:
    """The golden run with the manifest `save` writes (the stored golden folder predates it)."""
    write_manifest(run)
    return run


def test_reversed_class_order_in_preprocess_json_is_refused(sealed):
    prep = json.loads((sealed / "preprocess.json").read_text())
    prep["classes"] = prep["classes"][::-1]  # valid JSON, valid schema: without the manifest every label flips
    (sealed / "preprocess.json").write_text(json.dumps(prep))
    with pytest.raises(PolymodalError, match="preprocess.json is damaged .*differs from the one manifest.json"):
        load_run(sealed)


def test_a_listed_file_that_is_gone_is_named(sealed):
    (sealed / "preprocess.json").unlink()
    with pytest.raises(PolymodalError, match="preprocess.json is missing"):
        load_run(sealed)


def _mutate(rng: np.random.Generator, data: bytes, name: str) -> bytes:
    """One random damage: a flipped byte, a truncation, or (for JSON files) a changed, dropped or reordered
    value in otherwise valid JSON."""
    kind = rng.integers(0, 3 if name.endswith(".json") else 2)
    if kind == 0 and data:
        i = int(rng.integers(0, len(data)))
        return data[:i] + bytes([data[i] ^ int(rng.integers(1, 256))]) + data[i + 1:]
    if kind == 1:
        return data[:int(rng.integers(0, max(1, len(data))))]
    obj = json.loads(data)
    node, parent, key = obj, None, None
    while True:  # walk down to a random leaf (or container) and change it
        keys = list(node) if isinstance(node, dict) else list(range(len(node))) if isinstance(node, list) else []
        if not keys or rng.random() < 0.3:
            break
        parent, key = node, keys[int(rng.integers(0, len(keys)))]
        if not isinstance(node[key], (dict, list)) or rng.random() < 0.2:
            break
        node = node[key]
    if parent is None:
        return b"[]"
    choice = rng.integers(0, 3)
    if choice == 0:
        del parent[key]
    elif choice == 1:
        parent[key] = [None, 0, -1.5, 1e308, "x", True, {}, []][int(rng.integers(0, 8))]
    elif isinstance(parent[key], list):
        parent[key] = parent[key][::-1]
    else:
        parent[key] = str(parent[key]) + "x"
    return json.dumps(obj).encode()


def test_fuzzed_run_folders_give_a_clear_error_or_the_same_prediction(sealed, tmp_path):
    """1,000 random damages of a saved run's files: each either fails to load with a PolymodalError naming a
    file, or predicts exactly the undamaged run's probabilities — never a silently different answer."""
    rows = _golden_rows(tmp_path)
    expected = load_run(sealed).predict_proba(rows, as_pandas=False)
    files = ["config.json", "preprocess.json", "model.safetensors", "manifest.json", "metrics.json"]
    originals = {f: (sealed / f).read_bytes() for f in files}
    rng = np.random.default_rng(0)
    outcomes = {"refused": 0, "identical": 0}
    for i in range(1000):
        name = files[i % len(files)]
        (sealed / name).write_bytes(_mutate(rng, originals[name], name))
        try:
            got = load_run(sealed).predict_proba(rows, as_pandas=False)
        except PolymodalError as exc:
            assert "damaged" in str(exc) or "missing" in str(exc) or "not a polymodal run" in str(exc), str(exc)
            outcomes["refused"] += 1
        else:
            np.testing.assert_array_equal(got, expected, err_msg=f"mutation {i} of {name} changed the prediction")
            outcomes["identical"] += 1
        finally:
            (sealed / name).write_bytes(originals[name])
    assert outcomes["refused"] > 800, outcomes


def _golden_rows(root: Path):
    import importlib.util

    import pandas as pd

    spec = importlib.util.spec_from_file_location("mg", GOLDEN_RUN.parent / "make_golden_run.py")
    mg = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mg)
    mg.make_table(root).to_csv(root / "table.csv", index=False)
    rows = pd.read_csv(root / "table.csv").head(12)
    rows["photo"] = [str(root / v) for v in rows["photo"]]
    return rows
