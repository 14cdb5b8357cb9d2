"""Streaming input: Parquet or WebDataset shards read chunk by chunk, for tables that do not fit in memory.

The in-memory path reads a whole table with pandas. Here a table is a list of shard files (a Parquet file,
a folder of them, a glob such as `data/part-*.parquet`, or WebDataset tars such as
`shards/train-{000..009}.tar`), read `chunk_rows` rows at a time. `training.streaming.fit_stream` drives it:

1. the schema is inferred from the first `SCHEMA_ROWS` rows;
2. one pass computes the preprocessing statistics of the training rows (`StreamStats`: category sets,
   numeric count/mean/M2 merged per chunk, label classes or target mean/std), never holding the table;
3. a second pass checks rows, computes frozen-encoder features chunk by chunk into the feature cache and
   appends every row's features, encoded tabular values and target to raw files (`RowStore`);
4. training reads those files memory-mapped (`ArrayDataset`).

A streamed table cannot be shuffled in memory, so the train/valid split is a seeded hash of each row's
position in the stream (`valid_mask`): the same rows land in validation on every pass and every run.
Chunks never span two shards, and a chunk's index is the row's number within its shard, so errors name
the shard file, that row and the column.
"""

from __future__ import annotations

import glob
import hashlib
import json
import mmap
import os
import re
import shutil
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from polymodal.data.dataset import Problem, TableDataset, _gather_batch, raise_or_drop, unlabeled
from polymodal.data.paths import default_cache_dir
from polymodal.data.preprocess import Preprocessor, _natural_key, _split_labels
from polymodal.data.readers import column_names, is_missing, keep_rows
from polymodal.data.schema import AUDIO_EXT, IMAGE_EXT, MULTILABEL, MULTITASK, REGRESSION, VIDEO_EXT, Schema
from polymodal.errors import DataError, PolymodalError
from polymodal.types import CATEGORICAL, NUMERIC, TABULAR

PARQUET_EXT = (".parquet", ".pq")
TAR_EXT = (".tar",)
SCHEMA_ROWS = 1000  # rows sampled for schema inference (infer_schema itself samples at most 500 per column)
DEFAULT_CHUNK_ROWS = 10_000
MEDIA_EXT = {e.lstrip(".") for e in IMAGE_EXT + AUDIO_EXT + VIDEO_EXT}


