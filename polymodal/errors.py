"""User-facing errors: the CLI prints these as one clear message, never a traceback."""

from __future__ import annotations


class PolymodalError(Exception):
    """Base class for mistakes a user can fix (bad input, bad option, missing run folder)."""


class DataError(PolymodalError):
    """A problem with the user's table or the files it points to, located by file, row and column."""

    def __init__(self, message: str, *, file: str | None = None, row: int | None = None,
                 column: str | None = None) -> None:
        self.detail = message
        self.file = file
        self.row = row
        self.column = column
        where = []
        if file is not None:
            where.append(f"file {file}")
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column '{column}'")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)
