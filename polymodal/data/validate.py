"""`polymodal validate`: every problem in one or more tables, without training.

Missing or unreadable media, non-numeric values in numeric columns, missing or unseen labels, tiny
classes, conflicting duplicates within a table and identical rows shared between splits (leakage).
"""

from __future__ import annotations

import hashlib

import pandas as pd

from polymodal.data.audio import load_wave
from polymodal.data.dataset import check_rows
from polymodal.data.preprocess import Preprocessor
from polymodal.data.readers import is_missing, resolve_path
from polymodal.data.schema import infer_schema
from polymodal.data.transforms import load_image
from polymodal.data.video import decode_all
from polymodal.errors import DataError
from polymodal.problem_types import ONE_CLASS_PER_ROW
from polymodal.types import AUDIO, ID, IMAGE, TEXT, VIDEO

_PREP_DEFAULTS = {IMAGE: {"image_size": 224, "mean": [0.5] * 3, "std": [0.5] * 3},
                  TEXT: {"tokenizer": "minilm-l6"}, AUDIO: {"sample_rate": 16000},
                  VIDEO: {"num_frames": 8, "sampling": "uniform", "image_size": 8, "mean": [0.0] * 3,
                          "std": [1.0] * 3}}


def _row_hashes(df: pd.DataFrame, columns: list[str]) -> pd.Series:
    def h(row) -> str:
        return hashlib.sha1("\x1f".join("" if is_missing(v) else str(v) for v in row).encode()).hexdigest()

    return df[columns].apply(h, axis=1)


def validate_tables(tables: dict[str, pd.DataFrame], label: str, column_types=None,
                    problem_type: str | None = None, decode: bool = False) -> tuple[pd.DataFrame, dict]:
    """Problems as a table (split, row, column, problem) plus the inferred schema; the first table trains."""
    first = next(iter(tables))
    problems: list[dict] = []

    def add(split, row, column, message):
        problems.append({"split": split, "row": row, "column": column, "problem": message})

    try:
        schema = infer_schema(tables[first], label, column_types, problem_type)
    except DataError as exc:
        add(first, exc.row if exc.row is not None else "", exc.column or label, exc.detail)
        return pd.DataFrame(problems, columns=["split", "row", "column", "problem"]), {}
    try:
        prep = Preprocessor.fit(tables[first], schema, _PREP_DEFAULTS)
    except DataError as exc:
        add(first, exc.row if exc.row is not None else "", exc.column or label, exc.detail)
        return pd.DataFrame(problems, columns=["split", "row", "column", "problem"]), schema.to_dict()
    features = [c for c, m in schema.columns.items() if m != ID]
    for split, df in tables.items():
        for p in check_rows(df, prep, with_target=label in df.columns):
            add(split, "" if p.row < 0 else p.row, p.column, p.message)
        if decode:
            problems.extend(_decode_all(split, df, prep))
        if schema.problem_type in ONE_CLASS_PER_ROW and label in df.columns and split == first:
            counts = df[label].astype(str).value_counts()
            for cls, n in counts[counts < 2].items():
                add(split, "", label, f"class {cls!r} has only {n} row (too few to stratify or learn)")
        present = [c for c in features if c in df.columns]
        if present and label in df.columns:
            h = _row_hashes(df, present)
            groups = df.groupby(h)[label].agg(lambda s: s.astype(str).nunique())
            for key in groups[groups > 1].index:
                rows = df.index[h == key].tolist()
                add(split, rows[0], label, f"identical inputs with different labels in rows {rows[:10]}")
    hashes = {s: set(_row_hashes(df, [c for c in features if c in df.columns])) for s, df in tables.items()}
    names = list(tables)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = hashes[a] & hashes[b]
            if shared:
                dfb = tables[b]
                hb = _row_hashes(dfb, [c for c in features if c in dfb.columns])
                rows = dfb.index[hb.isin(shared)].tolist()
                add(b, rows[0], "*", f"{len(rows)} rows have inputs identical to rows of '{a}' "
                                     f"(leakage between splits), rows {rows[:10]}")
    return pd.DataFrame(problems, columns=["split", "row", "column", "problem"]), schema.to_dict()


def _decode_all(split: str, df: pd.DataFrame, prep: Preprocessor) -> list[dict]:
    """Fully decode every media file (catches truncated files that a header check misses)."""
    import os

    out = []
    base = df.attrs.get("base_dir", os.getcwd())
    for spec in prep.inputs.values():
        if spec.modality not in (IMAGE, AUDIO, VIDEO) or spec.columns[0] not in df.columns:
            continue
        col = spec.columns[0]
        for row, v in zip(df.index, df[col]):
            if is_missing(v) or not os.path.exists(resolve_path(v, base)):
                continue  # missing files are already reported by the header checks
            try:
                if spec.modality == IMAGE:
                    load_image(resolve_path(v, base), 8, [0.0] * 3, [1.0] * 3)
                elif spec.modality == VIDEO:
                    decode_all(resolve_path(v, base))
                else:
                    load_wave(resolve_path(v, base), 16000)
            except DataError as exc:
                out.append({"split": split, "row": row, "column": col, "problem": exc.detail})
    return out
