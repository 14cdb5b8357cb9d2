"""The table side of alignment: what a column holds, vector cells, positive groups, missing rows, the split.

Positives: rows sharing a value of ``pair_id`` (e.g. a category) are all positives of each other; without
it, rows with the same left value or the same right value are (a caption used for several images is a
positive of each of them), found as connected groups. The validation split keeps such groups whole (when
there are at least 20 of them).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from polymodal.data.dataset import Problem, raise_or_drop
from polymodal.data.readers import is_missing
from polymodal.data.schema import infer_column_type
from polymodal.data.split import group_split
from polymodal.errors import DataError, PolymodalError
from polymodal.retrieval.config import VECTOR, AlignConfig, Log
from polymodal.types import AUDIO, CATEGORICAL, ID, IMAGE, TEXT

__all__ = ["column_modality", "drop_missing", "parse_vector", "positive_groups", "split_alignment_pairs",
           "vector_matrix"]


def parse_vector(v: Any) -> np.ndarray | None:
    """A 1-D float64 array from a list/array cell or a JSON-array string; None for anything else."""
    if isinstance(v, (list, tuple, np.ndarray)):
        arr = np.asarray(v, dtype=np.float64)
    elif isinstance(v, str) and v.lstrip().startswith("["):
        try:
            arr = np.asarray(json.loads(v), dtype=np.float64)
        except (ValueError, TypeError):
            return None
    else:
        return None
    return arr if arr.ndim == 1 else None


def column_modality(df: pd.DataFrame, column: str, overrides: dict[str, str]) -> str:
    """image | text | audio | vector for one alignment column (``overrides`` win)."""
    if column not in df.columns:
        raise DataError(f"column '{column}' not found (columns: {', '.join(map(str, df.columns))})",
                        file=df.attrs.get("source"))
    if column in overrides:
        mod = overrides[column]
        if mod not in (IMAGE, TEXT, AUDIO, VECTOR):
            raise PolymodalError(f"column '{column}': alignment sides are image, text, audio or vector, not {mod!r}")
        return mod
    values = [v for v in df[column] if not is_missing(v)]
    if not values:
        raise DataError("every value is missing", file=df.attrs.get("source"), column=column)
    if all(parse_vector(v) is not None for v in values[:200]):
        return VECTOR
    mod, _ = infer_column_type(df[column], df.attrs.get("base_dir", os.getcwd()))
    if mod in (IMAGE, TEXT, AUDIO):
        return mod
    if mod in (CATEGORICAL, ID) and not pd.api.types.is_numeric_dtype(df[column]):
        return TEXT  # short strings (class names, "a red square") are text to a retrieval model
    raise PolymodalError(f"column '{column}' looks {mod}; pass --column-types {column}=image|text|audio|vector")


def vector_matrix(df: pd.DataFrame, column: str, dim: int | None = None) -> np.ndarray:
    """(N, D) float32 from list/JSON-array cells, with the row of the first bad cell in the error."""
    rows = []
    for r, v in zip(df.index, df[column]):
        arr = None if is_missing(v) else parse_vector(v)
        if arr is None or not np.isfinite(arr).all():
            raise DataError("expected a list of finite numbers", file=df.attrs.get("source"), row=int(r),
                            column=column)
        if rows and len(arr) != len(rows[0]) or dim is not None and len(arr) != dim:
            raise DataError(f"vector has {len(arr)} numbers, expected {dim or len(rows[0])}",
                            file=df.attrs.get("source"), row=int(r), column=column)
        rows.append(arr)
    return np.stack(rows).astype(np.float32) if rows else np.zeros((0, dim or 0), np.float32)


def positive_groups(df: pd.DataFrame, left: str, right: str, pair_id: str | None = None) -> np.ndarray:
    """Group id per row: ``pair_id``'s value, else connected groups of rows sharing a left or right value."""
    if pair_id:
        if pair_id not in df.columns:
            raise DataError(f"pair-id column '{pair_id}' not found", file=df.attrs.get("source"))
        return pd.factorize(df[pair_id].astype(str))[0]
    parent = list(range(len(df)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for col in (left, right):
        first: dict[str, int] = {}
        for i, v in enumerate(df[col]):
            key = json.dumps(v.tolist() if isinstance(v, np.ndarray) else v, default=str)
            if key in first:
                parent[find(i)] = find(first[key])
            else:
                first[key] = i
    return pd.factorize(np.array([find(i) for i in range(len(df))]))[0]


def drop_missing(df: pd.DataFrame, columns: list[str], on_bad_rows: str, log: Log) -> pd.DataFrame:
    """Rows with a missing value in ``columns``: an error, or dropped (``on_bad_rows="skip"``)."""
    problems = [Problem(int(r), c, "value is missing") for c in columns for r, v in zip(df.index, df[c])
                if is_missing(v)]
    if not problems:
        return df
    kept, _ = raise_or_drop(df, problems, on_bad_rows)
    log(f"  skipped {len(df) - len(kept)} rows with a missing value")
    return kept


def split_alignment_pairs(df: pd.DataFrame, config: AlignConfig,
                          log: Log = print) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validation rows drawn by whole groups of identical values, so no validation image or caption also
    occurs in training. With fewer than 20 such groups (e.g. a handful of class captions) holding out whole
    groups would leave training without some of them: rows are then split individually."""
    if len(df) < 10:
        raise DataError(f"{len(df)} pairs: at least 10 are needed to train and validate an alignment",
                        file=df.attrs.get("source"))
    groups = positive_groups(df, config.left, config.right)
    if len(set(groups)) >= 20:
        train, valid = group_split(df, groups, config.valid_fraction, config.seed)
        log(f"  split: {len(train)} train / {len(valid)} valid pairs (whole groups of repeated values)")
        return train, valid
    tr, va = train_test_split(np.arange(len(df)), test_size=config.valid_fraction, random_state=config.seed)
    log(f"  split: {len(tr)} train / {len(va)} valid pairs (only {len(set(groups))} groups of repeated "
        "values: split by row)")
    out = df.iloc[np.sort(tr)], df.iloc[np.sort(va)]
    for part in out:
        part.attrs.update(df.attrs)
    return out
