"""Time-series columns: one numeric sequence per row, as a list/array cell (Parquet, JSONL) or a path to a .npy or
.csv file.

A series is (T,) or (T, C): T time steps of C channels (a 1-D one is one channel). A CSV file's numeric
columns are its channels, in order (a header row is optional; drop time-stamp columns you do not want as a
channel). Every row of a column must have the column's channel count, which schema inference reads from the
first readable value (`Schema.series_channels`, so the encoder is sized before preprocessing). Preprocessing
fits per-channel mean/std on the training rows (saved in preprocess.json with the input's config); the
encoder input is `{"values": float32 (T', C) standardised, "mask": bool (T',)}` with T' ≤ `max_length` (longer
series are cropped: from the start, or a random window when augmenting); the Collator pads a batch to its
longest series and the mask marks the real steps. An empty array is a missing value.
"""

from __future__ import annotations

import io
import os

import numpy as np
import pandas as pd

from polymodal.data.readers import is_missing, resolve_path
from polymodal.errors import DataError

SERIES_EXT = (".npy", ".csv")
STATS_ROWS = 2000  # rows sampled to fit the per-channel statistics


def is_series_cell(v: object) -> bool:
    """A list/array cell holding numbers (NaN included: reported when loaded), 1-D or 2-D with at least two
    values (schema inference)."""
    if isinstance(v, (str, bytes, dict, set)):
        return False
    try:
        a = _floats(v)
    except (TypeError, ValueError):
        return False
    return a.ndim in (1, 2) and a.size >= 2


def _floats(v) -> np.ndarray:
    if isinstance(v, np.ndarray) and v.dtype == object:  # Parquet's arrays of per-step arrays
        if len(v) and isinstance(v[0], (list, tuple, np.ndarray)):
            return np.stack([np.asarray(r, dtype=np.float64) for r in v])
        return v.astype(np.float64)
    return np.asarray(v, dtype=np.float64)


def as_array(v, where: str = "value") -> np.ndarray:
    """A cell's array-like (nested lists, numpy arrays, Parquet's arrays of arrays) → float32 (T, C)."""
    try:
        a = _floats(v)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where} is not an array of numbers ({exc})") from None
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise DataError(f"{where} has shape {a.shape}; a time series is (steps,) or (steps, channels)")
    if not np.isfinite(a).all():
        step = int(np.argwhere(~np.isfinite(a))[0][0])
        raise DataError(f"{where} holds a missing or infinite value at step {step}; fill or drop it")
    if np.abs(a).max(initial=0.0) > np.finfo(np.float32).max:
        raise DataError(f"{where} holds values too large for float32")
    return a.astype(np.float32)


def _read_csv(data, name: str) -> np.ndarray:
    try:
        df = pd.read_csv(data)
        if len(df.columns) and all(_is_number(c) for c in df.columns):  # no header: the first row is data
            if hasattr(data, "seek"):
                data.seek(0)
            df = pd.read_csv(data, header=None)
    except pd.errors.EmptyDataError:
        raise DataError(f"time-series file is empty: {name}") from None
    except Exception as exc:  # the CSV parser raises many types
        raise DataError(f"cannot read time-series CSV {name}: {exc}") from None
    numeric = df.select_dtypes("number")
    if numeric.shape[1] == 0:
        raise DataError(f"time-series CSV {name} has no numeric column")
    return as_array(numeric.to_numpy(), f"time-series file {name}")


def _is_number(s) -> bool:
    try:
        float(s)
    except (TypeError, ValueError):
        return False
    return True


def load_series(value, name: str | None = None) -> np.ndarray:
    """A cell (array-like), a .npy/.csv path, or uploaded bytes (.npy or CSV) → float32 (T, C)."""
    if isinstance(value, (bytes, bytearray)):
        label = name or "uploaded series"
        if bytes(value[:6]) == b"\x93NUMPY":
            try:
                arr = np.load(io.BytesIO(value), allow_pickle=False)
            except Exception as exc:  # noqa: BLE001 - a corrupt upload
                raise DataError(f"cannot read {label}: {exc}") from None
            return as_array(arr, label)
        return _read_csv(io.BytesIO(value), label)
    if not isinstance(value, (str, os.PathLike)):
        return as_array(value, name or "value")
    path = str(value)
    if not os.path.exists(path):
        raise DataError(f"time-series file not found: {path}")
    if path.lower().endswith(".npy"):
        try:
            arr = np.load(path, allow_pickle=False)
        except Exception as exc:  # noqa: BLE001 - truncated or not a .npy file
            raise DataError(f"cannot read time-series file {path}: {exc}") from None
        return as_array(arr, f"time-series file {path}")
    if path.lower().endswith(".csv"):
        return _read_csv(path, path)
    raise DataError(f"time-series files are .npy or .csv, not {path}")


