"""The feature matrix the non-neural members read: the tabular columns as the fit pipeline preprocesses them
(standardised numbers, missing indicators, category ids) beside the cached embeddings of every frozen
image/text/audio/video column. It comes from the fit pipeline's own `prepare` stage (same schema,
preprocessing statistics, encoders and feature cache), and its encoders and preprocessing are saved as an
ordinary table run folder (`featurizer/`, head untrained), so predicting rebuilds it offline through
`training.build.rebuild`."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from torch import nn

from polymodal.data.preprocess import Preprocessor
from polymodal.training import artifacts
from polymodal.training.build import TABLE_RUN, frozen_keys, rebuild
from polymodal.training.config import FitConfig
from polymodal.training.fit import TABLE_RECIPE
from polymodal.training.pipeline import Log, features_for, prepare
from polymodal.types import TABULAR


@dataclass
class Matrix:
    """Rows × features for the non-neural members, and which columns are what (for per-block transforms:
    scaling, one-hot categories, PCA per embedding)."""

    X: np.ndarray  # float32 (N, D)
    layout: dict[str, list[int]]  # "numeric" | "categorical" | "emb:<input>" → column indices

    def rows(self, idx: np.ndarray) -> Matrix:
        return Matrix(self.X[idx], self.layout)


@dataclass
class Featurizer:
    """Preprocessing + frozen encoders → Matrix."""

    prep: Preprocessor
    model: nn.Module
    config: FitConfig

    @property
    def keys(self) -> list[str]:
        return frozen_keys(self.model, self.prep, self.config)

    def skipped(self) -> list[str]:
        """Inputs with no cached embedding (encoders that train from scratch): only the networks read them."""
        return [k for k in self.prep.inputs if k != TABULAR and k not in self.keys]

    def matrix(self, df: pd.DataFrame, feats: dict | None = None, log: Log = lambda m: None) -> Matrix:
        if feats is None:
            df, feats, _, _ = features_for(df, self.prep, self.model, self.keys, self.config, "cpu", log, "error")
        tab = self.prep.tabular_arrays(df) if TABULAR in self.prep.inputs else None
        return self.assemble(len(df), tab, feats)

    def assemble(self, n: int, tab: dict[str, np.ndarray] | None, feats: dict) -> Matrix:
        """The Matrix from `Preprocessor.tabular_arrays` output and {input: (features, present)} (a table's
        cached features, or a served batch's: ensemble/serving.py)."""
        parts, layout, width = [], {}, 0

        def add(name: str, block: np.ndarray) -> None:
            nonlocal width
            block = np.asarray(block, np.float32).reshape(n, -1)
            layout.setdefault(name, []).extend(range(width, width + block.shape[1]))
            parts.append(block)
            width += block.shape[1]

        if tab is not None:
            add("numeric", tab["numeric"])
            add("numeric", tab["numeric_missing"])
            if tab["categorical"].shape[1]:
                add("categorical", tab["categorical"])
        for key in sorted(self.keys):
            f, present = feats[key]
            add(f"emb:{key}", f)
            add("numeric", np.asarray(present, np.float32))  # a missing image/text row is not a zero vector
        if not parts:
            return Matrix(np.zeros((n, 0), np.float32), {})
        return Matrix(np.concatenate(parts, axis=1), layout)

    def save(self, path: str | os.PathLike) -> None:
        role = "ensemble featurizer: preprocessing and frozen encoders (the head is untrained and unused)"
        artifacts.save_run(path, self.model, self.prep, self.config.to_dict(), {}, extra={"kind": TABLE_RUN,
                                                                                          "role": role})
        artifacts.write_manifest(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Featurizer:
        r = rebuild(Path(path))
        return cls(r.prep, r.model, r.config)


def featurize(train_df: pd.DataFrame, config: FitConfig, log: Log) -> tuple[Featurizer, pd.DataFrame, Matrix]:
    """The fit pipeline's prepare stage over all training rows → (featurizer, the rows kept, their Matrix).
    Pooled vectors (not token sequences) are what the trees and linear models read, so the featurizer uses
    the concat fusion whatever the network members use."""
    config = dataclasses.replace(config, fusion="concat", fusion_opts={}, tokens=None, progress=False)
    # validation rows = the training rows: prepare wants a validation frame; the cache makes it a read
    p = prepare(train_df, train_df, config, TABLE_RECIPE, log)
    f = Featurizer(p.prep, p.model, p.config)
    return f, p.data["train"], f.matrix(p.data["train"], p.feats["train"])
