"""Text generators on tables (tasks `caption` and `vqa-open`): the fit pipeline's stages with a text decoder.

schema → encoders → preprocessing → row checks → frozen-feature cache → Lightning (teacher forcing, early
stopping on validation loss) → decoding → text metrics. `GenerationPredictor` is the front that
`MultimodalPredictor(label=..., task="caption" | "vqa-open")` and `MultimodalPredictor.load` return.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from polymodal.data.dataset import Collator, Problem, TableDataset, check_rows, raise_or_drop
from polymodal.data.preprocess import Preprocessor
from polymodal.data.readers import as_table, is_missing
from polymodal.data.schema import Schema, infer_schema
from polymodal.errors import DataError, PolymodalError
from polymodal.predictor import MultimodalPredictor, fit_summary
from polymodal.tasks.generation import (
    GENERATION_TASKS,
    DecodeConfig,
    GenerationModel,
    GenerationTask,
    TextDecoder,
    Vocabulary,
    init_word_embeddings,
)
from polymodal.training import artifacts
from polymodal.training.fit import (
    FitConfig,
    Log,
    RunSettings,
    _history,
    _threads_for,
    build_encoders,
    build_tabular_encoder,
    features_for,
    frozen_keys,
    is_frozen,
    one_thread,
)
from polymodal.training.module import FitModule
from polymodal.training.text_metrics import exact_match, text_metrics
from polymodal.types import TABULAR, TEXT

DECODER_TOKENIZER = "decoder_tokenizer"  # run-folder subfolder with the decoder's tokenizer
ANSWER_TYPE = "answer_type"  # vqa-open: optional column (e.g. OPEN/CLOSED) that splits the accuracy


@dataclass
class GenerationConfig(RunSettings):
    """Everything that defines a generation run; saved in config.json."""

    label: str
    task: str = "caption"  # caption | vqa-open
    column_types: dict[str, str] = field(default_factory=dict)
    encoders: dict[str, str] = field(default_factory=dict)
    encoder_opts: dict[str, dict] = field(default_factory=dict)
    frozen: dict[str, bool] = field(default_factory=dict)
    tokens: bool | None = None  # image/text/audio inputs as token sequences in the memory (the default,
    # None or True); False: one pooled vector per input
    d_model: int = 256
    layers: int = 2
    heads: int = 4
    dropout: float = 0.1
    decoder_tokenizer: str = "minilm-l6"  # the text encoder's tokenizer (an alias, hub id or directory)
    vocab: str = "train"  # train: tokens the training texts use | full: the tokenizer's whole vocabulary
    init_embeddings: bool = True  # start the tied embedding from the text encoder's word embeddings
    embed_dim: int | None = None  # embedding width (set by fit: the text encoder's when initialised from it)
    max_target_tokens: int = 32
    label_smoothing: float = 0.0
    decode: dict = field(default_factory=dict)  # DecodeConfig settings for validation/evaluate/predict
    lr: float = 1e-3
    weight_decay: float = 1e-2
    batch_size: int = 64
    max_epochs: int = 20
    patience: int = 5
    seed: int = 0
    valid_fraction: float = 0.1

    def __post_init__(self) -> None:
        if self.task not in GENERATION_TASKS:
            raise PolymodalError(f"task must be one of {', '.join(GENERATION_TASKS)}, not {self.task!r}")
        if self.vocab not in ("train", "full"):
            raise PolymodalError(f"vocab must be 'train' or 'full', not {self.vocab!r}")
        if self.on_bad_rows not in ("error", "skip"):
            raise PolymodalError("on_bad_rows must be 'error' or 'skip'")
        if self.d_model % self.heads:
            raise PolymodalError(f"d_model ({self.d_model}) must be a multiple of heads ({self.heads})")
        DecodeConfig.from_dict(self.decode)  # fail now, not after training

    @classmethod
    def from_options(cls, label: str | list[str], task: str, options: dict) -> GenerationConfig:
        """Options as MultimodalPredictor/`polymodal fit` pass them: classification-only settings are
        accepted at their defaults (the CLI passes them all) and refused otherwise."""
        if not isinstance(label, str):
            if len(label) != 1:
                raise PolymodalError(f"task {task!r} generates one text column; got labels {list(label)}")
            label = label[0]
        names = {f.name for f in dataclasses.fields(cls)}
        defaults = {f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
                    for f in dataclasses.fields(FitConfig)}
        kept = {}
        for k, v in options.items():
            if k in names:
                kept[k] = v
            elif k in defaults and v == defaults[k]:
                continue
            else:
                raise PolymodalError(f"setting {k}={v!r} does not apply to task {task!r}")
        return cls(label=label, task=task, **kept)

    @property
    def labels(self) -> list[str]:
        return [self.label]


class _TextLabelPreprocessor(Preprocessor):
    """Input specs and tabular statistics as for classifiers; the label is free text, which the decoder's
    vocabulary encodes, so no label encoder is fitted."""

    def _fit_label(self, df: pd.DataFrame) -> None:
        return None


@dataclass
class GenerationResult:
    model: GenerationModel
    prep: Preprocessor
    task: GenerationTask
    config: GenerationConfig
    history: pd.DataFrame
    val_metrics: dict[str, float]
    bad_rows: list[Problem]
    cache_stats: dict[str, int]
    fit_seconds: float
    best_checkpoint: str


# ---- pipeline ---------------------------------------------------------------------------------------------

def generation_schema(df: pd.DataFrame, config: GenerationConfig) -> Schema:
    """Column modalities (the label excluded); vqa-open needs a question (text) and an image column."""
    types = dict(config.column_types)
    if config.task == "vqa-open" and ANSWER_TYPE in df.columns and ANSWER_TYPE != config.label:
        types.setdefault(ANSWER_TYPE, "id")  # used to split the accuracy, never as an input
    # any class problem type skips label inference: the label is text to generate, not classes
    s = infer_schema(df, config.label, types, problem_type="multiclass")
    schema = dataclasses.replace(s, problem_type="generation", problem_types={s.label: "generation"})
    mods = set(schema.columns.values())
    if config.task == "vqa-open" and not {"image", TEXT} <= mods:
        raise DataError(f"task vqa-open needs an image column and a question (text) column; found "
                        f"{', '.join(f'{c}={m}' for c, m in schema.columns.items())} (--column-types overrides)",
                        file=df.attrs.get("source"))
    return schema


def input_keys(df: pd.DataFrame, schema: Schema) -> pd.Series:
    """One string per row from its input values: rows with equal keys have the same inputs."""
    cols = [c for c, m in schema.columns.items() if m != "id" and c in df.columns]
    return df[cols].astype(str).agg("\x1f".join, axis=1) if cols else pd.Series("", index=df.index)


def _group_split(df: pd.DataFrame, keys: pd.Series, fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validation rows by input: an image's several captions stay on one side of the split."""
    from sklearn.model_selection import GroupShuffleSplit

    if keys.nunique() < 4:
        raise DataError(f"the table has {keys.nunique()} distinct inputs; at least 4 are needed to train and "
                        "validate", file=df.attrs.get("source"))
    tr, va = next(GroupShuffleSplit(1, test_size=fraction, random_state=seed).split(df, groups=keys.to_numpy()))
    out = df.iloc[np.sort(tr)], df.iloc[np.sort(va)]
    for part in out:
        part.attrs.update(df.attrs)
    return out


