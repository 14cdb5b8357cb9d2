"""Side tables (items, users) → row-aligned model inputs, one row per vocabulary id.

Column modalities come from the same inference as `polymodal fit` (`data.schema.infer_column_type`, with
user overrides). Image, text, audio and video columns go through the frozen pretrained encoders of
`polymodal.encoders` once, via the content-keyed feature cache (`encoders.cache.precompute_features`), so a
second fit on the same posters and plots costs no encoder pass. Numeric and categorical columns are
standardised / indexed by the data layer's `Preprocessor` and feed the trainable tabular encoder. An id with
no row in the side table has all of its inputs missing.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from polymodal.data.preprocess import Preprocessor
from polymodal.data.readers import is_missing
from polymodal.data.schema import Schema, infer_column_type, parse_overrides
from polymodal.encoders import build_encoder
from polymodal.encoders.cache import precompute_features
from polymodal.errors import DataError, PolymodalError
from polymodal.types import AUDIO, CATEGORICAL, IMAGE, NUMERIC, TABULAR, TEXT, VIDEO

FROZEN = (IMAGE, TEXT, AUDIO, VIDEO)  # encoded once by a pretrained encoder, through the feature cache
TABULAR_KINDS = (NUMERIC, CATEGORICAL)  # encoded together by the trainable tabular encoder
Log = Callable[[str], None]


@dataclass
class SideData:
    """Row-aligned arrays of one side: frozen features and their presence, and the tabular arrays."""

    frozen: dict[str, np.ndarray] = field(default_factory=dict)  # column → (N, D) float32
    present: dict[str, np.ndarray] = field(default_factory=dict)  # column → (N,) bool
    tabular: dict[str, np.ndarray] = field(default_factory=dict)  # numeric, numeric_missing, categorical
    pca: dict[str, np.ndarray] = field(default_factory=dict)  # column → (1 + k, D): mean, then components

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        """Flat name → tensor (for safetensors)."""
        out = {f"{prefix}/frozen/{k}": torch.from_numpy(np.ascontiguousarray(v, np.float32))
               for k, v in self.frozen.items()}
        out.update({f"{prefix}/present/{k}": torch.from_numpy(v.astype(np.uint8)) for k, v in self.present.items()})
        out.update({f"{prefix}/tabular/{k}": torch.from_numpy(np.ascontiguousarray(v))
                    for k, v in self.tabular.items()})
        out.update({f"{prefix}/pca/{k}": torch.from_numpy(np.ascontiguousarray(v, np.float32))
                    for k, v in self.pca.items()})
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], prefix: str) -> SideData:
        data = cls()
        for name, t in tensors.items():
            head, _, key = name.partition("/")
            if head != prefix:
                continue
            kind, _, col = key.partition("/")
            arr = t.numpy()
            if kind == "frozen":
                data.frozen[col] = arr
            elif kind == "present":
                data.present[col] = arr.astype(bool)
            elif kind == "tabular":
                data.tabular[col] = arr
            elif kind == "pca":
                data.pca[col] = arr
        return data

    def rows(self, idx: np.ndarray) -> SideData:
        return SideData({k: v[idx] for k, v in self.frozen.items()}, {k: v[idx] for k, v in self.present.items()},
                        {k: v[idx] for k, v in self.tabular.items()}, self.pca)


def pca_reduce(x: np.ndarray, present: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(reduced (N, k), [mean; components] (1 + k, D)): PCA fitted on the present rows; absent rows stay 0.

    A frozen 1280-d image feature projected to a few hundred units for every item at every step is most of
    the training time on a CPU and has more weights than a catalogue has items; its top principal components
    keep nearly all of its variance at a tenth of the width."""
    rows = x[present].astype(np.float64)
    mean = rows.mean(0) if len(rows) else np.zeros(x.shape[1])
    _, _, vt = np.linalg.svd(rows - mean, full_matrices=False)
    comps = vt[:k]
    out = np.where(present[:, None], (x - mean) @ comps.T, 0.0).astype(np.float32)
    return out, np.vstack([mean, comps]).astype(np.float32)


