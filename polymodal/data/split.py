"""Train/validation splits: stratified by class, or by group so that rows sharing an input (an image's
several captions or questions) never sit on both sides — a split that separates them lets validation
scores lie."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupShuffleSplit, train_test_split

from polymodal.errors import DataError
from polymodal.problem_types import MULTILABEL, REGRESSION
from polymodal.types import MEDIA


def split_train_valid(df: pd.DataFrame, label: str, problem_type: str, fraction: float,
                      seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stratified split for classification; classes with a single row stay in train (they cannot be split)."""
    if len(df) < 4:
        raise DataError(f"the table has {len(df)} rows; at least 4 are needed to train and validate",
                        file=df.attrs.get("source"))
    keep = pd.Series(False, index=df.index)
    strat = None
    if problem_type not in (REGRESSION, MULTILABEL):
        # A multi-task table's first label may be missing on some rows: those rows form their own stratum
        # (astype(str) keeps NaN under pandas' string dtype, which train_test_split refuses).
        y = df[label].astype(object).where(df[label].notna(), "\0missing").astype(str)
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


NO_GROUPS = "none"  # group_column value that turns grouping off (split by row)


def _group_keys(values: pd.Series) -> np.ndarray:
    """One string per row; a missing value is a group of its own (rows with no image share nothing)."""
    keys = values.astype(str).to_numpy(dtype=object)
    missing = values.isna().to_numpy()
    keys[missing] = [f"\x00row{i}" for i in np.flatnonzero(missing)]
    return keys


def repeated_media(df: pd.DataFrame, columns: dict[str, str]) -> tuple[str, int, int] | None:
    """(column, rows with a value, distinct values) of the first image/audio/video column whose values repeat
    across rows (an image with several questions), or None."""
    for col, modality in columns.items():
        if modality in MEDIA and col in df.columns:
            values = df[col].dropna().astype(str)
            distinct = values.nunique()
            if 0 < distinct < len(values):
                return col, len(values), distinct
    return None


def row_groups(df: pd.DataFrame, columns: dict[str, str],
               group_column: str | None) -> tuple[np.ndarray | None, str]:
    """Group keys for the validation split, and one sentence saying how rows are grouped.

    `group_column` names the column whose equal values must stay on one side; None (the default) groups by
    the first image/audio/video column whose values repeat across rows, since a split that puts one image's
    questions on both sides scores memorised images, not generalisation; "none" splits by row."""
    if group_column == NO_GROUPS:
        return None, "split by row (--group-column none)"
    if group_column is not None:
        if group_column not in df.columns:
            raise DataError(f"group column '{group_column}' not found; columns are: "
                            f"{', '.join(map(str, df.columns))}", file=df.attrs.get("source"),
                            column=group_column)
        keys = _group_keys(df[group_column])
        return keys, f"validation keeps the rows of each '{group_column}' value together " \
                     f"({len(pd.unique(keys))} groups)"
    found = repeated_media(df, columns)
    if found is None:
        return None, ""
    col, rows, distinct = found
    keys = _group_keys(df[col])
    if len(pd.unique(keys)) < 4:
        return None, f"{rows} rows share {distinct} distinct values of '{col}': too few groups to split by, " \
                     "split by row"
    return keys, f"{rows} rows share {distinct} distinct values of '{col}': validation keeps each one's rows " \
                 f"together (--group-column COL to group by another column, --group-column none to split by row)"


def split_rows(df: pd.DataFrame, label: str, problem_type: str, fraction: float, seed: int,
               groups: np.ndarray | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`group_split` when groups are given, else `split_train_valid` (stratified by class)."""
    if groups is None:
        return split_train_valid(df, label, problem_type, fraction, seed)
    return group_split(df, groups, fraction, seed, what="groups")