# ---- shard lists ---------------------------------------------------------------------------------------
def _expand_braces(pattern: str) -> list[str]:
    """`a{000..009}b` and `a{x,y}b` as bash expands them (zero padding kept), recursively."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if not m:
        return [pattern]
    head, body, tail = pattern[:m.start()], m.group(1), pattern[m.end():]
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        lo, hi = rng.group(1), rng.group(2)
        width = len(lo) if lo.startswith("0") else 0
        step = 1 if int(hi) >= int(lo) else -1
        parts = [str(i).zfill(width) for i in range(int(lo), int(hi) + step, step)]
    elif "," in body:
        parts = body.split(",")
    else:
        return [head + "{" + body + "}" + t for t in _expand_braces(tail)]
    return [p for part in parts for p in _expand_braces(head + part + tail)]


def shard_files(spec: str | os.PathLike | list) -> list[Path]:
    """The shard files a spec names: a file, a folder (its .parquet/.tar files), a glob or brace pattern, or
    a list of those. Sorted within each pattern, so row positions (and the split) are stable."""
    specs = list(spec) if isinstance(spec, (list, tuple)) else [spec]
    files: list[Path] = []
    for s in specs:
        for pattern in _expand_braces(str(s)):
            p = Path(os.path.expanduser(pattern))
            if p.is_dir():
                found = sorted(q for q in p.iterdir() if q.suffix.lower() in PARQUET_EXT + TAR_EXT)
                if not found:
                    raise DataError("the folder holds no .parquet or .tar shards", file=str(p))
            elif glob.has_magic(pattern):
                found = sorted(Path(q) for q in glob.glob(os.path.expanduser(pattern)))
                if not found:
                    raise DataError("no shard matches this pattern", file=pattern)
            elif p.exists():
                found = [p]
            else:
                raise DataError("shard not found", file=str(p))
            files += found
    kinds = {_kind(f) for f in files}
    if len(kinds) > 1:
        raise DataError("shards mix Parquet and WebDataset tar files; stream one kind at a time",
                        file=str(files[0]))
    return files


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in PARQUET_EXT:
        return "parquet"
    if suffix in TAR_EXT:
        return "tar"
    raise DataError(f"a streamed shard must be Parquet ({', '.join(PARQUET_EXT)}) or a WebDataset tar (.tar), "
                    f"not '{suffix}'", file=str(path))


def media_dir(cache_dir: str | os.PathLike | None) -> Path:
    """Where WebDataset media members are extracted: beside the feature cache, named by content hash, so
    re-runs reuse the files and the feature cache (keyed by the same content) hits."""
    return Path(cache_dir or default_cache_dir()) / "media"


# ---- reading -------------------------------------------------------------------------------------------
class ShardReader:
    """Chunks of at most `chunk_rows` rows from Parquet or WebDataset shards, one shard at a time.

    Each chunk is a DataFrame whose index is the row's number within its shard, with attrs `source` (the
    shard), `base_dir` (relative media paths resolve against the shard's folder, as for a table) and
    `start` (the stream position of its first row: shards in order, rows in order).

    WebDataset tars: members `key.ext` are grouped into one sample (row) per key. Media members (image,
    audio, video extensions) are written once to `media` (named by SHA-1 of their bytes) and the row holds
    the path; `json` members' fields become columns; `cls` becomes an int where it is one; anything else is
    text (UTF-8) or, when it is not text, a file like media. `columns` renames extensions (`{"png": "image"}`).
    """

    def __init__(self, spec, chunk_rows: int = DEFAULT_CHUNK_ROWS, media: str | os.PathLike | None = None,
                 columns: dict[str, str] | None = None) -> None:
        if chunk_rows < 1:
            raise PolymodalError(f"chunk_rows must be at least 1, got {chunk_rows}")
        self.files = shard_files(spec)
        self.kind = _kind(self.files[0])
        self.chunk_rows = int(chunk_rows)
        self.media = Path(media) if media else media_dir(None)
        self.columns = dict(columns or {})

    def __repr__(self) -> str:
        return f"ShardReader({len(self.files)} {self.kind} shards, chunk_rows={self.chunk_rows})"

    def chunks(self, for_schema: bool = False) -> Iterator[pd.DataFrame]:
        """Every row once, in order. `for_schema`: integer columns with nulls come as float64 (as pandas reads
        a whole table, which schema inference expects); otherwise as Python ints and None, so a category
        reads "3" in every chunk whether or not that chunk has a null (float64 would make it "3.0")."""
        start = 0
        for path in self.files:
            it = self._parquet(path, for_schema) if self.kind == "parquet" else self._tar(path)
            for df in it:
                df.attrs.update(source=str(path), base_dir=str(path.resolve().parent), start=start,
                                first_row=int(df.index[0]) if len(df) else 0)
                start += len(df)
                yield df

    def head(self, rows: int = SCHEMA_ROWS) -> pd.DataFrame:
        """The first chunks, at least `rows` rows when the stream has them (for schema inference)."""
        parts, n = [], 0
        for df in self.chunks(for_schema=True):
            parts.append(df)
            n += len(df)
            if n >= rows:
                break
        if not parts:
            raise DataError("the shards hold no rows", file=str(self.files[0]))
        out = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0].reset_index(drop=True)
        out.attrs.update(parts[0].attrs)
        return out

    def _parquet(self, path: Path, for_schema: bool) -> Iterator[pd.DataFrame]:
        import pyarrow as pa
        import pyarrow.dataset as pads

        try:
            batches = pads.dataset(str(path), format="parquet").to_batches(batch_size=self.chunk_rows)
            pending: list = []
            n_pending = row = 0
            # to_batches stops at row-group ends, so batches can be short: pool them into full chunks
            for batch in batches:
                pending.append(batch)
                n_pending += batch.num_rows
                while n_pending >= self.chunk_rows:
                    table = pa.Table.from_batches(pending)
                    yield self._frame(table.slice(0, self.chunk_rows), row, path, for_schema)
                    row += self.chunk_rows
                    rest = table.slice(self.chunk_rows)
                    pending, n_pending = rest.to_batches(), rest.num_rows
            if n_pending:
                yield self._frame(pa.Table.from_batches(pending), row, path, for_schema)
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"could not read the Parquet shard: {exc}", file=str(path)) from None

    @staticmethod
    def _frame(table, row: int, path: Path, for_schema: bool) -> pd.DataFrame:
        df = table.to_pandas(integer_object_nulls=not for_schema)
        df.index = pd.RangeIndex(row, row + len(df))
        df.columns = column_names(df, str(path))
        return df

    def _tar(self, path: Path) -> Iterator[pd.DataFrame]:
        # The standard library's tarfile in streaming mode ("r|*") reads members in order without seeking or
        # an index, which is all WebDataset's format is; the `webdataset` package (not installed here) would
        # add a dependency for what is ~40 lines, and its decoders hand back arrays, not the file paths the
        # rest of the pipeline (schema inference, feature cache keys, row checks) works with.
        rows: list[dict] = []
        first = 0
        key, sample = None, {}
        try:
            with tarfile.open(path, mode="r|*") as tf:
                for member in tf:
                    if not member.isfile():
                        continue
                    folder, base = os.path.split(member.name)
                    if base.startswith(".") or "." not in base:
                        continue
                    stem, ext = base.split(".", 1)
                    k = f"{folder}/{stem}" if folder else stem
                    data = tf.extractfile(member).read()
                    if k != key:
                        if key is not None:
                            rows.append(sample)
                        key, sample = k, {}
                        if len(rows) == self.chunk_rows:
                            yield self._rows_frame(rows, first, path)
                            first += len(rows)
                            rows = []
                    self._add_member(sample, ext.lower(), data, path, first + len(rows), member.name)
        except (OSError, tarfile.TarError) as exc:
            raise DataError(f"could not read the tar shard: {exc}", file=str(path)) from None
        if key is not None:
            rows.append(sample)
        if rows:
            yield self._rows_frame(rows, first, path)

    @staticmethod
    def _rows_frame(rows: list[dict], first: int, path: Path) -> pd.DataFrame:
        df = pd.DataFrame(rows, index=pd.RangeIndex(first, first + len(rows)))
        df.columns = column_names(df, str(path))
        return df

    def _add_member(self, sample: dict, ext: str, data: bytes, path: Path, row: int, name: str) -> None:
        last = ext.rsplit(".", 1)[-1]
        if ext == "json":
            try:
                obj = json.loads(data.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise DataError(f"member {name} is not valid JSON: {exc}", file=str(path), row=row) from None
            items = obj.items() if isinstance(obj, dict) else [(self.columns.get("json", "json"), obj)]
            for col, value in items:
                self._set(sample, str(col), value, path, row)
            return
        col = self.columns.get(ext, ext)
        if last in MEDIA_EXT:
            self._set(sample, col, self._extract(data, last), path, row)
            return
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:  # not text: keep it as a file, like media
            self._set(sample, col, self._extract(data, last), path, row)
            return
        if ext == "cls":
            try:
                text = int(text)
            except ValueError:
                text = text.strip()
        self._set(sample, col, text, path, row)

    @staticmethod
    def _set(sample: dict, col: str, value, path: Path, row: int) -> None:
        if col in sample:
            raise DataError(f"two members of one sample give column '{col}' (rename one with columns=...)",
                            file=str(path), row=row, column=col)
        sample[col] = value

    def _extract(self, data: bytes, ext: str) -> str:
        digest = hashlib.sha1(data).hexdigest()
        dest = self.media / digest[:2] / f"{digest}.{ext}"
        if not dest.exists():  # content-addressed: an existing file already holds these bytes
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{digest}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, dest)
        return str(dest)


# ---- split ---------------------------------------------------------------------------------------------
def valid_mask(positions: np.ndarray, seed: int, fraction: float) -> np.ndarray:
    """True for the rows (by stream position) that go to validation: splitmix64 of (position, seed) mapped
    to [0, 1) and compared with `fraction`, so the split needs no shuffle of the table and is the same on
    every pass, for every chunk size, and for a Parquet table and the same rows as WebDataset."""
    x = np.asarray(positions, dtype=np.uint64) + np.uint64((int(seed) * 0x9E3779B97F4A7C15 + 1) % 2**64)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(2**53) < fraction


def positions(df: pd.DataFrame) -> np.ndarray:
    """Stream positions of a chunk's rows (the chunk's start plus each row's offset within the chunk; rows
    dropped since keep their neighbours' positions)."""
    return df.attrs["start"] + (np.asarray(df.index, dtype=np.int64) - df.attrs["first_row"])


@dataclass
class ShardProblem(Problem):
    """A bad row located in a shard (bad_rows.csv gets a `file` column)."""

    file: str = ""


def _with_file(problems: list[Problem], df: pd.DataFrame) -> list[ShardProblem]:
    return [ShardProblem(p.row, p.column, p.message, df.attrs.get("source", "")) for p in problems]


def drop_rows(df: pd.DataFrame, problems: list[Problem], on_bad_rows: str,
              feats: dict | None = None) -> tuple[pd.DataFrame, dict | None, list[ShardProblem]]:
    """`raise_or_drop` for one chunk: 'error' raises naming the shard, row and column; 'skip' drops the rows
    (a chunk may end up empty: other chunks still have rows). `feats` (row-aligned arrays) are cut alike."""
    if not problems:
        return df, feats, []
    if on_bad_rows == "error" or any(p.row < 0 for p in problems):
        raise_or_drop(df, problems, "error")
    bad = {p.row for p in problems}
    keep = np.array([r not in bad for r in df.index], bool)
    out = keep_rows(df, keep)
    if feats is not None:
        feats = {k: (f[keep], p[keep]) for k, (f, p) in feats.items()}
    return out, feats, _with_file(problems, df)


def labelled_chunks(reader: ShardReader, schema: Schema, on_bad_rows: str,
                    ) -> Iterator[tuple[pd.DataFrame, list[ShardProblem]]]:
    """Chunks with unlabeled rows dropped (or raised), and every schema column present: a WebDataset chunk
    in which no sample has some member gets that column as missing values; a Parquet shard without a
    column is an error naming the shard."""
    wanted = [*schema.columns, *[lab for lab in schema.labels if lab not in schema.columns]]
    for df in reader.chunks():
        absent = [c for c in wanted if c not in df.columns]
        if absent and reader.kind == "parquet":
            raise DataError(f"the shard has no column {absent[0]!r} (the first shards have it)",
                            file=df.attrs["source"], column=absent[0])
        if absent:
            attrs = dict(df.attrs)
            df = df.reindex(columns=[*df.columns, *absent])
            df.attrs.update(attrs)
        df, _, problems = drop_rows(df, unlabeled(df, schema.labels), on_bad_rows)
        yield df, problems


# ---- statistics ----------------------------------------------------------------------------------------
class _Moments:
    """Count, mean and sum of squared deviations, merged chunk by chunk (Chan et al.'s parallel update of
    Welford's algorithm): the same mean and population std as numpy on the whole column, to rounding."""

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def update(self, x: np.ndarray) -> None:
        x = x[np.isfinite(x)]
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


class StreamStats:
    """What `Preprocessor.fit` learns from a table, accumulated over chunks of training rows: numeric
    moments, category sets, label classes (or the regression target's moments). Memory grows with the
    number of distinct categories and classes, not with rows."""

    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        self.numeric = {c: _Moments() for c in schema.of(NUMERIC)}
        self.categories: dict[str, set[str]] = {c: set() for c in schema.of(CATEGORICAL)}
        self.classes: dict[str, set[str]] = {}
        self.targets: dict[str, _Moments] = {}
        for lab in schema.labels:
            if schema.problem_types[lab] == REGRESSION:
                self.targets[lab] = _Moments()
            else:
                self.classes[lab] = set()
        self.rows = 0

    def update(self, df: pd.DataFrame) -> None:
        self.rows += len(df)
        for col, m in self.numeric.items():
            # bad values are reported (with their rows) by the row checks; statistics skip them
            m.update(pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=np.float64))
        for col, seen in self.categories.items():
            seen.update(str(v) for v in df[col] if not is_missing(v))
        for lab in self.schema.labels:
            y = [v for v in df[lab] if not is_missing(v)]
            if lab in self.targets:
                t = pd.to_numeric(pd.Series(y, dtype=object), errors="coerce").to_numpy(dtype=np.float64)
                bad = np.flatnonzero(~np.isfinite(t))
                if len(bad):
                    rows = [r for r, v in zip(df.index, df[lab]) if not is_missing(v)]
                    raise DataError(f"value {y[bad[0]]!r} is not a number", file=df.attrs.get("source"),
                                    row=int(rows[bad[0]]), column=lab)
                self.targets[lab].update(t)
            elif self.schema.problem_types[lab] == MULTILABEL:
                self.classes[lab].update(c for v in y for c in _split_labels(v))
            else:
                self.classes[lab].update(str(v) for v in y)

    def preprocessor(self, encoder_configs: dict[str, dict], source: str | None = None) -> Preprocessor:
        """The fitted Preprocessor, as `Preprocessor.fit` would build it on all the rows seen."""
        prep = Preprocessor(schema=self.schema, inputs=Preprocessor.input_specs(self.schema, encoder_configs))
        for col, m in self.numeric.items():
            prep.numeric_mean[col] = m.mean if m.n else 0.0
            std = m.std if m.n > 1 else 1.0
            prep.numeric_std[col] = std if std > 1e-12 else 1.0
        prep.vocab = {col: sorted(seen) for col, seen in self.categories.items()}
        specs = {lab: self._label_spec(lab, source) for lab in self.schema.labels}
        if self.schema.problem_type == MULTITASK:
            prep.label_specs = specs
        else:
            spec = specs[self.schema.label]
            prep.classes, prep.target_mean, prep.target_std = spec["classes"], spec["target_mean"], spec["target_std"]
        return prep

    def _label_spec(self, lab: str, source: str | None) -> dict:
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
                raise DataError("multi-label column has fewer than two distinct labels", column=lab)
        else:
            spec["classes"] = sorted(self.classes[lab], key=_natural_key)
            if len(spec["classes"]) < 2:
                first = spec["classes"][0] if spec["classes"] else None
                raise DataError(f"the label has a single class ({first!r}); a classifier needs two",
                                column=lab, file=source)
        return spec


