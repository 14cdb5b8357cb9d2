"""MultimodalPredictor: the three-line Python front (fit / evaluate / predict / save / load).

One class for every model kind the fit pipeline trains — classifiers, regressors and multi-task models
(`task=None`) and text generators (`task="caption" | "vqa-open"`): the kind picks a recipe of the one fit
pipeline (training/pipeline.py) and how rows are answered. Holds no model logic itself.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from polymodal.compress.artifacts import is_compressed, rebuild_compressed
from polymodal.compress.engine import EngineChoice
from polymodal.compress.onnx_export import OnnxPredictor
from polymodal.contracts import Batch, outputs_to_answers
from polymodal.data.dataset import check_rows, raise_or_drop
from polymodal.data.readers import as_table
from polymodal.ensemble import FAST, EnsemblePredictor, EnsembleSettings, check_preset, is_ensemble
from polymodal.errors import PolymodalError
from polymodal.problem_types import GENERATION
from polymodal.tasks.generation import GENERATION_TASKS, DecodeConfig
from polymodal.training import artifacts
from polymodal.training.build import GENERATION_RUN, TABLE_RUN, Rebuilt, frozen_keys, rebuild
from polymodal.training.config import FitConfig, GenerationConfig, replace_config
from polymodal.training.fit import TABLE_RECIPE, ensure_usable
from polymodal.training.generation import GENERATION_RECIPE, generate_texts, score_texts
from polymodal.training.pipeline import FitResult, features_for, fit_in_memory, predict_probs, run_inference
from polymodal.training.plots import evaluation_plots
from polymodal.training.report import write_model_card, write_plots
from polymodal.training.streaming import fit_stream

RECIPES = {TABLE_RUN: TABLE_RECIPE, GENERATION_RUN: GENERATION_RECIPE}
# Up to this many rows, predict's row check decodes each image to its encoder input (kept for the forward pass:
# one read per file); more rows are checked by header and decoded batch by batch (memory stays flat).
DECODE_ROWS = 64


class MultimodalPredictor:
    """Train and use a model on a table whose columns mix images, text, audio and tabular values.

    >>> p = MultimodalPredictor(label="answer").fit(train_df, valid_df)
    >>> p.evaluate(test_df); p.predict(df); p.predict_proba(df); p.save("runs/x")
    >>> MultimodalPredictor.load("runs/x")

    `task="caption"` or `"vqa-open"` trains a text generator with the same interface (`predict` returns
    text; decoding settings per call, e.g. `predict(df, method="greedy")`); the default `None` classifies or
    regresses. `kind` says which ("table" or "generation").
    """

    def __init__(self, label: str | list[str], problem_type: str | dict | None = None,
                 path: str | os.PathLike | None = None, verbose: bool = True, task: str | None = None,
                 preset: str = FAST, eval_metric: str | None = None, members: Sequence[str] | None = None,
                 folds: int | None = None, **config) -> None:
        # preset balanced/best: fit trains an ensemble (polymodal/ensemble) and the calls below go to it;
        # `members` / `folds` replace the preset's portfolio (e.g. ["fusion:concat"]: a 5-fold bag of one network)
        self.preset, self._ensemble = check_preset(preset), None
        self._ensemble_options = {"eval_metric": eval_metric, "members": list(members or []), "folds": folds}
        if preset == FAST and (members or folds):
            raise PolymodalError("members and folds choose an ensemble's portfolio: give --preset balanced or best")
        if preset != FAST:  # a misspelt member fails now, not after the feature cache is built
            EnsembleSettings(preset=preset, **self._ensemble_options)
        if preset != FAST and task is not None:
            raise PolymodalError(f"--preset {preset} ensembles classifiers and regressors; task {task!r} takes "
                                 "--preset fast")
        if task is None:
            self.kind = TABLE_RUN
            self.config: FitConfig | GenerationConfig = FitConfig(label=label, problem_type=problem_type, **config)
        else:
            if task not in GENERATION_TASKS:
                raise PolymodalError(f"task must be one of {', '.join(GENERATION_TASKS)} (or None to classify or "
                                     f"regress), not {task!r}")
            if problem_type not in (None, GENERATION):
                raise PolymodalError(f"task {task!r} generates text; problem_type {problem_type!r} does not apply")
            self.kind = GENERATION_RUN
            self.config = GenerationConfig.from_options(label, task, config)
        self.path = Path(path) if path else None
        self.verbose = verbose
        self._result: FitResult | None = None
        self.model = self.prep = self.task = None
        self.model_id: str | None = None
        self.metrics: dict = {}
        self.engines = EngineChoice()

    @classmethod
    def from_rebuilt(cls, r: Rebuilt, path: str | os.PathLike | None = None) -> MultimodalPredictor:
        """A predictor over a rebuilt run (training/build.py: rebuild)."""
        self = cls.__new__(cls)
        self.kind, self.config, self.prep, self.model, self.task = r.kind, r.config, r.prep, r.model, r.task
        self.path = Path(path) if path else None
        self.verbose, self._result, self.model_id, self.metrics = False, None, r.model_id, dict(r.metrics)
        self.preset, self._ensemble = FAST, None
        self.engines = EngineChoice(saved=r.model, folder=path)  # these weights are the ones model_id names
        return self

    # ---- training ------------------------------------------------------------------------------------
    def fit(self, train_data, valid_data=None, test_data=None, resume: bool = False,
            **overrides) -> MultimodalPredictor:
        """Train; `valid_data` defaults to a split of `train_data` (stratified; by input for generators);
        `test_data` is only scored. With `resume=True` (and the same data and settings), continue an
        interrupted run in `path` from its last checkpoint; the result equals an uninterrupted run."""
        what = ("a classifier or regressor" if self.kind == TABLE_RUN
                else f"task {self.config.task!r} (a text generator)")
        self.config = replace_config(self.config, overrides, what)
        if self.preset != FAST:
            return self._fit_ensemble(train_data, valid_data, test_data, resume)
        stream = getattr(self.config, "stream", False)
        if stream:  # shard files read chunk by chunk (training/streaming.py), never whole
            if any(isinstance(d, pd.DataFrame) for d in (train_data, valid_data)):
                raise PolymodalError("stream=True reads Parquet or WebDataset shard files; a DataFrame is already in "
                                     "memory: fit it without stream")
            train, valid = train_data, valid_data
        else:
            train = as_table(train_data)
            valid = as_table(valid_data) if valid_data is not None else None
        if resume and not self.path:
            raise PolymodalError("resume needs the run folder: MultimodalPredictor(..., path=run_dir)")
        run_dir = self.path or Path(tempfile.mkdtemp(prefix="polymodal-run-"))
        state_config = (self.config.to_dict() if self.kind == TABLE_RUN
                        else {"problem_type": None, **self.config.to_dict()})
        artifacts.atomic_write_json(Path(run_dir) / artifacts.FIT_STATE, {
            "config": state_config,
            "tables": {k: _table_ref(v) for k, v in (("train", train_data), ("valid", valid_data),
                                                     ("test", test_data))}})
        try:
            if stream:
                res = fit_stream(train, valid, self.config, run_dir, log=self._log, resume=resume)
            else:
                res = fit_in_memory(train, valid, self.config, self.recipe, run_dir, log=self._log, resume=resume)
        finally:
            if not self.path:  # a scratch folder for checkpoints and logs: the weights are in memory now
                shutil.rmtree(run_dir, ignore_errors=True)
        self._result, self.config = res, res.config
        self.model, self.prep, self.task = res.model, res.prep, res.task
        self.model_id = None  # new weights: their id comes with save (an ONNX graph cached for the old id is stale)
        self.metrics = fit_summary(res)
        if test_data is not None:
            self.metrics["test"] = self.evaluate(test_data)
        if self.path:
            self.save(self.path)
        return self

    @property
    def recipe(self):
        return RECIPES[self.kind]

    # ---- inference -----------------------------------------------------------------------------------
    def _prepare(self, data, with_target: bool, allow_missing: Sequence[str] = (), engine: str | None = None,
                 decode: bool = True):
        """Checked rows, cached features of frozen inputs (PyTorch engine, > 64 rows), the images the check
        decoded (<= 64 rows: each file is read once) and the module that runs them: the model, or its verified
        ONNX graph (compress/engine.py; the whole graph: no feature cache)."""
        self.require_model()
        df = ensure_usable(as_table(data), self.prep, allow_missing)
        decoded: dict | None = {} if decode and len(df) <= DECODE_ROWS else None
        df, problems = raise_or_drop(df, check_rows(df, self.prep, with_target, decoded), "error", can_skip=False)
        module = self.inference_module(engine, df)
        keys = frozen_keys(self.model, self.prep, self.config) if len(df) > 64 and module is self.model else []
        df, feats, _, _ = features_for(df, self.prep, self.model, keys, self.config, self.device, self._log, "error",
                                       engine)  # the cache's encoder passes follow the engine choice too
        return df, feats, module, decoded

    def inference_module(self, engine: str | None = None, rows: pd.DataFrame | None = None) -> torch.nn.Module:
        """What predicts for `engine` ("auto" | "torch" | "onnx"; None: POLYMODAL_ENGINE, else "auto"): the
        PyTorch model or its ONNX graph, exported on first use and checked against PyTorch on `rows`."""
        return self.engines.module(engine, self.model, self.task, self.prep, self.path, self.model_id, rows,
                                   onnx_able=self.kind == TABLE_RUN)

    def predict_proba(self, data, as_pandas: bool = True, allow_missing: Sequence[str] = (),
                      engine: str | None = None) -> pd.DataFrame | np.ndarray:
        """Class probabilities (columns = classes), or predicted values for regression.

        Multi-task: one block per label, columns "label:class" (and "label" for a regression label). Every
        input column the model was trained on must be in `data`, except those in `allow_missing` (missing inputs).
        `engine`: "auto" (default: onnxruntime when the run's ONNX graph passes its parity check), "torch", "onnx"."""
        if self._ensemble:
            return self._ensemble.predict_proba(data, as_pandas, allow_missing)
        if self.kind == GENERATION_RUN:
            raise PolymodalError(f"a {self.config.task} model generates text and has no class probabilities: use "
                                 "predict (and evaluate for its scores)")
        df, feats, module, decoded = self._prepare(data, with_target=False, allow_missing=allow_missing,
                                                   engine=engine)
        probs, _ = predict_probs(module, self.task, self.prep, df, self.config, feats, with_target=False,
                                 decoded=decoded)
        if not as_pandas:
            return probs
        return pd.DataFrame(probs.reshape(len(df), -1), columns=self.task.output_columns(self.config.label),
                            index=df.index)

    def predict(self, data, as_pandas: bool = True, allow_missing: Sequence[str] = (), engine: str | None = None,
                **decode) -> pd.Series | pd.DataFrame | np.ndarray:
        """Predicted labels (a Series; multi-task: a DataFrame with one column per label); generators: the
        generated text, keyword arguments overriding the run's decoding settings (DecodeConfig)."""
        if self._ensemble:
            return self._ensemble.predict(data, as_pandas, allow_missing)
        if self.kind == GENERATION_RUN:
            df, texts = self._generate(data, decode, with_target=False, allow_missing=allow_missing)
            return pd.Series(texts, index=df.index, name=self.config.label) if as_pandas else np.asarray(texts)
        if decode:
            raise PolymodalError(f"{', '.join(decode)}: decoding settings apply to text generators only")
        # a file is read once (not again in predict_proba); a DataFrame is copied once, there
        data = data if isinstance(data, pd.DataFrame) else as_table(data)
        probs = self.predict_proba(data, as_pandas=False, allow_missing=allow_missing, engine=engine)
        values = self.task.labels(probs)
        index = data.index if as_pandas else None
        if isinstance(values, dict):
            frame = pd.DataFrame(values, index=index)
            return frame if as_pandas else frame.to_numpy()
        return pd.Series(values, name=self.config.label, index=index) if as_pandas else np.asarray(values)

    def evaluate(self, data, plots_dir: str | os.PathLike | None = None, allow_missing: Sequence[str] = (),
                 engine: str | None = None, **decode) -> dict[str, float]:
        """All metrics for a labelled table (multi-task: "label/metric" per label plus their mean "score";
        generators: BLEU, ROUGE-L, CIDEr-D, exact match); with `plots_dir`, also a confusion-matrix PNG."""
        if self._ensemble:
            return self._ensemble.evaluate(data, plots_dir, allow_missing)
        if self.kind == GENERATION_RUN:
            df, texts = self._generate(data, decode, with_target=True, allow_missing=allow_missing)
            return {**score_texts(texts, df, self.prep, self.config), "rows": len(df)}
        df, feats, module, decoded = self._prepare(data, with_target=True, allow_missing=allow_missing, engine=engine)
        probs, target = predict_probs(module, self.task, self.prep, df, self.config, feats, decoded=decoded)
        metrics = self.task.metrics(probs, target)
        metrics["rows"] = len(df)
        evaluation_plots(self.task, self.prep.classes, probs, target, plots_dir)
        return metrics

    def _generate(self, data, decode: dict, with_target: bool, allow_missing: Sequence[str] = ()
                  ) -> tuple[pd.DataFrame, list[str]]:
        settings = self.decode_config(decode)
        df, feats, _, _ = self._prepare(data, with_target=with_target, allow_missing=allow_missing, engine="torch",
                                        decode=False)
        return df, generate_texts(self.model, self.task.vocab, self.prep, df, self.config, feats, settings)

    def decode_config(self, settings: dict | None = None) -> DecodeConfig:
        """The run's decoding settings with `settings` on top (generators)."""
        return DecodeConfig.from_dict({**self.config.decode, **(settings or {})})

    def answer_batch(self, batch: Batch) -> list[dict]:
        """Per-row answers {"prediction", "probabilities"} for a collated batch (what the server batches),
        through the same inference loop as predict."""
        if self._ensemble:
            return self._ensemble.answer_batch(batch)
        self.require_model()
        vocab, decode = getattr(self.task, "vocab", None), self.decode_config() if self.kind == GENERATION_RUN else None

        def step(model, b):  # generators decode token ids; other models give logits
            return model.generate(b, vocab, decode) if self.kind == GENERATION_RUN else model(b)

        rows = len(next(iter(batch["present"].values()))) if batch.get("present") else 1
        outs: list = []
        module = self.inference_module()  # the default engine ("auto": ONNX once the run's graph is verified)
        run_inference(module, [batch], self.device, step, rows, lambda out, _: outs.append(out))
        if self.kind == GENERATION_RUN:
            return [{"prediction": t, "probabilities": None} for t in self.task.vocab.decode(outs[0])]
        return outputs_to_answers(self.task, outs[0], self.config.label)

    # ---- persistence ---------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the run folder (config, preprocessing, weights, tokenizers, metrics, plots, model card)."""
        if self._ensemble:
            return self._ensemble.save(path)
        self.require_model()
        path = Path(path)
        res = self._result
        extra = {"kind": self.kind}
        if self.kind == GENERATION_RUN:
            extra.update(task=self.config.task, vocabulary=self.task.vocab.ids)
        self.model_id = artifacts.save_run(path, self.model, self.prep, self.config.to_dict(), self.metrics,
                                           res.history if res else None, extra=extra)
        self.engines = EngineChoice(saved=self.model, folder=path)  # a graph for these weights goes beside them
        if self.kind == GENERATION_RUN:
            self.task.vocab.tokenizer.save_pretrained(str(path / artifacts.DECODER_TOKENIZER))
        artifacts.write_manifest(path)  # after every model file, before the reports
        write_plots(path, res, self.kind)
        write_model_card(path, self)
        if res and res.bad_rows:
            pd.DataFrame([dataclasses.asdict(p) for p in res.bad_rows]).to_csv(path / "bad_rows.csv", index=False)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | None = None) -> MultimodalPredictor | OnnxPredictor:
        """Rebuild from a run folder, offline; GPU-trained runs load on CPU. A folder written by `polymodal
        compress` loads as what it holds: a MultimodalPredictor (student, pruned, PyTorch int8) or an
        onnxruntime `OnnxPredictor` (int8 ONNX), which predicts, evaluates and serves alike.
        (`polymodal.runs.load_run` loads every kind of run folder, alignment runs included.)"""
        if is_ensemble(path):
            return EnsemblePredictor.load(path)
        if is_compressed(path):
            r = rebuild_compressed(path)
            return r if isinstance(r, OnnxPredictor) else cls.from_rebuilt(r, path)
        return cls.from_rebuilt(rebuild(path, device), path)

    # ---- ensembles (preset balanced / best) -----------------------------------------------------------
    def _fit_ensemble(self, train_data, valid_data, test_data, resume: bool) -> MultimodalPredictor:
        if resume or self.kind != TABLE_RUN or getattr(self.config, "stream", False):
            raise PolymodalError(f"--preset {self.preset} trains in memory from the start (no --resume or --stream)")
        settings = EnsembleSettings(preset=self.preset, time_limit=self.config.time_limit, **self._ensemble_options)
        self._ensemble = EnsemblePredictor.train(train_data, valid_data, test_data, self.config, settings,
                                                 self.path, self._log)
        self.prep, self.task, self.metrics = self._ensemble.prep, self._ensemble.task, self._ensemble.metrics
        return self

    def leaderboard(self, test_data=None) -> pd.DataFrame:
        """Each model's validation score (and test score with `test_data`), weight, fit and predict seconds:
        every member of an ensemble, or the one network of a --preset fast run."""
        if self._ensemble:
            return self._ensemble.leaderboard(test_data)
        self.require_model()
        row = {"model": f"fusion:{self.config.fusion}",
               **{f"val_{k}": v for k, v in self.metrics.get("valid", {}).items()}}
        if test_data is not None:
            row.update({f"test_{k}": v for k, v in self.evaluate(test_data).items()})
        return pd.DataFrame([{**row, "weight": 1.0, "fit_time_s": self.metrics.get("fit_seconds")}])

    # ---- helpers -------------------------------------------------------------------------------------
    def require_model(self) -> None:
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


def fit_summary(res: FitResult) -> dict:
    """metrics.json's training part: validation metrics, fit time, cache use, bad rows, epochs run."""
    return {"valid": res.val_metrics, "fit_seconds": round(res.fit_seconds, 2), "cache": res.cache_stats,
            "bad_rows": len(res.bad_rows),
            "epochs": int(res.history["epoch"].max()) + 1 if "epoch" in res.history else None}
