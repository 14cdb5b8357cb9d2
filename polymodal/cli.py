"""`polymodal` command line: a thin typer front over MultimodalPredictor and the other stages."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import pandas as pd
import typer
from rich.console import Console
from rich.table import Table

from polymodal.cli_options import GROUP_HELP, LABEL_GROUPS, encoder_settings, finetune_settings, parse_kv, print_metrics
from polymodal.compress.cli import compress, export
from polymodal.data.readers import read_table
from polymodal.data.shards import ShardReader, media_dir
from polymodal.data.validate import validate_tables
from polymodal.demo import run_demo
from polymodal.encoders.whisper import load_whisper
from polymodal.ensemble.cli import leaderboard
from polymodal.errors import DataError, PolymodalError, console, user_errors
from polymodal.fusion import fusion_names
from polymodal.predictor import MultimodalPredictor
from polymodal.problem_types import GENERATION
from polymodal.recommend.cli import recommend_app
from polymodal.retrieval.cli import align, evaluate_alignment, index, search, zero_shot
from polymodal.runs import ALIGNMENT, load_run, run_kind
from polymodal.serve.cli import ENGINE_HELP, serve
from polymodal.speak import speak_command
from polymodal.tasks.speech import transcribe as run_transcribe
from polymodal.tasks.speech import word_error_rate
from polymodal.training.adapt import AdaptConfig
from polymodal.training.adapt import adapt as run_adapt
from polymodal.training.artifacts import FIT_STATE, atomic_open, atomic_write_json, atomic_write_text
from polymodal.training.compare import compare as run_compare
from polymodal.training.compare import plot_comparison, summarise
from polymodal.training.config import FitConfig
from polymodal.training.report import write_model_card

ALLOW_MISSING_HELP = ("a column the model was trained on that the table lacks: predict with it as a missing input "
                      "(repeat for several); without it such a table is an error")


app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Multimodal deep learning on tables of image, text, audio and tabular columns.")


@app.command()
@user_errors
def fit(
    train: Path | None = typer.Argument(None, help="training table (.csv, .tsv, .jsonl, .parquet)"),
    label: list[str] | None = typer.Option(None, "--label", "-l",
                                           help="label column; repeat for multi-task (one head per label)"),
    out: Path | None = typer.Option(None, "--out", "-o", help="run folder to write"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace a non-empty --out folder, once the new run "
                                   "has finished (until then the old one stays as it was)"),
    resume: Path | None = typer.Option(None, help="continue an interrupted run folder (same data and settings)"),
    valid: Path | None = typer.Option(None, help="validation table (default: stratified split)"),
    group_column: str | None = typer.Option(None, help=GROUP_HELP),
    test: Path | None = typer.Option(None, help="test table, scored after training"),
    problem_type: str | None = typer.Option(None, help="binary|multiclass|multilabel|regression "
                                                       "(multi-task: label=type,...)"),
    column_types: str | None = typer.Option(None, help="override inference: col=image,col2=text,..."),
    image_encoder: str | None = typer.Option(None, help="efficientnet-lite0 (default), mobilenet_v2, "
                                                "small-cnn, timm:NAME, torchvision:NAME, adapted:DIR (adapt)"),
    text_encoder: str | None = typer.Option(None, help="minilm-l6 (default) or a Hugging Face model name"),
    audio_encoder: str | None = typer.Option(None, help="logmel-cnn (default) or whisper-tiny.en"),
    video_encoder: str | None = typer.Option(None, help="frames-mean (default), frames-attn, frames-transformer"),
    video_backbone: str | None = typer.Option(None, help="per-frame image encoder: efficientnet-lite0 (default), "
                                                         "mobilenet_v2, small-cnn, timm:NAME"),
    video_frames: int | None = typer.Option(None, help="frames sampled per video (default 8)"),
    video_sampling: str | None = typer.Option(None, help="uniform (default) | fps | keyframes"),
    video_fps: float | None = typer.Option(None, help="rate of --video-sampling fps (default 2)"),
    video_audio: bool = typer.Option(True, "--video-audio/--no-video-audio",
                                     help="a video's sound track as the extra input '<col>:audio'"),
    timeseries_encoder: str | None = typer.Option(None, help="ts-cnn (default), ts-gru, ts-transformer"),
    image_size: int | None = typer.Option(None, help="image side in pixels (default 224)"),
    finetune: str | None = typer.Option(None, help="pretrained encoders to fine-tune: whole (image,text,video), "
                                           "their last K blocks/layers over a cached prefix (image:top=3,"
                                           "text:top=2; layer-wise lr decay: text:llrd=0.8), or text:lora[=RANK] / "
                                           "text:bitfit"),
    fusion: str = typer.Option("concat", help="fusion strategy: concat, late, ..."),
    tokens: bool | None = typer.Option(None, "--tokens/--no-tokens",
                                       help="token sequences into the fusion (default: for transformer, "
                                            "film, ban, coattention)"),
    epochs: int = typer.Option(20, help="maximum epochs"),
    batch_size: int = typer.Option(64),
    lr: float = typer.Option(1e-3, help="learning rate (fine-tuned encoders use 0.1x)"),
    weight_decay: float = typer.Option(1e-2),
    patience: int = typer.Option(5, help="early-stopping patience in epochs"),
    seed: int = typer.Option(0),
    on_bad_rows: str = typer.Option("error", help="error | skip"),
    num_workers: int = typer.Option(0, help="DataLoader workers for decoding media"),
    precision: str | None = typer.Option(None, help="Lightning precision (default bf16-mixed on GPU)"),
    devices: str = typer.Option("auto"),
    strategy: str = typer.Option("auto", help="Lightning strategy: auto, ddp, fsdp"),
    num_nodes: int = typer.Option(1),
    time_limit: float | None = typer.Option(None, help="seconds for the whole fit (preparing, training, scoring)"),
    preset: str = typer.Option("fast", help="fast (one fusion network) | balanced | best (bagged, ensembled models)"),
    eval_metric: str | None = typer.Option(None, help="ensembles: metric for selection and the leaderboard"),
    members: str | None = typer.Option(None, help="ensembles: members instead of the preset's (linear, knn, "
                                                  "lightgbm, extra_trees, fusion:NAME), comma-separated"),
    folds: int | None = typer.Option(None, help="ensembles: bagging folds instead of the preset's"),
    dropout: float = typer.Option(0.2, help="dropout in the fusion and head"),
    loss: str = typer.Option("cross_entropy", help="classification loss: cross_entropy | focal"),
    focal_gamma: float = typer.Option(2.0, help="focal loss focusing parameter"),
    class_weighting: str = typer.Option("auto", help="on: inverse-frequency class weights (for balanced "
                                                    "accuracy / macro F1); auto = off (fit optimises accuracy)"),
    sampler: str = typer.Option("shuffle", help="shuffle | weighted (resample classes of the first label equally)"),
    tune_threshold: str | None = typer.Option(None, help="binary labels: tune the decision threshold on the "
                                                         "validation set for f1 | balanced_accuracy"),
    loss_weighting: str = typer.Option("uniform", help="multi-task: uniform | fixed | uncertainty (learned)"),
    task_weights: str | None = typer.Option(None, help="multi-task fixed weights: label=weight,..."),
    mixup: float = typer.Option(0.0, help="mixup alpha (0 = off)"),
    text_augment: float = typer.Option(0.0, help="word drop/swap probability for fine-tuned text encoders"),
    cached_views: int = typer.Option(0, help="augmented views cached per image (cached encoders see augmentation)"),
    average_epochs: int = typer.Option(0, help="keep the mean weights of the last K epochs, not the best one"),
    length_bucketing: bool = typer.Option(True, help="fine-tuned text: batch rows of similar length"),
    group_batches: bool = typer.Option(False, help="batches hold whole groups: a fine-tuned image top runs once"),
    label_groups: str | None = LABEL_GROUPS,
    l1: float = typer.Option(0.0, help="L1 penalty on the head's weights"),
    label_smoothing: float = typer.Option(0.0),
    task: str = typer.Option("auto", help="auto (classify or regress the label) | caption (inputs → text) | "
                                          "vqa-open (image + question → free-text answer)"),
    stream: bool = typer.Option(False, "--stream", help="TRAIN (and --valid) are Parquet or WebDataset tar shards "
                                "(file, folder, quoted glob or {000..009} pattern) read chunk by chunk, never "
                                "whole; needs frozen encoders"),
    chunk_rows: int = typer.Option(10_000, help="rows per chunk with --stream"),
) -> None:
    """Train a model on a table and write a self-contained run folder."""
    if resume:
        return _resume(resume)
    if train is None or not label or out is None:
        raise PolymodalError("fit needs a training table, --label and --out (or --resume RUN)")
    if on_bad_rows not in ("error", "skip"):
        raise PolymodalError("--on-bad-rows must be 'error' or 'skip'")
    checks = {"--loss": (loss, ("cross_entropy", "focal")), "--sampler": (sampler, ("shuffle", "weighted")),
              "--class-weighting": (class_weighting, ("auto", "on", "off")),
              "--loss-weighting": (loss_weighting, ("uniform", "fixed", "uncertainty")),
              "--tune-threshold": (tune_threshold or "f1", ("f1", "balanced_accuracy")),
              "--task": (task, ("auto", "caption", "vqa-open"))}
    for flag, (value, allowed) in checks.items():
        if value not in allowed:
            raise PolymodalError(f"{flag} must be one of {', '.join(allowed)}, not {value!r}")
    if stream and task != "auto":
        raise PolymodalError("--stream trains classifiers and regressors; --task caption/vqa-open reads the table "
                             "in memory")
    target = out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite:
            raise PolymodalError(f"{out} already exists and is not empty: choose another --out, add --overwrite to "
                                 f"replace it once the new run has finished, or continue an interrupted run with "
                                 f"`polymodal fit --resume {out}`")
        out = out.parent / f".{out.name}.new"  # trained beside it; swapped in only when complete
        shutil.rmtree(out, ignore_errors=True)
    labels = label if len(label) > 1 else label[0]
    ptype = parse_kv(problem_type) if problem_type and "=" in problem_type else problem_type
    weights = {k: float(v) for k, v in parse_kv(task_weights).items()} if task_weights else None
    encoders, encoder_opts = encoder_settings(
        image_encoder, text_encoder, audio_encoder, video_encoder, timeseries_encoder, image_size,
        {"backbone": video_backbone, "num_frames": video_frames, "sampling": video_sampling, "fps": video_fps,
         "audio": None if video_audio else False})
    frozen, tuning = finetune_settings(finetune)
    for mod, extra in tuning.items():
        encoder_opts.setdefault(mod, {}).update(extra)
    p = MultimodalPredictor(
        label=labels, problem_type=ptype, path=out, column_types=parse_kv(column_types),
        encoders=encoders, encoder_opts=encoder_opts, frozen=frozen, fusion=fusion, max_epochs=epochs,
        batch_size=batch_size, lr=lr, weight_decay=weight_decay, patience=patience, seed=seed,
        on_bad_rows=on_bad_rows, num_workers=num_workers, precision=precision, average_epochs=average_epochs,
        devices=int(devices) if devices.isdigit() else devices, strategy=strategy, num_nodes=num_nodes,
        time_limit=time_limit, dropout=dropout, loss=loss, focal_gamma=focal_gamma,
        class_weighting={"auto": None, "on": True, "off": False}[class_weighting], sampler=sampler,
        tune_threshold=tune_threshold, loss_weighting=loss_weighting, task_weights=weights, mixup=mixup,
        text_augment=text_augment, cached_views=cached_views, length_bucketing=length_bucketing, l1=l1,
        label_smoothing=label_smoothing, group_batches=group_batches, members=members.split(",") if members else None,
        tokens=tokens, group_column=group_column, preset=preset, eval_metric=eval_metric, folds=folds,
        label_groups=label_groups,
        task=None if task == "auto" else task,  # caption / vqa-open: a text generator (training.generation)
        **({"stream": True, "chunk_rows": chunk_rows} if stream else {}))
    p.fit(train, valid, test)
    if target != out:
        _replace_folder(target, out)
        p.path = target
        write_model_card(target, p)
    print_metrics(p.metrics["valid"], "validation")
    if "test" in p.metrics:
        print_metrics(p.metrics["test"], "test")
    console.print(f"run folder: {target}")


def _replace_folder(target: Path, new: Path) -> None:
    """Put the finished run `new` where `target` is: the old folder is moved aside first and removed last, so
    an interruption leaves one of the two complete."""
    old = target.parent / f".{target.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if target.is_dir():
        target.rename(old)
    else:
        target.unlink()
    new.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def _resume(run: Path) -> None:
    state_path = run / FIT_STATE
    if not state_path.exists():
        raise PolymodalError(f"{run} has no {FIT_STATE}: it is not an interrupted polymodal run")
    state = json.loads(state_path.read_text())
    tables = state["tables"]
    if not tables.get("train"):
        raise PolymodalError(f"{run} was trained from a DataFrame: resume it in Python with fit(..., resume=True)")
    cfg = state["config"]
    label = cfg.pop("label")
    problem_type = cfg.pop("problem_type")
    p = MultimodalPredictor(label=label, problem_type=problem_type, path=run, **cfg)
    p.fit(tables["train"], tables.get("valid"), tables.get("test"), resume=True)
    print_metrics(p.metrics["valid"], "validation")
    console.print(f"run folder: {run}")


@app.command()
@user_errors
def evaluate(run: Path = typer.Argument(..., help="run folder"),
             data: Path = typer.Argument(..., help="labelled table"),
             out: Path | None = typer.Option(None, help="write metrics JSON (and confusion matrix) here"),
             pair_id: str | None = typer.Option(None, help="alignment runs: column whose equal values are positives"),
             allow_missing: list[str] = typer.Option([], "--allow-missing", help=ALLOW_MISSING_HELP),
             engine: str | None = typer.Option(None, help=ENGINE_HELP),
             ) -> None:
    """Score a trained run on a labelled table (an alignment run: Recall@K, median rank, mAP both ways)."""
    if run_kind(run) == ALIGNMENT:
        return evaluate_alignment(run, data, out, pair_id)
    p = load_run(run)
    plots = (out.parent if out else run / "evaluation")
    metrics = p.evaluate(data, plots_dir=plots, **predict_options(allow_missing, engine))
    print_metrics(metrics, f"evaluation of {run} on {data}")
    if out:
        atomic_write_json(out, metrics)
    else:
        print(json.dumps(metrics))


@app.command()
@user_errors
def predict(run: Path = typer.Argument(..., help="run folder (or a compressed one)"),
            data: str = typer.Argument(..., help="table to predict; with --stream, Parquet/WebDataset shards "
                                                 "(file, folder, glob or {000..009} pattern)"),
            out: Path = typer.Option(..., "--out", "-o", help="CSV to write"),
            proba: bool = typer.Option(True, help="add one probability column per class"),
            stream: bool = typer.Option(False, "--stream", help="read DATA chunk by chunk and append each chunk's "
                                                              "predictions (tables past RAM)"),
            chunk_rows: int = typer.Option(10_000, help="rows per chunk with --stream"),
            allow_missing: list[str] = typer.Option([], "--allow-missing", help=ALLOW_MISSING_HELP),
            engine: str | None = typer.Option(None, help=ENGINE_HELP)) -> None:
    """Write predictions (and class probabilities) for every row of a table."""
    p = load_run(run)
    kwargs = predict_options(allow_missing, engine)  # predict's keyword arguments
    if not stream:
        result = _prediction_frame(p, read_table(data), proba, kwargs)
        atomic_write_text(out, result.to_csv(index=False))
        console.print(f"wrote {len(result)} predictions to {out}")
        return
    reader = ShardReader(data, chunk_rows, media_dir(getattr(p.config, "cache_dir", None)))
    rows = 0
    # appended chunk by chunk, moved into place only when every chunk is done: a failure part-way (a bad row
    # in shard 7) leaves any earlier `out` as it was
    with atomic_open(out) as f:
        for chunk in reader.chunks():
            if len(chunk):
                frame = _prediction_frame(p, chunk, proba, kwargs).assign(shard=Path(chunk.attrs["source"]).name,
                                                                  shard_row=chunk.index)
                frame.to_csv(f, index=False, header=rows == 0)
                rows += len(frame)
    console.print(f"wrote {rows} predictions from {len(reader.files)} {reader.kind} shard(s) to {out}")


def predict_options(allow_missing: list[str], engine: str | None = None) -> dict:
    """predict/evaluate keyword arguments for --allow-missing and --engine, given only when used."""
    return {k: v for k, v in (("allow_missing", allow_missing), ("engine", engine)) if v}


def _prediction_frame(p, df, proba: bool, kwargs: dict):
    """`df` with predicted_<label> (and proba_<class>) columns added; `kwargs`: predict's keyword arguments."""
    pred = p.predict(df, **kwargs)
    result = df.copy()
    for name, values in (pred.items() if isinstance(pred, pd.DataFrame) else [(p.config.label, pred)]):
        result[f"predicted_{name}"] = values
    if proba and getattr(p.task, "problem_type", None) != GENERATION:  # generated text: no probabilities
        probs = p.predict_proba(df, **kwargs)
        for c in probs.columns:
            if c not in p.config.labels:  # regression labels' "probabilities" are the predictions above
                result[f"proba_{c}"] = probs[c].round(6)
    return result


