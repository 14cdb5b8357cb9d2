"""Fit-time preprocessing state: input specs, numeric scalers, category vocabularies, label encoding.

Everything here is JSON-serialisable so a run folder rebuilds it with no network.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from polymodal.data.readers import delimiter_hint, is_missing
from polymodal.data.schema import MULTILABEL_SEP, Schema
from polymodal.data.stats import TableStats, number_problem, numbers, split_labels, usable
from polymodal.data.timeseries import fit_series_config
from polymodal.data.video import AUDIO_TRACK, audio_track_key
from polymodal.errors import DataError, PolymodalError
from polymodal.problem_types import MULTILABEL, MULTITASK, REGRESSION
from polymodal.types import AUDIO, CATEGORICAL, ID, IMAGE, NUMERIC, TABULAR, TEXT, TIMESERIES, VIDEO


@dataclass
class InputSpec:
    """One model input: a media/text column, or the group of all tabular columns (key "tabular")."""

    key: str
    modality: str  # image | text | audio | video | timeseries | tabular
    columns: list[str]
    config: dict = field(default_factory=dict)  # encoder preprocessing (image size, tokenizer, mel params...)

    def to_dict(self) -> dict:
        return {"key": self.key, "modality": self.modality, "columns": self.columns, "config": self.config}


@dataclass
class Preprocessor:
    schema: Schema
    inputs: dict[str, InputSpec]
    numeric_mean: dict[str, float] = field(default_factory=dict)
    numeric_std: dict[str, float] = field(default_factory=dict)
    vocab: dict[str, list[str]] = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)
    target_mean: float = 0.0
    target_std: float = 1.0
    # multi-task: label → the single-label state of that label (problem_type, classes, target_mean/std)
    label_specs: dict[str, dict] = field(default_factory=dict)

    # ---- fitting -----------------------------------------------------------------------------------
    @classmethod
    def fit(cls, df: pd.DataFrame, schema: Schema, encoder_configs: dict[str, dict],
            fit_label: bool = True) -> Preprocessor:
        """Build specs and fit scalers, vocabularies and the label encoder on the training table: one chunk of
        the statistics a streaming fit accumulates (`data/stats.py`). `fit_label=False`: no label encoder (a
        text generator's label is free text its vocabulary encodes)."""
        def series_config(col: str) -> dict:
            return fit_series_config(df[col], df.attrs.get("base_dir", "."), encoder_configs.get(TIMESERIES, {}),
                                     schema.series_channels.get(col, 1))

        stats = TableStats(schema, labels=fit_label).update(df)
        return cls.from_stats(stats, encoder_configs, df.attrs.get("source"), series_config, fit_label)

    @classmethod
    def from_stats(cls, stats: TableStats, encoder_configs: dict[str, dict], source: str | None = None,
                   series_config: Callable[[str], dict] | None = None, fit_label: bool = True) -> Preprocessor:
        """The Preprocessor the statistics of all training rows seen give."""
        schema = stats.schema
        prep = cls(schema=schema, inputs=cls.input_specs(schema, encoder_configs, series_config))
        prep.numeric_mean, prep.numeric_std = stats.scalers()
        prep.vocab = stats.vocab()
        if not fit_label:
            return prep
        specs = {lab: stats.label_spec(lab, source) for lab in schema.labels}
        if schema.problem_type == MULTITASK:
            prep.label_specs = specs
        else:
            spec = specs[schema.label]
            prep.classes, prep.target_mean, prep.target_std = spec["classes"], spec["target_mean"], spec["target_std"]
        return prep

    @staticmethod
    def input_specs(schema: Schema, encoder_configs: dict[str, dict],
                    series_config: Callable[[str], dict] | None = None) -> dict[str, InputSpec]:
        """One spec per media/text column (plus a video's sound track) and the tabular group, in column
        order. `series_config(col)` fits a time-series column's config (it needs the column's values)."""
        inputs: dict[str, InputSpec] = {}
        for col, mod in schema.columns.items():
            if mod in (IMAGE, TEXT, AUDIO, VIDEO):
                inputs[col] = InputSpec(col, mod, [col], dict(encoder_configs.get(mod, {})))
            if mod == VIDEO:
                if AUDIO_TRACK in encoder_configs:  # the clip's sound as its own audio input (data/video.py)
                    key = audio_track_key(col)
                    if key in schema.columns:
                        raise PolymodalError(f"column '{key}' clashes with the sound-track input of video column "
                                             f"'{col}'; rename it or set encoder_opts video audio=False")
                    inputs[key] = InputSpec(key, AUDIO, [col], {**encoder_configs[AUDIO_TRACK], "source": VIDEO})
            elif mod == TIMESERIES:
                if series_config is None:
                    raise PolymodalError(f"time-series column '{col}' needs its values to fit per-channel scaling")
                inputs[col] = InputSpec(col, TIMESERIES, [col], series_config(col))
        tab_num, tab_cat = schema.of(NUMERIC), schema.of(CATEGORICAL)
        if tab_num or tab_cat:
            inputs[TABULAR] = InputSpec(TABULAR, TABULAR, tab_num + tab_cat,
                                        {"numeric": tab_num, "categorical": tab_cat})
        return inputs

    # ---- transforms ----------------------------------------------------------------------------------
    def _numeric(self, s: pd.Series, col: str) -> np.ndarray:
        out = numbers(s)
        ok = usable(out)
        bad = [i for i, (v, o) in enumerate(zip(s, ok)) if not is_missing(v) and not o]
        if bad:
            raise DataError(f"{number_problem(s.iloc[bad[0]])} (and {len(bad) - 1} more such rows)",
                            row=int(s.index[bad[0]]), column=col)
        return out

    def tabular_arrays(self, df: pd.DataFrame) -> dict[str, np.ndarray]:
        """Standardised numerics (NaN → 0 plus a missing indicator) and category ids (0 = missing/unseen)."""
        spec = self.inputs[TABULAR].config
        n = len(df)
        num = np.zeros((n, len(spec["numeric"])), np.float32)
        miss = np.zeros_like(num)
        for j, col in enumerate(spec["numeric"]):
            x = self._numeric(df[col], col) if col in df else np.full(n, np.nan)
            m = ~np.isfinite(x)
            z = np.where(m, 0.0, (x - self.numeric_mean[col]) / self.numeric_std[col])
            huge = np.flatnonzero(np.abs(z) > np.finfo(np.float32).max)
            if len(huge):  # finite, but standardised it overflows the float32 network
                r = huge[0]
                raise DataError(f"value {df[col].iloc[r]!r} is out of range for this model (column mean "
                                f"{self.numeric_mean[col]:.4g}, std {self.numeric_std[col]:.4g})",
                                file=df.attrs.get("source"), row=int(df.index[r]), column=col)
            num[:, j] = z
            miss[:, j] = m
        cat = np.zeros((n, len(spec["categorical"])), np.int64)
        for j, col in enumerate(spec["categorical"]):
            index = {v: i + 1 for i, v in enumerate(self.vocab[col])}
            if col in df:
                cat[:, j] = [0 if is_missing(v) else index.get(str(v), 0) for v in df[col]]
        return {"numeric": num, "numeric_missing": miss, "categorical": cat}

    def label_view(self, label: str) -> Preprocessor:
        """A single-label Preprocessor for one label of a multi-task one (same inputs)."""
        spec = self.label_specs[label]
        return Preprocessor(Schema(self.schema.columns, label, spec["problem_type"]), self.inputs,
                            classes=list(spec["classes"]), target_mean=spec["target_mean"],
                            target_std=spec["target_std"])

    def target_width(self, label: str | None = None) -> int:
        """Columns a label takes in an encoded multi-task target: C for multi-label, else 1."""
        view = self.label_view(label) if label else self
        return len(view.classes) if view.schema.problem_type == MULTILABEL else 1

    def encode_target(self, df: pd.DataFrame) -> np.ndarray:
        """Label column → class ids (int64), multi-hot (float32) or standardised values (float32).

        Multi-task: one float32 matrix, each label's columns side by side (class ids as floats); a missing
        label, or a class training never saw, is NaN there and that row does not count for that task."""
        label, ptype = self.schema.label, self.schema.problem_type
        if ptype == MULTITASK:
            parts = []
            for lab in self.schema.labels:
                if lab not in df.columns:
                    raise DataError(f"label column '{lab}' not found" + delimiter_hint(df), file=df.attrs.get("source"))
                view = self.label_view(lab)
                out = np.full((len(df), self.target_width(lab)), np.nan, np.float32)
                ok = np.array([not is_missing(v) and (view.schema.problem_type in (REGRESSION, MULTILABEL)
                                                      or str(v) in set(view.classes)) for v in df[lab]], bool)
                if ok.any():
                    enc = view.encode_target(df[ok])
                    out[ok] = enc.reshape(int(ok.sum()), -1)
                parts.append(out)
            return np.concatenate(parts, axis=1)
        if label not in df.columns:
            raise DataError(f"label column '{label}' not found" + delimiter_hint(df), file=df.attrs.get("source"))
        col = df[label]
        missing = [i for i, v in enumerate(col) if is_missing(v)]
        if missing:
            raise DataError("the label is missing", file=df.attrs.get("source"), row=int(df.index[missing[0]]),
                            column=label)
        if ptype == REGRESSION:
            return ((self._numeric(col, label) - self.target_mean) / self.target_std).astype(np.float32)
        index = {c: i for i, c in enumerate(self.classes)}
        if ptype == MULTILABEL:
            out = np.zeros((len(col), len(self.classes)), np.float32)
            for r, v in enumerate(col):
                for c in split_labels(v):
                    if c in index:
                        out[r, index[c]] = 1.0
            return out
        ids = np.array([index.get(str(v), -1) for v in col], np.int64)
        unknown = np.flatnonzero(ids < 0)
        if len(unknown):
            r = unknown[0]
            raise DataError(f"label {col.iloc[r]!r} was not seen in training (classes: {self.classes[:10]}...)",
                            file=df.attrs.get("source"), row=int(df.index[r]), column=label)
        return ids

    def decode_target(self, values: np.ndarray) -> list:
        ptype = self.schema.problem_type
        if ptype == MULTITASK:
            raise PolymodalError("a multi-task target decodes per label: use label_view(label).decode_target")
        if ptype == REGRESSION:  # the task already returned values in the label's units
            return np.asarray(values, dtype=np.float64).tolist()
        if ptype == MULTILABEL:
            return [MULTILABEL_SEP.join(c for c, on in zip(self.classes, row) if on) for row in values]
        return [self.classes[int(i)] for i in values]

    def feature_columns(self) -> list[str]:
        return [c for c, m in self.schema.columns.items() if m != ID]

    # ---- persistence -----------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"schema": self.schema.to_dict(), "inputs": {k: s.to_dict() for k, s in self.inputs.items()},
                "numeric_mean": self.numeric_mean, "numeric_std": self.numeric_std, "vocab": self.vocab,
                "classes": self.classes, "target_mean": self.target_mean, "target_std": self.target_std,
                "label_specs": self.label_specs}

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessor:
        return cls(schema=Schema.from_dict(d["schema"]),
                   inputs={k: InputSpec(**s) for k, s in d["inputs"].items()},
                   numeric_mean=d["numeric_mean"], numeric_std=d["numeric_std"], vocab=d["vocab"],
                   classes=d["classes"], target_mean=d["target_mean"], target_std=d["target_std"],
                   label_specs=d.get("label_specs", {}))
