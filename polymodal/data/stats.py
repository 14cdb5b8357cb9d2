"""The statistics preprocessing learns from training rows, accumulated chunk by chunk.

`TableStats` is the one place these are computed: `Preprocessor.fit` feeds it the whole table as one chunk,
a streaming fit feeds it chunk after chunk, so the two cannot disagree (numbers or error messages). Memory
grows with the number of distinct categories and classes, not with rows.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from polymodal.data.readers import is_missing
from polymodal.data.schema import MULTILABEL_SEP, Schema
from polymodal.errors import DataError
from polymodal.problem_types import MULTILABEL, REGRESSION
from polymodal.types import CATEGORICAL, NUMERIC

# Values beyond this are refused as inputs: their squares overflow float64, so no scaler fitted on them (nor
# the float32 network reading them) means anything. 1e150 leaves every physical quantity untouched.
MAX_ABS = 1e150


def usable(x: np.ndarray) -> np.ndarray:
    """Finite and within MAX_ABS: the numbers statistics and the model accept."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(x) & (np.abs(x) <= MAX_ABS)


def number_problem(value) -> str:
    """Why a non-missing numeric cell is refused (it is either not a number or out of range)."""
    x = pd.to_numeric(pd.Series([value], dtype=object), errors="coerce").iloc[0]
    if pd.notna(x) and np.isfinite(x):
        return f"value {value!r} is out of range (|x| > {MAX_ABS:g})"
    return f"value {value!r} is not a number"


def split_labels(v) -> list[str]:
    """A multi-label cell (a list, or labels joined by MULTILABEL_SEP) → its labels."""
    if isinstance(v, (list, tuple, np.ndarray)):
        return [str(x) for x in v]
    return [s.strip() for s in str(v).split(MULTILABEL_SEP) if s.strip()]


def natural_key(s: str):
    """Numbers in numeric order before words in alphabetical order ("2" < "10" < "cat")."""
    try:
        return (0, float(s), s)
    except ValueError:
        return (1, 0.0, s)


class Moments:
    """Count, mean and sum of squared deviations, merged chunk by chunk (Chan et al.'s parallel update of
    Welford's algorithm): on one chunk exactly numpy's mean and population std, on many the same to rounding.
    Hand-written because neither numpy nor pandas merges moments across chunks."""

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def update(self, x: np.ndarray) -> None:
        x = x[usable(x)]
        if not len(x):
            return
        n_b, mean_b = len(x), float(x.mean())
        m2_b = float(((x - mean_b) ** 2).sum())
        n = self.n + n_b
        delta = mean_b - self.mean
        self.mean += delta * n_b / n
        self.m2 += m2_b + delta * delta * self.n * n_b / n
        self.n = n

    @property
    def std(self) -> float:
        return (self.m2 / self.n) ** 0.5 if self.n else 0.0


def numbers(s: pd.Series) -> np.ndarray:
    return pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64)


class TableStats:
    """Numeric moments, category sets and label classes (or a regression target's moments) of training rows.
    `labels=False`: no label statistics (a text generator's label is free text)."""

    def __init__(self, schema: Schema, labels: bool = True) -> None:
        self.schema = schema
        self.numeric = {c: Moments() for c in schema.of(NUMERIC)}
        self.categories: dict[str, set[str]] = {c: set() for c in schema.of(CATEGORICAL)}
        self.classes: dict[str, set[str]] = {}
        self.targets: dict[str, Moments] = {}
        for lab in schema.labels if labels else []:
            if schema.problem_types[lab] == REGRESSION:
                self.targets[lab] = Moments()
            else:
                self.classes[lab] = set()
        self.rows = 0

    def update(self, df: pd.DataFrame) -> TableStats:
        self.rows += len(df)
        for col, m in self.numeric.items():
            m.update(numbers(df[col]))  # bad values are reported (with their rows) by the row checks
        for col, seen in self.categories.items():
            seen.update(str(v) for v in df[col] if not is_missing(v))
        for lab, m in self.targets.items():
            y = df[lab][[not is_missing(v) for v in df[lab]]]
            t = numbers(y)
            bad = np.flatnonzero(~usable(t))
            if len(bad):
                raise DataError(f"{number_problem(y.iloc[bad[0]])} (and {len(bad) - 1} more such rows)",
                                file=df.attrs.get("source"), row=int(y.index[bad[0]]), column=lab)
            m.update(t)
        for lab, seen in self.classes.items():
            y = [v for v in df[lab] if not is_missing(v)]
            if self.schema.problem_types[lab] == MULTILABEL:
                seen.update(c for v in y for c in split_labels(v))
            else:
                seen.update(str(v) for v in y)
        return self

    def scalers(self) -> tuple[dict[str, float], dict[str, float]]:
        """(mean, std) per numeric column; a constant or empty column gets std 1."""
        mean = {c: m.mean if m.n else 0.0 for c, m in self.numeric.items()}
        std = {c: (m.std if m.n > 1 else 1.0) for c, m in self.numeric.items()}
        return mean, {c: s if s > 1e-12 else 1.0 for c, s in std.items()}

    def vocab(self) -> dict[str, list[str]]:
        return {col: sorted(seen) for col, seen in self.categories.items()}

    def label_spec(self, lab: str, source: str | None = None) -> dict:
        """{problem_type, classes, target_mean, target_std} of one label."""
        ptype = self.schema.problem_types[lab]
        spec = {"problem_type": ptype, "classes": [], "target_mean": 0.0, "target_std": 1.0}
        if ptype == REGRESSION:
            m = self.targets[lab]
            if not m.n:
                raise DataError("the label column has no values", file=source, column=lab)
            spec["target_mean"], spec["target_std"] = m.mean, (m.std or 1.0)
        elif ptype == MULTILABEL:
            spec["classes"] = sorted(self.classes[lab])
            if len(spec["classes"]) < 2:
                raise DataError("multi-label column has fewer than two distinct labels", file=source, column=lab)
        else:
            spec["classes"] = sorted(self.classes[lab], key=natural_key)
            if len(spec["classes"]) < 2:
                first = spec["classes"][0] if spec["classes"] else None
                raise DataError(f"the label has a single class ({first!r}); a classifier needs two",
                                column=lab, file=source)
        return spec