@app.command()
@user_errors
def compare(
    train: Path = typer.Argument(..., help="training table"),
    label: str = typer.Option(..., "--label", "-l"),
    out: Path = typer.Option(Path("compare"), "--out", "-o", help="folder for compare.md/.csv/.png"),
    fusions: str = typer.Option("all", help="comma list of fusions, or 'all'"),
    seeds: str = typer.Option("0,1,2", help="comma list of seeds (≥3 for mean ± std)"),
    valid: Path | None = typer.Option(None),
    test: Path | None = typer.Option(None, help="test table (default: 20% held out, same for every model)"),
    group_column: str | None = typer.Option(None, help=GROUP_HELP),
    robustness: bool = typer.Option(False, help="also score each model with each input removed / noised"),
    column_types: str | None = typer.Option(None),
    problem_type: str | None = typer.Option(None),
    image_encoder: str | None = typer.Option(None),
    text_encoder: str | None = typer.Option(None),
    audio_encoder: str | None = typer.Option(None, help="logmel-cnn (default, trained) or whisper-tiny.en"),
    video_encoder: str | None = typer.Option(None, help="frames-mean (default), frames-attn, frames-transformer"),
    timeseries_encoder: str | None = typer.Option(None, help="ts-cnn (default), ts-gru, ts-transformer"),
    image_size: int | None = typer.Option(None),
    epochs: int = typer.Option(20),
    batch_size: int = typer.Option(64),
    lr: float = typer.Option(1e-3),
    patience: int = typer.Option(5),
) -> None:
    """Train unimodal baselines and every fusion on the same splits and seeds; write a ranked table."""
    names = fusion_names() if fusions == "all" else [f.strip() for f in fusions.split(",") if f.strip()]
    unknown = set(names) - set(fusion_names())
    if unknown:
        raise PolymodalError(f"unknown fusions {sorted(unknown)}; choose from {', '.join(fusion_names())}")
    encoders, encoder_opts = encoder_settings(image_encoder, text_encoder, audio_encoder, video_encoder,
                                              timeseries_encoder, image_size)
    cfg = FitConfig(label=label, problem_type=problem_type, column_types=parse_kv(column_types),
                    encoders=encoders, encoder_opts=encoder_opts,
                    max_epochs=epochs, batch_size=batch_size, lr=lr, patience=patience, group_column=group_column)
    results = run_compare(read_table(train), cfg, names, [int(s) for s in seeds.split(",")],
                          read_table(valid) if valid else None, read_table(test) if test else None,
                          robustness, log=lambda m: console.print(m, highlight=False))
    table = summarise(results)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "compare.csv", results.to_csv(index=False))
    atomic_write_text(out / "compare.md", table.to_markdown(index=False) + "\n")
    plot_comparison(results, out / "compare.png")
    Console().print(table.to_markdown(index=False))
    console.print(f"wrote {out}/compare.md, compare.csv, compare.png")


