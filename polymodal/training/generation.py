"""Text generators on tables (tasks `caption` and `vqa-open`): the `GENERATION_RECIPE` of the fit pipeline
(training/pipeline.py) — a group split by input, no label encoder, a decoder vocabulary, teacher forcing
with early stopping on validation loss — plus decoding (`generate_texts`) and text scores (`score_texts`)."""

from __future__ import annotations

import dataclasses

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from polymodal.data.dataset import Collator, TableDataset
from polymodal.data.preprocess import Preprocessor
from polymodal.data.schema import Schema, infer_schema
from polymodal.data.split import group_split
from polymodal.data.text import get_tokenizer
from polymodal.errors import DataError
from polymodal.problem_types import GENERATION, MULTICLASS
from polymodal.tasks.generation import DecodeConfig, GenerationModel, GenerationTask, Vocabulary
from polymodal.training.build import GENERATION_RUN, build_generation_model, embedding_width, freeze_frozen
from polymodal.training.callbacks import EpochSampler
from polymodal.training.config import GenerationConfig
from polymodal.training.module import FitModule
from polymodal.training.pipeline import Log, log_schema, one_thread, run_inference
from polymodal.training.text_metrics import exact_match, text_metrics
from polymodal.types import TEXT

ANSWER_TYPE = "answer_type"  # vqa-open: optional column (e.g. OPEN/CLOSED) that splits the accuracy


def generation_schema(df: pd.DataFrame, config: GenerationConfig) -> Schema:
    """Column modalities (the label excluded); vqa-open needs a question (text) and an image column."""
    types = dict(config.column_types)
    if config.task == "vqa-open" and ANSWER_TYPE in df.columns and ANSWER_TYPE != config.label:
        types.setdefault(ANSWER_TYPE, "id")  # used to split the accuracy, never as an input
    # any class problem type skips label inference: the label is text to generate, not classes
    s = infer_schema(df, config.label, types, problem_type=MULTICLASS)
    schema = dataclasses.replace(s, problem_type=GENERATION, problem_types={s.label: GENERATION})
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
    """Rows (and, with `vocab`, their label texts as targets) in batches; as `pipeline.make_loader`."""
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


class GenerationRecipe:
    """A text decoder over the table's inputs; the label column is the text to generate."""

    kind = GENERATION_RUN

    def schema(self, df: pd.DataFrame, config: GenerationConfig, log: Log) -> Schema:
        schema = generation_schema(df, config)
        log_schema(schema, log)
        log(f"  task: {config.task} (generates {config.label!r})")
        return schema

    def split(self, df: pd.DataFrame, schema: Schema, config: GenerationConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
        """By input: an image's several captions stay on one side of the split."""
        return group_split(df, input_keys(df, schema).to_numpy(), config.valid_fraction, config.seed)

    def fit_prep(self, df: pd.DataFrame, schema: Schema, pre_cfg: dict) -> Preprocessor:
        # the label is free text that the decoder's vocabulary encodes: no label encoder
        return Preprocessor.fit(df, schema, pre_cfg, fit_label=False)

    def check_valid(self, valid: pd.DataFrame, prep: Preprocessor, config: GenerationConfig,
                    log: Log) -> pd.DataFrame:
        return valid

    def build(self, encoders: dict[str, nn.Module], prep: Preprocessor, config: GenerationConfig,
              train: pd.DataFrame, log: Log) -> tuple[GenerationTask, GenerationModel, GenerationConfig]:
        vocab = Vocabulary.build(get_tokenizer(config.decoder_tokenizer),
                                 [str(v).strip() for v in train[config.label]], full=config.vocab == "full",
                                 max_tokens=config.max_target_tokens)
        log(f"  decoder vocabulary: {len(vocab)} tokens ({config.vocab})")
        if config.embed_dim is None:
            config = dataclasses.replace(config, embed_dim=embedding_width(config))
        task = GenerationTask(vocab, config.label_smoothing)
        freeze_frozen(encoders, prep, config)
        return task, build_generation_model(encoders, prep, config, vocab, config.init_embeddings), config

    def module(self, model: nn.Module, task: GenerationTask, config: GenerationConfig) -> L.LightningModule:
        return GenerationModule(model, task, config.lr, config.weight_decay)

    def loader(self, data, prep: Preprocessor, feats: dict, config: GenerationConfig, task: GenerationTask,
               train: bool, distributed: bool = False) -> DataLoader:
        return make_loader(data, prep, feats, config, train, task.vocab, distributed=distributed)

    def score(self, model: nn.Module, task: GenerationTask, prep: Preprocessor, data: pd.DataFrame,
              config: GenerationConfig, feats: dict, log: Log) -> tuple[dict[str, float], None, None]:
        texts = generate_texts(model, task.vocab, prep, data, config, feats)
        return score_texts(texts, data, prep, config), None, None


GENERATION_RECIPE = GenerationRecipe()


def generate_texts(model: GenerationModel, vocab: Vocabulary, prep: Preprocessor, df: pd.DataFrame,
                   config: GenerationConfig, feats: dict | None = None, decode: DecodeConfig | None = None,
                   device: str | torch.device | None = None) -> list[str]:
    """The generated text for every row of `df` (one decoding per distinct input)."""
    decode = decode or DecodeConfig.from_dict(config.decode)
    device = device or next(model.parameters()).device
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
    with one_thread(torch.device(device).type == "cpu" and small):
        run_inference(model, loader, device, lambda m, b: m.generate(b, vocab, decode), len(unique),
                      lambda seqs, _: out.extend(vocab.decode(seqs)))
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