def build_model(encoders: dict[str, nn.Module], prep: Preprocessor, config: GenerationConfig, vocab: Vocabulary,
                init_embeddings: bool) -> GenerationModel:
    from polymodal.encoders.tokens import TOKEN_MODALITIES

    tokens = {k: s.modality for k, s in prep.inputs.items() if s.modality in TOKEN_MODALITIES} \
        if config.tokens is not False else {}
    in_dims = {k: (e.token_dim if k in tokens else e.out_dim) for k, e in encoders.items()}
    decoder = TextDecoder(len(vocab), config.d_model, config.layers, config.heads, config.dropout,
                          config.max_target_tokens + 2, config.embed_dim)
    model = GenerationModel(nn.ModuleDict(encoders), in_dims, decoder, tokens)
    model.token_configs = {k: dict(prep.inputs[k].config) for k in tokens}
    if init_embeddings:
        init_word_embeddings(decoder, vocab, config.decoder_tokenizer)
    return model


def _embedding_width(config: GenerationConfig) -> int:
    """The text encoder's hidden size when its word embeddings initialise the decoder, else d_model."""
    from polymodal.encoders.text import BUILTIN, resolve

    if config.init_embeddings and config.decoder_tokenizer in BUILTIN:
        cfg = json.loads((Path(resolve(config.decoder_tokenizer)) / "config.json").read_text())
        return int(cfg["hidden_size"])
    return config.d_model