@app.command()
@user_errors
def validate(data: Path = typer.Argument(..., help="table to check (the training split)"),
             label: str = typer.Option(..., "--label", "-l"),
             valid: Path | None = typer.Option(None, help="validation table (checked for leakage too)"),
             test: Path | None = typer.Option(None, help="test table (checked for leakage too)"),
             column_types: str | None = typer.Option(None),
             decode: bool = typer.Option(False, help="fully decode every media file (slower)"),
             out: Path | None = typer.Option(None, help="write the problems as CSV")) -> None:
    """Report every problem in a table (and its other splits) without training. Exit 1 if any."""
    tables = {"train": read_table(data)}
    if valid:
        tables["valid"] = read_table(valid)
    if test:
        tables["test"] = read_table(test)
    problems, schema = validate_tables(tables, label, parse_kv(column_types), decode=decode)
    if schema:
        Console().print("columns: " + ", ".join(f"{c}={m}" for c, m in schema["columns"].items())
                        + f"; problem type: {schema['problem_type']}")
    if out:
        atomic_write_text(out, problems.to_csv(index=False))
    if problems.empty:
        checked = ", ".join(f"{k} ({len(v)} rows)" for k, v in tables.items())
        Console().print(f"[green]no problems found[/] in {checked}")
        return
    table = Table(title=f"{len(problems)} problems")
    for c in problems.columns:
        table.add_column(c)
    for r in problems.head(200).itertuples(index=False):
        table.add_row(*map(str, r))
    Console().print(table)
    raise typer.Exit(1)


