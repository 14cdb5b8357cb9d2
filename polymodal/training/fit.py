"""The fit pipeline: split → schema → encoders and preprocessing → checks → feature cache → train → evaluate.

`predictor.py` and `cli.py` are fronts over these functions; nothing here prints except through `log`.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from polymodal.data.dataset import Collator, Problem, TableDataset, check_rows, raise_or_drop, unlabeled
from polymodal.data.preprocess import Preprocessor
from polymodal.data.readers import keep_rows
from polymodal.data.schema import MULTILABEL, MULTITASK, REGRESSION, Schema, infer_schema
from polymodal.encoders import build_encoder
from polymodal.encoders.cache import precompute_features
from polymodal.errors import DataError, PolymodalError
from polymodal.fusion import build_fusion
from polymodal.model import MLPHead, MultiHead, MultimodalModel
from polymodal.tasks import MultiTask, task_from_prep, tune_threshold
from polymodal.types import TABULAR

Log = Callable[[str], None]


@dataclass(kw_only=True)
class RunSettings:
    """How and where a run trains (data handling, cache, hardware, limits); shared by FitConfig and the
    generation config, and saved with them in config.json."""

    augment: bool = True
    on_bad_rows: str = "error"  # "error" | "skip"
    cache_dir: str | None = None
    precision: str | None = None
    accelerator: str = "auto"
    devices: int | str = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    num_workers: int = 0
    time_limit: float | None = None
    progress: bool = True

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        """The settings in `d` this class knows (unknown keys, e.g. from other versions, are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class FitConfig(RunSettings):
    """Everything that defines a run; saved as config.json so a run folder rebuilds itself."""

    label: str | list[str]  # several labels: multi-task (one shared trunk, a head per label)
    problem_type: str | dict | None = None  # multi-task: {label: type} (missing ones inferred)
    column_types: dict[str, str] = field(default_factory=dict)
    encoders: dict[str, str] = field(default_factory=dict)  # modality → encoder name (defaults otherwise)
    encoder_opts: dict[str, dict] = field(default_factory=dict)  # modality → builder options
    frozen: dict[str, bool] = field(default_factory=dict)  # modality → frozen? (default: pretrained ones)
    fusion: str = "concat"
    fusion_opts: dict = field(default_factory=dict)
    tokens: bool | None = None  # image/text/audio as token sequences; None: when the fusion takes tokens
    head_hidden: int = 256
    dropout: float = 0.2
    lr: float = 1e-3
    weight_decay: float = 1e-2
    batch_size: int = 64
    max_epochs: int = 20
    patience: int = 5
    seed: int = 0
    valid_fraction: float = 0.2
    class_weighting: bool | None = None  # None: on when the largest class is ≥ 3× the smallest
    label_smoothing: float = 0.0
    loss: str = "cross_entropy"  # classification loss: cross_entropy | focal
    focal_gamma: float = 2.0
    loss_weighting: str = "uniform"  # multi-task: uniform | fixed (task_weights) | uncertainty (learned)
    task_weights: dict[str, float] | None = None
    sampler: str = "shuffle"  # shuffle | weighted (resample rows by inverse class frequency of the first label)
    tune_threshold: str | None = None  # binary labels: pick the decision threshold maximising f1|balanced_accuracy
    decision_threshold: dict[str, float] = field(default_factory=dict)  # label → tuned threshold (set by fit)
    mixup: float = 0.0  # Beta(α, α) mixup of per-modality encoder inputs/features and targets; 0 = off
    text_augment: float = 0.0  # per-word drop/swap probability for text inputs whose encoder trains
    l1: float = 0.0  # L1 penalty on the head's weights
    compile: bool = False  # torch.compile each trained encoder (worth it for fine-tuning on a GPU)
    length_bucketing: bool = True  # trained text encoders: batch rows of similar text length (less padding)
    stream: bool = False  # read the training table as Parquet/WebDataset shards, chunk by chunk (fit_stream)
    chunk_rows: int = 10_000  # rows per chunk when streaming
    @property
    def labels(self) -> list[str]:
        return [self.label] if isinstance(self.label, str) else list(self.label)



def split_train_valid(df: pd.DataFrame, label: str, problem_type: str, fraction: float,
                      seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stratified split for classification; classes with a single row stay in train (they cannot be split)."""
    from sklearn.model_selection import train_test_split

    if len(df) < 4:
        raise DataError(f"the table has {len(df)} rows; at least 4 are needed to train and validate",
                        file=df.attrs.get("source"))
    keep = pd.Series(False, index=df.index)
    strat = None
    if problem_type not in (REGRESSION, MULTILABEL):
        y = df[label].astype(str)
        counts = y.map(y.value_counts())
        keep = counts < 2
        rest = y[~keep]
        if rest.nunique() >= 2 and int(len(rest) * fraction) >= rest.nunique():
            strat = rest
    tr, va = train_test_split(df[~keep], test_size=fraction, random_state=seed, stratify=strat)
    tr = pd.concat([tr, df[keep]])
    tr.attrs.update(df.attrs)
    va.attrs.update(df.attrs)
    return tr, va


def build_encoders(schema: Schema, config: FitConfig, architecture_dirs: dict[str, str] | None = None,
                   ) -> tuple[dict[str, nn.Module], dict[str, dict]]:
    """One encoder per media/text column (the tabular MLP is built after preprocessing knows its sizes).

    `architecture_dirs[column]`: a saved Hugging Face config to build that text encoder from, without
    downloading or reading pretrained weights (a run folder's weights are loaded afterwards).
    """
    encoders, pre_cfg = {}, {}
    for col, mod in schema.columns.items():
        if mod in ("image", "text", "audio", "video", "timeseries"):
            opts = dict(config.encoder_opts.get(mod, {}))
            name = config.encoders.get(mod)
            if mod == "text" and architecture_dirs and col in architecture_dirs:
                name, opts["weights"] = architecture_dirs[col], False
                opts.pop("num_layers", None)  # the saved config already has the kept layer count
            if mod == "timeseries":
                opts.setdefault("in_channels", schema.series_channels.get(col, 1))
            if mod == "video" and config.frozen.get("video") is False:  # --finetune video: the frame backbone too
                opts.setdefault("finetune_backbone", True)
            enc = build_encoder(mod, name, **opts)
            encoders[col] = enc
            pre_cfg[mod] = enc.preprocess_config()
            if getattr(enc, "audio_track", False):  # a video's sound: its own audio input (see data/video.py)
                from polymodal.data.video import AUDIO_TRACK, audio_track_key

                track = build_encoder("audio", config.encoders.get("audio"), **config.encoder_opts.get("audio", {}))
                encoders[audio_track_key(col)] = track
                pre_cfg[AUDIO_TRACK] = track.preprocess_config()
    return encoders, pre_cfg


def build_tabular_encoder(prep: Preprocessor, config: FitConfig) -> nn.Module:
    spec = prep.inputs[TABULAR].config
    return build_encoder("tabular", config.encoders.get("tabular"), n_numeric=len(spec["numeric"]),
                         cardinalities=[len(prep.vocab[c]) for c in spec["categorical"]],
                         **config.encoder_opts.get("tabular", {}))


def is_frozen(key: str, modality: str, encoder: nn.Module, config: FitConfig) -> bool:
    return bool(config.frozen.get(modality, getattr(encoder, "pretrained", False)))


def token_inputs(config: FitConfig, prep: Preprocessor | None) -> dict[str, str]:
    """Inputs fed to the fusion as token sequences: image/text/audio ones, when `config.tokens` (or, by
    default, when the fusion accepts tokens: transformer, film)."""
    from polymodal.encoders.tokens import TOKEN_MODALITIES
    from polymodal.fusion import FUSIONS

    use = config.tokens if config.tokens is not None else getattr(FUSIONS.get(config.fusion), "accepts_tokens",
                                                                  False)
    if use and not getattr(FUSIONS.get(config.fusion), "accepts_tokens", False):
        raise PolymodalError(f"fusion {config.fusion!r} takes pooled features; token inputs need transformer or "
                             "film")
    if not use or prep is None:
        return {}
    return {k: s.modality for k, s in prep.inputs.items() if s.modality in TOKEN_MODALITIES}


def assemble_model(encoders: dict[str, nn.Module], task, config: FitConfig,
                   prep: Preprocessor | None = None) -> MultimodalModel:
    tokens = token_inputs(config, prep)
    in_dims = {k: (e.token_dim if k in tokens else e.out_dim) for k, e in encoders.items()}
    opts = dict(config.fusion_opts)
    if tokens and config.fusion == "film":
        opts.setdefault("token_keys", sorted(tokens))
    fusion = build_fusion(config.fusion, in_dims, num_outputs=task.num_outputs, dropout=config.dropout, **opts)
    if getattr(fusion, "produces_logits", False):
        head: nn.Module = nn.Identity()
    elif isinstance(task, MultiTask):
        head = MultiHead({n: MLPHead(fusion.out_dim, t.num_outputs, config.head_hidden, config.dropout)
                          for n, t in task.tasks.items()})
    else:
        head = MLPHead(fusion.out_dim, task.num_outputs, config.head_hidden, config.dropout)
    model = MultimodalModel(nn.ModuleDict(encoders), fusion, head, tokens)
    model.token_configs = {k: dict(prep.inputs[k].config) for k in tokens}
    return model


def frozen_keys(model: MultimodalModel, prep: Preprocessor, config: FitConfig) -> list[str]:
    keys = []
    for key, enc in model.encoders.items():
        mod = prep.inputs[key].modality
        if mod != TABULAR and is_frozen(key, mod, enc, config):
            keys.append(key)
    return keys


def features_for(df: pd.DataFrame, prep: Preprocessor, model: MultimodalModel, keys: list[str],
                 config: FitConfig, device, log: Log, on_bad_rows: str,
                 ) -> tuple[pd.DataFrame, dict, list[Problem], dict]:
    """Cached features for frozen inputs; undecodable files are raised or dropped per `on_bad_rows`."""
    if not keys:
        return df, {}, [], {"computed": 0, "reused": 0}

    def progress(key, done, total):
        if done == total or done % 512 < config.batch_size:
            log(f"  encoding {key}: {done}/{total}")

    feats, problems, stats = precompute_features(
        df, prep, {k: model.encoders[k] for k in keys}, keys, config.cache_dir, config.batch_size, device,
        config.num_workers, progress, token_keys=[k for k in keys if k in model.token_inputs])
    if problems:
        kept, problems = raise_or_drop(df, problems, on_bad_rows)
        mask = df.index.isin(kept.index)
        feats = {k: (f[mask], p[mask]) for k, (f, p) in feats.items()}
        df = kept
    return df, feats, problems, stats


def make_loader(df, prep, feats, config: FitConfig, train: bool, with_target: bool = True,
                distributed: bool = False) -> DataLoader:
    """`distributed`: the loader feeds the Trainer, so under DDP/FSDP each rank takes its shard. `df` may be
    a built TableDataset (streaming: an ArrayDataset over memory-mapped rows)."""
    ds = df if isinstance(df, TableDataset) else TableDataset(
        df, prep, feats, train=train, with_target=with_target, augment=config.augment, seed=config.seed,
        text_augment=config.text_augment)
    workers = config.num_workers if ds.values else 0  # everything cached → decoding threads buy nothing
    from polymodal.training.callbacks import EpochSampler

    weights = sample_weights(prep, ds.target) if train and config.sampler == "weighted" else None
    lengths = ds.text_lengths() if train and config.length_bucketing else None
    # The loader's own generator: creating an iterator must not draw from the global RNG, or a resumed run
    # (whose iterator is created at a different moment) would see different dropout masks.
    return DataLoader(ds, batch_size=config.batch_size,
                      sampler=EpochSampler(len(ds), config.seed, shuffle=train, weights=weights,
                                           distributed=distributed, lengths=lengths,
                                           batch_size=config.batch_size),
                      collate_fn=Collator(prep), num_workers=workers, pin_memory=torch.cuda.is_available(),
                      persistent_workers=workers > 0, drop_last=False,
                      generator=torch.Generator().manual_seed(config.seed))


def sample_weights(prep: Preprocessor, target: np.ndarray | None) -> np.ndarray:
    """Per-row sampling weights 1 / (count of the row's class) for the weighted sampler, so that every
    class of the (first) label is drawn equally often; rows without that label get the mean weight."""
    ptype = prep.schema.problem_types.get(prep.schema.labels[0])
    if target is None or ptype not in ("binary", "multiclass"):
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


@dataclass
class FitResult:
    model: MultimodalModel
    prep: Preprocessor
    task: object
    config: FitConfig
    history: pd.DataFrame
    val_metrics: dict[str, float]
    bad_rows: list[Problem]
    cache_stats: dict[str, int]
    fit_seconds: float
    best_checkpoint: str
    val_probs: np.ndarray | None = None
    val_target: np.ndarray | None = None


def fit(train_df: pd.DataFrame, valid_df: pd.DataFrame | None, config: FitConfig, run_dir: str | os.PathLike,
        log: Log = print, resume: bool = False) -> FitResult:
    """Train. With `resume`, continue from `run_dir/checkpoints/last.ckpt` (same data and config)."""
    t0 = time.time()
    L.seed_everything(config.seed, workers=True, verbose=False)
    schema = infer_schema(train_df, config.label, config.column_types, config.problem_type)
    for col, mod in schema.columns.items():
        log(f"  column {col!r}: {mod} ({schema.reasons.get(col, '')})")
    log(f"  problem type: {schema.problem_type}")
    bad: list[Problem] = []
    labels = schema.labels
    # rows with no label at all (multi-task: none of the labels) cannot train anything
    train_df, dropped = raise_or_drop(train_df, unlabeled(train_df, labels), config.on_bad_rows)  # before a split
    bad += dropped
    if valid_df is None:
        train_df, valid_df = split_train_valid(train_df, labels[0], schema.problem_types[labels[0]],
                                               config.valid_fraction, config.seed)
        log(f"  split: {len(train_df)} train / {len(valid_df)} valid rows (seed {config.seed})")
    encoders, pre_cfg = build_encoders(schema, config)
    prep = Preprocessor.fit(train_df, schema, pre_cfg)
    if TABULAR in prep.inputs:
        encoders[TABULAR] = build_tabular_encoder(prep, config)
    if prep.classes and schema.problem_type not in (MULTILABEL, MULTITASK):  # valid classes training never saw
        unseen = ~valid_df[config.label].astype(str).isin(set(prep.classes))
        if unseen.any():
            log(f"  dropped {int(unseen.sum())} validation rows whose label does not occur in training")
            valid_df = keep_rows(valid_df, ~unseen)
            if len(valid_df) == 0:
                raise DataError("no validation row is left: every validation label is a class the training table "
                                "does not have", file=valid_df.attrs.get("source"), column=config.label)
    for name in ("train", "valid"):
        df = train_df if name == "train" else valid_df
        df, problems = raise_or_drop(df, check_rows(df, prep), config.on_bad_rows)
        bad += problems
        if name == "train":
            train_df = df
        else:
            valid_df = df
    task = task_from_prep(prep, config, prep.encode_target(train_df))
    for key, enc in encoders.items():
        if prep.inputs[key].modality != TABULAR and is_frozen(key, prep.inputs[key].modality, enc, config):
            enc.freeze()
    model = assemble_model(encoders, task, config, prep)
    if model.token_inputs:
        log(f"  token inputs for {config.fusion} fusion: {', '.join(sorted(model.token_inputs))}")
    keys = frozen_keys(model, prep, config)
    if config.text_augment and not any(s.modality == "text" and k not in keys for k, s in prep.inputs.items()):
        log("  note: --text-augment changes text fed to a trained text encoder; these text features are cached "
            "from a frozen encoder, so it has no effect (add --finetune text)")
    device = "cuda" if torch.cuda.is_available() and config.accelerator in ("auto", "gpu", "cuda") else "cpu"
    stats = {"computed": 0, "reused": 0}
    feats = {}
    for name in ("train", "valid"):
        df = train_df if name == "train" else valid_df
        df, f, problems, s = features_for(df, prep, model, keys, config, device, log, config.on_bad_rows)
        feats[name] = f
        bad += problems
        stats = {k: stats[k] + s[k] for k in stats}
        if name == "train":
            train_df = df
        else:
            valid_df = df
    if bad:
        log(f"  skipped {len({(p.row, p.column) for p in bad})} bad rows (listed in bad_rows.csv)")
    log(f"  feature cache: {stats['computed']} computed, {stats['reused']} reused")
    return _train_and_score(model, task, prep, config, run_dir, train_df, valid_df, feats, device, log, resume,
                            bad, stats, t0)


def _train_and_score(model: MultimodalModel, task, prep: Preprocessor, config: FitConfig, run_dir, train_data,
                     valid_data, feats: dict, device: str, log: Log, resume: bool, bad: list, stats: dict,
                     t0: float) -> FitResult:
    """Train on `train_data`, keep the best checkpoint and score `valid_data` (DataFrames, or built
    datasets when streaming)."""
    module_cls = _fit_module()
    module = module_cls(model, task, lr=config.lr, weight_decay=config.weight_decay, l1=config.l1,
                        mixup=config.mixup, compile=config.compile)
    monitor, mode = task.monitor
    trainer, ckpt = _trainer(config, run_dir, monitor, mode)
    train_loader = make_loader(train_data, prep, feats["train"], config, train=True, distributed=True)
    valid_loader = make_loader(valid_data, prep, feats["valid"], config, train=False, distributed=True)
    last = os.path.join(run_dir, "checkpoints", "last.ckpt")
    ckpt_path = last if resume and os.path.exists(last) else None
    if resume:
        log(f"  resuming from {last}" if ckpt_path else "  no checkpoint to resume from: training from the start")
    with _threads_for(model, device):
        trainer.fit(module, train_loader, valid_loader, ckpt_path=ckpt_path)
    best = ckpt.best_model_path
    if best and os.path.exists(best):
        module.load_trained_state(best)
    history = _history(os.path.join(run_dir, "logs", "metrics.csv"))
    probs, target = predict_probs(model, task, prep, valid_data, config, feats["valid"])
    if config.tune_threshold:
        _tune_thresholds(task, config, probs, target, log)
    val_metrics = task.metrics(probs, target)
    return FitResult(model.cpu().eval(), prep, task, config, history, val_metrics, bad, stats,
                     time.time() - t0, best, probs, target)


def fit_stream(train, valid, config: FitConfig, run_dir: str | os.PathLike, log: Log = print,
               resume: bool = False) -> FitResult:
    """Train on Parquet or WebDataset shards read `config.chunk_rows` rows at a time (data/streaming.py).

    The schema comes from the first rows; preprocessing statistics from one pass over the training rows;
    a second pass checks rows, computes frozen features into the feature cache and appends each row's
    features, encoded tabular values and target to files that training reads memory-mapped. Without
    `valid`, a row goes to validation by a seeded hash of its stream position (`streaming.valid_mask`).
    Every encoder but the tabular MLP must be frozen: a trained encoder would need its raw inputs decoded
    again every epoch, which this path does not stream; such inputs are refused before any pass.
    """
    import shutil

    from polymodal.data import streaming as st

    t0 = time.time()
    L.seed_everything(config.seed, workers=True, verbose=False)
    media = st.media_dir(config.cache_dir)
    readers = {"train": st.ShardReader(train, config.chunk_rows, media)}
    if valid is not None:
        readers["valid"] = st.ShardReader(valid, config.chunk_rows, media)
    head = readers["train"].head(st.SCHEMA_ROWS)
    schema = infer_schema(head, config.label, config.column_types, config.problem_type)
    log(f"  streaming {len(readers['train'].files)} {readers['train'].kind} shard(s) in chunks of at most "
        f"{config.chunk_rows} rows; schema inferred from the first {len(head)} rows")
    del head
    for col, mod in schema.columns.items():
        log(f"  column {col!r}: {mod} ({schema.reasons.get(col, '')})")
    log(f"  problem type: {schema.problem_type}")
    series = schema.of("timeseries")
    if series:
        raise PolymodalError(f"time-series column '{series[0]}' cannot be streamed yet (its per-channel scaling is "
                             "fitted on the whole column): fit without --stream, or drop the column")
    encoders, pre_cfg = build_encoders(schema, config)
    trained = [f"'{k}' ({schema.columns.get(k, 'audio')}, {getattr(e, 'cache_id', type(e).__name__)})"
               for k, e in encoders.items() if not is_frozen(k, schema.columns.get(k, "audio"), e, config)]
    if trained:
        raise PolymodalError(
            f"streaming needs frozen encoders (their features are computed chunk by chunk into the feature cache), "
            f"but {', '.join(trained)} would train. Freeze them (Python: frozen={{'<modality>': True}}; drop "
            "--finetune), leave those columns out, or fit in memory without --stream")
    split = valid is None

    def parts():
        """(name, rows, problems) for name train/valid: a chunk's rows on each side of the hash split (or the
        train and valid shards in turn), unlabeled rows dropped (or raised) as in fit()."""
        for reader_name, reader in readers.items():
            for chunk, problems in st.labelled_chunks(reader, schema, config.on_bad_rows):
                if not split:
                    yield reader_name, chunk, problems
                    continue
                in_valid = st.valid_mask(st.positions(chunk), config.seed, config.valid_fraction)
                yield "train", keep_rows(chunk, ~in_valid), problems
                yield "valid", keep_rows(chunk, in_valid), []

    acc = st.StreamStats(schema)
    n_valid = 0
    for name, part, _ in parts():  # pass 1: statistics of the training rows
        if name == "train":
            acc.update(part)
        else:
            n_valid += len(part)
    if split:
        log(f"  split: {acc.rows} train / {n_valid} valid rows (hash of the row's stream position, seed "
            f"{config.seed}, fraction {config.valid_fraction})")
    if n_valid == 0 or acc.rows < 2:
        raise DataError(f"{acc.rows} training and {n_valid} validation rows; stream more rows"
                        + (" or give validation shards" if split else ""), file=str(readers["train"].files[0]))
    prep = acc.preprocessor(pre_cfg, source=str(readers["train"].files[0]))
    log(f"  preprocessing fitted on {acc.rows} training rows in one pass")
    if TABULAR in prep.inputs:
        encoders[TABULAR] = build_tabular_encoder(prep, config)
    for key, enc in encoders.items():
        if key != TABULAR:
            enc.freeze()
    keys = [k for k in encoders if k != TABULAR]
    tokens = token_inputs(config, prep)
    device = "cuda" if torch.cuda.is_available() and config.accelerator in ("auto", "gpu", "cuda") else "cpu"
    rank = os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))  # DDP re-runs this in every process
    folder = Path(run_dir) / "stream" / f"rank{rank}"
    stores = {name: st.RowStore(folder / name) for name in ("train", "valid")}
    bad: list[Problem] = []
    stats = {"computed": 0, "reused": 0}
    unseen = 0
    by_class = bool(prep.classes) and schema.problem_type not in (MULTILABEL, MULTITASK)
    # Feature extraction's DataLoaders draw their seeds from the global RNG: fork it, so the head is
    # initialised from the same RNG state as in fit() (streamed and in-memory runs then agree).
    with torch.random.fork_rng(devices=[]):
        for name, part, problems in parts():  # pass 2: checks, features, encoded rows to disk
            bad += problems
            if name == "valid" and by_class and len(part):
                known = part[schema.label].astype(str).isin(set(prep.classes)).to_numpy()
                unseen += int((~known).sum())
                part = keep_rows(part, known)
            part, _, problems = st.drop_rows(part, check_rows(part, prep), config.on_bad_rows)
            bad += problems
            if not len(part):
                continue
            feats, problems, s = precompute_features(
                part, prep, {k: encoders[k] for k in keys}, keys, config.cache_dir, config.batch_size, device,
                config.num_workers, token_keys=[k for k in keys if k in tokens])
            stats = {k: stats[k] + s[k] for k in stats}
            part, feats, problems = st.drop_rows(part, problems, config.on_bad_rows, feats)
            bad += problems
            if len(part):
                stores[name].append(st.chunk_arrays(part, prep, feats))
    if unseen:
        log(f"  dropped {unseen} validation rows whose label does not occur in training")
    if bad:
        log(f"  skipped {len({(p.file, p.row, p.column) for p in bad})} bad rows (listed in bad_rows.csv)")
    log(f"  feature cache: {stats['computed']} computed, {stats['reused']} reused")
    source = str(readers["train"].files[0])
    train_ds, valid_ds = (stores[n].dataset(prep, source) for n in ("train", "valid"))
    if len(train_ds) == 0 or len(valid_ds) == 0:
        raise DataError(f"no {'training' if len(train_ds) == 0 else 'validation'} row is left after the row checks",
                        file=source)
    log(f"  rows: {len(train_ds)} train / {len(valid_ds)} valid, memory-mapped from {folder}")
    task = task_from_prep(prep, config, train_ds.target)
    model = assemble_model(encoders, task, config, prep)
    if model.token_inputs:
        log(f"  token inputs for {config.fusion} fusion: {', '.join(sorted(model.token_inputs))}")
    try:
        return _train_and_score(model, task, prep, config, run_dir, train_ds, valid_ds, {"train": {}, "valid": {}},
                                device, log, resume, bad, stats, t0)
    finally:
        del train_ds, valid_ds
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def _threads_for(model: nn.Module, device: str):
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


def _fit_module():
    from polymodal.training.module import FitModule

    return FitModule


def _trainer(config: FitConfig, run_dir, monitor: str, mode: str):
    from polymodal.training.trainer import build_trainer

    return build_trainer(run_dir, monitor, mode, config.max_epochs, config.patience, config.precision,
                         config.accelerator, config.devices, config.strategy, config.num_nodes,
                         config.progress, config.time_limit, seed=config.seed)


def _history(path: str) -> pd.DataFrame:
    if not os.path.exists(path):
        return pd.DataFrame()
    h = pd.read_csv(path)
    return h.groupby("epoch", as_index=False).first() if "epoch" in h else h


def _tune_thresholds(task, config: FitConfig, probs: np.ndarray, target: np.ndarray, log: Log) -> None:
    """Set each binary label's decision threshold to the one that maximises `config.tune_threshold` on the
    validation predictions (recorded in config.decision_threshold, so the run folder keeps it)."""
    if isinstance(task, MultiTask):
        blocks = task.split(probs)
        parts = {n: (blocks[n], target[:, task.target_slices[n]][:, 0]) for n in task.names}
    else:
        parts = {config.labels[0]: (probs, target)}
    tasks = task.tasks if isinstance(task, MultiTask) else {config.labels[0]: task}
    for name, (p, t) in parts.items():
        if tasks[name].problem_type != "binary":
            continue
        keep = ~np.isnan(np.asarray(t, dtype=np.float64))
        th = tune_threshold(p[keep], t[keep], config.tune_threshold)
        tasks[name].threshold = th
        config.decision_threshold[name] = th
        log(f"  decision threshold for {name!r}: {th:.4f} (maximises validation {config.tune_threshold})")


@torch.inference_mode()
def predict_probs(model: MultimodalModel, task, prep: Preprocessor, df: pd.DataFrame, config: FitConfig,
                  feats: dict | None = None, with_target: bool = True,
                  device: str | torch.device | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Probabilities (or regression values) for every row, with a plain loop: no Trainer per call."""
    device = device or next(model.parameters()).device
    model.eval().to(device)
    loader = make_loader(df, prep, feats or {}, dataclasses.replace(config, num_workers=0), train=False,
                         with_target=with_target)
    from polymodal.model import move_batch

    probs, targets = [], []
    # A few rows on CPU: one thread. Measured on the 2-core machine under load, a 1-row predict with the
    # demo model took 0.2-0.3 s with one thread and 3-4 s with two (OpenMP threads spinning for cores).
    with one_thread(torch.device(device).type == "cpu" and len(df) <= 8):
        for batch in loader:
            batch = move_batch(batch, device)
            probs.append(task.probabilities(model(batch)).float().cpu().numpy())
            if with_target:
                targets.append(batch["target"].cpu().numpy())
    p = np.concatenate(probs)
    return p, (np.concatenate(targets) if with_target else None)


def ensure_usable(df: pd.DataFrame, prep: Preprocessor) -> None:
    missing = [c for c in prep.feature_columns() if c not in df.columns]
    if len(missing) == len(prep.feature_columns()):
        raise PolymodalError(f"none of the model's input columns ({', '.join(prep.feature_columns())}) are in "
                             f"the table {df.attrs.get('source', '')}")
