"""Streaming fits: tables that do not fit in memory, read chunk by chunk from shards (`data/shards.py`).

`training.streaming.fit_stream` drives it:

1. the schema is inferred from the first `SCHEMA_ROWS` rows;
2. one pass computes the preprocessing statistics of the training rows (`data.stats.TableStats`, the same
   code `Preprocessor.fit` runs on one chunk), never holding the table;
3. a second pass checks rows, computes frozen-encoder features chunk by chunk into the feature cache and
   appends every row's features, encoded tabular values and target to raw files (`RowStore`);
4. training reads those files memory-mapped (`ArrayDataset`).

A streamed table cannot be shuffled in memory, so the train/valid split is a seeded hash of each row's
position in the stream (`valid_mask`): the same rows land in validation on every pass and every run.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from polymodal.data.dataset import Problem, TableDataset, _gather_batch, raise_or_drop, unlabeled
from polymodal.data.preprocess import Preprocessor
from polymodal.data.readers import keep_rows
from polymodal.data.schema import Schema
from polymodal.data.shards import ShardReader
from polymodal.errors import DataError, PolymodalError
from polymodal.types import TABULAR


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


__all__ = ["ArrayDataset", "RowStore", "ShardProblem", "chunk_arrays", "drop_rows", "labelled_chunks", "positions",
           "unlabeled", "valid_mask"]