@app.command()
@user_errors
def demo(out: Path = typer.Option(Path("runs/demo"), help="run folder"),
         train_images: int = typer.Option(1200, help="easy-vqa training images to use (of 4,000)"),
         test_images: int = typer.Option(300, help="easy-vqa test images to use (of 1,000)"),
         epochs: int = typer.Option(15)) -> None:
    """Train and evaluate on easy-vqa (shipped by the `easy-vqa` package): image + question → answer."""
    t0 = time.time()
    metrics = run_demo(out, train_images, test_images, epochs)
    print_metrics(metrics, "easy-vqa test")
    Console().print(f"[bold]test accuracy: {metrics['accuracy']:.4f}[/]  ({time.time() - t0:.0f} s, run folder {out})")


@app.command()
@user_errors
def adapt(table: Path = typer.Argument(..., help="table whose column holds the unlabelled images or texts"),
          column: str = typer.Option(..., help="an image or text column"),
          out: Path = typer.Option(..., help="folder for the adapted encoder (fit: --image-encoder adapted:OUT or "
                                             "--text-encoder adapted:OUT)"),
          encoder: str | None = typer.Option(None, help="efficientnet-lite0 / mobilenet_v2 (images), minilm-l6 "
                                                        "or a Hugging Face name (texts)"),
          image_size: int = typer.Option(224, help="image side in pixels (fit uses the same)"),
          max_length: int = typer.Option(64, help="text length in tokens"),
          top: int | None = typer.Option(None, help="blocks/layers that adapt (default 3 image, 2 text)"),
          epochs: int = typer.Option(10), batch_size: int = typer.Option(32), lr: float = typer.Option(3e-4),
          seed: int = typer.Option(0)) -> None:
    """Continue pre-training an encoder on a table's own images (SimCLR) or texts (SimCSE): no labels needed."""
    run_adapt(table, AdaptConfig(column=column, encoder=encoder, image_size=image_size, max_length=max_length,
                                 train_top=top, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed), out,
              console.print)


