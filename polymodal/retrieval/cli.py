"""`polymodal align / index / search / zero-shot` (and the alignment branch of `evaluate`): thin fronts over
the alignment pipeline (`AlignedModel`, `load_searcher`)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from polymodal.data.readers import read_table
from polymodal.errors import DataError, PolymodalError, console, user_errors
from polymodal.retrieval.aligned import AlignedModel
from polymodal.retrieval.config import AlignConfig
from polymodal.retrieval.search import load_searcher
from polymodal.training.artifacts import atomic_write_json, atomic_write_text


def _kv(spec: str | None) -> dict[str, str]:
    if not spec:
        return {}
    try:
        return dict(p.strip().split("=", 1) for p in spec.split(",") if p.strip())
    except ValueError:
        raise PolymodalError(f"expected name=value[,name=value...], got {spec!r}") from None


def print_retrieval(metrics: dict, title: str) -> None:
    """One row per direction: R@1/5/10, median rank, mAP."""
    table = Table(title=title)
    for c in ("direction", "R@1", "R@5", "R@10", "median rank", "mAP", "queries"):
        table.add_column(c, justify="left" if c == "direction" else "right")
    for d in sorted({k.split("/")[0] for k in metrics if "/" in k}):
        g = {k.split("/")[1]: v for k, v in metrics.items() if k.startswith(d + "/")}
        cells = [format(g[key], fmt) if key in g else "–" for key, fmt in
                 (("R@1", ".4f"), ("R@5", ".4f"), ("R@10", ".4f"), ("median_rank", ".1f"), ("mAP", ".4f"),
                  ("n_queries", ".0f"))]
        table.add_row(d.replace("_to_", " → "), *cells)
    Console().print(table)


@user_errors
def align(
    pairs: Path = typer.Argument(..., help="table of paired rows (.csv, .jsonl, .parquet)"),
    left: str = typer.Option(..., help="first column (image, text, audio paths/strings or vectors)"),
    right: str = typer.Option(..., help="second column"),
    out: Path = typer.Option(..., "--out", "-o", help="run folder to write"),
    valid: Path | None = typer.Option(None, help="validation pairs (default: 10% held out by whole groups)"),
    pair_id: str | None = typer.Option(None, help="column whose equal values make rows positives of each other "
                                                  "(e.g. a category)"),
    column_types: str | None = typer.Option(None, help="col=image|text|audio|vector,..."),
    image_encoder: str | None = typer.Option(None, help="efficientnet-lite0 (default), mobilenet_v2, timm:NAME ..."),
    text_encoder: str | None = typer.Option(None, help="minilm-l6 (default) or a Hugging Face model"),
    audio_encoder: str | None = typer.Option(None, help="whisper-tiny.en (pretrained) or logmel-cnn"),
    image_size: int | None = typer.Option(None, help="image side in pixels (default 224)"),
    finetune: str | None = typer.Option(None, help="columns whose pretrained tower is fine-tuned (default: "
                                                   "locked towers, trained heads: LiT)"),
    embed_dim: int = typer.Option(256, help="joint embedding size"),
    head_hidden: int | None = typer.Option(None, help="MLP projection heads of this width (default linear)"),
    epochs: int = typer.Option(30),
    batch_size: int = typer.Option(256, help="pairs per contrastive batch (more = more negatives)"),
    lr: float = typer.Option(1e-3),
    weight_decay: float = typer.Option(0.1),
    patience: int = typer.Option(5),
    metric: str = typer.Option("mean_r1", help="early stopping on mean_r1 or map"),
    hard_negatives: bool = typer.Option(False, help="batches of k-means neighbours (harder negatives)"),
    seed: int = typer.Option(0),
    on_bad_rows: str = typer.Option("error", help="error | skip"),
) -> None:
    """Train a dual encoder (contrastive, CLIP loss) that embeds two columns in one space."""
    encoders = {k: v for k, v in {"image": image_encoder, "text": text_encoder, "audio": audio_encoder}.items()
                if v}
    cfg = AlignConfig(left=left, right=right, column_types=_kv(column_types), encoders=encoders,
                      encoder_opts={"image": {"image_size": image_size}} if image_size else {},
                      finetune=[c.strip() for c in (finetune or "").split(",") if c.strip()], pair_id=pair_id,
                      embed_dim=embed_dim, head_hidden=head_hidden, epochs=epochs, batch_size=batch_size, lr=lr,
                      weight_decay=weight_decay, patience=patience, metric=metric, hard_negatives=hard_negatives,
                      seed=seed, on_bad_rows=on_bad_rows)
    model = AlignedModel.fit(pairs, cfg, out, valid, log=lambda m: console.print(m, highlight=False))
    print_retrieval(model.metrics["valid"], "validation (best epoch)")
    console.print(f"run folder: {out}")


def evaluate_alignment(run: Path, data: Path, out: Path | None, pair_id: str | None = None) -> None:
    """`polymodal evaluate RUN pairs.csv` for an alignment run."""
    metrics = AlignedModel.load(run).evaluate(data, pair_id)
    print_retrieval(metrics, f"retrieval on {data} ({metrics['pairs']} pairs)")
    if out:
        atomic_write_json(out, metrics)
    else:
        print(json.dumps(metrics))


@user_errors
def index(
    run: Path = typer.Argument(..., help="alignment run folder (`polymodal align`)"),
    gallery: Path = typer.Argument(..., help="table of gallery items"),
    column: str = typer.Option(..., help="gallery column (one of the run's two columns, or its modality)"),
    out: Path = typer.Option(..., "--out", "-o", help="index file to write (plus OUT.json)"),
    id_column: str | None = typer.Option(None, help="column of item ids (default: row number)"),
    kind: str = typer.Option("auto", help="auto (exact below 50k items, IVF above), flat, ivf, hnsw"),
    thumbnails: bool = typer.Option(True, help="store small thumbnails of gallery images for the web page"),
) -> None:
    """Embed a gallery column with an aligned model and save a FAISS index that remembers the model."""
    model = AlignedModel.load(run)
    idx = model.build_index(gallery, column, id_column, kind, thumbnails)
    idx.save(out)
    console.print(f"indexed {len(idx)} items ({idx.kind}, {idx.dim}-d) from {gallery} into {out}")


@user_errors
def search(
    index_path: Path = typer.Argument(..., metavar="INDEX", help="index file written by `polymodal index`"),
    text: str | None = typer.Option(None, help="text query"),
    image: Path | None = typer.Option(None, help="image file query"),
    audio: Path | None = typer.Option(None, help="audio file query"),
    k: int = typer.Option(10, "-k", "--k", help="results to return"),
    run: Path | None = typer.Option(None, help="alignment run (default: the one that built the index)"),
    as_json: bool = typer.Option(False, "--json", help="print JSON lines instead of a table"),
) -> None:
    """Top-k gallery items for a text, image or audio query."""
    query: dict = {"k": k}
    for kind, v in (("image", image), ("audio", audio)):
        if v is not None:
            if not v.is_file():
                raise DataError(f"{kind} query file not found", file=str(v))
            query[kind] = v.read_bytes()
    if text is not None:
        query["text"] = text
    if len(query) != 2:
        raise PolymodalError("give exactly one of --text, --image, --audio")
    if k < 1:
        raise PolymodalError("-k must be at least 1")
    results = load_searcher(index_path, run)(query)
    if as_json:
        for r in results:
            print(json.dumps({key: v for key, v in r.items() if key != "thumbnail"}))
        return
    table = Table(title=f"top {len(results)} of {index_path}")
    for c in ("rank", "id", "score", "item"):
        table.add_column(c, justify="right" if c in ("rank", "score") else "left")
    for i, r in enumerate(results, 1):
        table.add_row(str(i), str(r["id"]), f"{r['score']:.4f}", str(r.get("caption") or r.get("path") or ""))
    Console().print(table)


@user_errors
def zero_shot(
    run: Path = typer.Argument(..., help="alignment run with a text side"),
    data: Path = typer.Argument(..., help="table with the column to classify"),
    column: str = typer.Option(..., help="column to classify (the run's non-text side)"),
    classes: str = typer.Option(..., help="comma-separated class names"),
    template: list[str] = typer.Option(["{label}"], help="prompt template(s) with {label}; repeat to average"),
    label: str | None = typer.Option(None, help="true-class column: report accuracy"),
    out: Path | None = typer.Option(None, "--out", "-o", help="CSV of predictions and probabilities"),
) -> None:
    """Classify a column by similarity to text prompts ("a photo of a {label}") — no training."""
    names = [c.strip() for c in classes.split(",") if c.strip()]
    df = read_table(data)
    probs = AlignedModel.load(run).zero_shot(df, column, names, template)
    pred = probs.idxmax(axis=1)
    if label:
        if label not in df.columns:
            raise PolymodalError(f"label column '{label}' not found in {data}")
        acc = float((pred.to_numpy() == df[label].astype(str).to_numpy()).mean())
        console.print(f"zero-shot accuracy: {acc:.4f} on {len(df)} rows")
    if out:
        result = df.copy()
        result["predicted"] = pred.to_numpy()
        for c in names:
            result[f"proba_{c}"] = probs[c].round(6).to_numpy()
        atomic_write_text(out, result.to_csv(index=False))
        console.print(f"wrote {len(result)} predictions to {out}")
    else:
        Console().print(_preview(df[column], pred))


def _preview(values, pred) -> Table:
    table = Table(title="zero-shot predictions (first 20)")
    table.add_column("value")
    table.add_column("predicted")
    for v, p in list(zip(values, pred))[:20]:
        table.add_row(str(v), str(p))
    return table
