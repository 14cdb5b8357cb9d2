"""Time-series columns: list cells (Parquet, JSONL) and .npy/.csv paths, schema inference, per-channel statistics,
the three encoders (shapes, padding invariance), fitting a frequency cue, errors and serving."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from polymodal import MultimodalPredictor
from polymodal.data.preprocess import Preprocessor
from polymodal.data.readers import read_table
from polymodal.data.schema import infer_column_type, infer_schema
from polymodal.data.timeseries import load_series, prepare_series
from polymodal.encoders import build_encoder
from polymodal.errors import DataError, PolymodalError

FAST = dict(max_epochs=10, batch_size=16, lr=3e-3, patience=10, progress=False, verbose=False)
ENCODERS = ["ts-cnn", "ts-gru", "ts-transformer"]


def sine(freq: float, n: int, seed: int, channels: int = 1) -> np.ndarray:
    """(n,) or (n, channels): a noisy sine at `freq` cycles per 32 steps, random phase; channel c is scaled."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    x = np.sin(2 * np.pi * freq * t / 32 + rng.uniform(0, 2 * np.pi)) + 0.2 * rng.normal(size=n)
    if channels == 1:
        return x
    return np.stack([(c + 1) * x + 3 * c for c in range(channels)], 1)


def sine_frame(n: int = 64, channels: int = 1, seed: int = 0) -> pd.DataFrame:
    """`series` (variable length 40-120) whose frequency is the class (1 vs 4 cycles per 32 steps)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = ["slow", "fast"][i % 2]
        length = int(rng.integers(40, 121))
        rows.append({"series": sine(1 if label == "slow" else 4, length, 1000 * seed + i, channels),
                     "label": label})
    return pd.DataFrame(rows)


# ---- loading and schema ------------------------------------------------------------------------------------
def test_cells_and_files_load_to_the_same_array(tmp_path):
    a = sine(2, 50, 0, channels=3).astype(np.float32)
    np.save(tmp_path / "a.npy", a)
    pd.DataFrame(a, columns=["x", "y", "z"]).assign(name="s").to_csv(tmp_path / "a.csv", index=False)  # header
    pd.DataFrame(a).to_csv(tmp_path / "b.csv", index=False, header=False)  # no header
    for value in (str(tmp_path / "a.npy"), str(tmp_path / "a.csv"), str(tmp_path / "b.csv"), a.tolist(),
                  np.array([np.array(r) for r in a], dtype=object), (tmp_path / "a.npy").read_bytes(),
                  (tmp_path / "b.csv").read_bytes()):
        np.testing.assert_allclose(load_series(value), a, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(load_series([1, 2, 3]), [[1], [2], [3]])  # 1-D: one channel


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_list_cells_from_parquet_and_jsonl(tmp_path, fmt):
    df = sine_frame(20, channels=2)
    df["series"] = [s.tolist() for s in df["series"]]
    df["size"] = np.arange(20, dtype=float)
    path = tmp_path / f"t.{fmt}"
    df.to_parquet(path) if fmt == "parquet" else df.to_json(path, orient="records", lines=True)
    table = read_table(path)
    schema = infer_schema(table, "label")
    assert schema.columns["series"] == "timeseries" and schema.series_channels == {"series": 2}
    np.testing.assert_allclose(load_series(table["series"].iloc[3]), np.asarray(df["series"].iloc[3]), rtol=1e-6)


def test_schema_inference(tmp_path):
    for i in range(6):
        np.save(tmp_path / f"{i}.npy", sine(1, 30, i))
    df = pd.DataFrame({"npy": [str(tmp_path / f"{i}.npy") for i in range(6)], "y": [0, 1] * 3})
    schema = infer_schema(df, "y")
    assert schema.columns["npy"] == "timeseries" and schema.series_channels == {"npy": 1}
    assert infer_column_type(pd.Series([[1.0, 2.0, 3.0], [4.0, 5.0]] * 3), ".")[0] == "timeseries"
    assert infer_column_type(pd.Series([["a", "b"], ["c"]] * 3), ".")[0] == "id"  # tags, not numbers
    assert infer_column_type(pd.Series([{"a": 1}, {"b": 2}] * 3), ".")[0] == "id"
    restored = type(schema).from_dict(json.loads(json.dumps(schema.to_dict())))
    assert restored.series_channels == {"npy": 1}


def test_statistics_are_per_channel_and_saved(tmp_path):
    df = sine_frame(30, channels=3)
    schema = infer_schema(df, "label")
    prep = Preprocessor.fit(df, schema, {"timeseries": {"max_length": 64}})
    cfg = prep.inputs["series"].config
    steps = np.concatenate(df["series"].to_list())
    np.testing.assert_allclose(cfg["mean"], steps.mean(0), rtol=1e-6)
    np.testing.assert_allclose(cfg["std"], steps.std(0), rtol=1e-6)
    assert cfg["channels"] == 3 and cfg["max_length"] == 64
    again = Preprocessor.from_dict(json.loads(json.dumps(prep.to_dict())))
    assert again.inputs["series"].config == cfg
    x = prepare_series(load_series(df["series"].iloc[0]), cfg)
    assert x["values"].shape == (min(64, len(df["series"].iloc[0])), 3) and x["mask"].all()


def test_bad_values_name_row_and_column(tmp_path):
    df = sine_frame(24)
    df.at[5, "series"] = np.array([1.0, np.nan, 2.0])
    with pytest.raises(DataError, match="step 1") as err:
        MultimodalPredictor(label="label", **FAST).fit(df)
    assert err.value.row == 5 and err.value.column == "series"
    df = sine_frame(24)
    df["series"] = [str(tmp_path / f"{i}.npy") for i in range(24)]
    for i, s in enumerate(sine_frame(24)["series"]):
        np.save(tmp_path / f"{i}.npy", s if i != 7 else np.stack([s, s], 1))  # row 7: two channels
    with pytest.raises(DataError, match="2 channels") as err:
        MultimodalPredictor(label="label", **FAST).fit(df)
    assert err.value.row == 7 and "7.npy" in str(err.value)
    (tmp_path / "3.npy").write_bytes(b"garbage")
    df.loc[7, "series"] = str(tmp_path / "absent.npy")
    problems = MultimodalPredictor(label="label", on_bad_rows="skip", **{**FAST, "max_epochs": 1}).fit(df)
    assert problems.metrics["bad_rows"] == 2


# ---- encoders ------------------------------------------------------------------------------------------------
def series_batch(lengths=(37, 64, 5), channels: int = 2) -> dict:
    torch.manual_seed(0)
    t = max(lengths)
    mask = torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]
    return {"values": torch.randn(len(lengths), t, channels) * mask[..., None], "mask": mask}


@pytest.mark.parametrize("name", ENCODERS)
def test_encoder_shapes_and_padding_invariance(name):
    enc = build_encoder("timeseries", name, in_channels=2).eval()
    x = series_batch()
    out, tok = enc(x), enc.tokens(x)
    assert out.shape == (3, enc.out_dim) and tok.shape[0] == 3 and tok.shape[2] == enc.token_dim
    assert torch.isfinite(out).all()
    # a series' output does not depend on how far its batch was padded, nor on the padded values
    alone = enc({"values": x["values"][:1, :37], "mask": x["mask"][:1, :37]})
    torch.testing.assert_close(alone, out[:1], atol=1e-5, rtol=1e-4)
    y = {"values": x["values"].clone(), "mask": x["mask"]}
    y["values"][2, 5:] = 7.0
    torch.testing.assert_close(enc(y), out, atol=1e-5, rtol=1e-4)
    empty = {"values": torch.zeros(2, 1, 2), "mask": torch.zeros(2, 1, dtype=torch.bool)}  # missing series
    assert torch.isfinite(enc(empty)).all()


def test_encoder_errors():
    with pytest.raises(PolymodalError, match="unknown time-series encoder"):
        build_encoder("timeseries", "ts-lstm")
    with pytest.raises(PolymodalError, match="at least one channel"):
        build_encoder("timeseries", in_channels=0)


# ---- fitting -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ENCODERS)
def test_fit_learns_a_frequency_cue(tmp_path, name):
    torch.manual_seed(0)
    df = sine_frame(48, channels=2)
    df.loc[[3, 10], "series"] = None  # missing series: a missing modality, not an error
    df["noise"] = np.random.default_rng(1).normal(size=len(df))
    valid = sine_frame(24, channels=2, seed=1).assign(noise=0.0)
    p = MultimodalPredictor(label="label", encoders={"timeseries": name}, path=tmp_path / "run", **FAST)
    p.fit(df, valid)
    assert p.metrics["valid"]["accuracy"] >= 0.85, p.metrics
    loaded = MultimodalPredictor.load(tmp_path / "run")
    np.testing.assert_allclose(loaded.predict_proba(df.head(8)).to_numpy(), p.predict_proba(df.head(8)).to_numpy(),
                               atol=1e-5)


def test_fit_on_npy_paths_with_token_and_late_fusions(tmp_path):
    df = sine_frame(48)
    for i, s in enumerate(df["series"]):
        np.save(tmp_path / f"{i}.npy", s)
    df["npy"] = [f"{i}.npy" for i in range(len(df))]
    df["size"] = np.random.default_rng(0).normal(size=len(df))
    df.drop(columns="series").to_csv(tmp_path / "t.csv", index=False)
    for fusion in ("gated", "transformer", "late"):
        p = MultimodalPredictor(label="label", fusion=fusion, **{**FAST, "max_epochs": 2}).fit(tmp_path / "t.csv")
        assert p.prep.inputs["npy"].modality == "timeseries" and "accuracy" in p.metrics["valid"]


# ---- serving -------------------------------------------------------------------------------------------------
def test_serve_json_series(tmp_path):
    pytest.importorskip("fastapi")
    pytest.importorskip("multipart")
    from fastapi.testclient import TestClient

    from polymodal.serve.app import create_app

    torch.manual_seed(0)
    df = sine_frame(32)
    p = MultimodalPredictor(label="label", path=tmp_path / "run", **{**FAST, "max_epochs": 2}).fit(df)
    loaded = MultimodalPredictor.load(tmp_path / "run")
    expected = loaded.predict_proba(df.head(3))
    with TestClient(create_app(loaded, max_wait_ms=2)) as client:
        for i in range(3):
            s = df["series"].iloc[i]
            for r in (client.post("/predict", json={"series": s.tolist()}),
                      client.post("/predict", data={"series": json.dumps(s.tolist())}),
                      client.post("/predict", files={"series": ("s.npy", _npy_bytes(s), "application/octet-stream")})):
                assert r.status_code == 200, r.text
                for cls, prob in r.json()["probabilities"].items():
                    assert prob == pytest.approx(float(expected.loc[i, cls]), abs=1e-5)
        bad = client.post("/predict", json={"series": ["a", "b"]})
        assert bad.status_code == 422 and "series" in bad.json()["detail"]
        bad = client.post("/predict", json={"series": [[1, 2], [3, 4]]})  # two channels for a one-channel model
        assert bad.status_code == 422 and "channels" in bad.json()["detail"]
    assert p.prep.inputs["series"].config["channels"] == 1


def _npy_bytes(a: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def test_csv_path_column(tmp_path):
    """A column of .csv paths; the time-stamp column of each file is a second channel, as documented."""
    rows = []
    for i, s in enumerate(sine_frame(12)["series"]):
        pd.DataFrame({"t": np.arange(len(s)), "v": s}).to_csv(tmp_path / f"{i}.csv", index=False)
        rows.append({"f": f"{i}.csv", "label": i % 2})
    pd.DataFrame(rows).to_csv(tmp_path / "t.csv", index=False)
    schema = infer_schema(read_table(tmp_path / "t.csv"), "label")
    assert schema.columns["f"] == "timeseries" and schema.series_channels == {"f": 2}
    assert Path(tmp_path / "0.csv").exists()