@app.command()
@user_errors
def transcribe(audio: list[Path] = typer.Argument(..., help="audio files (wav, flac, ogg, ...)"),
               model: str = typer.Option("tiny.en", help="tiny.en (packaged, converted offline) or a HF name"),
               beam_size: int = typer.Option(1, help="1 = greedy"),
               reference: list[str] | None = typer.Option(None, "--reference", "-r",
                                                          help="reference transcript(s): report word error rate")
               ) -> None:
    """Transcribe speech with a PyTorch Whisper (the packaged tiny.en weights, converted from CTranslate2)."""
    for a in audio:
        if not a.exists():
            raise DataError("audio file not found", file=str(a))
    texts = run_transcribe([str(a) for a in audio], model=load_whisper(model), beam_size=beam_size)
    for a, t in zip(audio, texts):
        print(f"{a}\t{t}")
    if reference:
        if len(reference) != len(texts):
            raise PolymodalError(f"{len(reference)} references for {len(texts)} audio files")
        console.print(f"word error rate: {word_error_rate(list(reference), texts):.4f}")


# commands that live with their stage, registered here
app.command(name="serve")(serve)
app.command()(compress)
app.command()(export)
app.command()(leaderboard)
app.command()(align)
app.command()(index)
app.command()(search)
app.command(name="zero-shot")(zero_shot)
app.command(name="speak")(speak_command)
app.add_typer(recommend_app, name="recommend")


def main() -> None:  # pragma: no cover - console entry point
    app(sys.argv[1:])

