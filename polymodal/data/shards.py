"""Shards: a table too large for memory as Parquet files or WebDataset tars, read `chunk_rows` rows at a time.

A table is a list of shard files (a Parquet file, a folder of them, a glob such as `data/part-*.parquet`, or
WebDataset tars such as `shards/train-{000..009}.tar`). Chunks never span two shards, and a chunk's index is
the row's number within its shard, so errors name the shard file, that row and the column. A tar sample's
media members are written once (by content hash) under `media_dir` and the chunk holds their paths.
`data/streaming.py` builds the streamed fit's splits, statistics and row stores on these chunks.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from polymodal.data.paths import default_cache_dir
from polymodal.data.readers import column_names
from polymodal.data.schema import AUDIO_EXT, IMAGE_EXT, VIDEO_EXT
from polymodal.errors import DataError, PolymodalError

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



def read_all(reader: ShardReader) -> pd.DataFrame:
    """Every chunk concatenated (tests and small tables only: this is what streaming avoids)."""
    parts = list(reader.chunks())
    return pd.concat(parts, ignore_index=True)
