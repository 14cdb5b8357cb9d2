"""Folds for bagging and the time budget that members share."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

from polymodal.data.schema import Schema
from polymodal.data.split import row_groups
from polymodal.errors import DataError


def fold_groups(df: pd.DataFrame, schema: Schema, group_column: str | None, log) -> np.ndarray | None:
    """Groups whose rows must share a fold: the validation split's rule (data.split.row_groups: --group-column,
    else the first image/audio/video column whose files repeat across rows)."""
    groups, note = row_groups(df, schema.columns, group_column)
    if note:
        log(f"  folds: {note.replace('validation keeps', 'each fold keeps')}")
    return groups


def make_folds(y: np.ndarray, classification: bool, k: int, seed: int, groups: np.ndarray | None
               ) -> list[tuple[np.ndarray, np.ndarray]]:
    """k (train, held-out) index pairs: stratified for classes when every class can be, grouped when asked."""
    n = len(y)
    if groups is not None:
        k = min(k, len(np.unique(groups)))
        if k < 2:
            raise DataError("bagging needs at least 2 groups of rows (--group-column or shared files)")
        splitter = StratifiedGroupKFold(k, shuffle=True, random_state=seed) if classification \
            else GroupKFold(k, shuffle=True, random_state=seed)
        return list(splitter.split(np.zeros(n), y if classification else None, groups))
    if classification and np.bincount(y).min(initial=n) >= k:
        return list(StratifiedKFold(k, shuffle=True, random_state=seed).split(np.zeros(n), y))
    return list(KFold(min(k, n), shuffle=True, random_state=seed).split(np.zeros(n)))


@dataclass
class Budget:
    """Seconds left of `--time-limit` (unlimited when None). Training stops at `train_fraction` of it, leaving
    the rest for ensemble selection, calibration and writing the run folder."""

    limit: float | None
    t0: float = field(default_factory=time.time)
    train_fraction: float = 0.9

    def elapsed(self) -> float:
        return time.time() - self.t0

    def train_left(self) -> float:
        return float("inf") if self.limit is None else self.limit * self.train_fraction - self.elapsed()

    def status(self) -> str:
        if self.limit is None:
            return f"{self.elapsed():5.0f}s"
        return f"{self.elapsed():5.0f}s, {max(0.0, self.limit - self.elapsed()):4.0f}s left"
