"""ONNX vs PyTorch answers on the test rows of every shared dataset that makes a table model (issue 20).

Per dataset: a small model is fitted through the product's own API (`MultimodalPredictor(label=...,
path=run_dir).fit(train)`, default frozen encoders unless the dataset's own benchmark picks others, a few
epochs), saved, reloaded with `polymodal.runs.load_run`, and its test rows are predicted with
`predict_proba(test, as_pandas=False, engine=E)` for E = "onnx" (first call: exports and checks the graph
into `<run>/onnx/`), "torch", and "onnx" again (graph cached). Only the two engines' agreement matters here,
not accuracy: the models are deliberately undertrained.

Recorded per dataset: answers equal (share of rows whose predicted label is the same; multi-label: the same
label set; regression: values within 1e-3 of the training target's std), max |probability diff| (regression:
max |value diff|), rows, seconds per engine over the whole test set (torch: its first call, which encodes test
inputs not already in the run's feature cache, filled by the fit in PyTorch; onnx: the second call, the graph
already exported; the first call with export is recorded too), and the `<run>/onnx/parity.json` the engine
wrote. Two rows run a fitted model again with a modality missing on every third test row (VQA-RAD without the
image, FSDD without the audio). An engine that refuses a model is recorded with its reason.

Datasets (../shared/data): VQA-RAD (clean protocol's training rows, all 451 test questions, label = answer),
FSDD spoken digits + scikit-learn digit images (official split, 300 test pairs), easy-vqa (a sample of
training images; `--easy-vqa-test-images` test images with all their questions, 0 = all 1,000), MovieLens-100K
items (poster + plot overview + year/runtime; genres as multi-label, and mean rating of items with >= 20
ratings as regression; 75/25 split, seed 0, as benchmarks/automl_peer.py), Wikipedia cross-modal features
(128 SIFT words + 10 LDA topics as numeric columns -> category).

    nice -n 19 .venv/bin/python benchmarks/engine_parity.py --out benchmarks/results/engine_parity.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from automl_peer import load_table, split  # noqa: E402
from common import WORK, fsdd_av_tables, machine, need  # noqa: E402
from retrieval_wikipedia import data_dir  # noqa: E402
from retrieval_wikipedia import load as load_wikipedia  # noqa: E402
from vqa_rad import TEST_PHRASES, protocols  # noqa: E402
from vqa_rad import load as load_vqa_rad  # noqa: E402

from polymodal import MultimodalPredictor  # noqa: E402
from polymodal.demo import easy_vqa_table  # noqa: E402
from polymodal.errors import PolymodalError  # noqa: E402
from polymodal.problem_types import MULTILABEL, REGRESSION  # noqa: E402
from polymodal.runs import load_run  # noqa: E402

RESULTS = Path(__file__).parent / "results"
Table = tuple[pd.DataFrame, pd.DataFrame, str, dict]  # train, test, label, MultimodalPredictor options


def vqa_rad() -> Table:
    df = load_vqa_rad()
    train = protocols(df)["clean"]
    test = df[df["phrase_type"].isin(TEST_PHRASES)]
    cols = ["image", "question", "answer"]
    return train[cols].reset_index(drop=True), test[cols].reset_index(drop=True), "answer", {}


def fsdd() -> Table:
    train, test = fsdd_av_tables()
    cols = ["audio", "image", "digit"]
    opts = {"encoders": {"image": "small-cnn"},  # as benchmarks/fsdd_av.py
            "encoder_opts": {"image": {"image_size": 32}, "audio": {"sample_rate": 8000, "max_seconds": 1.0}}}
    return train[cols], test[cols], "digit", opts


def easy_vqa(test_images: int) -> Table:
    need("easy-vqa")
    train = easy_vqa_table("train", 200)
    test = easy_vqa_table("test", test_images or None)
    return train, test, "answer", {"encoder_opts": {"image": {"image_size": 128}}}  # as `polymodal demo`


def movielens(name: str) -> Table:
    df, label, _ = load_table(name)
    problem = "multilabel" if name == "movielens_genres" else "regression"
    train, test = split(df, label, 0, problem)
    return train, test, label, {"problem_type": MULTILABEL if problem == "multilabel" else REGRESSION}


def wikipedia() -> Table:
    d = load_wikipedia(data_dir())

    def table(img: np.ndarray, txt: np.ndarray, y: np.ndarray) -> pd.DataFrame:
        cols = {**{f"sift{i}": img[:, i] for i in range(img.shape[1])},
                **{f"topic{i}": txt[:, i] for i in range(txt.shape[1])}}
        return pd.DataFrame({**cols, "category": [f"c{v}" for v in y]})

    return table(d["I_tr"], d["T_tr"], d["y_tr"]), table(d["I_te"], d["T_te"], d["y_te"]), "category", {}


def blank_every_third(test: pd.DataFrame, column: str) -> pd.DataFrame:
    out = test.copy()
    out.loc[out.index[::3], column] = np.nan
    return out


def answers(model, probs: np.ndarray) -> np.ndarray:
    """The product's own answers from its probabilities (multi-label: the "a|b" label set)."""
    return np.asarray(model.task.labels(probs))


