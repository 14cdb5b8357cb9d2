"""Rows that share an image file are encoded once at inference (issue 20): the Collator stacks the distinct
images with a row -> image index, the model (and its ONNX graph) gathers the features back per row, and the
answers stay the stored ones. Training batches keep one image per row."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from polymodal import predictor as predictor_module
from polymodal.compress import engine as E
from polymodal.compress.onnx_export import FlatInput, flat_inputs, flatten, table_batch
from polymodal.data.dataset import Collator, TableDataset
from polymodal.runs import load_run
from tests.test_golden_run import GOLDEN, _rows

ORDER = [0, 1, 0, 2, 1, 0, 3, 3, 2, 0, 1, 4, 0]  # 13 rows, 5 distinct images, repeats out of order


@pytest.fixture
def golden(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(GOLDEN / "run", run)
    rows = _rows(tmp_path)
    return load_run(run), rows, np.load(GOLDEN / "run-predict_proba.npz")["probs"]


def _image_key(p) -> str:
    return next(k for k, s in p.prep.inputs.items() if s.modality == "image")


def test_collator_stacks_shared_arrays_once_with_an_index():
    a, b, c = (np.full((3, 2, 2), v, np.float32) for v in (1, 2, 3))
    items = [{"row": i, "inputs": {"img": x}, "features": {}, "present": {"img": True}}
             for i, x in enumerate([a, b, a, c, b, b])]
    prep = type("P", (), {"inputs": {"img": type("S", (), {"modality": "image", "config": {}})()}})()
    batch = Collator(prep)(items)
    assert batch["inputs"]["img"].shape[0] == 3
    assert batch["index"]["img"].tolist() == [0, 1, 0, 2, 1, 1]
    # rows read their own image back through the index
    assert batch["inputs"]["img"][batch["index"]["img"]][:, 0, 0, 0].tolist() == [1, 2, 1, 3, 2, 2]
    # equal values in different arrays are not merged (identity, not content: no hashing of pixels)
    alone = Collator(prep)([{**items[0], "inputs": {"img": a.copy()}}, items[0]])
    assert "index" not in alone


@pytest.mark.parametrize("engine", ["torch", "onnx"])
@pytest.mark.parametrize("decode_rows", [64, 0], ids=["decoded-in-check", "loaded-per-batch"])
def test_repeated_images_encode_once_and_answer_as_stored(golden, monkeypatch, engine, decode_rows):
    p, rows, expected = golden
    monkeypatch.setattr(predictor_module, "DECODE_ROWS", decode_rows)
    table = rows.iloc[ORDER].reset_index(drop=True)
    key = _image_key(p)
    p.predict(rows.head(1), engine=engine)  # the ONNX export, outside what is recorded
    seen: list[int] = []
    if engine == "torch":
        handle = p.model.encoders[key].register_forward_pre_hook(lambda _m, args: seen.append(len(args[0])))
    else:
        real = E.to_numpy_feeds

        def recording(spec, batch):
            feeds = real(spec, batch)
            seen.append(len(feeds[key]))
            return feeds

        monkeypatch.setattr(E, "to_numpy_feeds", recording)
    got = p.predict_proba(table, as_pandas=False, engine=engine)
    if engine == "torch":
        handle.remove()
    np.testing.assert_allclose(got, expected[ORDER], atol=1e-6, rtol=0)
    assert seen == [5]  # one batch, five distinct images encoded, thirteen rows answered
    assert list(p.predict(table, engine=engine)) == [p.task.classes[i] for i in got.argmax(1)]


def test_training_batches_keep_one_image_per_row(golden):
    p, rows, _ = golden
    table = rows.iloc[ORDER].reset_index(drop=True)
    train = TableDataset(table, p.prep, train=True, with_target=True, augment=False)
    batch = Collator(p.prep)(train.__getitems__(list(range(len(table)))))
    assert "index" not in batch and len(batch["inputs"][_image_key(p)]) == len(table)
    infer = TableDataset(table, p.prep, train=False, with_target=False)
    batch = Collator(p.prep)(infer.__getitems__(list(range(len(table)))))
    # distinct images in order of first use: ORDER's first uses are 0, 1, 2, 3, 4, so the index is ORDER
    assert len(batch["inputs"][_image_key(p)]) == 5 and batch["index"][_image_key(p)].tolist() == ORDER


def test_flatten_feeds_graphs_with_and_without_the_index_input(golden):
    p, rows, _ = golden
    key = _image_key(p)
    spec = flat_inputs(p.prep, list(p.model.encoders.keys()))
    ds = TableDataset(rows.iloc[ORDER].reset_index(drop=True), p.prep, train=False, with_target=False)
    batch = Collator(p.prep)(ds.__getitems__(list(range(len(ORDER)))))
    feeds = dict(zip([s.name for s in spec], flatten(spec, batch), strict=True))
    assert len(feeds[key]) == 5 and feeds[f"{key}__index"].tolist() == batch["index"][key].tolist()
    # a graph exported before index inputs existed: its images come one per row
    old: list[FlatInput] = [s for s in spec if s.part != "index"]
    feeds = dict(zip([s.name for s in old], flatten(old, batch), strict=True))
    plain = table_batch(p.prep, rows.iloc[ORDER].reset_index(drop=True))
    torch.testing.assert_close(feeds[key], plain["inputs"][key], rtol=0, atol=0)
    # a batch without repeats gets the identity index
    feeds = dict(zip([s.name for s in spec], flatten(spec, plain), strict=True))
    assert feeds[f"{key}__index"].tolist() == list(range(len(ORDER)))


def test_exported_graph_predicts_repeated_images_once(golden, tmp_path, monkeypatch):
    from polymodal.compress import onnx_export as X

    p, rows, expected = golden
    X.export_predictor(p, tmp_path / "m.onnx")
    o = X.OnnxPredictor(tmp_path / "m.onnx")
    key, seen, real = _image_key(p), [], X.to_numpy_feeds

    def recording(spec, batch):
        feeds = real(spec, batch)
        seen.append(len(feeds[key]))
        return feeds

    monkeypatch.setattr(X, "to_numpy_feeds", recording)
    got = o.predict_proba(rows.iloc[ORDER].reset_index(drop=True), as_pandas=False)
    np.testing.assert_allclose(got, expected[ORDER], atol=1e-5, rtol=0)
    assert seen == [5]
