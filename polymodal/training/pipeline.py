"""The one fit pipeline: `prepare` (split → schema → preprocessing statistics → encoders → row checks →
feature cache) and `train_and_score` (Lightning, best checkpoint, validation scores), shared by classifiers
and regressors (`fit.TABLE`), text generators (`generation.GENERATION`) and streamed fits (`streaming.py`,
which prepares chunk by chunk and hands its rows to the same tail).

What differs between kinds of run is a `Recipe`: how to infer the schema and split, fit preprocessing, build
the task and model, batch rows, and score validation rows. Nothing here prints except through `log`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from polymodal.data.dataset import Collator, Problem, TableDataset, check_rows, raise_or_drop, unlabeled
from polymodal.data.preprocess import Preprocessor
from polymodal.data.schema import Schema
from polymodal.data.split import row_groups
from polymodal.encoders.cache import precompute_features
from polymodal.errors import DataError, PolymodalError
from polymodal.model import inference_context, move_batch, prepare_for_inference
from polymodal.problem_types import ONE_CLASS_PER_ROW
from polymodal.training.averaging import EpochAverage, mark_averaged
from polymodal.training.build import build_encoders, build_tabular_encoder, frozen_keys
from polymodal.training.callbacks import EpochSampler
from polymodal.training.config import FitConfig, RunSettings
from polymodal.training.trainer import build_trainer
from polymodal.types import IMAGE, TABULAR

Log = Callable[[str], None]


class Recipe(Protocol):
    """The kind-specific steps of a fit (see module docstring)."""

    kind: str

    def schema(self, df: pd.DataFrame, config: Any, log: Log) -> Schema: ...

    def split(self, df: pd.DataFrame, schema: Schema, config: Any) -> tuple[pd.DataFrame, pd.DataFrame]: ...

    def fit_prep(self, df: pd.DataFrame, schema: Schema, pre_cfg: dict) -> Preprocessor: ...

    def check_valid(self, valid: pd.DataFrame, prep: Preprocessor, config: Any, log: Log) -> pd.DataFrame: ...

    def build(self, encoders: dict[str, nn.Module], prep: Preprocessor, config: Any, train: Any,
              log: Log) -> tuple[Any, nn.Module, Any]: ...  # (task, model, config)

    def module(self, model: nn.Module, task: Any, config: Any) -> L.LightningModule: ...

    def loader(self, data: Any, prep: Preprocessor, feats: dict, config: Any, task: Any, train: bool,
               distributed: bool = False) -> DataLoader: ...

    def score(self, model: nn.Module, task: Any, prep: Preprocessor, data: Any, config: Any, feats: dict,
              log: Log) -> tuple[dict[str, float], np.ndarray | None, np.ndarray | None]: ...


@dataclass
class Prepared:
    """Everything `train_and_score` needs: model, task, preprocessing and the train/valid rows (DataFrames,
    or built datasets when streaming) with their cached features."""

    model: nn.Module
    task: Any
    prep: Preprocessor
    config: Any
    data: dict[str, Any]  # "train" / "valid" → DataFrame or TableDataset
    feats: dict[str, dict]
    bad: list[Problem]
    cache_stats: dict[str, int]
    device: str
    t0: float
    views: dict[str, np.ndarray] = field(default_factory=dict)  # image input → (V, N, ...) augmented training views


@dataclass
class FitResult:
    model: nn.Module
    prep: Preprocessor
    task: Any
    config: Any
    history: pd.DataFrame
    val_metrics: dict[str, float]
    bad_rows: list[Problem]
    cache_stats: dict[str, int]
    fit_seconds: float
    best_checkpoint: str
    val_probs: np.ndarray | None = None
    val_target: np.ndarray | None = None
    extra: dict = field(default_factory=dict)


def train_device(config: RunSettings) -> str:
    return "cuda" if torch.cuda.is_available() and config.accelerator in ("auto", "gpu", "cuda") else "cpu"


def log_schema(schema: Schema, log: Log) -> None:
    for col, mod in schema.columns.items():
        log(f"  column {col!r}: {mod} ({schema.reasons.get(col, '')})")


def prepare(train_df: pd.DataFrame, valid_df: pd.DataFrame | None, config: Any, recipe: Recipe,
            log: Log) -> Prepared:
    """Seed, schema, unlabeled rows, split, encoders, preprocessing, row checks, model, feature cache."""
    t0 = time.time()
    L.seed_everything(config.seed, workers=True, verbose=False)
    schema = recipe.schema(train_df, config, log)
    # rows with no label at all (multi-task: none of the labels) cannot train anything: dropped before a split
    train_df, bad = raise_or_drop(train_df, unlabeled(train_df, schema.labels), config.on_bad_rows)
    if valid_df is None:
        train_df, valid_df = recipe.split(train_df, schema, config)
        log(f"  split: {len(train_df)} train / {len(valid_df)} valid rows (seed {config.seed})")
    encoders, pre_cfg = build_encoders(schema, config)
    prep = recipe.fit_prep(train_df, schema, pre_cfg)
    if TABULAR in prep.inputs:
        encoders[TABULAR] = build_tabular_encoder(prep, config)
    valid_df = recipe.check_valid(valid_df, prep, config, log)
    frames = {}
    for name, df in (("train", train_df), ("valid", valid_df)):
        frames[name], problems = raise_or_drop(df, check_rows(df, prep), config.on_bad_rows)
        bad += problems
    task, model, config = recipe.build(encoders, prep, config, frames["train"], log)
    keys = frozen_keys(model, prep, config)
    device = train_device(config)
    stats, feats = {"computed": 0, "reused": 0}, {}
    for name in ("train", "valid"):
        frames[name], feats[name], problems, s = features_for(frames[name], prep, model, keys, config, device, log,
                                                              config.on_bad_rows)
        bad += problems
        stats = {k: stats[k] + s[k] for k in stats}
    if bad:
        log(f"  skipped {len({(p.row, p.column) for p in bad})} bad rows (listed in bad_rows.csv)")
    log(f"  feature cache: {stats['computed']} computed, {stats['reused']} reused")
    views = augmented_views(frames["train"], prep, model, keys, config, device, log)
    return Prepared(model, task, prep, config, frames, feats, bad, stats, device, t0, views)


def augmented_views(df: pd.DataFrame, prep: Preprocessor, model: nn.Module, keys: list[str], config: Any,
                    device, log: Log) -> dict[str, np.ndarray]:
    """`--cached-views V`: V augmented views of every cached image input's training rows, cached like the plain
    features (their own namespaces), so a frozen or prefix-cached image encoder still sees augmentation: each
    epoch a training row reads one of the V + 1 (data/dataset.py). {key: (V, N, ...)}."""
    n_views = getattr(config, "cached_views", 0)
    image_keys = [k for k in keys if prep.inputs[k].modality == IMAGE]
    if not n_views or not image_keys:
        if n_views:
            log("  --cached-views: no cached image input (views are for frozen or prefix-cached image encoders)")
        return {}
    if not config.augment:
        log("  --cached-views ignored: augmentation is off")
        return {}
    views: dict[str, np.ndarray] = {}  # filled view by view: no list of copies stacked at the end
    computed = reused = 0
    for v in range(1, n_views + 1):
        feats, problems, s = precompute_features(
            df, prep, {k: model.encoders[k] for k in image_keys}, image_keys, config.cache_dir, config.batch_size,
            device, config.num_workers, token_keys=[k for k in image_keys if k in model.token_inputs], view=v)
        if problems:  # the same files decoded for the plain features: a failure here is not the data's
            raise PolymodalError(f"augmented view {v} of {problems[0].column!r} failed on row {problems[0].row}: "
                                 f"{problems[0].message}")
        computed, reused = computed + s["computed"], reused + s["reused"]
        for k in image_keys:
            f = feats[k][0]
            if k not in views:
                views[k] = np.empty((n_views, *f.shape), f.dtype)
            views[k][v - 1] = f
    log(f"  augmented views: {n_views} per image of {', '.join(image_keys)} ({computed} computed, {reused} reused)")
    return views


def train_and_score(p: Prepared, recipe: Recipe, run_dir: str | os.PathLike, log: Log,
                    resume: bool = False) -> FitResult:
    """Train on p.data["train"] (resuming from run_dir/checkpoints/last.ckpt when asked), keep the best
    checkpoint and score p.data["valid"]."""
    config, model, task = p.config, p.model, p.task
    module = recipe.module(model, task, config)
    monitor, mode = task.monitor
    # --average-epochs K: early stopping still ends the run; the kept weights are the last K epochs' mean
    average = EpochAverage(config.average_epochs) if getattr(config, "average_epochs", 0) else None
    trainer, ckpt = build_trainer(run_dir, monitor, mode, config.max_epochs, config.patience, config.precision,
                                  config.accelerator, config.devices, config.strategy, config.num_nodes,
                                  config.progress, training_budget(config.time_limit, time.time() - p.t0, log),
                                  seed=config.seed, callbacks=[average] if average else None)
    # an input with cached augmented views carries them as its entry's third element (data/dataset.py)
    train_feats = {k: (*f, p.views[k]) if k in p.views else f for k, f in p.feats["train"].items()}
    train_loader = recipe.loader(p.data["train"], p.prep, train_feats, config, task, True, distributed=True)
    valid_loader = recipe.loader(p.data["valid"], p.prep, p.feats["valid"], config, task, False, distributed=True)
    last = os.path.join(run_dir, "checkpoints", "last.ckpt")
    ckpt_path = last if resume and os.path.exists(last) else None
    if resume:
        log(f"  resuming from {last}" if ckpt_path else "  no checkpoint to resume from: training from the start")
    metrics_csv = os.path.join(run_dir, "logs", "metrics.csv")
    # Lightning's CSVLogger deletes the log it finds when the resumed Trainer starts: keep the epochs logged
    # before the interruption
    earlier = read_history(metrics_csv) if ckpt_path else pd.DataFrame()
    with threads_for(model, p.device):
        trainer.fit(module, train_loader, valid_loader, ckpt_path=ckpt_path)
    best = ckpt.best_model_path
    history = join_history(earlier, read_history(metrics_csv))
    extra: dict = {}
    if average and average.window:
        extra["averaged_epochs"] = average.apply(module)
        history = mark_averaged(history, extra["averaged_epochs"])
        log(f"  kept the mean weights of epochs {', '.join(map(str, extra['averaged_epochs']))} (from 0; "
            f"--average-epochs {average.k}), not the best checkpoint")
    elif best and os.path.exists(best):
        if average:
            log("  --average-epochs: no epoch completed, so the best checkpoint is kept")
        module.load_trained_state(best)
    val_metrics, probs, target = recipe.score(model, task, p.prep, p.data["valid"], config, p.feats["valid"], log)
    if extra:
        shown = {k: v for k, v in val_metrics.items() if k == monitor} or val_metrics
        log("  averaged model on the validation rows: " + ", ".join(f"{k} {v:.4f}" for k, v in shown.items()))
    return FitResult(model.cpu().eval(), p.prep, task, config, history, val_metrics, p.bad, p.cache_stats,
                     time.time() - p.t0, best, probs, target, extra)


SCORING_SHARE = 0.1  # of --time-limit, kept for scoring the validation rows and saving the run after training


def training_budget(limit: float | None, spent: float, log: Log) -> float | None:
    """Training's share of `--time-limit`, which counts the whole fit: what preparing took (`spent`: schema,
    encoders, feature cache) and a tenth kept for scoring and saving come off it. At least 1 s: a fit whose
    preparation used the budget up still trains one step and says why it ends past the limit."""
    if not limit:
        return None
    left = limit * (1 - SCORING_SHARE) - spent
    if left < 1:
        log(f"  --time-limit {limit:g}s: preparing took {spent:.0f}s, so training stops after its first step "
            "(the fit ends past the limit)")
        return 1.0
    return left


def fit_in_memory(train_df: pd.DataFrame, valid_df: pd.DataFrame | None, config: Any, recipe: Recipe,
                  run_dir: str | os.PathLike, log: Log = print, resume: bool = False) -> FitResult:
    """prepare → train_and_score on tables in memory."""
    return train_and_score(prepare(train_df, valid_df, config, recipe, log), recipe, run_dir, log, resume)


def features_for(df: pd.DataFrame, prep: Preprocessor, model: nn.Module, keys: list[str],
                 config: RunSettings, device, log: Log, on_bad_rows: str, engine: str | None = None,
                 ) -> tuple[pd.DataFrame, dict, list[Problem], dict]:
    """Cached features for frozen inputs; undecodable files are raised or dropped per `on_bad_rows`; `engine`
    encodes new values (None: the default engine, see `encoders.cache.encode_values`)."""
    if not keys:
        return df, {}, [], {"computed": 0, "reused": 0}

    def progress(key, done, total):
        if done == total or done % 512 < config.batch_size:
            log(f"  encoding {key}: {done}/{total}")

    feats, problems, stats = precompute_features(
        df, prep, {k: model.encoders[k] for k in keys}, keys, config.cache_dir, config.batch_size, device,
        config.num_workers, progress, token_keys=[k for k in keys if k in model.token_inputs], engine=engine)
    if problems:
        kept, problems = raise_or_drop(df, problems, on_bad_rows)
        mask = df.index.isin(kept.index)
        feats = {k: (f[mask], p[mask]) for k, (f, p) in feats.items()}
        df = kept
    return df, feats, problems, stats


def make_loader(df, prep: Preprocessor, feats: dict, config: FitConfig, train: bool, with_target: bool = True,
                distributed: bool = False) -> DataLoader:
    """Rows of a table in batches. `distributed`: the loader feeds the Trainer, so under DDP/FSDP each rank
    takes its shard. `df` may be a built TableDataset (streaming: an ArrayDataset over memory-mapped rows)."""
    ds = df if isinstance(df, TableDataset) else TableDataset(
        df, prep, feats, train=train, with_target=with_target, augment=config.augment, seed=config.seed,
        text_augment=getattr(config, "text_augment", 0.0))
    workers = config.num_workers if ds.values else 0  # everything cached → decoding threads buy nothing
    weights = sample_weights(prep, ds.target) if train and getattr(config, "sampler", "") == "weighted" else None
    lengths = ds.text_lengths() if train and getattr(config, "length_bucketing", False) else None
    groups = batch_groups(df, prep, config) if train else None
    # The loader's own generator: creating an iterator must not draw from the global RNG, or a resumed run
    # (whose iterator is created at a different moment) would see different dropout masks.
    return DataLoader(ds, batch_size=config.batch_size,
                      sampler=EpochSampler(len(ds), config.seed, shuffle=train, weights=weights,
                                           distributed=distributed, lengths=lengths,
                                           batch_size=config.batch_size, groups=groups),
                      collate_fn=Collator(prep), num_workers=workers, pin_memory=torch.cuda.is_available(),
                      persistent_workers=workers > 0, drop_last=False,
                      generator=torch.Generator().manual_seed(config.seed))


def batch_groups(df, prep: Preprocessor, config: FitConfig) -> np.ndarray | None:
    """Group keys of the training rows when `group_batches` is on: the validation split's groups
    (--group-column, or the first media column whose values repeat); None when off or nothing repeats."""
    if not getattr(config, "group_batches", False):
        return None
    if not isinstance(df, pd.DataFrame):
        raise PolymodalError("--group-batches needs the training table in memory (not with --stream)")
    return row_groups(df, prep.schema.columns, config.group_column)[0]


def sample_weights(prep: Preprocessor, target: np.ndarray | None) -> np.ndarray:
    """Per-row sampling weights 1 / (count of the row's class) for the weighted sampler, so that every
    class of the (first) label is drawn equally often; rows without that label get the mean weight."""
    ptype = prep.schema.problem_types.get(prep.schema.labels[0])
    if target is None or ptype not in ONE_CLASS_PER_ROW:
        raise PolymodalError("the weighted sampler balances the classes of a binary or multiclass (first) label; "
                             f"'{prep.schema.labels[0]}' is {ptype}")
    y = np.asarray(target, dtype=np.float64)
    y = y[:, 0] if y.ndim == 2 else y  # multi-task: the first label's column
    known = ~np.isnan(y)
    ids = y[known].astype(np.int64)
    counts = np.bincount(ids)
    w = np.full(len(y), np.nan)
    w[known] = 1.0 / counts[ids]
    w[~known] = np.nanmean(w) if known.any() else 1.0
    return w


def run_inference(model: nn.Module, batches: Iterable[dict], device, step: Callable[[nn.Module, dict], Any],
                  rows: int, on_batch: Callable[[Any, dict], None]) -> None:
    """The one inference loop, which predict, evaluate, the server (`answer_batch`) and benchmarks/throughput.py
    share: the model prepared by `model.prepare_for_inference` (eval, on `device`, channels_last on CUDA), each
    batch moved to `device` and passed through `step(model, batch)` inside `model.inference_context`
    (inference_mode; bf16 autocast on CUDA, the precision training used); `on_batch(output, batch)` collects.
    `rows`: how many rows the batches hold."""
    if not getattr(model, "runs_torch_kernels", True):  # an ONNX graph (compress/engine.OnnxModule): its own
        # threads and no autograd, so no torch thread or inference-mode switching (~0.1 ms of a one-row predict)
        for batch in batches:
            on_batch(step(model, batch), batch)
        return
    if model.training or _device_of(model) != torch.device(device):
        # Once per model, not per call: .to() and .eval() walk every submodule, ~10 ms of a one-row predict.
        prepare_for_inference(model, device)
    # A few rows on CPU: one thread. Measured on the 2-core machine under load, a 1-row predict with the
    # demo model took 0.2-0.3 s with one thread and 3-4 s with two (OpenMP threads spinning for cores).
    with one_thread(torch.device(device).type == "cpu" and rows <= 8), inference_context(device):
        for batch in batches:
            batch = move_batch(batch, device)
            on_batch(step(model, batch), batch)


def _device_of(model: nn.Module) -> torch.device | None:
    param = next(model.parameters(), None)
    return param.device if param is not None else None


def predict_probs(model: nn.Module, task, prep: Preprocessor, df: pd.DataFrame, config: FitConfig,
                  feats: dict | None = None, with_target: bool = True,
                  device: str | torch.device | None = None,
                  decoded: dict | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Probabilities (or regression values) for every row, with a plain loop: no Trainer per call.
    `decoded`: images check_rows already decoded ({input key: {path: array}}), not decoded again."""
    device = device or next(model.parameters()).device
    # No DataLoader, no workers (a few rows do not pay for starting them): batches straight from the dataset,
    # in order, as the loader would give them (its sampler, generator and iterator cost a one-row predict ~1 ms).
    ds = df if isinstance(df, TableDataset) else TableDataset(df, prep, feats or {}, train=False,
                                                              with_target=with_target, decoded=decoded)
    collate, size = Collator(prep), config.batch_size
    batches = (collate(ds.__getitems__(list(range(s, min(s + size, len(ds)))))) for s in range(0, len(ds), size))
    probs, targets = [], []

    def collect(out: torch.Tensor, batch: dict) -> None:
        probs.append(out.float().cpu().numpy())
        if with_target:
            targets.append(batch["target"].cpu().numpy())

    run_inference(model, batches, device, lambda m, b: task.probabilities(m(b)), len(df), collect)
    out = np.concatenate(probs)
    check_finite(out, df)
    return out, (np.concatenate(targets) if with_target else None)


def check_finite(outputs: np.ndarray, df: pd.DataFrame) -> None:
    """NaN or infinite outputs are an error naming the rows, never a prediction (a NaN probability would
    otherwise become the first class)."""
    if np.isfinite(outputs).all():
        return
    bad = np.flatnonzero(~np.isfinite(outputs.reshape(len(outputs), -1)).all(axis=1))
    if len(bad):
        rows = [int(r) for r in df.index[bad[:5]]]
        raise DataError(f"the model gives non-finite outputs for {len(bad)} row(s) (rows {rows}"
                        f"{' ...' if len(bad) > 5 else ''}): its weights or these rows' inputs are out of range",
                        file=df.attrs.get("source"), row=rows[0])


@contextmanager
def threads_for(model: nn.Module, device: str):
    """One intra-op thread when only a small fusion/head trains on CPU.

    Measured on the 2-core machine: a 0.5M-parameter head on cached features ran an epoch in 2.9 s with
    one thread and 16.7 s with two under load (thread hand-offs dominate such small matrix products).
    """
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    convs = any(isinstance(m, (nn.Conv1d, nn.Conv2d)) and any(p.requires_grad for p in m.parameters())
                for m in model.modules())
    with one_thread(device == "cpu" and not convs and trainable <= 5_000_000):
        yield


@contextmanager
def one_thread(active: bool = True):
    """Run the block with one intra-op CPU thread (restored afterwards)."""
    if not active:
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def join_history(earlier: pd.DataFrame, later: pd.DataFrame) -> pd.DataFrame:
    """The epochs logged before a resume followed by those after it (a re-run epoch counts once, the later)."""
    if earlier.empty or "epoch" not in earlier or later.empty or "epoch" not in later:
        return later if not later.empty else earlier
    return pd.concat([earlier[earlier["epoch"] < later["epoch"].min()], later], ignore_index=True)


def read_history(path: str) -> pd.DataFrame:
    """Lightning's CSV log as one row per epoch."""
    if not os.path.exists(path):
        return pd.DataFrame()
    h = pd.read_csv(path)
    return h.groupby("epoch", as_index=False).first() if "epoch" in h else h
