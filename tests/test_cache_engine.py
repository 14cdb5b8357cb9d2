"""The feature cache's encoder passes follow the engine choice (polymodal/encoders/onnx_runner.py): features
filled through onnxruntime match PyTorch's within 1e-4 and give the same predictions; the graph is kept in the
encoder's cache folder and checked on the first batch; few values, a failed check or an unsupported pass
stay on PyTorch."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

pytest.importorskip("onnxruntime")

from polymodal import MultimodalPredictor  # noqa: E402
from polymodal.encoders import onnx_runner as R  # noqa: E402
from polymodal.encoders.cache import FeatureCache, namespace, precompute_features  # noqa: E402

WORDS = {"red": ["warm", "fire", "apple"], "blue": ["cold", "sea", "sky"]}


def _rows(root, n: int, seed: int) -> pd.DataFrame:
    """Images (red/blue squares with noise, 32 px) and a short text per row; every value unique."""
    rng = np.random.default_rng(seed)
    (root / "imgs").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        color = ["red", "blue"][i % 2]
        base = np.array([200, 40, 40] if color == "red" else [40, 40, 200], np.float32)
        path = root / "imgs" / f"{seed}-{i}.png"
        Image.fromarray(np.clip(base + rng.normal(0, 30, (32, 32, 3)), 0, 255).astype(np.uint8)).save(path)
        rows.append({"image": str(path), "note": f"{rng.choice(WORDS[color])} item {seed}-{i}", "label": color})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """mobilenet_v2 (frozen, 32 px) + 1-layer MiniLM (frozen), fitted with PyTorch encoding its features."""
    root = tmp_path_factory.mktemp("cache_engine")
    mp = pytest.MonkeyPatch()
    mp.setenv("POLYMODAL_ENGINE", "torch")
    try:
        p = MultimodalPredictor(label="label", encoders={"image": "mobilenet_v2"}, cache_dir=root / "fit-cache",
                                column_types={"image": "image", "note": "text"},
                                encoder_opts={"image": {"image_size": 32}, "text": {"num_layers": 1}},
                                max_epochs=2, batch_size=16, lr=3e-3, patience=2, progress=False, verbose=False)
        p.fit(_rows(root, 40, seed=0))
    finally:
        mp.undo()
    return p, root


def _feats(p, df, cache_dir, engine):
    keys = sorted(p.model.encoders.keys() & {"image", "note"})
    feats, problems, stats = precompute_features(df, p.prep, {k: p.model.encoders[k] for k in keys}, keys,
                                                 cache_dir, batch_size=16, engine=engine)
    assert not problems and stats["computed"] == 2 * len(df)
    return feats


def test_onnx_filled_cache_matches_pytorch_and_predicts_the_same(fitted, monkeypatch, tmp_path):
    p, root = fitted
    test = _rows(tmp_path, 70, seed=1)  # > 64 rows: predict fills and reads the cache
    by_torch, by_onnx = _feats(p, test, tmp_path / "t", "torch"), _feats(p, test, tmp_path / "o", "onnx")
    for key in by_torch:
        np.testing.assert_array_equal(by_onnx[key][1], by_torch[key][1])
        assert np.abs(by_onnx[key][0] - by_torch[key][0]).max() < 1e-4, key
        folder = FeatureCache(tmp_path / "o", namespace(p.model.encoders[key], p.prep.inputs[key])).dir
        report = json.loads((folder / R.PARITY).read_text())
        assert (folder / R.GRAPH).exists() and report["passed"] and report["checked"] and report["max_abs_diff"] < 1e-4
        assert not (FeatureCache(tmp_path / "t", "x").dir.parent / folder.name / R.GRAPH).exists()

    # predict: an unsaved predictor runs PyTorch for the model; "auto" fills the cache through onnxruntime
    calls = []
    real_call = R.OrtEncoder.__call__
    monkeypatch.setattr(R.OrtEncoder, "__call__", lambda self, x: calls.append(1) or real_call(self, x))
    monkeypatch.setattr(R, "EXPORT_MIN_VALUES", 64)  # 70 new values are enough to export here
    cache = p.config.cache_dir
    shutil.rmtree(cache, ignore_errors=True)
    torch_probs = p.predict_proba(test, as_pandas=False, engine="torch")
    assert not calls
    shutil.rmtree(cache)
    auto_probs = p.predict_proba(test, as_pandas=False, engine="auto")
    assert len(calls) >= 4  # image and text: the first batch checked (both engines), the rest onnxruntime alone
    np.testing.assert_allclose(auto_probs, torch_probs, atol=1e-5, rtol=0)
    assert (auto_probs.argmax(1) == torch_probs.argmax(1)).all()


def test_auto_stays_on_pytorch_for_few_values_and_after_a_failed_check(fitted, monkeypatch, tmp_path, caplog):
    p, root = fitted
    rows = _rows(tmp_path, 6, seed=2)
    enc, spec = p.model.encoders["image"], p.prep.inputs["image"]
    folder = FeatureCache(tmp_path / "c", namespace(enc, spec)).dir
    ref = _feats(p, rows, tmp_path / "ref", "torch")["image"][0]
    auto = _feats(p, rows, tmp_path / "c", "auto")["image"][0]
    assert not (folder / R.GRAPH).exists()  # 6 values do not pay for an export
    np.testing.assert_array_equal(auto, ref)

    monkeypatch.setattr(R, "TOLERANCE", -1.0)  # no graph can pass
    shutil.rmtree(tmp_path / "c")
    with caplog.at_level("WARNING", logger=R.__name__):
        forced = _feats(p, rows, tmp_path / "c", "onnx")["image"][0]
    np.testing.assert_array_equal(forced, ref)  # the failed check's batch and the rest: PyTorch's features
    report = json.loads((folder / R.PARITY).read_text())
    assert report["checked"] and not report["passed"]
    assert any("encoding with PyTorch" in r.message and "differs" in r.message for r in caplog.records)
    stamp = (folder / R.GRAPH).stat().st_mtime_ns
    assert R.OrtEncoder.for_values(enc, spec.modality, spec.config, folder, "onnx", 100, "cpu", True) is None
    assert (folder / R.GRAPH).stat().st_mtime_ns == stamp  # a recorded failure is not exported again


def test_engine_torch_token_passes_and_gpu_never_export(fitted, tmp_path):
    p, _ = fitted
    enc, spec = p.model.encoders["note"], p.prep.inputs["note"]
    for engine, pooled, device in (("torch", True, "cpu"), ("onnx", False, "cpu"), ("onnx", True, "cuda")):
        assert R.OrtEncoder.for_values(enc, spec.modality, spec.config, tmp_path, engine, 10_000, device,
                                       pooled) is None
    assert not list(tmp_path.iterdir())
    with pytest.raises(Exception, match="engine must be one of"):
        R.OrtEncoder.for_values(enc, spec.modality, spec.config, tmp_path, "tensorrt", 1, "cpu", True)
