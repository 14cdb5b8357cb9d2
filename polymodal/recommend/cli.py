"""`polymodal recommend fit / evaluate / top-k`: a typer sub-app, thin over `Recommender`.

Registered in polymodal/cli.py with `app.add_typer(recommend_app, name="recommend")`.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from polymodal.cli_options import print_metrics
from polymodal.errors import PolymodalError, user_errors
from polymodal.recommend.recommender import MODEL_OPTIONS, Recommender
from polymodal.recommend.train import LOSSES, TrainConfig
from polymodal.training.artifacts import atomic_write_json

recommend_app = typer.Typer(add_completion=False, no_args_is_help=True,
                            help="Recommendation: a two-tower model over interactions and the users' and "
                                 "items' columns (images, text, numbers, categories).")


def _columns(spec: str | None) -> list[str] | None:
    """'a,b' → ['a', 'b']; 'none' → [] (no columns); None → every column."""
    if spec is None:
        return None
    if spec.strip().lower() == "none":
        return []
    return [c.strip() for c in spec.split(",") if c.strip()]


def _options(spec: str | None) -> dict:
    """'dim=32,recent=5,item_id=false' → typed TowerConfig options."""
    out: dict = {}
    for part in (spec or "").split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in MODEL_OPTIONS:
            raise PolymodalError(f"--model takes name=value pairs with names {', '.join(sorted(MODEL_OPTIONS))}; "
                                 f"got {part.strip()!r}")
        v = value.strip().lower()
        out[key] = v in ("1", "true", "yes") if v in ("0", "1", "true", "false", "yes", "no") and key in (
            "item_id", "user_id", "history") else (float(v) if "." in v else int(v))
    return out


@recommend_app.command("fit")
@user_errors
def fit(
    interactions: Path = typer.Argument(..., help="interactions table: user, item[, rating][, timestamp] per row"),
    users: Path | None = typer.Option(None, help="users table (id column + columns for the user tower)"),
    items: Path | None = typer.Option(None, help="items table (id column + image/text/numeric/categorical columns)"),
    out: Path = typer.Option(..., "--out", "-o", help="run folder to write"),
    user_col: str = typer.Option("user_id", help="user id column (interactions and users table)"),
    item_col: str = typer.Option("item_id", help="item id column (interactions and items table)"),
    rating_col: str = typer.Option("rating", help="rating column (used with --threshold)"),
    time_col: str = typer.Option("timestamp", help="time column (orders each user's history; absent: file order)"),
    threshold: float | None = typer.Option(None, help="keep only interactions rated at least this (implicit "
                                                      "feedback); default: every row is a positive"),
    item_columns: str | None = typer.Option(None, help="item columns to use, comma-separated ('none': ids only; "
                                                       "default: all)"),
    user_columns: str | None = typer.Option(None, help="user columns to use ('none'; default: all)"),
    item_column_types: str | None = typer.Option(None, help="col=image|text|numeric|categorical,..."),
    user_column_types: str | None = typer.Option(None, help="col=numeric|categorical,..."),
    loss: str = typer.Option("sampled-softmax", help=f"{' | '.join(LOSSES)}"),
    epochs: int = typer.Option(30, help="most epochs (early stopping on the validation split)"),
    batch_size: int = typer.Option(1024),
    lr: float = typer.Option(3e-3),
    item_id_dropout: float = typer.Option(0.0, help="share of item ids hidden per step, so the content part "
                                                    "learns to carry an item alone (cold start)"),
    max_history: int = typer.Option(0, help="training: pool at most this many random history items per example "
                                            "(0: all; long histories train much faster with e.g. 32)"),
    model: str | None = typer.Option(None, help="tower options, e.g. dim=64,hidden=256,recent=10,item_id=false"),
    seed: int = typer.Option(0),
    no_validation: bool = typer.Option(False, "--no-validation", help="train every epoch on every interaction"),
    cache_dir: Path | None = typer.Option(None, help="feature cache folder (default ~/.cache/polymodal/features)"),
    overwrite: bool = typer.Option(False, help="replace a non-empty --out"),
) -> None:
    """Train a recommender and write its run folder."""
    if out.exists() and out.is_dir() and any(out.iterdir()) and not overwrite:  # before minutes of training
        raise PolymodalError(f"{out} is not empty: choose another folder or pass --overwrite")
    train = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, loss=loss, item_id_dropout=item_id_dropout,
                        max_history=max_history, seed=seed)
    rec = Recommender.fit(interactions, users, items, user_col=user_col, item_col=item_col, rating_col=rating_col,
                          time_col=time_col, threshold=threshold, item_columns=_columns(item_columns),
                          user_columns=_columns(user_columns), item_column_types=item_column_types,
                          user_column_types=user_column_types, cache_dir=cache_dir, model=_options(model),
                          train=train, validation=not no_validation, log=typer.echo)
    rec.save(out, overwrite=overwrite)
    if rec.metrics:
        print_metrics(rec.metrics, "validation")
    typer.echo(f"saved {out}")


@recommend_app.command("evaluate")
@user_errors
def evaluate(
    run: Path = typer.Argument(..., help="recommendation run folder"),
    test: Path | None = typer.Option(None, help="held-out data: a split table (user_id, test_item_id, "
                                                "negative_item_ids) or an interactions table; default: show "
                                                "the validation scores saved at fit"),
    k: list[int] = typer.Option([10], "-k", help="cut-offs (repeatable)"),
    out: Path | None = typer.Option(None, help="write the metrics as JSON here"),
) -> None:
    """Score a run on held-out interactions (HR/NDCG/MRR on sampled candidates, full-ranking Recall/NDCG)."""
    if any(x < 1 for x in k):
        raise PolymodalError("-k must be at least 1")
    rec = Recommender.load(run)
    metrics = rec.metrics if test is None else rec.evaluate(test, ks=tuple(k))
    print_metrics(metrics, "validation (saved at fit)" if test is None else f"test: {test}")
    if out is not None:
        atomic_write_json(out, metrics)


@recommend_app.command("top-k")
@user_errors
def top_k(
    run: Path = typer.Argument(..., help="recommendation run folder"),
    user: str = typer.Option(..., "--user", "-u", help="user id"),
    k: int = typer.Option(10, "-k", help="how many items"),
    include_seen: bool = typer.Option(False, help="also return items the user already interacted with"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
) -> None:
    """The k best items for a user (never ones they already interacted with)."""
    if k < 1:
        raise PolymodalError("-k must be at least 1")
    rec = Recommender.load(run)
    rows = rec.top_k(user, k, exclude_seen=not include_seen)
    if as_json:
        typer.echo(json.dumps({"user": user, "items": rows}))
        return
    table = Table(title=f"top {k} for user {user}")
    for c in ("rank", "item", "score", "cold"):
        table.add_column(c, justify="left" if c == "item" else "right")
    for r, row in enumerate(rows, 1):
        table.add_row(str(r), row["item"], f"{row['score']:.4f}", "yes" if row["cold"] else "")
    Console().print(table)
