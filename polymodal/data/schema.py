"""Infer each column's modality by sampling rows, as AutoGluon's `infer_column_types` does.

Also infers the problem type from the label column. Both are overridable by the user.
"""

from __future__ import annotations

import os
from collections.abc import Hashable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from polymodal.data.readers import column_names, delimiter_hint, is_missing, resolve_path
from polymodal.data.timeseries import infer_channels, is_series_cell
from polymodal.errors import DataError
from polymodal.problem_types import BINARY, MULTICLASS, MULTILABEL, MULTITASK, PROBLEM_TYPES, REGRESSION
from polymodal.types import AUDIO, CATEGORICAL, ID, IMAGE, MODALITIES, NUMERIC, TEXT, TIMESERIES, VIDEO

IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
AUDIO_EXT = (".wav", ".flac", ".mp3", ".ogg", ".m4a", ".aiff", ".aif")
VIDEO_EXT = (".mp4", ".webm", ".avi", ".mov", ".mkv", ".m4v")
SERIES_EXT = (".npy", ".csv")  # time series stored one per file
MEDIA_EXT = {IMAGE: IMAGE_EXT, AUDIO: AUDIO_EXT, VIDEO: VIDEO_EXT, TIMESERIES: SERIES_EXT}

MULTILABEL_SEP = "|"


@dataclass
class Schema:
    """Column modalities (labels excluded) plus the label(s) and problem type(s).

    One label: ``label`` and its ``problem_type``. Several (multi-task): ``labels`` in order, ``label`` is the
    first, ``problem_type`` is "multitask" and ``problem_types`` holds each label's own.
    """

    columns: dict[str, str]
    label: str
    problem_type: str
    reasons: dict[str, str] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)
    problem_types: dict[str, str] = field(default_factory=dict)
    series_channels: dict[str, int] = field(default_factory=dict)  # time-series column → channels per step

    def __post_init__(self) -> None:
        if not self.labels:
            self.labels = [self.label]
        if not self.problem_types and self.problem_type != MULTITASK:
            self.problem_types = {self.label: self.problem_type}

    def of(self, modality: str) -> list[str]:
        return [c for c, m in self.columns.items() if m == modality]

    def to_dict(self) -> dict:
        return {"columns": self.columns, "label": self.label, "problem_type": self.problem_type,
                "labels": self.labels, "problem_types": self.problem_types,
                "series_channels": self.series_channels}

    @classmethod
    def from_dict(cls, d: dict) -> Schema:
        return cls(columns=dict(d["columns"]), label=d["label"], problem_type=d["problem_type"],
                   labels=list(d.get("labels") or []), problem_types=dict(d.get("problem_types") or {}),
                   series_channels=dict(d.get("series_channels") or {}))


def _media_kind(values: pd.Series, base_dir: str) -> tuple[str | None, str]:
    strings = [str(v).strip() for v in values]
    for kind, exts in MEDIA_EXT.items():
        has_ext = [s.lower().endswith(exts) for s in strings]
        if np.mean(has_ext) >= 0.9:
            exists = np.mean([os.path.exists(resolve_path(s, base_dir)) for s in strings])
            return kind, f"{int(100 * np.mean(has_ext))}% of sampled values end in a {kind} extension, " \
                         f"{int(100 * exists)}% exist on disk"
        # A folder of frames counts as a video column.
        if kind == VIDEO and np.mean([os.path.isdir(resolve_path(s, base_dir)) for s in strings]) >= 0.9:
            return VIDEO, "values are folders (frames)"
    return None, ""


def _nested(v: object) -> bool:
    """A list/array/object cell, or anything unhashable (pandas' nunique and value_counts need hashing)."""
    return isinstance(v, (tuple, np.ndarray)) or not isinstance(v, Hashable)