# ---- row arrays on disk --------------------------------------------------------------------------------
class RowStore:
    """Row-aligned arrays appended chunk by chunk to raw files in `folder`, read back memory-mapped.

    Appending with plain file writes (not into a writable memory map) keeps written pages in the page cache
    instead of the process's resident set."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        if self.folder.exists():
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True)
        self.meta: dict[str, tuple[np.dtype, tuple[int, ...]]] = {}
        self.n = 0

    def append(self, arrays: dict[str, np.ndarray]) -> None:
        """One chunk: every array has the chunk's rows (the same names on every call)."""
        lengths = {len(a) for a in arrays.values()}
        if len(lengths) != 1:
            raise ValueError(f"row arrays of different lengths: { {k: len(a) for k, a in arrays.items()} }")
        if self.meta and set(arrays) != set(self.meta):
            raise ValueError(f"row arrays changed names: {sorted(arrays)} vs {sorted(self.meta)}")
        for name, a in arrays.items():
            a = np.ascontiguousarray(a)
            dtype, tail = self.meta.setdefault(name, (a.dtype, a.shape[1:]))
            if a.dtype != dtype or a.shape[1:] != tail:
                raise PolymodalError(f"row array '{name}' changed from {dtype}{tail} to {a.dtype}{a.shape[1:]} "
                                     "between chunks")
            with open(self._path(name), "ab") as f:
                f.write(a.tobytes())
        self.n += lengths.pop()

    def _path(self, name: str) -> Path:
        return self.folder / (hashlib.sha1(name.encode()).hexdigest()[:16] + ".bin")

    def array(self, name: str) -> np.ndarray:
        dtype, tail = self.meta[name]
        if self.n == 0:
            return np.zeros((0, *tail), dtype)
        return np.memmap(self._path(name), dtype=dtype, mode="r", shape=(self.n, *tail))

    def dataset(self, prep: Preprocessor, source: str) -> ArrayDataset:
        """A Dataset over the stored rows (`rows`, `feat:K`/`present:K`, `tab:*`, `target`)."""
        if not self.meta:
            return ArrayDataset(prep, np.zeros(0, np.int64), {}, None, None, source)
        feats = {n[5:]: (self.array(n), self.array("present:" + n[5:])) for n in self.meta if n.startswith("feat:")}
        tab = {n[4:]: self.array(n) for n in self.meta if n.startswith("tab:")} or None
        target = self.array("target") if "target" in self.meta else None
        return ArrayDataset(prep, self.array("rows"), feats, tab, target, source)


