"""Train/validation splits: stratified by class, or by group so that rows sharing an input (an image's
several captions or questions) never sit on both sides — a split that separates them lets validation
scores lie."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupShuffleSplit, train_test_split

from polymodal.errors import DataError
from polymodal.problem_types import MULTILABEL, REGRESSION


def split_train_valid(df: pd.DataFrame, label: str, problem_type: str, fraction: float,
                      seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stratified split for classification; classes with a single row stay in train (they cannot be split)."""
    if len(df) < 4:
        raise DataError(f"the table has {len(df)} rows; at least 4 are needed to train and validate",
                        file=df.attrs.get("source"))
    keep = pd.Series(False, index=df.index)
    strat = None
    if problem_type not in (REGRESSION, MULTILABEL):
        y = df[label].astype(str)
        counts = y.map(y.value_counts())
        keep = counts < 2
        rest = y[~keep]
        if rest.nunique() >= 2 and int(len(rest) * fraction) >= rest.nunique():
            strat = rest
    tr, va = train_test_split(df[~keep], test_size=fraction, random_state=seed, stratify=strat)
    tr = pd.concat([tr, df[keep]])
    tr.attrs.update(df.attrs)
    va.attrs.update(df.attrs)
    return tr, va


def group_split(df: pd.DataFrame, groups: pd.Series | np.ndarray, fraction: float, seed: int,
                what: str = "distinct inputs") -> tuple[pd.DataFrame, pd.DataFrame]:
    """About `fraction` of the groups (not rows) to validation; rows of one group stay on one side. Both
    parts keep the table's order and attrs."""
    groups = np.asarray(groups)
    n = len(pd.unique(groups))
    if n < 4:
        raise DataError(f"the table has {n} {what}; at least 4 are needed to train and validate",
                        file=df.attrs.get("source"))
    tr, va = next(GroupShuffleSplit(1, test_size=fraction, random_state=seed).split(df, groups=groups))
    out = df.iloc[np.sort(tr)], df.iloc[np.sort(va)]
    for part in out:
        part.attrs.update(df.attrs)
    return out
