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
    """k (train, held-out) index pairs: stratified for classes when every class can be (multi-label targets,
    (N, L) 0/1: iterative stratification), grouped when asked (whole groups, unstratified for multi-label)."""
    n = len(y)
    multilabel = classification and y.ndim == 2
    if groups is not None:
        k = min(k, len(np.unique(groups)))
        if k < 2:
            raise DataError("bagging needs at least 2 groups of rows (--group-column or shared files)")
        splitter = StratifiedGroupKFold(k, shuffle=True, random_state=seed) if classification and not multilabel \
            else GroupKFold(k, shuffle=True, random_state=seed)
        return list(splitter.split(np.zeros(n), y if classification and not multilabel else None, groups))
    if multilabel:
        return iterative_folds(np.asarray(y) > 0, min(k, n), seed)
    if classification and np.bincount(y).min(initial=n) >= k:
        return list(StratifiedKFold(k, shuffle=True, random_state=seed).split(np.zeros(n), y))
    return list(KFold(min(k, n), shuffle=True, random_state=seed).split(np.zeros(n)))


def iterative_folds(y: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Iterative stratification of multi-label rows (Sechidis, Tsoumakas & Vlahavas, ECML PKDD 2011): the
    rarest label's rows are dealt first, each to the fold that still wants most of that label (ties: the
    fold that wants most rows, then at random), so rare labels spread over every fold; rows with no label
    go last, to the folds short of rows. `y`: (N, L) bool."""
    rng = np.random.default_rng(seed)
    n = len(y)
    want_rows = np.full(k, n / k)
    want_label = np.tile(y.sum(0) / k, (k, 1)).astype(np.float64)  # fold × label
    fold = np.full(n, -1)
    left = np.ones(n, bool)
    while left.any():
        counts = np.where(y[left].any(0), y[left].sum(0), np.inf)
        if np.isinf(counts).all():  # only rows without any label remain
            rows, label = rng.permutation(np.flatnonzero(left)), None
        else:
            label = int(np.argmin(counts))
            rows = rng.permutation(np.flatnonzero(left & y[:, label]))
        for r in rows:
            need = want_label[:, label] if label is not None else want_rows
            best = np.flatnonzero(need == need.max())
            if len(best) > 1:
                best = best[want_rows[best] == want_rows[best].max()]
            f = int(rng.choice(best))
            fold[r], left[r] = f, False
            want_rows[f] -= 1
            want_label[f] -= y[r]
    idx = np.arange(n)
    return [(idx[fold != f], idx[fold == f]) for f in range(k)]


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
