"""The portfolio: each member fits on one fold's training rows and predicts any rows, in one output form —
(N, C) class probabilities over the ensemble's classes, (N, L) per-label probabilities (multi-label), or (N,)
values in the label's units.

- matrix members read the Matrix of ensemble/features.py (tabular columns + cached embeddings), with every
  learned transform (scaling, one-hot, PCA per embedding column) fitted on the fold's training rows only:
  LightGBM, extra trees, a linear model (logistic / ridge, ridge's penalty chosen by leave-one-out CV), k-NN;
  multi-label: extra trees and k-NN natively multi-output, LightGBM and the logistic model one binary model
  per label (a label constant in the fold's training rows predicts that constant);
- fusion members are the fit pipeline's own network (`training.fit.fit` → prepare + train_and_score) with
  a given fusion, saved per fold as an ordinary table run folder and rebuilt by `training.build.rebuild`
  (multi-label: the pipeline's own sigmoid head).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import joblib
import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.decomposition import PCA
from sklearn.ensemble import ExtraTreesClassifier, ExtraTreesRegressor
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from torch import nn

from polymodal.data.preprocess import Preprocessor
from polymodal.ensemble.config import FUSION_SHARE, MATRIX_SHARES, check_member
from polymodal.ensemble.features import Matrix
from polymodal.errors import PolymodalError
from polymodal.problem_types import MULTILABEL, MULTITASK, REGRESSION
from polymodal.training import artifacts
from polymodal.training.build import TABLE_RUN, frozen_keys, rebuild
from polymodal.training.config import FitConfig
from polymodal.training.fit import fit as fit_network
from polymodal.training.pipeline import Log, features_for, predict_probs


@dataclass
class Problem:
    """What every member is told about the label. Multi-task: `tasks` holds each label's own Problem, and a
    member's output is theirs side by side, in `tasks.MultiTask`'s probability layout."""

    problem_type: str
    classes: list[str]  # [] for regression
    seed: int
    target_mean: float = 0.0  # regression: the encoded target's standardisation
    target_std: float = 1.0
    tasks: dict[str, Problem] = field(default_factory=dict)

    @property
    def regression(self) -> bool:
        return self.problem_type == REGRESSION

    @property
    def multilabel(self) -> bool:
        return self.problem_type == MULTILABEL

    @property
    def multitask(self) -> bool:
        return self.problem_type == MULTITASK

    def slices(self) -> dict[str, tuple[slice, slice]]:
        """Multi-task: label → (its columns in a member's output, its columns in the encoded target)."""
        out, o, t = {}, 0, 0
        for label, sub in self.tasks.items():
            width, target = (1 if sub.regression else len(sub.classes)), (len(sub.classes) if sub.multilabel else 1)
            out[label] = (slice(o, o + width), slice(t, t + target))
            o, t = o + width, t + target
        return out


def problem_of(prep: Preprocessor, seed: int) -> Problem:
    """The Problem of a fitted Preprocessor (a multi-task one: each label's view)."""
    if prep.schema.problem_type == MULTITASK:
        return Problem(MULTITASK, [], seed, tasks={label: problem_of(prep.label_view(label), seed)
                                                   for label in prep.schema.labels})
    return Problem(prep.schema.problem_type, list(prep.classes or []), seed, float(prep.target_mean or 0.0),
                   float(prep.target_std or 1.0))


@dataclass
class Rows:
    """Some rows of a table, as each kind of member reads them: the DataFrame (networks), the Matrix
    (others) and the target (class ids or values in the label's units; None when predicting)."""

    df: pd.DataFrame
    matrix: Matrix
    y: np.ndarray | None = None

    def take(self, idx: np.ndarray) -> Rows:
        return Rows(self.df.iloc[idx], self.matrix.rows(idx), None if self.y is None else self.y[idx])


class Member(Protocol):
    """A portfolio member: `fit` within `seconds`, `predict` in the ensemble's output form, and its fitted
    state saved to / loaded from a path inside the run folder."""

    name: str
    share: float  # relative share of the time budget

    def fit(self, train: Rows, valid: Rows, problem: Problem, seconds: float, folder: Path, log: Log) -> Any: ...

    def predict(self, fitted: Any, rows: Rows, problem: Problem) -> np.ndarray: ...

    def save(self, fitted: Any, folder: Path) -> None: ...

    def load(self, folder: Path) -> Any: ...


def place(probs: np.ndarray, seen: list[int], n_classes: int) -> np.ndarray:
    """Probabilities over the classes a fold model saw → columns of all the ensemble's classes."""
    out = np.zeros((len(probs), n_classes), np.float64)
    out[:, seen] = probs
    return out


# ---- matrix members --------------------------------------------------------------------------------------
@dataclass
class FittedMatrix:
    transform: ColumnTransformer
    model: Any


class MatrixMember:
    """An sklearn-style model on the Matrix; `kind` picks it (lightgbm | extra_trees | linear | knn)."""

    def __init__(self, kind: str, share: float) -> None:
        self.name, self.kind, self.share = kind, kind, share

    def transform(self, layout: dict[str, list[int]], n_rows: int, seed: int) -> ColumnTransformer:
        trees = self.kind in ("lightgbm", "extra_trees")
        parts = []
        if layout.get("numeric"):
            parts.append(("numeric", "passthrough" if trees else StandardScaler(), layout["numeric"]))
        if layout.get("categorical"):
            parts.append(("categorical", "passthrough" if trees else
                          OneHotEncoder(handle_unknown="ignore", sparse_output=False), layout["categorical"]))
        for name, cols in layout.items():
            if name.startswith("emb:"):  # PCA per embedding column, fitted on this fold's training rows
                k = max(1, min(32 if trees else 64, len(cols), n_rows - 1))
                pca = PCA(k, random_state=seed)
                parts.append((name, pca if trees else make_pipeline(pca, StandardScaler()), cols))
        if not parts:
            raise PolymodalError(f"{self.name}: the table has no tabular column and no cached embedding to read")
        return ColumnTransformer(parts, remainder="drop", sparse_threshold=0)

    def estimator(self, problem: Problem, n_rows: int):
        reg, seed = problem.regression, problem.seed
        if self.kind == "lightgbm":
            import lightgbm  # heavy optional import: only when this member trains

            params = dict(n_estimators=2000, learning_rate=0.05, num_leaves=31 if n_rows > 1000 else 15,
                          min_child_samples=max(3, min(20, n_rows // 50)), subsample=0.9, subsample_freq=1,
                          colsample_bytree=0.8, reg_lambda=1.0, random_state=seed, n_jobs=1, verbose=-1)
            return lightgbm.LGBMRegressor(**params) if reg else lightgbm.LGBMClassifier(**params)
        if self.kind == "extra_trees":
            cls = ExtraTreesRegressor if reg else ExtraTreesClassifier
            # regression: half the features per split instead of sklearn's all. 5-fold CV, 300 trees, measured on
            # the shared 2-core machine: diabetes RMSE 55.8 vs 56.8 in 4.7 s vs 6.2 s; MovieLens mean rating
            # (+ PCA-32 of text/poster embeddings) 0.458 vs 0.454 in 49 s vs 75 s
            return cls(n_estimators=300, n_jobs=1, random_state=seed, **({"max_features": 0.5} if reg else {}))
        if self.kind == "linear":
            return RidgeCV(alphas=np.logspace(-3, 3, 13)) if reg else LogisticRegression(C=1.0, max_iter=2000)
        if self.kind == "knn":
            k = max(1, min(15, n_rows - 1))
            return KNeighborsRegressor(k, weights="distance") if reg else KNeighborsClassifier(k, weights="distance")
        raise PolymodalError(f"unknown member kind {self.kind!r}")

    def fit(self, train: Rows, valid: Rows, problem: Problem, seconds: float, folder: Path, log: Log
            ) -> FittedMatrix:
        ct = self.transform(train.matrix.layout, len(train.y), problem.seed)
        xt = ct.fit_transform(train.matrix.X)
        xv = ct.transform(valid.matrix.X) if self.kind == "lightgbm" else None
        if problem.multilabel and self.kind in ("lightgbm", "linear"):  # one binary model per label
            binary = dataclasses.replace(problem, problem_type="binary")
            start, labels, models = time.time(), train.y.shape[1], []
            for j in range(labels):
                y = train.y[:, j]
                models.append(float(y[0]) if y.min() == y.max() else  # constant here: predict it
                              self._fit_one(binary, xt, y, xv, valid.y[:, j], start + seconds * (j + 1) / labels))
            return FittedMatrix(ct, models)
        return FittedMatrix(ct, self._fit_one(problem, xt, train.y, xv, valid.y, time.time() + seconds))

    def _fit_one(self, problem: Problem, xt: np.ndarray, y: np.ndarray, xv: np.ndarray | None,
                 yv: np.ndarray, deadline: float) -> Any:
        """One fitted estimator (LightGBM: early stopping on the held-out rows, no tree after `deadline`)."""
        model = self.estimator(problem, len(y))
        if self.kind == "lightgbm":
            import lightgbm  # heavy optional import: only when this member trains

            def out_of_time(env) -> None:  # stop adding trees when the fold's share of the budget is spent
                if time.time() > deadline:
                    raise lightgbm.callback.EarlyStopException(env.iteration, env.evaluation_result_list)

            # early stopping on the fold's held-out rows, as AutoGluon's bagged GBMs do
            model.fit(xt, y, eval_X=(xv,), eval_y=(yv,),
                      callbacks=[lightgbm.early_stopping(50, verbose=False), out_of_time])
        else:
            model.fit(xt, y)
        return model

    def predict(self, fitted: FittedMatrix, rows: Rows, problem: Problem) -> np.ndarray:
        x = fitted.transform.transform(rows.matrix.X)
        if problem.regression:
            return np.asarray(fitted.model.predict(x), np.float64).reshape(-1)
        if problem.multilabel:
            return multilabel_proba(fitted.model, x)
        probs = np.asarray(fitted.model.predict_proba(x), np.float64)
        probs /= probs.sum(1, keepdims=True)  # float32 inputs give float32 sums that drift from 1 by ~1e-8
        return place(probs, [int(c) for c in fitted.model.classes_], len(problem.classes))

    def save(self, fitted: FittedMatrix, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / ".model.joblib.tmp"
        joblib.dump(fitted, tmp)
        tmp.replace(folder / "model.joblib")

    def load(self, folder: Path) -> FittedMatrix:
        return joblib.load(folder / "model.joblib")  # the run's manifest checked its SHA-256 first


def multilabel_proba(model: Any, x: np.ndarray) -> np.ndarray:
    """(N, L) P(label on) from one model per label (a float: a label constant in training) or a multi-output
    sklearn model (predict_proba: one (N, classes seen) array per label)."""
    if isinstance(model, list):
        probs = [np.full(len(x), m) if isinstance(m, float) else m.predict_proba(x)[:, list(m.classes_).index(1)]
                 for m in model]
    else:
        probs = [p[:, list(c).index(1)] if 1 in c else np.zeros(len(x))
                 for p, c in zip(model.predict_proba(x), model.classes_)]
    return np.stack(probs, axis=1).astype(np.float64)


# ---- fusion networks -------------------------------------------------------------------------------------
@dataclass
class FittedNetwork:
    model: nn.Module
    prep: Preprocessor
    task: Any
    config: FitConfig


class FusionMember:
    """The fit pipeline's network with one fusion; each fold is an ordinary table run folder."""

    def __init__(self, fusion: str, config: FitConfig, share: float) -> None:
        self.name, self.fusion, self.share = f"fusion:{fusion}", fusion, share
        self.config = dataclasses.replace(config, fusion=fusion, progress=False, time_limit=None)

    def fit(self, train: Rows, valid: Rows, problem: Problem, seconds: float, folder: Path, log: Log
            ) -> FittedNetwork:
        # Lightning stops at its max_time and keeps the best checkpoint: the fold's share of the budget
        limit = max(1.0, seconds) if np.isfinite(seconds) else None  # no --time-limit: an unlimited share
        config = dataclasses.replace(self.config, seed=problem.seed, time_limit=limit)
        if problem.multilabel:  # inferred from "a|b" cells on all rows; a fold's rows must not decide otherwise
            config = dataclasses.replace(config, problem_type=MULTILABEL)
        if problem.multitask:  # one network, a head per label (the fit pipeline's multi-task model)
            config = dataclasses.replace(config, problem_type={k: t.problem_type for k, t in problem.tasks.items()})
        with quiet_lightning():
            res = fit_network(train.df, valid.df, config, folder, log=lambda m: None)
        shutil.rmtree(folder / "checkpoints", ignore_errors=True)  # the best weights are in the model now
        return FittedNetwork(res.model, res.prep, res.task, res.config)

    def predict(self, fitted: FittedNetwork, rows: Rows, problem: Problem) -> np.ndarray:
        keys = frozen_keys(fitted.model, fitted.prep, fitted.config)
        df, feats, _, _ = features_for(rows.df, fitted.prep, fitted.model, keys, fitted.config, "cpu",
                                       lambda m: None, "error")
        probs, _ = predict_probs(fitted.model, fitted.task, fitted.prep, df, fitted.config, feats, with_target=False)
        return self.outputs(fitted, probs, problem)

    @staticmethod
    def outputs(fitted: FittedNetwork, probs: np.ndarray, problem: Problem) -> np.ndarray:
        """A fold network's task probabilities (over the classes its fold saw) → the ensemble's output form."""
        if problem.multitask:
            blocks, n = fitted.task.split(np.asarray(probs)), len(probs)
            return np.concatenate([place_output(blocks[k], fitted.prep.label_view(k).classes, sub).reshape(n, -1)
                                   for k, sub in problem.tasks.items()], axis=1)
        return place_output(probs, fitted.prep.classes, problem)

    def save(self, fitted: FittedNetwork, folder: Path) -> None:
        artifacts.save_run(folder, fitted.model, fitted.prep, fitted.config.to_dict(), {},
                           extra={"kind": TABLE_RUN})
        artifacts.write_manifest(folder)

    def load(self, folder: Path) -> FittedNetwork:
        r = rebuild(folder)
        return FittedNetwork(r.model, r.prep, r.task, r.config)


def place_output(probs: np.ndarray, seen: list[str], problem: Problem) -> np.ndarray:
    """Probabilities over the classes `seen` (values, for regression) → the ensemble's output form."""
    if problem.regression:
        return np.asarray(probs, np.float64).reshape(-1)
    index = {c: i for i, c in enumerate(problem.classes)}
    return place(probs, [index[c] for c in seen], len(problem.classes))


@contextmanager
def quiet_lightning():
    """Lightning's per-Trainer banners and warnings (devices, tips, batch counts) and transformers' "Loading
    weights" bar (a text encoder is built again for every fold), once per fold, would bury the ensemble's own
    progress lines; errors still raise."""
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric", "lightning")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    bars = sys.modules.get("transformers.utils.logging")  # only when a text encoder brought transformers in
    shown = bars is not None and bars.is_progress_bar_enabled()
    if shown:
        bars.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        if shown:
            bars.enable_progress_bar()


def build_member(name: str, config: FitConfig) -> Member:
    """A member by its name in a preset (ensemble/config.py)."""
    check_member(name)
    if name.startswith("fusion:"):
        return FusionMember(name.split(":", 1)[1], config, FUSION_SHARE)
    return MatrixMember(name, MATRIX_SHARES[name])