def infer_column_type(series: pd.Series, base_dir: str, sample: int = 500, seed: int = 0) -> tuple[str, str]:
    """Return (modality, reason) for one feature column."""
    values = series[[not is_missing(v) for v in series]]
    n = len(series)
    if len(values) == 0:
        return ID, "every value is missing"
    if any(_nested(v) for v in values):  # every value, not a sample: one would break nunique below
        probe = values if len(values) <= sample else values.sample(sample, random_state=seed)
        if all(is_series_cell(v) for v in probe):
            return TIMESERIES, "arrays of numbers (a time series per row)"
        # other JSON arrays/objects in a cell: no encoder takes them
        return ID, "nested values (lists, objects) are not a supported input; flatten them into columns"
    if len(values) > sample:
        values = values.sample(sample, random_state=seed)
    nunique_all = series.nunique(dropna=True)
    if nunique_all <= 1:
        return ID, "constant column"
    if pd.api.types.is_bool_dtype(series):
        return CATEGORICAL, "boolean"
    if pd.api.types.is_numeric_dtype(series):
        as_float = series.dropna().astype(float)
        integral = bool(np.all(np.mod(as_float, 1) == 0))
        if integral and nunique_all == n and n >= 20 and (
                as_float.is_monotonic_increasing or as_float.is_monotonic_decreasing):
            return ID, "unique, monotone integers (a row id)"
        if integral and nunique_all <= 10:
            return CATEGORICAL, f"integers with {nunique_all} distinct values"
        return NUMERIC, "numbers"
    kind, reason = _media_kind(values, base_dir)
    if kind:
        return kind, reason
    strings = values.astype(str)
    numeric_like = pd.to_numeric(strings, errors="coerce").notna().mean()
    if numeric_like >= 0.95:
        return NUMERIC, "strings holding numbers"
    words = strings.str.split().str.len().mean()
    ratio = nunique_all / max(1, series.notna().sum())
    if nunique_all == n and words <= 1.0 and n >= 20:
        return ID, "unique single-token strings (an id)"
    if words < 3 and (nunique_all <= 100 or ratio < 0.05):
        return CATEGORICAL, f"{nunique_all} distinct short values"
    return TEXT, f"free text ({words:.1f} words on average)"


def mixed_numbers(series: pd.Series) -> list[tuple[int, object]]:
    """(row, value) of the cells that are not numbers in a text column whose cells are mostly (>= 50%, < 100%)
    numbers; [] for any other column."""
    if pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
        return []
    values = series[[not is_missing(v) and not _nested(v) for v in series]]
    if not len(values):
        return []
    parsed = pd.to_numeric(values.astype(str), errors="coerce")
    share = float(parsed.notna().mean())
    if not 0.5 <= share < 1.0:
        return []
    return [(int(r), v) for r, v, x in zip(values.index, values, parsed) if pd.isna(x)]


def infer_problem_type(label: pd.Series, column: str = "label") -> str:
    values = label[[not is_missing(v) for v in label]]
    if len(values) == 0:
        raise DataError("the label column has no values", column=column)
    if any(isinstance(v, (list, tuple, np.ndarray)) for v in values):
        return MULTILABEL
    if any(_nested(v) for v in values):
        raise DataError("label values must be classes or numbers, not objects such as JSON {...}", column=column)
    if all(isinstance(v, str) for v in values) and \
            values.astype(str).str.contains(MULTILABEL_SEP, regex=False).mean() >= 0.1:
        return MULTILABEL
    nunique = values.nunique()
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        as_float = values.astype(float)
        if not np.all(np.mod(as_float, 1) == 0) or nunique > 20:
            return REGRESSION
    if nunique < 2:
        raise DataError(f"the label has a single class ({values.iloc[0]!r}); a classifier needs at least two",
                        column=column)
    return BINARY if nunique == 2 else MULTICLASS


def parse_overrides(spec: str | dict | None) -> dict[str, str]:
    """'a=image,b=text' or a dict → {column: modality}, checked against the known modalities."""
    if not spec:
        return {}
    pairs = spec if isinstance(spec, dict) else dict(p.split("=", 1) for p in spec.split(",") if p.strip())
    out = {}
    for col, mod in pairs.items():
        mod = mod.strip().lower()
        if mod not in MODALITIES:
            raise DataError(f"unknown modality '{mod}' for column '{col}' (choose from {', '.join(MODALITIES)})")
        out[col.strip()] = mod
    return out


