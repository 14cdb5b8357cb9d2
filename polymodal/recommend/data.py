"""Interactions for recommendation: reading and checking the tables, implicit feedback, vocabularies,
per-user chronological sequences, and the evaluation splits (leave-one-out with sampled negatives, cold items).

Ids are kept as strings ("1", not 1.0), so a user or item id reads the same from a CSV, a Parquet file, the
command line and an HTTP request. A user's interactions are ordered by time; ties (and tables without a
time column) keep the file's row order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from polymodal.data.readers import as_table, is_missing
from polymodal.errors import DataError

USER, ITEM, TIME = "user", "item", "time"  # the columns of a normalised interaction frame
NEGATIVES = "negatives"  # a holdout frame's column: the sampled negative item ids of each row


def id_strings(values: pd.Series) -> list[str]:
    """Ids as strings; integral floats (a numeric column pandas widened) lose their ".0"."""
    if pd.api.types.is_float_dtype(values):
        return [str(int(v)) if float(v).is_integer() else str(v) for v in values]
    return [str(v).strip() for v in values]


def _need_columns(df: pd.DataFrame, columns: list[str], what: str) -> None:
    for col in columns:
        if col not in df.columns:
            raise DataError(f"{what} column '{col}' not found (columns: {', '.join(map(str, df.columns))})",
                            file=df.attrs.get("source"), column=col)


def _no_missing(df: pd.DataFrame, col: str) -> None:
    bad = [r for r, v in zip(df.index, df[col]) if is_missing(v)]
    if bad:
        more = f" (and {len(bad) - 1} more rows)" if len(bad) > 1 else ""
        raise DataError(f"the id is missing{more}", file=df.attrs.get("source"), row=int(bad[0]), column=col)


def _numbers(df: pd.DataFrame, col: str) -> np.ndarray:
    x = pd.to_numeric(df[col], errors="coerce").to_numpy(np.float64)
    bad = np.flatnonzero(~np.isfinite(x))
    if len(bad):
        more = f" (and {len(bad) - 1} more rows)" if len(bad) > 1 else ""
        raise DataError(f"value {df[col].iloc[bad[0]]!r} is not a number{more}", file=df.attrs.get("source"),
                        row=int(df.index[bad[0]]), column=col)
    return x


def read_interactions(data: pd.DataFrame | str | os.PathLike, user_col: str = "user_id",
                      item_col: str = "item_id", rating_col: str | None = "rating",
                      time_col: str | None = "timestamp", threshold: float | None = None) -> pd.DataFrame:
    """A checked interaction frame with columns user, item (strings) and time, in chronological order.

    `threshold`: implicit feedback keeps only rows whose rating is at least this (None: every row is a
    positive). A missing `time_col` means file order. A (user, item) pair seen twice is kept once (the later).
    """
    df = as_table(data)
    source = df.attrs.get("source", "<DataFrame>")
    _need_columns(df, [user_col, item_col], "interaction")
    _no_missing(df, user_col)
    _no_missing(df, item_col)
    if threshold is not None:
        if not rating_col or rating_col not in df.columns:
            raise DataError(f"a rating threshold needs a rating column; '{rating_col}' not found",
                            file=source, column=rating_col)
        df = df[_numbers(df, rating_col) >= threshold]
        if len(df) == 0:
            raise DataError(f"no rating is at least the threshold {threshold}", file=source, column=rating_col)
    has_time = bool(time_col) and time_col in df.columns
    out = pd.DataFrame({USER: id_strings(df[user_col]), ITEM: id_strings(df[item_col]),
                        TIME: _numbers(df, time_col) if has_time else np.arange(len(df), dtype=np.float64)},
                       index=df.index)
    out = out.sort_values(TIME, kind="stable")  # stable: ties keep the file's order
    out = out[~out.duplicated([USER, ITEM], keep="last")]
    out.attrs.update(source=source, base_dir=df.attrs.get("base_dir"))
    return out


def read_side_table(data: pd.DataFrame | str | os.PathLike, id_col: str, what: str) -> pd.DataFrame:
    """A users or items table, checked: the id column exists, is never missing and is unique."""
    df = as_table(data)
    _need_columns(df, [id_col], f"{what} id")
    _no_missing(df, id_col)
    ids = pd.Series(id_strings(df[id_col]), index=df.index)
    dup = ids[ids.duplicated()]
    if len(dup):
        raise DataError(f"{what} id {dup.iloc[0]!r} appears more than once", file=df.attrs.get("source"),
                        row=int(dup.index[0]), column=id_col)
    df = df.copy()
    df[id_col] = ids.to_numpy()
    return df


@dataclass
class Vocab:
    """Ids in a fixed order; the index of an id is its row in every array of the model."""

    ids: list[str]

    def __post_init__(self) -> None:
        self.index = {v: i for i, v in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def lookup(self, values, what: str, source: str | None = None, rows=None, column: str | None = None,
               ) -> np.ndarray:
        """Indices of `values`; an unknown id is a DataError naming it (and its file/row when given)."""
        out = np.empty(len(values), np.int64)
        for j, v in enumerate(values):
            i = self.index.get(str(v))
            if i is None:
                raise DataError(f"unknown {what} id {v!r}", file=source,
                                row=None if rows is None else int(rows[j]), column=column)
            out[j] = i
        return out


def sequences(frame: pd.DataFrame, users: Vocab, items: Vocab, column: str | None = None) -> list[np.ndarray]:
    """Each user's item indices in chronological order (`frame` is a read_interactions frame)."""
    u = users.lookup(frame[USER].tolist(), "user", frame.attrs.get("source"), frame.index, column)
    i = items.lookup(frame[ITEM].tolist(), "item", frame.attrs.get("source"), frame.index, column)
    order = np.argsort(u, kind="stable")  # the frame is in time order: a stable sort keeps it per user
    u, i = u[order], i[order]
    bounds = np.searchsorted(u, np.arange(len(users) + 1))
    return [i[bounds[k]:bounds[k + 1]] for k in range(len(users))]