class _WithText(Dataset):
    """A TableDataset plus each row's target text (indices may be epoch * n + i, see EpochSampler)."""

    def __init__(self, base: TableDataset, texts: list[str] | None) -> None:
        self.base, self.texts = base, texts

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        return self.__getitems__([index])

    def __getitems__(self, indices: list[int]):
        texts = None if self.texts is None else [self.texts[int(i) % len(self.texts)] for i in indices]
        return self.base.__getitems__(list(indices)), texts


class _Collate:
    """The table Collator, plus "target": the texts as decoder ids (B, L)."""

    def __init__(self, prep: Preprocessor, vocab: Vocabulary | None, max_tokens: int) -> None:
        self.collator, self.vocab, self.max_tokens = Collator(prep), vocab, max_tokens

    def __call__(self, data) -> dict:
        items, texts = data
        batch = self.collator(items)
        if texts is not None:
            batch["target"] = self.vocab.encode(texts, self.max_tokens)
        return batch


def make_loader(df: pd.DataFrame, prep: Preprocessor, feats: dict, config: GenerationConfig, train: bool,
                vocab: Vocabulary | None = None, distributed: bool = False) -> DataLoader:
    """Rows (and, with `vocab`, their label texts as targets) in batches; as `training.fit.make_loader`."""
    from polymodal.training.callbacks import EpochSampler

    ds = TableDataset(df, prep, feats, train=train, with_target=False, augment=config.augment, seed=config.seed)
    texts = [str(v).strip() for v in df[config.label]] if vocab is not None else None
    workers = config.num_workers if ds.values else 0
    return DataLoader(_WithText(ds, texts), batch_size=config.batch_size,
                      sampler=EpochSampler(len(ds), config.seed, shuffle=train, distributed=distributed),
                      collate_fn=_Collate(prep, vocab, config.max_target_tokens), num_workers=workers,
                      pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0,
                      generator=torch.Generator().manual_seed(config.seed))


class GenerationModule(FitModule):
    """FitModule's optimiser, schedule, clipping and checkpoints; validation logs teacher-forced loss and
    next-token accuracy (decoding every epoch would cost more than the training itself on a CPU)."""

    def __init__(self, model: GenerationModel, task: GenerationTask, lr: float, weight_decay: float) -> None:
        super().__init__(model, task, lr=lr, weight_decay=weight_decay)
        self._tokens = [0, 0]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits = self.model(batch)
        loss = self.task.loss(logits, batch["target"])
        self.log("val_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(batch["target"]),
                 sync_dist=True)
        correct, count = self.task.token_accuracy(logits, batch["target"])
        self._tokens = [self._tokens[0] + correct, self._tokens[1] + count]

    def on_validation_epoch_end(self) -> None:
        if self._tokens[1]:
            self.log("val_token_accuracy", self._tokens[0] / self._tokens[1], sync_dist=True)
        self._tokens = [0, 0]


