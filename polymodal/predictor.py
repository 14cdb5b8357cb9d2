"""MultimodalPredictor: the three-line Python front (fit / evaluate / predict / save / load).

Holds no model logic: it calls `training.fit`, `training.artifacts` and `training.metrics`.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from polymodal.data.dataset import check_rows, raise_or_drop
from polymodal.data.readers import as_table
from polymodal.errors import PolymodalError
from polymodal.tasks import task_from_prep
from polymodal.training import artifacts
from polymodal.training.fit import (
    FitConfig,
    FitResult,
    assemble_model,
    build_encoders,
    build_tabular_encoder,
    ensure_usable,
    features_for,
    fit,
    fit_stream,
    frozen_keys,
    predict_probs,
)
from polymodal.types import TABULAR


class MultimodalPredictor:
    """Train and use a model on a table whose columns mix images, text, audio and tabular values.

    >>> p = MultimodalPredictor(label="answer").fit(train_df, valid_df)
    >>> p.evaluate(test_df); p.predict(df); p.predict_proba(df); p.save("runs/x")
    >>> MultimodalPredictor.load("runs/x")

    `task="caption"` or `"vqa-open"` returns a text generator with the same interface
    (`polymodal.training.generation.GenerationPredictor`); the default `None` classifies or regresses.
    """

    def __new__(cls, *args, task: str | None = None, **kwargs):
        if cls is MultimodalPredictor and task is not None:
            from polymodal.tasks.generation import GENERATION_TASKS
            from polymodal.training.generation import GenerationPredictor

            if task not in GENERATION_TASKS:
                raise PolymodalError(f"task must be one of {', '.join(GENERATION_TASKS)} (or None to classify or "
                                     f"regress), not {task!r}")
            return super().__new__(GenerationPredictor)
        return super().__new__(cls)

    def __init__(self, label: str | list[str], problem_type: str | dict | None = None,
                 path: str | os.PathLike | None = None,
                 verbose: bool = True, task: None = None, **config) -> None:
        self.config = FitConfig(label=label, problem_type=problem_type, **config)
        self.path = Path(path) if path else None
        self.verbose = verbose
        self._result: FitResult | None = None
        self.model = self.prep = self.task = None
        self.metrics: dict = {}

    # ---- training ------------------------------------------------------------------------------------
    def fit(self, train_data, valid_data=None, test_data=None, resume: bool = False,
            **overrides) -> MultimodalPredictor:
        """Train; `valid_data` defaults to a stratified split of `train_data`; `test_data` is only scored.

        With `resume=True` (and the same data and settings), continue an interrupted run in `path` from its
        last checkpoint; the result equals an uninterrupted run with the same seed.
        """
        self.config = replace_config(self.config, overrides, "a classifier or regressor")
        if self.config.stream:  # shard files read chunk by chunk (training.fit.fit_stream), never whole
            if any(isinstance(d, pd.DataFrame) for d in (train_data, valid_data)):
                raise PolymodalError("stream=True reads Parquet or WebDataset shard files; a DataFrame is already in "
                                     "memory: fit it without stream")
            train, valid = train_data, valid_data
        else:
            train = as_table(train_data)
            valid = as_table(valid_data) if valid_data is not None else None
        run_dir = self.path or Path(tempfile.mkdtemp(prefix="polymodal-run-"))
        if resume and not self.path:
            raise PolymodalError("resume needs the run folder: MultimodalPredictor(..., path=run_dir)")
        artifacts.atomic_write_json(Path(run_dir) / artifacts.FIT_STATE, {
            "config": self.config.to_dict(),
            "tables": {k: _table_ref(v) for k, v in (("train", train_data), ("valid", valid_data),
                                                     ("test", test_data))}})
        try:
            res = (fit_stream if self.config.stream else fit)(train, valid, self.config, run_dir, log=self._log,
                                                              resume=resume)
        finally:
            if not self.path:  # a scratch folder for checkpoints and logs: the weights are in memory now
                import shutil

                shutil.rmtree(run_dir, ignore_errors=True)
        self._result = res
        self.model, self.prep, self.task = res.model, res.prep, res.task
        self.metrics = fit_summary(res)
        if test_data is not None:
            self.metrics["test"] = self.evaluate(test_data)
        if self.path:
            self.save(self.path)
        return self

    # ---- inference -----------------------------------------------------------------------------------
    def _prepare(self, data, with_target: bool):
        self._require_model()
        df = as_table(data)
        ensure_usable(df, self.prep)
        df, problems = raise_or_drop(df, check_rows(df, self.prep, with_target), "error")
        keys = frozen_keys(self.model, self.prep, self.config) if len(df) > 64 else []
        device = next(self.model.parameters()).device
        df, feats, _, _ = features_for(df, self.prep, self.model, keys, self.config, device, self._log, "error")
        return df, feats

    def predict_proba(self, data, as_pandas: bool = True) -> pd.DataFrame | np.ndarray:
        """Class probabilities (columns = classes), or predicted values for regression.

        Multi-task: one block per label, columns "label:class" (and "label" for a regression label)."""
        df, feats = self._prepare(data, with_target=False)
        probs, _ = predict_probs(self.model, self.task, self.prep, df, self.config, feats, with_target=False)
        if not as_pandas:
            return probs
        return pd.DataFrame(probs.reshape(len(df), -1), columns=probability_columns(self.task, self.config),
                            index=df.index)

    def predict(self, data, as_pandas: bool = True) -> pd.Series | pd.DataFrame | np.ndarray:
        """Predicted labels (a Series; multi-task: a DataFrame with one column per label)."""
        probs = self.predict_proba(data, as_pandas=False)
        values = self.task.labels(probs)
        index = as_table(data).index if as_pandas else None
        if isinstance(values, dict):
            frame = pd.DataFrame(values, index=index)
            return frame if as_pandas else frame.to_numpy()
        return pd.Series(values, name=self.config.label, index=index) if as_pandas else np.asarray(values)

    def evaluate(self, data, plots_dir: str | os.PathLike | None = None) -> dict[str, float]:
        """All metrics for a labelled table (multi-task: "label/metric" per label plus their mean "score");
        with `plots_dir`, also a confusion-matrix PNG."""
        df, feats = self._prepare(data, with_target=True)
        probs, target = predict_probs(self.model, self.task, self.prep, df, self.config, feats)
        metrics = self.task.metrics(probs, target)
        metrics["rows"] = len(df)
        from polymodal.training.plots import evaluation_plots

        evaluation_plots(self.task, self.prep.classes, probs, target, plots_dir)
        return metrics

    # ---- persistence ---------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        self._require_model()
        path = Path(path)
        res = self._result
        model_id = artifacts.save_run(path, self.model, self.prep, self.config.to_dict(), self.metrics,
                                      res.history if res else None)
        self.model_id = model_id
        from polymodal.training.report import write_model_card, write_plots

        write_plots(path, self)
        write_model_card(path, self)
        if res and res.bad_rows:
            pd.DataFrame([dataclasses.asdict(p) for p in res.bad_rows]).to_csv(path / "bad_rows.csv", index=False)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | None = None) -> MultimodalPredictor:
        """Rebuild from a run folder, offline; GPU-trained runs load on CPU. A folder written by `polymodal
        compress` loads as what it holds: a MultimodalPredictor (student, pruned, PyTorch int8) or an
        onnxruntime `OnnxPredictor` (int8 ONNX), which predicts, evaluates and serves alike."""
        from polymodal.compress.artifacts import COMPRESSION

        if (Path(path) / COMPRESSION).exists() and cls is MultimodalPredictor:
            from polymodal.compress.artifacts import load_compressed

            return load_compressed(path)
        config_json, prep = artifacts.read_run(path)
        if config_json.get("kind") == "generation":  # a text generator (task caption / vqa-open)
            from polymodal.training.generation import GenerationPredictor

            return GenerationPredictor.load(path, device)
        config = FitConfig.from_dict(config_json["fit"])
        self = cls(label=config.label, verbose=False)
        self.config, self.prep, self.path = config, prep, Path(path)
        arch = {k: str(Path(path) / "tokenizers" / k) for k in prep.inputs
                if (Path(path) / "tokenizers" / k / "config.json").exists()}
        encoders, _ = build_encoders(prep.schema, config, arch)
        if TABULAR in prep.inputs:
            encoders[TABULAR] = build_tabular_encoder(prep, config)
        self.task = task_from_prep(prep, config)
        self.model = assemble_model(encoders, self.task, config, prep)
        artifacts.load_weights(self.model, Path(path) / artifacts.WEIGHTS)
        for key, enc in self.model.encoders.items():
            if hasattr(enc, "freeze") and key != TABULAR:
                enc.freeze()
        self.model.eval().to(device or "cpu")
        self.model_id = config_json.get("model_id")
        mpath = Path(path) / artifacts.METRICS
        if mpath.exists():
            import json

            self.metrics = json.loads(mpath.read_text())
        return self

    # ---- helpers -------------------------------------------------------------------------------------
    def _require_model(self) -> None:
        if self.model is None:
            raise PolymodalError("the predictor is not trained: call fit() or MultimodalPredictor.load(path)")

    def _log(self, msg: str) -> None:
        if self.verbose:
            print(msg, flush=True)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def _table_ref(data) -> str | list[str] | None:
    """How fit state remembers a table for --resume: its absolute path (a list for several shards; a glob
    stays a glob), None for a DataFrame."""
    if isinstance(data, (str, os.PathLike)):
        return str(Path(data).resolve())
    if isinstance(data, (list, tuple)):
        return [str(Path(v).resolve()) for v in data]
    return None


def replace_config(config, overrides: dict, what: str):
    """`config` with `overrides` (fit(**overrides)); a name the config does not have is a clear error, not a
    TypeError from dataclasses.replace (a typo, or a setting such as stream that this kind of run lacks)."""
    names = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(k for k in overrides if k not in names)
    if unknown:
        raise PolymodalError(f"{', '.join(unknown)}: not a setting of {what}; its settings are "
                             f"{', '.join(sorted(names))}")
    return dataclasses.replace(config, **overrides)


def fit_summary(res) -> dict:
    """metrics.json's training part: validation metrics, fit time, cache use, bad rows, epochs run."""
    return {"valid": res.val_metrics, "fit_seconds": round(res.fit_seconds, 2), "cache": res.cache_stats,
            "bad_rows": len(res.bad_rows),
            "epochs": int(res.history["epoch"].max()) + 1 if "epoch" in res.history else None}


def probability_columns(task, config: FitConfig) -> list[str]:
    """Column names of predict_proba: classes, the label (regression), or "label:class" blocks (multi-task)."""
    if getattr(task, "tasks", None):
        cols = []
        for name, t in task.tasks.items():
            cols += [name] if t.problem_type == "regression" else [f"{name}:{c}" for c in t.classes]
        return cols
    return [config.label] if task.problem_type == "regression" else list(task.classes)