def sample_negatives(seen: set[int], n_items: int, n: int, rng: np.random.Generator,
                     pool: np.ndarray | None = None) -> np.ndarray:
    """`n` distinct item indices from `pool` (default: every item) that are not in `seen` (fewer when the
    pool is small)."""
    pool = np.arange(n_items) if pool is None else pool
    free = pool[~np.isin(pool, np.fromiter(seen, np.int64, len(seen)))]
    return rng.choice(free, min(n, len(free)), replace=False) if len(free) else free


def leave_one_out(frame: pd.DataFrame, n_negatives: int = 99, seed: int = 0,
                  catalogue: list[str] | None = None, min_left: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, holdout): each user's latest interaction is held out (users left with fewer than `min_left`
    interactions keep all of theirs). The holdout has columns user, item, negatives: `n_negatives` items
    from `catalogue` (default: the frame's items) that the user never interacted with (the NCF protocol)."""
    items = Vocab(catalogue if catalogue is not None else sorted(set(frame[ITEM])))
    counts = frame.groupby(USER, sort=False)[ITEM].transform("size")
    last = frame[counts > min_left].groupby(USER, sort=False).tail(1)
    train = frame.drop(index=last.index)
    train.attrs.update(frame.attrs)
    rng = np.random.default_rng(seed)
    seen = frame.groupby(USER, sort=False)[ITEM].agg(list)
    negatives = []
    for user in last[USER]:
        idx = sample_negatives({items.index[v] for v in seen[user] if v in items.index}, len(items), n_negatives,
                               rng)
        negatives.append([items.ids[j] for j in idx])
    holdout = pd.DataFrame({USER: last[USER].to_numpy(), ITEM: last[ITEM].to_numpy(), NEGATIVES: negatives})
    return train, holdout


def read_holdout(data: pd.DataFrame | str | os.PathLike, user_col: str = "user_id",
                 item_col: str = "test_item_id", negatives_col: str = "negative_item_ids") -> pd.DataFrame:
    """A fixed leave-one-out split file (user, held-out item, space-separated negative item ids) as a holdout
    frame (columns user, item, negatives)."""
    df = as_table(data)
    _need_columns(df, [user_col, item_col, negatives_col], "split")
    for col in (user_col, item_col, negatives_col):
        _no_missing(df, col)
    negatives = [str(v).split() for v in df[negatives_col]]
    out = pd.DataFrame({USER: id_strings(df[user_col]), ITEM: id_strings(df[item_col]), NEGATIVES: negatives},
                       index=df.index)
    out.attrs.update(source=df.attrs.get("source"))
    return out


def is_holdout_table(df: pd.DataFrame, negatives_col: str = "negative_item_ids") -> bool:
    return NEGATIVES in df.columns or negatives_col in df.columns


def cold_item_split(frame: pd.DataFrame, fraction: float = 0.15, seed: int = 0,
                    ) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(train, test, cold items): a random `fraction` of the interacted items becomes cold: every interaction
    with them moves to `test`, so a model trained on `train` has never seen them."""
    items = np.array(sorted(set(frame[ITEM])))
    if not 0 < fraction < 1:
        raise DataError(f"the cold-item fraction must be between 0 and 1, got {fraction}")
    rng = np.random.default_rng(seed)
    cold = sorted(rng.choice(items, max(1, int(round(fraction * len(items)))), replace=False).tolist())
    is_cold = frame[ITEM].isin(set(cold))
    train, test = frame[~is_cold], frame[is_cold]
    train.attrs.update(frame.attrs)
    test.attrs.update(frame.attrs)
    return train, test, cold