def fit_generation(train_df: pd.DataFrame, valid_df: pd.DataFrame | None, config: GenerationConfig,
                   run_dir: str | os.PathLike, log: Log = print, resume: bool = False) -> GenerationResult:
    """Train a text generator. With `resume`, continue from `run_dir/checkpoints/last.ckpt`."""
    from polymodal.encoders.text import get_tokenizer
    from polymodal.training.trainer import build_trainer

    t0 = time.time()
    L.seed_everything(config.seed, workers=True, verbose=False)
    schema = generation_schema(train_df, config)
    for col, mod in schema.columns.items():
        log(f"  column {col!r}: {mod} ({schema.reasons.get(col, '')})")
    log(f"  task: {config.task} (generates {config.label!r})")
    unlabeled = [Problem(int(r), config.label, "label is missing")
                 for r, v in zip(train_df.index, train_df[config.label]) if is_missing(v)]
    train_df, bad = raise_or_drop(train_df, unlabeled, config.on_bad_rows)
    if valid_df is None:
        train_df, valid_df = _group_split(train_df, input_keys(train_df, schema), config.valid_fraction,
                                          config.seed)
        log(f"  split: {len(train_df)} train / {len(valid_df)} valid rows, by input (seed {config.seed})")
    encoders, pre_cfg = build_encoders(schema, config)
    prep = _TextLabelPreprocessor.fit(train_df, schema, pre_cfg)
    if TABULAR in prep.inputs:
        encoders[TABULAR] = build_tabular_encoder(prep, config)
    frames = {}
    for name, df in (("train", train_df), ("valid", valid_df)):
        frames[name], problems = raise_or_drop(df, check_rows(df, prep), config.on_bad_rows)
        bad += problems
    tokenizer = get_tokenizer(config.decoder_tokenizer)
    vocab = Vocabulary.build(tokenizer, [str(v).strip() for v in frames["train"][config.label]],
                             full=config.vocab == "full", max_tokens=config.max_target_tokens)
    log(f"  decoder vocabulary: {len(vocab)} tokens ({config.vocab})")
    if config.embed_dim is None:
        config = dataclasses.replace(config, embed_dim=_embedding_width(config))
    task = GenerationTask(vocab, config.label_smoothing)
    for key, enc in encoders.items():
        if prep.inputs[key].modality != TABULAR and is_frozen(key, prep.inputs[key].modality, enc, config):
            enc.freeze()
    model = build_model(encoders, prep, config, vocab, init_embeddings=config.init_embeddings)
    keys = frozen_keys(model, prep, config)
    device = "cuda" if torch.cuda.is_available() and config.accelerator in ("auto", "gpu", "cuda") else "cpu"
    stats, feats = {"computed": 0, "reused": 0}, {}
    for name in ("train", "valid"):
        frames[name], feats[name], problems, s = features_for(frames[name], prep, model, keys, config, device, log,
                                                              config.on_bad_rows)
        bad += problems
        stats = {k: stats[k] + s[k] for k in stats}
    log(f"  feature cache: {stats['computed']} computed, {stats['reused']} reused")
    if bad:
        log(f"  skipped {len({(p.row, p.column) for p in bad})} bad rows (listed in bad_rows.csv)")
    module = GenerationModule(model, task, config.lr, config.weight_decay)
    trainer, ckpt = build_trainer(run_dir, *task.monitor, config.max_epochs, config.patience, config.precision,
                                  config.accelerator, config.devices, config.strategy, config.num_nodes,
                                  config.progress, config.time_limit, seed=config.seed)
    train_loader = make_loader(frames["train"], prep, feats["train"], config, True, vocab, distributed=True)
    valid_loader = make_loader(frames["valid"], prep, feats["valid"], config, False, vocab, distributed=True)
    last = os.path.join(run_dir, "checkpoints", "last.ckpt")
    ckpt_path = last if resume and os.path.exists(last) else None
    if resume:
        log(f"  resuming from {last}" if ckpt_path else "  no checkpoint to resume from: training from the start")
    with _threads_for(model, device):
        trainer.fit(module, train_loader, valid_loader, ckpt_path=ckpt_path)
    if ckpt.best_model_path and os.path.exists(ckpt.best_model_path):
        module.load_trained_state(ckpt.best_model_path)
    history = _history(os.path.join(run_dir, "logs", "metrics.csv"))
    texts = generate_texts(model, vocab, prep, frames["valid"], config, feats["valid"])
    val_metrics = score_texts(texts, frames["valid"], prep, config)
    return GenerationResult(model.cpu().eval(), prep, task, config, history, val_metrics, bad, stats,
                            time.time() - t0, ckpt.best_model_path)