def infer_schema(df: pd.DataFrame, label: str | list[str], column_types: str | dict | None = None,
                 problem_type: str | dict | None = None, sample: int = 500) -> Schema:
    """Infer the modality of every column but the label(s), and the problem type(s).

    Several labels (a list) make a multi-task schema; ``problem_type`` is then a dict label → type (labels not
    in it are inferred) or None.
    """
    source = df.attrs.get("source", "<DataFrame>")
    column_names(df, source)  # repeated names are an error here too, for frames that skipped as_table
    labels = [label] if isinstance(label, str) else list(label)
    if not labels or len(set(labels)) != len(labels):
        raise DataError(f"label columns must be given once each, got {labels}", file=source)
    for lab in labels:
        if lab not in df.columns:
            raise DataError(f"label column '{lab}' not found; columns are: {', '.join(map(str, df.columns))}"
                            + delimiter_hint(df), file=source)
    if len(labels) > 1:
        given = problem_type if isinstance(problem_type, dict) else {}
        if problem_type is not None and not isinstance(problem_type, dict):
            raise DataError("with several labels, give problem types per label (label=type,...)", file=source)
        types = {}
        for lab in labels:
            if lab in given and given[lab] not in PROBLEM_TYPES:
                raise DataError(f"unknown problem type '{given[lab]}' for label '{lab}' "
                                f"(choose from {', '.join(PROBLEM_TYPES)})")
            types[lab] = given.get(lab) or infer_problem_type(df[lab], column=lab)
        first = infer_schema(df.drop(columns=labels[1:]), labels[0], column_types, types[labels[0]], sample)
        return Schema(columns=first.columns, label=labels[0], problem_type=MULTITASK, reasons=first.reasons,
                      labels=labels, problem_types=types, series_channels=first.series_channels)
    label = labels[0]
    if isinstance(problem_type, dict):
        problem_type = problem_type.get(label)
    overrides = parse_overrides(column_types)
    for col in overrides:
        if col not in df.columns:
            raise DataError(f"--column-types names column '{col}', which the table does not have", file=source)
    base_dir = df.attrs.get("base_dir", os.getcwd())
    columns, reasons = {}, {}
    for col in df.columns:
        if col == label:
            continue
        if col in overrides:
            columns[col], reasons[col] = overrides[col], "set by the user"
        else:
            columns[col], reasons[col] = infer_column_type(df[col], base_dir, sample=sample)
    if problem_type is None:
        problem_type = infer_problem_type(df[label], column=label)
    elif problem_type not in PROBLEM_TYPES:
        raise DataError(f"unknown problem type '{problem_type}' (choose from {', '.join(PROBLEM_TYPES)})")
    if not any(m != ID for m in columns.values()):
        raise DataError("no usable feature column: every column besides the label is an id, constant or empty",
                        file=source)
    for col in columns:
        odd = None if col in overrides else mixed_numbers(df[col])
        if not odd:
            continue
        shown = ", ".join(f"row {r}: {v!r}" for r, v in odd[:5]) + (" ..." if len(odd) > 5 else "")
        fix = (f"fix those cells, or say what the column is with --column-types {col}=numeric (those cells are then "
               f"bad values) or {col}=categorical")
        if columns[col] != NUMERIC:  # dropped as an id, or read as words: a guess the user must confirm
            raise DataError(f"the column holds numbers except in {len(odd)} row(s) ({shown}), so its type is "
                            f"unclear: {fix}", file=source, row=odd[0][0], column=col)
        reasons[col] += f"; numbers except in {len(odd)} row(s) ({shown}): {fix}"
    channels = {c: infer_channels(df[c], base_dir, c, source) for c, m in columns.items() if m == TIMESERIES}
    return Schema(columns=columns, label=label, problem_type=problem_type, reasons=reasons,
                  series_channels=channels)