def series_value(v, base_dir: str):
    """A table cell → None (missing, including an empty array), a resolved path, or the array-like itself."""
    if isinstance(v, str):
        return None if is_missing(v) else resolve_path(v, base_dir)
    if is_missing(v):
        return None
    try:
        if len(v) == 0:
            return None
    except TypeError:  # a scalar number: not a series (as_array reports it)
        pass
    return v


def infer_channels(values: pd.Series, base_dir: str, column: str, source: str | None = None) -> int:
    """Channel count of a time-series column: that of its first readable value."""
    first: DataError | None = None
    for row, v in zip(values.index, values):
        v = series_value(v, base_dir)
        if v is None:
            continue
        try:
            return int(load_series(v).shape[1])
        except DataError as exc:
            first = first or DataError(exc.detail, file=source, row=int(row), column=column)
    if first:
        raise first
    raise DataError("the time-series column has no values", file=source, column=column)


def fit_series_config(values: pd.Series, base_dir: str, cfg: dict, channels: int, seed: int = 0) -> dict:
    """Input config with per-channel mean/std over the time steps of (up to STATS_ROWS) training rows; rows that
    do not load or have another channel count are skipped here (the row checks report them)."""
    vals = [v for v in (series_value(x, base_dir) for x in values) if v is not None]
    if len(vals) > STATS_ROWS:
        pick = np.random.default_rng(seed).choice(len(vals), STATS_ROWS, replace=False)
        vals = [vals[i] for i in sorted(pick)]
    total, sq, count = np.zeros(channels), np.zeros(channels), 0
    for v in vals:
        try:
            a = load_series(v).astype(np.float64)
        except DataError:
            continue
        if a.shape[1] != channels:
            continue
        total += a.sum(0)
        sq += (a * a).sum(0)
        count += len(a)
    mean = total / max(count, 1)
    std = np.sqrt(np.maximum(sq / max(count, 1) - mean ** 2, 0.0))
    std = np.where(std > 1e-8, std, 1.0)
    return {**cfg, "channels": int(channels), "mean": mean.tolist(), "std": std.tolist()}


def prepare_series(arr: np.ndarray, cfg: dict, where: str = "value", augment: bool = False,
                   rng: np.random.Generator | None = None) -> dict:
    """(T, C) array → the encoder input {"values": standardised float32 (T', C), "mask": bool (T',)}."""
    if arr.shape[1] != cfg["channels"]:
        raise DataError(f"{where} has {arr.shape[1]} channels; this column's series have {cfg['channels']}")
    if len(arr) == 0:
        raise DataError(f"{where} has no time steps")
    limit = int(cfg.get("max_length") or len(arr))
    if len(arr) > limit:
        start = int((rng or np.random.default_rng()).integers(0, len(arr) - limit + 1)) if augment else 0
        arr = arr[start:start + limit]
    x = (arr - np.asarray(cfg["mean"], np.float32)) / np.asarray(cfg["std"], np.float32)
    return {"values": x.astype(np.float32), "mask": np.ones(len(x), bool)}


def load_series_input(value, cfg: dict, augment: bool = False, rng: np.random.Generator | None = None) -> dict:
    """A non-missing cell (see `series_value`) → the encoder input."""
    where = f"time-series file {value}" if isinstance(value, str) else "the series"
    return prepare_series(load_series(value), cfg, where, augment, rng)


def series_placeholder(cfg: dict) -> dict:
    """A missing series: one zero step, masked out."""
    return {"values": np.zeros((1, int(cfg["channels"])), np.float32), "mask": np.zeros(1, bool)}


def series_problems(values: pd.Series, base_dir: str, cfg: dict) -> list[tuple[int, str]]:
    """(row, message) for every value that does not load or has the wrong channel count."""
    out, seen = [], {}
    for row, v in zip(values.index, values):
        v = series_value(v, base_dir)
        if v is None:
            continue
        key = v if isinstance(v, str) else None
        if key is not None and key in seen:
            msg = seen[key]
        else:
            try:
                load_series_input(v, {**cfg, "max_length": 1})
                msg = None
            except DataError as exc:
                msg = exc.detail
            if key is not None:
                seen[key] = msg
        if msg:
            out.append((int(row), msg))
    return out
