"""User-facing errors: the CLI prints these as one clear message, never a traceback."""

from __future__ import annotations

from functools import wraps

from rich.console import Console

console = Console(stderr=True)


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


def user_errors(fn):
    """CLI decorator: print user mistakes as one clear line (exit code 2) instead of a traceback.

    Lives here, not in cli.py, so command modules (serve, compress) can use it without importing the CLI.
    """

    @wraps(fn)
    def wrapper(*args, **kwargs):
        import typer
        from rich.markup import escape

        try:
            return fn(*args, **kwargs)
        except PolymodalError as exc:
            console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None

    return wrapper