def chunk_arrays(df: pd.DataFrame, prep: Preprocessor, feats: dict[str, tuple]) -> dict[str, np.ndarray]:
    """What a RowStore keeps of a checked chunk: stream positions, cached features with presence bits,
    encoded tabular values and targets."""
    out = {"rows": positions(df).astype(np.int64)}
    for key, (f, p) in feats.items():
        out["feat:" + key], out["present:" + key] = f, np.asarray(p, bool)
    if TABULAR in prep.inputs:
        out.update({"tab:" + k: a for k, a in prep.tabular_arrays(df).items()})
    out["target"] = prep.encode_target(df)
    return out


class ArrayDataset(TableDataset):
    """A TableDataset over row arrays on disk instead of a DataFrame: every input is a cached feature or an
    encoded tabular value, so a batch is a gather of rows.

    Feature rows are read with positioned reads (pread), not through the memory map: a page fault maps a
    whole page-cache folio into the process (up to 2 MiB on current kernels, which build large folios for
    written files), so shuffled reads of a few hundred 6.6 KB rows through the map made ~1 GiB resident.
    The small per-row arrays (positions, presence bits, tabular values, targets: tens of bytes a row) are
    read through their maps, which `release` drops from the process every `release_rows` rows gathered
    (madvise DONTNEED; the data stays in the page cache). Resident memory is then bounded by the batch and
    the model, not by the table, over any number of epochs."""

    release_rows = 65_536

    def __init__(self, prep: Preprocessor, rows: np.ndarray, features: dict[str, tuple],
                 tabular: dict[str, np.ndarray] | None, target: np.ndarray | None, source: str) -> None:
        # TableDataset.__init__ reads a DataFrame; set the attributes its methods and _gather_batch use
        self.prep, self.train, self.augment, self.seed, self.text_augment = prep, False, False, 0, 0.0
        self.features, self.tabular, self.target = features, tabular, target
        self.rows, self.n, self.source = rows, len(rows), source
        self.values: dict[str, list] = {}
        self._since_release = 0
        self._fds: dict[str, int] = {}

    def __getitems__(self, indices: list[int]) -> dict:
        if not any(isinstance(f, np.memmap) for f, _ in self.features.values()):
            return _gather_batch(self, indices)
        idx = np.asarray(indices, dtype=np.int64) % self.n
        feats, self.features = self.features, {}
        try:
            batch = _gather_batch(self, idx)  # everything but the features
        finally:
            self.features = feats
        for key, (f, present) in feats.items():
            batch["features"][key] = torch.from_numpy(self._read(f, idx))
            batch["present"][key] = torch.from_numpy(np.asarray(present, dtype=bool)[idx])
        self._since_release += len(idx)
        if self._since_release >= self.release_rows:
            self.release()
        return batch

    def _read(self, f: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """Rows `idx` of a memory-mapped array read with pread, in file order."""
        if not isinstance(f, np.memmap):
            return np.ascontiguousarray(f[idx])
        path = str(f.filename)
        fd = self._fds.get(path)
        if fd is None:
            fd = self._fds[path] = os.open(path, os.O_RDONLY)
        out = np.empty((len(idx), *f.shape[1:]), f.dtype)
        flat = out.reshape(len(idx), -1).view(np.uint8)
        size = flat.shape[1]
        for j in np.argsort(idx, kind="stable"):
            os.preadv(fd, [flat[j]], int(idx[j]) * size + f.offset)
        return out

    def _arrays(self) -> list[np.ndarray]:
        arrays = [self.rows, *(self.tabular or {}).values(), *(a for pair in self.features.values() for a in pair)]
        return arrays + ([self.target] if self.target is not None else [])

    def release(self) -> None:
        """Unmap the pages read so far from this process (they are re-read from the page cache on use)."""
        self._since_release = 0
        for a in self._arrays():
            m = getattr(a, "_mmap", None)
            if m is not None and hasattr(m, "madvise"):
                try:
                    m.madvise(mmap.MADV_DONTNEED)
                except (OSError, ValueError, AttributeError):  # not on this platform: pages stay mapped
                    pass

    def __del__(self) -> None:
        for fd in getattr(self, "_fds", {}).values():
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds = {}

    def __getstate__(self) -> dict:  # DataLoader workers open their own files
        return {**self.__dict__, "_fds": {}}


def read_all(reader: ShardReader) -> pd.DataFrame:
    """Every chunk concatenated (tests and small tables only: this is what streaming avoids)."""
    parts = list(reader.chunks())
    return pd.concat(parts, ignore_index=True)


__all__ = ["ArrayDataset", "RowStore", "ShardProblem", "ShardReader", "StreamStats", "chunk_arrays",
           "drop_rows", "labelled_chunks", "media_dir", "positions", "read_all", "shard_files",
           "unlabeled", "valid_mask"]