@torch.inference_mode()
def generate_texts(model: GenerationModel, vocab: Vocabulary, prep: Preprocessor, df: pd.DataFrame,
                   config: GenerationConfig, feats: dict | None = None, decode: DecodeConfig | None = None,
                   device: str | torch.device | None = None) -> list[str]:
    """The generated text for every row of `df` (one decoding per distinct input)."""
    from polymodal.model import move_batch

    decode = decode or DecodeConfig.from_dict(config.decode)
    device = device or next(model.parameters()).device
    model.eval().to(device)
    keys = input_keys(df, prep.schema).to_numpy()
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    unique = df.iloc[first]
    unique.attrs.update(df.attrs)
    ufeats = {k: (f[first], p[first]) for k, (f, p) in (feats or {}).items()}
    loader = make_loader(unique, prep, ufeats, dataclasses.replace(config, num_workers=0), train=False)
    out: list[str] = []
    # One CPU thread for a small decoder: on the shared 2-core machine, beam search (3 beams) over 791 cached
    # easy-vqa images took 8.4 s with one thread and 15.4 s with two (thread hand-offs on small matmuls).
    small = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("encoders.")) <= 5_000_000
    with one_thread(torch.device(device).type == "cpu" and (small or len(unique) <= 8)):
        for batch in loader:
            out += vocab.decode(model.generate(move_batch(batch, device), vocab, decode))
    return [out[i] for i in np.asarray(inverse).reshape(-1)]


def score_texts(predictions: list[str], df: pd.DataFrame, prep: Preprocessor,
                config: GenerationConfig) -> dict[str, float]:
    """BLEU-1..4, ROUGE-L, CIDEr-D and exact match. caption: rows with the same inputs are one item whose
    references are all their labels (COCO's five captions per image as five rows). vqa-open: one item per
    row, plus `accuracy` (= exact match) and, with an answer_type column, the accuracy per answer type."""
    labels = [str(v).strip() for v in df[config.label]]
    if config.task == "caption":
        keys = input_keys(df, prep.schema).to_numpy()
        groups: dict[str, list[int]] = {}
        for i, k in enumerate(keys):
            groups.setdefault(k, []).append(i)
        preds = [predictions[idx[0]] for idx in groups.values()]
        refs = [[labels[i] for i in idx] for idx in groups.values()]
        out = text_metrics(preds, refs)
        out["items"] = len(groups)
        return out
    out = text_metrics(predictions, labels)
    out["accuracy"] = out["exact_match"]
    if ANSWER_TYPE in df.columns:
        kinds = df[ANSWER_TYPE].astype(str).str.strip().str.lower().to_numpy()
        for kind in sorted(set(kinds)):
            sel = np.flatnonzero(kinds == kind)
            out[f"accuracy_{kind}"] = exact_match([predictions[i] for i in sel], [labels[i] for i in sel])
            out[f"rows_{kind}"] = len(sel)
    return out


# ---- front ------------------------------------------------------------------------------------------------

