"""EnsemblePredictor: the `contracts.Predictor` front of an ensemble run (kind "ensemble"): predict,
predict_proba, evaluate, leaderboard, save and load. `MultimodalPredictor(..., preset="best")` trains one and
hands its calls here; `MultimodalPredictor.load` / `runs.load_run` return it for an ensemble folder."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from polymodal.data.dataset import check_rows, raise_or_drop
from polymodal.data.readers import as_table
from polymodal.ensemble.config import EnsembleSettings
from polymodal.ensemble.fit import Ensemble, fit_ensemble, keep_known, one_blas_thread, targets
from polymodal.ensemble.members import Member, Rows
from polymodal.ensemble.run_folder import (
    ENSEMBLE_RUN,
    ensemble_output,
    leaderboard,
    load_ensemble,
    member_predictions,
    save_ensemble,
    single_model_only,
    test_scores,
)
from polymodal.ensemble.serving import answers, batch_output
from polymodal.errors import PolymodalError
from polymodal.tasks import task_from_prep
from polymodal.training.config import FitConfig
from polymodal.training.fit import ensure_usable
from polymodal.training.pipeline import Log, check_finite
from polymodal.training.plots import evaluation_plots


class EnsemblePredictor:
    """A bagged, selected and calibrated portfolio of members (ensemble/fit.py)."""

    kind = ENSEMBLE_RUN

    def __init__(self, ensemble: Ensemble, metrics: dict | None = None, path: str | os.PathLike | None = None
                 ) -> None:
        self.ensemble, self.metrics = ensemble, dict(metrics or {})
        self.config = ensemble.config
        self.prep = ensemble.featurizer.prep
        self.task = task_from_prep(self.prep, self.config)
        self.path = Path(path) if path else None

    @classmethod
    def train(cls, train, valid, test, config: FitConfig, settings: EnsembleSettings, path: str | None,
              log: Log, members: list[Member] | None = None) -> EnsemblePredictor:
        """Fit (scratch files in a temporary folder), score `test` if given, save to `path` if given."""
        scratch = Path(tempfile.mkdtemp(prefix="polymodal-ensemble-"))
        try:
            ens = fit_ensemble(as_table(train), as_table(valid) if valid is not None else None, config, settings,
                               scratch, log, members)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        self = cls(ens, {"valid": {f"oof_{ens.metric}": ens.scores["ensemble"]},
                         "fit_seconds": round(ens.fit_seconds, 2)})
        if test is not None:
            self.metrics["test"] = self.evaluate(test)
        if path:
            self.save(path)
        return self

    # ---- inference -----------------------------------------------------------------------------------
    def _rows(self, data, with_target: bool, allow_missing: Sequence[str] = (), engine: str | None = None) -> Rows:
        if engine not in (None, "auto", "torch"):
            raise PolymodalError(f"an ensemble run predicts with its members' own engines; --engine {engine} "
                                 "applies to single-model runs")
        df = ensure_usable(as_table(data), self.prep, allow_missing)
        if with_target:
            df = keep_known(df, self.prep)
        df, _ = raise_or_drop(df, check_rows(df, self.prep, with_target), "error", can_skip=False)
        y = targets(df, self.ensemble.featurizer) if with_target else None
        return Rows(df, self.ensemble.featurizer.matrix(df), y)

    def _output(self, rows: Rows) -> np.ndarray:
        used = [n for n, w in self.ensemble.weights.items() if w > 0]
        out = ensemble_output(self.ensemble, member_predictions(self.ensemble, rows, used))
        check_finite(out, rows.df)
        return out

    def predict_proba(self, data, as_pandas: bool = True, allow_missing: Sequence[str] = (),
                      engine: str | None = None) -> pd.DataFrame | np.ndarray:
        """Class probabilities (columns = classes), or predicted values for regression."""
        rows = self._rows(data, False, allow_missing, engine)
        out = self._output(rows)
        if not as_pandas:
            return out
        return pd.DataFrame(out.reshape(len(rows.df), -1), columns=self.task.output_columns(self.config.label),
                            index=rows.df.index)

    def predict(self, data, as_pandas: bool = True, allow_missing: Sequence[str] = (), engine: str | None = None
                ) -> pd.Series | pd.DataFrame | np.ndarray:
        """Predicted labels (a Series; multi-task: a DataFrame with one column per label)."""
        data = as_table(data)
        probs = self.predict_proba(data, as_pandas=False, allow_missing=allow_missing, engine=engine)
        values = self.task.labels(probs)
        if isinstance(values, dict):  # multi-task: one column per label, as MultimodalPredictor.predict
            frame = pd.DataFrame(values, index=data.index if as_pandas else None)
            return frame if as_pandas else frame.to_numpy()
        if not as_pandas:
            return np.asarray(values)
        return pd.Series(values, name=self.config.label, index=data.index)

    def evaluate(self, data, plots_dir: str | os.PathLike | None = None, allow_missing: Sequence[str] = (),
                 engine: str | None = None) -> dict[str, float]:
        """The same metrics a single model reports (task.metrics), on the ensemble's output; `plots_dir`: the
        confusion matrix / scatter plots as for single models."""
        rows = self._rows(data, True, allow_missing, engine)
        probs, target = self._output(rows), self.prep.encode_target(rows.df)
        metrics = self.task.metrics(probs, target)
        metrics["rows"] = len(rows.df)
        evaluation_plots(self.task, self.prep.classes, probs, target, plots_dir)
        return metrics

    def leaderboard(self, test=None) -> pd.DataFrame:
        """Every member: out-of-fold score, test score (with `test`), weight, fit / predict seconds, status."""
        if test is None:
            return leaderboard(self.ensemble)
        scores, seconds = test_scores(self.ensemble, self._rows(test, True), time.time)
        return leaderboard(self.ensemble, scores, seconds)

    def answer_batch(self, batch) -> list[dict]:
        """Per-row answers {"prediction", "probabilities"} for rows the server collated with this run's
        Preprocessor (ensemble/serving.py): what `polymodal serve` calls."""
        with one_blas_thread():
            out = batch_output(self.ensemble, batch)
        return answers(self.task, out, self.config.label)

    @property
    def model(self):
        """Single-model tools (export, compress) need one network; an ensemble has many."""
        raise PolymodalError(single_model_only(self.path, self.ensemble))

    # ---- persistence ---------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        self.path = save_ensemble(self.ensemble, path, self.metrics)
        return self.path

    @classmethod
    def load(cls, path: str | os.PathLike) -> EnsemblePredictor:
        ens, metrics = load_ensemble(path)
        return cls(ens, metrics, path)
