"""Per-call work of a few-row predict (issue 20): each image file is read once (the row check decodes it, the
forward pass reuses it), normalisation by look-up gives the arithmetic's exact arrays, the table is not
deep-copied yet the caller's frame stays untouched, and the weights fingerprint still sees every kind of change.
Answers stay those stored before these changes (tests/data/golden) and bad images still name their row/column."""

from __future__ import annotations

import shutil
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from polymodal import predictor as predictor_module
from polymodal.compress import engine as E
from polymodal.data import dataset as D
from polymodal.data.readers import as_table
from polymodal.data.transforms import load_image
from polymodal.errors import DataError
from polymodal.runs import load_run
from tests.test_golden_run import GOLDEN, _rows

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _arithmetic(path, size: int, mean, std) -> np.ndarray:
    """The per-pixel float form load_image used before the look-up table."""
    with Image.open(path) as im:
        im = im.convert("RGB")
    im = im.resize((size, size), Image.BILINEAR)
    arr = np.asarray(im, dtype=np.float32) / 255.0
    arr = (arr - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


@pytest.mark.parametrize("mode,size", [("RGB", 17), ("L", 64), ("RGBA", 40), ("P", 9)])
def test_lookup_normalisation_is_bit_identical_to_the_arithmetic(tmp_path, mode, size):
    rng = np.random.default_rng(size)
    path = tmp_path / "x.png"
    Image.fromarray(rng.integers(0, 256, (size + 3, size, 3), dtype=np.uint8)).convert(mode).save(path)
    for out_size, mean, std in [(32, MEAN, STD), (size, [0.5] * 3, [0.5] * 3), (7, [0.1, 0.9, 0.3], [2.0, 0.7, 1.1])]:
        got = load_image(str(path), out_size, mean, std)
        want = _arithmetic(path, out_size, mean, std)
        assert got.dtype == np.float32 and got.shape == (3, out_size, out_size) and got.flags.c_contiguous
        np.testing.assert_array_equal(got, want)


@pytest.fixture
def golden(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(GOLDEN / "run", run)
    return load_run(run), _rows(tmp_path), np.load(GOLDEN / "run-predict_proba.npz")["probs"]


def _count_opens(monkeypatch) -> Counter:
    opened: Counter = Counter()
    real = Image.open

    def counting(fp, *a, **k):
        opened[str(fp)] += 1
        return real(fp, *a, **k)

    monkeypatch.setattr(Image, "open", counting)
    return opened


@pytest.mark.parametrize("engine", ["torch", "onnx"])
def test_few_rows_read_each_image_once_with_the_stored_answers(golden, monkeypatch, engine):
    p, rows, expected = golden
    p.predict(rows.head(1), engine=engine)  # export (onnx) outside the count
    opened = _count_opens(monkeypatch)
    got = p.predict_proba(rows, as_pandas=False, engine=engine)
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)
    assert set(opened) == set(rows["photo"]) and set(opened.values()) == {1}
    # the header-check path (more rows than DECODE_ROWS) answers identically, reading each file twice
    monkeypatch.setattr(predictor_module, "DECODE_ROWS", 0)
    opened.clear()
    np.testing.assert_array_equal(p.predict_proba(rows, as_pandas=False, engine=engine), got)
    assert set(opened.values()) == {2}
    assert list(p.predict(rows, engine=engine)) == [p.task.classes[i] for i in got.argmax(1)]


@pytest.mark.parametrize("decode_rows", [64, 0], ids=["decoded-in-check", "header-check"])
def test_bad_images_still_name_their_row_and_column(golden, monkeypatch, decode_rows):
    p, rows, _ = golden
    monkeypatch.setattr(predictor_module, "DECODE_ROWS", decode_rows)
    rows = rows.copy()
    bad = rows.loc[4, "photo"] + ".corrupt.png"
    with open(bad, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + b"not really" * 10)
    rows.loc[4, "photo"] = bad
    rows.loc[9, "photo"] = rows.loc[9, "photo"] + ".nope.png"
    for engine in ("torch", "onnx"):
        with pytest.raises(DataError) as err:
            p.predict(rows, engine=engine)
        assert err.value.row == 4 and err.value.column == "photo" and "cannot decode image" in err.value.detail
        assert "1 more problems" in err.value.detail
        with pytest.raises(DataError) as err:
            p.predict(rows.drop(index=4), engine=engine)
        assert err.value.row == 9 and err.value.column == "photo" and "file not found" in err.value.detail


def test_check_rows_fills_decoded_with_the_loaders_arrays(golden):
    p, rows, _ = golden
    decoded: dict = {}
    assert D.check_rows(rows, p.prep, with_target=False, decoded=decoded) == []
    (key,) = [k for k, s in p.prep.inputs.items() if s.columns == ["photo"]]
    cfg = p.prep.inputs[key].config
    assert set(decoded[key]) == set(rows["photo"])
    for path, arr in decoded[key].items():
        np.testing.assert_array_equal(arr, load_image(path, cfg["image_size"], cfg["mean"], cfg["std"]))
    # the dataset takes them instead of decoding; training (augmenting) datasets ignore them
    ds = D.TableDataset(rows, p.prep, {}, train=False, with_target=False, decoded=decoded)
    assert ds[0]["inputs"][key] is decoded[key][rows.loc[0, "photo"]]
    train = D.TableDataset(rows, p.prep, {}, train=True, with_target=False, decoded=decoded)
    assert train.decoded == {}


def test_as_table_leaves_the_callers_frame_alone():
    df = pd.DataFrame({"a": [1.0, 2.0], 3: ["x", "y"]})
    df.attrs["mine"] = 1
    out = as_table(df)
    assert list(out.columns) == ["a", "3"] and out.attrs["source"] == "<DataFrame>"
    out.loc[0, "a"] = 99.0
    out["b"] = 1
    assert df["a"].tolist() == [1.0, 2.0] and list(df.columns) == ["a", 3] and df.attrs == {"mine": 1}
    same = pd.DataFrame({"a": [1.0]})
    out = as_table(same)
    out.loc[0, "a"] = 5.0
    assert same["a"].tolist() == [1.0]


def test_weights_state_sees_in_place_writes_data_swaps_and_new_tensors():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 2))
    s0 = E.weights_state(model)
    assert E.weights_state(model) == s0
    with torch.no_grad():
        model[0].weight.add_(0)  # an in-place write bumps the version even when values do not change
    s1 = E.weights_state(model)
    assert s1 != s0
    model[1].weight.data = torch.zeros(2, 3)  # a new storage under the same Parameter object
    s2 = E.weights_state(model)
    assert s2 != s1
    w0, w1 = model[0].bias, model[1].bias
    w0.data, w1.data = w1.data.clone(), w0.data.clone()[:2]
    assert E.weights_state(model) != s2
    s3 = E.weights_state(model)
    model[1].bias = torch.nn.Parameter(torch.ones(2))  # a newly registered parameter
    assert E.weights_state(model) != s3


def test_encode_texts_gives_the_tokenizers_padded_truncated_batch():
    from polymodal.data.text import encode_texts, get_tokenizer

    tok = get_tokenizer("minilm-l6")
    texts = ["what shape is in the image?", "", "é ü 漢字 🙂 " * 3, "word " * 200, "a", "Is the  circle\tred?\n"]
    for batch in ([texts[0]], texts, texts[1:2], texts[3:4], texts[::-1]):
        for max_length in (64, 8, 512):
            ids, mask = encode_texts("minilm-l6", batch, max_length)
            want = tok(batch, padding=True, truncation=True, max_length=max_length, return_tensors="np")
            assert ids.dtype == mask.dtype == np.int64 and ids.shape == (len(batch), want["input_ids"].shape[1])
            np.testing.assert_array_equal(ids, want["input_ids"])
            np.testing.assert_array_equal(mask, want["attention_mask"])
    # the shared backend is never reconfigured by a call: a later call with another length gets its own
    assert encode_texts("minilm-l6", [texts[3]], 8)[0].shape == (1, 8)
    assert encode_texts("minilm-l6", [texts[3]], 64)[0].shape == (1, 64)
