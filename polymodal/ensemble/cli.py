"""`polymodal leaderboard RUN [TEST]`: every model of a run with its validation (and test) score, ensemble
weight, fit and predict time."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import typer
from rich.console import Console
from rich.table import Table

from polymodal.data.readers import read_table
from polymodal.ensemble.predictor import EnsemblePredictor
from polymodal.ensemble.run_folder import LEADERBOARD, is_ensemble
from polymodal.errors import PolymodalError, user_errors
from polymodal.training.artifacts import atomic_write_text


@user_errors
def leaderboard(run: Path = typer.Argument(..., help="ensemble run folder (polymodal fit --preset balanced/best)"),
                test: Path | None = typer.Argument(None, help="labelled table: also score every member on it"),
                out: Path | None = typer.Option(None, help="write the leaderboard as CSV here")) -> None:
    """Show the leaderboard of an ensemble run (saved in RUN/leaderboard.csv; with TEST, scored on it too)."""
    if not is_ensemble(run):
        raise PolymodalError(f"{run} is not an ensemble run (train one with `polymodal fit --preset best`); a single "
                             "model's scores are in its metrics.json (`polymodal evaluate RUN TABLE`)")
    if test is None and (run / LEADERBOARD).exists():
        board = pd.read_csv(run / LEADERBOARD)
    else:
        board = EnsemblePredictor.load(run).leaderboard(read_table(test) if test else None)
    if out:
        atomic_write_text(out, board.to_csv(index=False))
    show(board, f"leaderboard of {run}" + (f" on {test}" if test else ""))


def show(board: pd.DataFrame, title: str) -> None:
    table = Table(title=title)
    for col in board.columns:
        table.add_column(str(col), justify="left" if col in ("model", "status", "eval_metric") else "right")
    for _, row in board.iterrows():
        table.add_row(*[_cell(v) for v in row])
    Console(width=200).print(table)


def _cell(v) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return ""
    return f"{v:.4f}" if isinstance(v, float) else str(v)
