"""Read a table (CSV, TSV, JSONL/JSON, Parquet) and resolve media paths relative to its folder."""

from __future__ import annotations

import functools
import io
import os
import re
from collections import Counter
from pathlib import Path

import pandas as pd

from polymodal.errors import DataError

# pandas 3 copies on write by default (2.x only with its option set): a shallow copy is then a safe copy.
COPY_ON_WRITE = int(pd.__version__.split(".")[0]) >= 3 or pd.options.mode.copy_on_write is True


def _read_delimited(path: Path, sep: str) -> pd.DataFrame:
    """CSV/TSV read so that every record written comes back as one row (pandas' defaults lose or add some)."""
    data = path.read_bytes()
    opts: dict = {"sep": sep}
    line_ends = b"\r\n"
    # pandas' own to_csv leaves a carriage return inside a cell unquoted, and read_csv takes any bare CR for a
    # line end, so such a file would come back with extra, shifted rows. In a file whose lines end in LF (or
    # CRLF), a CR not followed by LF is cell content: read with LF as the only line end.
    if b"\n" in data and re.search(rb"\r(?!\n)", data):
        data, opts["lineterminator"], line_ends = data.replace(b"\r\n", b"\n"), "\n", b"\n"
    df = pd.read_csv(io.BytesIO(data), **opts)
    # read_csv renames a repeated header "label" to "label.1", which would then be used as an input (a label
    # leak): check the header as written, parsed the same way
    header = pd.read_csv(io.BytesIO(data), header=None, nrows=1, dtype=str, keep_default_na=False, **opts)
    named = [str(v) for v in header.iloc[0]] if len(header) else []
    column_names(pd.DataFrame(columns=[n for n in named if n.strip()]), str(path))
    if df.shape[1] == 1:
        # In a one-column file an empty or all-space line is a row whose cell is blank (to_csv writes a space
        # unquoted), but read_csv skips it as a blank line. Keep such lines, except the empty ones ending the file.
        df = pd.read_csv(io.BytesIO(data.rstrip(line_ends) + b"\n"), skip_blank_lines=False, **opts)
    return df


def delimiter_hint(df: pd.DataFrame) -> str:
    """A hint for a table read as one column whose name looks like several joined by ';', tab or '|' (a CSV
    saved with another delimiter), else ''. Only added to an error: such a name is legal on its own."""
    if df.shape[1] != 1:
        return ""
    name = str(df.columns[0])
    for d in (";", "\t", "|"):
        if len([p for p in name.split(d) if p.strip()]) >= 2:
            return (f"; the table reads as one column named {name[:60]!r}: its fields look separated by {d!r}, "
                    "but .csv is read with commas (save it comma-separated, or tab-separated as .tsv)")
    return ""


READERS = {
    ".csv": lambda p: _read_delimited(p, ","),
    ".tsv": lambda p: _read_delimited(p, "\t"),
    ".jsonl": lambda p: pd.read_json(p, lines=True),
    ".json": lambda p: pd.read_json(p),
    ".parquet": lambda p: pd.read_parquet(p),
    ".pq": lambda p: pd.read_parquet(p),
}


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a table; `df.attrs["source"]` and `df.attrs["base_dir"]` remember where it came from."""
    path = Path(path)
    if not path.exists():
        raise DataError("table not found", file=str(path))
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"unsupported table format '{path.suffix}' (use one of {', '.join(READERS)})",
                        file=str(path))
    try:
        df = reader(path)
    except pd.errors.EmptyDataError:
        raise DataError("the table is empty", file=str(path)) from None
    except DataError:
        raise
    except Exception as exc:  # the parsers raise many types; the user needs the file and the reason
        raise DataError(f"could not parse the table: {exc}", file=str(path)) from None
    if len(df) == 0:
        raise DataError("the table has no rows", file=str(path))
    df.columns = column_names(df, str(path))
    df.attrs["source"] = str(path)
    df.attrs["base_dir"] = str(path.resolve().parent)
    return df


def as_table(data: pd.DataFrame | str | os.PathLike, base_dir: str | None = None) -> pd.DataFrame:
    """Accept a DataFrame or a path; a DataFrame without a known folder resolves paths from `base_dir` or cwd."""
    if isinstance(data, pd.DataFrame):
        if len(data) == 0:
            raise DataError("the table has no rows", file=data.attrs.get("source", "<DataFrame>"))
        # pandas >= 3 (copy-on-write): a shallow copy, whose columns are copied only when one side writes to
        # them (a deep copy costs a one-row predict ~0.1-0.5 ms); the caller's frame and attrs stay untouched.
        df = data.copy(deep=not COPY_ON_WRITE)
        df.attrs["source"] = data.attrs.get("source", "<DataFrame>")
        names = column_names(df, df.attrs["source"])
        if names != list(df.columns):  # setting columns builds a new Index: only when a name is not a string
            df.columns = names
        df.attrs["base_dir"] = base_dir or data.attrs.get("base_dir") or os.getcwd()
        return df
    return read_table(data)


def column_names(df: pd.DataFrame, source: str) -> list[str]:
    """Column names as strings; repeated names are an error, since df[name] would then be a table, not a column."""
    names = [str(c) for c in df.columns]
    if len(set(names)) == len(names):  # the usual case, without a Counter (a one-row predict checks this)
        return names
    dup = sorted(n for n, k in Counter(names).items() if k > 1)
    if dup:
        raise DataError(f"duplicate column names {dup}: rename them so each column has its own name", file=source)
    return names


def resolve_path(value: str, base_dir: str) -> str:
    """A media path as written in the table, made absolute against the table's folder."""
    if isinstance(value, str) and not value.lstrip().startswith("~"):  # "~" follows $HOME: never cached
        return _resolve_cached(value, base_dir)
    return _resolve(value, base_dir)


def _resolve(value, base_dir: str) -> str:
    p = Path(os.path.expanduser(str(value).strip()))
    return str(p if p.is_absolute() else Path(base_dir) / p)


# A few-row predict resolves each path twice (row check, dataset), pathlib ~20 us each: cached.
_resolve_cached = functools.lru_cache(maxsize=4096)(_resolve)


def is_missing(value: object) -> bool:
    """True for NaN/None/empty-string cells (a missing modality, not an error)."""
    if value is None:
        return True
    if isinstance(value, float) and value != value:
        return True
    if isinstance(value, str):  # pd.isna of any string is False (and costs microseconds per cell)
        return value.strip() == ""
    try:
        return bool(pd.isna(value)) if not isinstance(value, (list, tuple, dict)) else False
    except (TypeError, ValueError):
        return False


def keep_rows(df: pd.DataFrame, mask) -> pd.DataFrame:
    """The rows of `df` where `mask` is true, keeping its attrs (source file, base folder, stream position),
    which boolean indexing drops."""
    out = df[mask]
    out.attrs.update(df.attrs)
    return out