@dataclass
class SideSpec:
    """Which columns of a side table the model uses, how they are encoded, and the fitted preprocessing."""

    columns: dict[str, str] = field(default_factory=dict)  # column → modality
    encoders: dict[str, dict] = field(default_factory=dict)  # frozen column → {name, opts, out_dim, cache_id}
    prep: Preprocessor | None = None

    @property
    def frozen_dims(self) -> dict[str, int]:
        return {c: int(e["out_dim"]) for c, e in self.encoders.items()}

    @property
    def tabular_shape(self) -> tuple[int, list[int]] | None:
        """(numeric columns, category cardinalities) of the tabular input, or None without one."""
        if self.prep is None or TABULAR not in self.prep.inputs:
            return None
        cfg = self.prep.inputs[TABULAR].config
        return len(cfg["numeric"]), [len(self.prep.vocab[c]) for c in cfg["categorical"]]

    def to_dict(self) -> dict:
        return {"columns": self.columns, "encoders": self.encoders,
                "prep": None if self.prep is None else self.prep.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> SideSpec:
        return cls(dict(d["columns"]), dict(d["encoders"]),
                   None if d.get("prep") is None else Preprocessor.from_dict(d["prep"]))


def choose_columns(df: pd.DataFrame, id_col: str, columns: list[str] | None, column_types: str | dict | None,
                   allow_frozen: bool, what: str, log: Log) -> dict[str, str]:
    """column → modality for the columns the model uses: `columns` (default: all but the id), typed by
    inference unless `column_types` says otherwise. Columns no encoder here takes are skipped with a note."""
    source = df.attrs.get("source")
    overrides = parse_overrides(column_types)
    wanted = [c for c in df.columns if c != id_col] if columns is None else list(columns)
    for col in [*wanted, *overrides]:
        if col not in df.columns:
            raise DataError(f"{what} column '{col}' not found (columns: {', '.join(map(str, df.columns))})",
                            file=source, column=col)
    base = df.attrs.get("base_dir") or os.getcwd()
    out: dict[str, str] = {}
    for col in wanted:
        if col == id_col:
            continue
        mod = overrides.get(col) or infer_column_type(df[col], base)[0]
        usable = TABULAR_KINDS + (FROZEN if allow_frozen else ())
        if mod in usable:
            out[col] = mod
        elif columns is not None:  # named by the user: saying no is clearer than dropping it
            raise DataError(f"{what} column '{col}' is {mod}; the {what} tower takes "
                            f"{', '.join(usable)} columns", file=source, column=col)
        else:
            log(f"  {what} column {col!r} ({mod}) is not used")
    return out


def align(df: pd.DataFrame, id_col: str, ids: list[str]) -> pd.DataFrame:
    """One row per id, in `ids` order (an empty row for an id the table lacks); the index keeps each row's
    number in the table, for error messages."""
    row_of = {v: r for r, v in enumerate(df[id_col])}
    blank = pd.DataFrame({c: [None] for c in df.columns}, index=[-1])
    full = pd.concat([df.reset_index(drop=True).astype(object), blank])
    out = full.iloc[[row_of.get(i, len(df)) for i in ids]]
    out.attrs.update(df.attrs)
    return out


def _located(exc: DataError, source: str | None) -> DataError:
    return DataError(exc.detail, file=exc.file or source, row=exc.row, column=exc.column)


def tabular_arrays(spec: SideSpec, rows: pd.DataFrame) -> dict[str, np.ndarray]:
    """The tabular arrays of `rows` (columns the spec names; absent ones are missing values)."""
    if spec.tabular_shape is None:
        return {}
    try:
        return spec.prep.tabular_arrays(rows)
    except DataError as exc:
        raise _located(exc, rows.attrs.get("source")) from None


def fit_side(df: pd.DataFrame | None, id_col: str, ids: list[str], what: str, columns: list[str] | None = None,
             column_types: str | dict | None = None, encoders: dict[str, str] | None = None,
             encoder_opts: dict[str, dict] | None = None, allow_frozen: bool = True,
             cache_dir: str | os.PathLike | None = None, on_bad_files: str = "error", reduce_dim: int | None = 128,
             log: Log = print) -> tuple[SideSpec, SideData]:
    """Choose and encode the columns of a side table for the ids `ids` (None: no table, no inputs).
    Frozen features wider than `reduce_dim` are PCA-reduced to it (None: kept whole)."""
    if df is None:
        if columns:
            raise PolymodalError(f"{what} columns {columns} were asked for, but no {what} table was given")
        return SideSpec(), SideData()
    cols = choose_columns(df, id_col, columns, column_types, allow_frozen, what, log)
    rows = align(df, id_col, ids)
    n_missing = int((rows.index < 0).sum())
    if n_missing:
        log(f"  {n_missing} {what}s have no row in {df.attrs.get('source', 'the ' + what + ' table')}: "
            "their features are missing")
    encoders, encoder_opts = encoders or {}, encoder_opts or {}
    frozen_mods = {c: m for c, m in cols.items() if m in FROZEN}
    built: dict[str, torch.nn.Module] = {}
    by_modality: dict[str, torch.nn.Module] = {}
    for col, mod in frozen_mods.items():
        if mod not in by_modality:
            by_modality[mod] = build_encoder(mod, encoders.get(mod), **encoder_opts.get(mod, {})).freeze()
        built[col] = by_modality[mod]
    configs = {m: e.preprocess_config() for m, e in by_modality.items()}
    # rows with only blanks would make numeric statistics NaN-free but useless: fit on the table's own rows
    prep = Preprocessor.fit(rows[rows.index >= 0], Schema(dict(cols), label="", problem_type=""), configs,
                            fit_label=False) if cols else None
    spec = SideSpec(cols, {c: {"name": encoders.get(m), "opts": encoder_opts.get(m, {}),
                               "out_dim": int(built[c].out_dim), "cache_id": built[c].cache_id}
                           for c, m in frozen_mods.items()}, prep)
    data = SideData(tabular=tabular_arrays(spec, rows))
    if frozen_mods:
        def progress(key: str, done: int, total: int) -> None:
            if done == total:
                log(f"  {what} column {key!r}: {total} new feature vectors computed")

        feats, problems, stats = precompute_features(rows, prep, built, list(frozen_mods), cache_dir,
                                                     progress=progress)
        real = [p for p in problems if p.row >= 0]
        if real and on_bad_files == "error":
            p = real[0]
            more = f" ({len(real) - 1} more such files)" if len(real) > 1 else ""
            raise DataError(p.message + more + "; on_bad_files='missing' treats them as missing values",
                            file=df.attrs.get("source"), row=p.row, column=p.column)
        for col, (x, present) in feats.items():
            x, present = np.asarray(x, np.float32), np.asarray(present, bool)
            if reduce_dim and x.shape[1] > reduce_dim and present.sum() > reduce_dim:
                x, data.pca[col] = pca_reduce(x, present, reduce_dim)
                enc = spec.encoders[col]
                enc.update(encoder_dim=enc["out_dim"], out_dim=reduce_dim)  # the model sees the reduced width
            data.frozen[col], data.present[col] = x, present
        log(f"  {what} features: {stats['computed']} computed, {stats['reused']} reused from the cache")
    return spec, data


def feature_rows(spec: SideSpec, features: dict, source: str = "the request") -> pd.DataFrame:
    """A one-row frame from a dict of feature values (a new user's age, gender, ...), checked against the
    columns the model knows. Only tabular columns can be given this way."""
    unknown = [c for c in features if c not in spec.columns]
    if unknown:
        raise DataError(f"unknown feature '{unknown[0]}' (the model knows: {', '.join(spec.columns) or 'none'})",
                        file=source, column=unknown[0])
    frozen = [c for c in features if spec.columns[c] in FROZEN and not is_missing(features[c])]
    if frozen:
        raise DataError(f"'{frozen[0]}' is a {spec.columns[frozen[0]]} column; only numeric and categorical "
                        "features can be given for a new id", file=source, column=frozen[0])
    row = pd.DataFrame({c: [features.get(c)] for c in spec.columns})
    row.attrs["source"] = source
    return row