def compare(model, test: pd.DataFrame, label: str, spread: float) -> dict:
    """Both engines on the test rows (label column dropped): agreement, max diff, seconds."""
    x = test.drop(columns=[label])
    out: dict = {"rows": len(x)}
    t0 = time.perf_counter()
    try:
        model.predict_proba(x, as_pandas=False, engine="onnx")  # exports + checks the graph (once per run)
    except PolymodalError as err:
        out["onnx_refused"] = str(err)
    out["onnx_first_call_seconds"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    ref = model.predict_proba(x, as_pandas=False, engine="torch")
    out["torch_seconds"] = round(time.perf_counter() - t0, 2)
    if "onnx_refused" in out:
        return out
    t0 = time.perf_counter()
    got = model.predict_proba(x, as_pandas=False, engine="onnx")
    out["onnx_seconds"] = round(time.perf_counter() - t0, 2)
    ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    if model.task.problem_type == REGRESSION:
        same = np.abs(ref.reshape(len(x), -1) - got.reshape(len(x), -1)).max(1) <= 1e-3 * spread
        out["agreement_rule"] = f"|value diff| <= 1e-3 x train target std ({spread:.4g})"
    else:
        same = answers(model, ref) == answers(model, got)
        out["agreement_rule"] = "same label set" if model.task.problem_type == MULTILABEL else "same label"
    out["answers_equal"] = round(float(same.mean()), 6)
    out["rows_differing"] = int((~same).sum())
    out["max_abs_diff"] = float(np.abs(ref - got).max())
    return out


def fit(name: str, train: pd.DataFrame, label: str, opts: dict, epochs: int, log: Callable) -> tuple[Path, float]:
    """Fit and save into a fresh run folder with a fresh feature cache, its encoder passes in PyTorch: the
    "torch" engine's answers then come from PyTorch alone (the fit's default engine, "auto", fills the cache
    through onnxruntime for passes of >= 256 values, and predict reads cached features of values seen)."""
    run_dir, cache = WORK / f"engine_parity_{name}", WORK / f"engine_parity_{name}_cache"
    for folder in (run_dir, cache):
        shutil.rmtree(folder, ignore_errors=True)
    before = os.environ.get("POLYMODAL_ENGINE")
    os.environ["POLYMODAL_ENGINE"] = "torch"
    t0 = time.perf_counter()
    try:
        MultimodalPredictor(label=label, path=run_dir, verbose=False, progress=False, seed=0, max_epochs=epochs,
                            patience=epochs, cache_dir=str(cache), **opts).fit(train)
    finally:
        if before is None:
            os.environ.pop("POLYMODAL_ENGINE")
        else:
            os.environ["POLYMODAL_ENGINE"] = before
    log(f"{name}: fitted in {time.perf_counter() - t0:.0f}s")
    return run_dir, time.perf_counter() - t0


CASES = {  # name -> (problem type, inputs, table builder, (column blanked on every third test row) or None)
    "vqa_rad": ("multiclass", "image + text", vqa_rad, "image"),
    "fsdd_av": ("multiclass", "audio + image", fsdd, "audio"),
    "easy_vqa": ("multiclass", "image + text", None, None),
    "movielens_genres": ("multi-label", "image + text + tabular", lambda: movielens("movielens_genres"), None),
    "movielens_rating": ("regression", "image + text + tabular", lambda: movielens("movielens_rating"), None),
    "wikipedia": ("multiclass", "tabular (138 numeric)", wikipedia, None),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--easy-vqa-test-images", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "engine_parity.json"))
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    result = {"command": "nice -n 19 .venv/bin/python benchmarks/engine_parity.py " + " ".join(sys.argv[1:]),
              "machine": machine(), "load_average_start": os.getloadavg()[0],
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "epochs": args.epochs, "datasets": {}}

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    def save() -> None:
        result["load_average_end"] = os.getloadavg()[0]
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")

    for name in args.datasets:
        problem, inputs, build, blank = CASES[name]
        try:
            train, test, label, opts = (easy_vqa(args.easy_vqa_test_images) if name == "easy_vqa" else build())
            spread = float(pd.to_numeric(train[label], errors="coerce").std()) if problem == "regression" else 1.0
            run_dir, fit_s = fit(name, train, label, opts, args.epochs, log)
            model = load_run(run_dir)
            row = {"problem_type": problem, "inputs": inputs, "train_rows": len(train),
                   "fit_seconds": round(fit_s, 1), **compare(model, test, label, spread)}
            parity = run_dir / "onnx" / "parity.json"
            row["parity_json"] = json.loads(parity.read_text()) if parity.exists() else None
            result["datasets"][name] = row
            log(f"{name}: {row}")
            save()
            if blank:  # the same run, a modality absent on every third test row
                missing = {"problem_type": problem, "inputs": f"{inputs}, {blank} missing on every third row",
                           **compare(model, blank_every_third(test, blank), label, spread)}
                result["datasets"][f"{name}_{blank}_missing"] = missing
                log(f"{name}_{blank}_missing: {missing}")
        except Exception as err:  # noqa: BLE001 - one dataset's failure is recorded, the others still run
            result["datasets"][name] = {"problem_type": problem, "inputs": inputs,
                                        "error": f"{type(err).__name__}: {err}",
                                        "traceback": traceback.format_exc(limit=6)}
            log(f"{name}: FAILED {err}")
        save()
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