class GenerationPredictor(MultimodalPredictor):
    """A text generator with MultimodalPredictor's interface (fit / evaluate / predict / save / load).

    >>> p = MultimodalPredictor(label="caption", task="caption").fit(train_df)
    >>> p.predict(df)                      # a Series of strings
    >>> p.evaluate(test_df)                # bleu_1..4, rouge_l, cider_d, exact_match (vqa-open: accuracy)
    >>> p.predict(df, method="greedy")     # decoding settings per call (see DecodeConfig)
    """

    def __init__(self, label: str | list[str], problem_type: str | None = None,
                 path: str | os.PathLike | None = None, verbose: bool = True, task: str = "caption",
                 **options) -> None:
        if problem_type not in (None, "generation"):
            raise PolymodalError(f"task {task!r} generates text; problem_type {problem_type!r} does not apply")
        self.config = GenerationConfig.from_options(label, task, options)
        self.path = Path(path) if path else None
        self.verbose = verbose
        self._result: GenerationResult | None = None
        self.model = self.prep = self.task = self.vocab = None
        self.metrics: dict = {}

    def fit(self, train_data, valid_data=None, test_data=None, resume: bool = False,
            **overrides) -> GenerationPredictor:
        from polymodal.predictor import replace_config

        self.config = replace_config(self.config, overrides, f"task {self.config.task!r} (a text generator)")
        train = as_table(train_data)
        valid = as_table(valid_data) if valid_data is not None else None
        if resume and not self.path:
            raise PolymodalError("resume needs the run folder: MultimodalPredictor(..., path=run_dir)")
        run_dir = self.path or Path(tempfile.mkdtemp(prefix="polymodal-run-"))
        artifacts.atomic_write_json(Path(run_dir) / artifacts.FIT_STATE, {
            "config": {"problem_type": None, **self.config.to_dict()},
            "tables": {k: (str(Path(v).resolve()) if isinstance(v, (str, os.PathLike)) else None)
                       for k, v in (("train", train_data), ("valid", valid_data), ("test", test_data))}})
        try:
            res = fit_generation(train, valid, self.config, run_dir, log=self._log, resume=resume)
        finally:
            if not self.path:  # scratch checkpoints and logs: the weights are in memory now
                import shutil

                shutil.rmtree(run_dir, ignore_errors=True)
        self._result, self.config = res, res.config
        self.model, self.prep, self.task, self.vocab = res.model, res.prep, res.task, res.task.vocab
        self.metrics = fit_summary(res)
        if test_data is not None:
            self.metrics["test"] = self.evaluate(test_data)
        if self.path:
            self.save(self.path)
        return self

    def _decode(self, settings: dict) -> DecodeConfig:
        return DecodeConfig.from_dict({**self.config.decode, **settings})

    def predict(self, data, as_pandas: bool = True, **decode) -> pd.Series | np.ndarray:
        """Generated text per row; keyword arguments override the run's decoding settings (DecodeConfig)."""
        settings = self._decode(decode)
        df, feats = self._prepare(data, with_target=False)
        texts = generate_texts(self.model, self.vocab, self.prep, df, self.config, feats, settings)
        return pd.Series(texts, index=df.index, name=self.config.label) if as_pandas else np.asarray(texts)

    def predict_proba(self, data, as_pandas: bool = True):
        raise PolymodalError(f"a {self.config.task} model generates text and has no class probabilities: use "
                             "predict (and evaluate for its scores)")

    def evaluate(self, data, plots_dir: str | os.PathLike | None = None, **decode) -> dict[str, float]:
        """Text metrics against the label column (see `score_texts`); decoding settings as in `predict`."""
        settings = self._decode(decode)
        df, feats = self._prepare(data, with_target=True)
        texts = generate_texts(self.model, self.vocab, self.prep, df, self.config, feats, settings)
        metrics = score_texts(texts, df, self.prep, self.config)
        metrics["rows"] = len(df)
        return metrics

    def save(self, path: str | os.PathLike) -> Path:
        self._require_model()
        path = Path(path)
        res = self._result
        self.model_id = artifacts.save_run(
            path, self.model, self.prep, self.config.to_dict(), self.metrics, res.history if res else None,
            extra={"kind": "generation", "task": self.config.task, "vocabulary": self.vocab.ids})
        self.vocab.tokenizer.save_pretrained(str(path / DECODER_TOKENIZER))
        if res is not None and len(res.history):
            from polymodal.training.plots import plot_curves

            plot_curves(res.history, path / "plots" / "training_curves.png", "token_accuracy")
        if res and res.bad_rows:
            pd.DataFrame([dataclasses.asdict(p) for p in res.bad_rows]).to_csv(path / "bad_rows.csv", index=False)
        artifacts.atomic_write_text(path / "README.md", self._card(path))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | None = None) -> GenerationPredictor:
        """Rebuild from a run folder, offline (the decoder's tokenizer is in the folder)."""
        from transformers import AutoTokenizer

        path = Path(path)
        config_json, prep = artifacts.read_run(path)
        if config_json.get("kind") != "generation":
            raise PolymodalError(f"{path} is not a text-generation run folder")
        config = GenerationConfig.from_dict(config_json["fit"])
        self = cls(label=config.label, task=config.task, verbose=False)
        self.config, self.prep, self.path = config, prep, path
        arch = {k: str(path / "tokenizers" / k) for k in prep.inputs
                if (path / "tokenizers" / k / "config.json").exists()}
        encoders, _ = build_encoders(prep.schema, config, arch)
        if TABULAR in prep.inputs:
            encoders[TABULAR] = build_tabular_encoder(prep, config)
        self.vocab = Vocabulary(AutoTokenizer.from_pretrained(str(path / DECODER_TOKENIZER)),
                                config_json["vocabulary"])
        self.task = GenerationTask(self.vocab, config.label_smoothing)
        self.model = build_model(encoders, prep, config, self.vocab, init_embeddings=False)
        artifacts.load_weights(self.model, path / artifacts.WEIGHTS)
        for key, enc in self.model.encoders.items():
            if key != TABULAR:
                enc.freeze()
        self.model.eval().to(device or "cpu")
        self.model_id = config_json.get("model_id")
        if (path / artifacts.METRICS).exists():
            self.metrics = json.loads((path / artifacts.METRICS).read_text())
        return self

    def _card(self, path: Path) -> str:
        cfg, prep = self.config, self.prep
        dec = self.model.decoder
        params = sum(p.numel() for n, p in self.model.named_parameters() if not n.startswith("encoders."))
        lines = [f"# polymodal model: generates `{cfg.label}` (task {cfg.task})", "",
                 f"- decoder: {cfg.layers} layers, width {cfg.d_model}, {cfg.heads} heads, tied embeddings of width "
                 f"{dec.embed.weight.shape[1]}; {params:,} parameters besides the encoders",
                 f"- vocabulary: {len(self.vocab)} tokens of the `{cfg.decoder_tokenizer}` tokenizer ({cfg.vocab})",
                 f"- memory: {'one pooled token' if cfg.tokens is False else 'token sequences'} per input",
                 f"- decoding: {DecodeConfig.from_dict(cfg.decode)}",
                 f"- model id (SHA-256 of model.safetensors, first 16 hex): `{getattr(self, 'model_id', '')}`",
                 "", "## Inputs", "", "| input | modality | columns | encoder | frozen |", "|---|---|---|---|---|"]
        for key, spec in prep.inputs.items():
            enc = self.model.encoders[key]
            frozen = not any(p.requires_grad for p in enc.parameters())
            lines.append(f"| {key} | {spec.modality} | {', '.join(spec.columns)} | `{getattr(enc, 'cache_id', '')}` "
                         f"| {frozen} |")
        lines += ["", "## Metrics", "", "```json", json.dumps(self.metrics, indent=2, default=str), "```", "",
                  "## Training", "", "```json", json.dumps(cfg.to_dict(), indent=2, default=str), "```", "",
                  "## Use", "", "```python", "from polymodal import MultimodalPredictor",
                  f"p = MultimodalPredictor.load({str(path)!r})",
                  "p.predict(df)                    # generated text per row",
                  "p.predict(df, method='greedy')   # or num_beams=5, method='sample', top_p=0.9, ...", "```",
                  "", "Loads offline; a run trained on a GPU predicts on CPU.", ""]
        return "\n".join(lines)
