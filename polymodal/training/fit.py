"""Classifiers, regressors and multi-task models on tables: the `TABLE_RUN` recipe of the fit pipeline
(training/pipeline.py) and `fit`, its in-memory entry point."""

from __future__ import annotations

import os
from collections.abc import Sequence

import lightning as L
import numpy as np
import pandas as pd
from torch import nn
from torch.utils.data import DataLoader

from polymodal.data.preprocess import Preprocessor
from polymodal.data.readers import keep_rows
from polymodal.data.schema import Schema, infer_schema
from polymodal.data.split import row_groups, split_rows
from polymodal.errors import DataError, PolymodalError
from polymodal.problem_types import BINARY, MULTICLASS, MULTILABEL, MULTITASK
from polymodal.tasks import MultiTask, task_from_prep, tune_threshold
from polymodal.training.build import TABLE_RUN, assemble_model, freeze_frozen, frozen_keys
from polymodal.training.config import FitConfig
from polymodal.training.module import FitModule
from polymodal.training.pipeline import FitResult, Log, fit_in_memory, log_schema, make_loader, predict_probs
from polymodal.types import CATEGORICAL, ID, NUMERIC


class TableRecipe:
    """Classification (binary, multiclass, multi-label), regression and multi-task on one table."""

    kind = TABLE_RUN

    def schema(self, df: pd.DataFrame, config: FitConfig, log: Log) -> Schema:
        types = dict(config.column_types)
        if config.label_groups:
            if config.label_groups not in df.columns:
                raise DataError(f"--label-groups (label_groups): column {config.label_groups!r} not found; columns "
                                f"are: {', '.join(map(str, df.columns))}", file=df.attrs.get("source"))
            types[config.label_groups] = ID  # training-only, like the label: never an input, not needed to predict
        schema = infer_schema(df, config.label, types, config.problem_type)
        group = config.group_column
        if group in schema.columns and schema.columns[group] in (NUMERIC, CATEGORICAL) \
                and group not in config.column_types:
            # a group identifier (patient, image id) never generalises across a grouped split: not a feature
            schema = infer_schema(df, config.label, {**types, group: ID}, config.problem_type)
        if config.label_groups and schema.problem_type not in (BINARY, MULTICLASS):
            raise PolymodalError(f"--label-groups (label_groups) groups the classes of a single-label classifier; "
                                 f"label {config.label!r} is {schema.problem_type}")
        log_schema(schema, log)
        log(f"  problem type: {schema.problem_type}")
        keys, note = row_groups(df, schema.columns, group)
        if note:
            log(f"  groups: {note}")
        if config.group_batches and keys is None:
            log("  --group-batches: no groups to keep together (no --group-column, no repeated image/audio/video "
                "values): training batches are shuffled by row")
        return schema

    def split(self, df: pd.DataFrame, schema: Schema, config: FitConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
        first = schema.labels[0]
        groups = row_groups(df, schema.columns, config.group_column)[0]
        return split_rows(df, first, schema.problem_types[first], config.valid_fraction, config.seed, groups)

    def fit_prep(self, df: pd.DataFrame, schema: Schema, pre_cfg: dict) -> Preprocessor:
        return Preprocessor.fit(df, schema, pre_cfg)

    def check_valid(self, valid: pd.DataFrame, prep: Preprocessor, config: FitConfig, log: Log) -> pd.DataFrame:
        """Validation rows whose class training never saw are dropped (they cannot be scored)."""
        if not prep.classes or prep.schema.problem_type in (MULTILABEL, MULTITASK):
            return valid
        unseen = ~valid[config.label].astype(str).isin(set(prep.classes))
        if unseen.any():
            log(f"  dropped {int(unseen.sum())} validation rows whose label does not occur in training")
            valid = keep_rows(valid, ~unseen)
            if len(valid) == 0:
                raise DataError("no validation row is left: every validation label is a class the training table "
                                "does not have", file=valid.attrs.get("source"), column=config.label)
        return valid

    def build(self, encoders: dict[str, nn.Module], prep: Preprocessor, config: FitConfig, train,
              log: Log) -> tuple[object, nn.Module, FitConfig]:
        target = prep.encode_target(train) if isinstance(train, pd.DataFrame) else train.target  # streamed rows
        if config.label_groups:
            if not isinstance(train, pd.DataFrame):
                raise PolymodalError("--label-groups (label_groups) reads the training table in memory; it does "
                                     "not combine with --stream")
            config.label_group_map = label_group_map(train, config.label, config.label_groups, prep.classes, log)
        task = task_from_prep(prep, config, target)
        freeze_frozen(encoders, prep, config)
        model = assemble_model(encoders, task, config, prep)
        if model.token_inputs:
            log(f"  token inputs for {config.fusion} fusion: {', '.join(sorted(model.token_inputs))}")
        keys = frozen_keys(model, prep, config)
        if config.text_augment and not any(s.modality == "text" and k not in keys for k, s in prep.inputs.items()):
            log("  note: --text-augment changes text fed to a trained text encoder; these text features are "
                "cached from a frozen encoder, so it has no effect (add --finetune text)")
        return task, model, config

    def module(self, model: nn.Module, task, config: FitConfig) -> L.LightningModule:
        return FitModule(model, task, lr=config.lr, weight_decay=config.weight_decay, l1=config.l1,
                         mixup=config.mixup, compile=config.compile)

    def loader(self, data, prep: Preprocessor, feats: dict, config: FitConfig, task, train: bool,
               distributed: bool = False) -> DataLoader:
        return make_loader(data, prep, feats, config, train=train, distributed=distributed)

    def score(self, model: nn.Module, task, prep: Preprocessor, data, config: FitConfig, feats: dict,
              log: Log) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
        probs, target = predict_probs(model, task, prep, data, config, feats)
        if config.tune_threshold:
            tune_thresholds(task, config, probs, target, log)
        return task.metrics(probs, target), probs, target


TABLE_RECIPE = TableRecipe()


def label_group_map(df: pd.DataFrame, label: str, column: str, classes: list[str], log: Log) -> dict[str, str]:
    """Each class → the value of `column` its training rows have most often (ties: the first in sorted order);
    a class whose rows never have one goes to the largest group."""
    has = df[column].notna() & (df[column].astype(str).str.strip() != "")
    if not has.any():
        raise DataError(f"--label-groups (label_groups): column {column!r} is empty in every training row",
                        file=df.attrs.get("source"), column=column)
    pairs = pd.DataFrame({"c": df[label].astype(str), "g": df[column].astype(str).str.strip()})[has]
    counts = pairs.groupby(["c", "g"]).size().reset_index(name="n").sort_values(["c", "n", "g"],
                                                                                   ascending=[True, False, True])
    first = counts.drop_duplicates("c").set_index("c")["g"].to_dict()
    largest = pairs["g"].value_counts().sort_index().idxmax()  # sorted first: ties go to the first name
    mapping = {c: first.get(c, largest) for c in classes}
    mixed = int((counts.groupby("c").size() > 1).sum())
    sizes = pd.Series(mapping).value_counts().sort_index()
    log(f"  label groups from {column!r}: " + ", ".join(f"{g} {n} classes" for g, n in sizes.items())
        + (f" ({mixed} classes occur in several groups: each goes to its most frequent one)" if mixed else ""))
    return mapping


def fit(train_df: pd.DataFrame, valid_df: pd.DataFrame | None, config: FitConfig, run_dir: str | os.PathLike,
        log: Log = print, resume: bool = False) -> FitResult:
    """Train on tables in memory. With `resume`, continue from `run_dir/checkpoints/last.ckpt` (same data
    and config)."""
    return fit_in_memory(train_df, valid_df, config, TABLE_RECIPE, run_dir, log, resume)


def tune_thresholds(task, config: FitConfig, probs: np.ndarray, target: np.ndarray, log: Log) -> None:
    """Set each binary label's decision threshold to the one that maximises `config.tune_threshold` on the
    validation predictions (recorded in config.decision_threshold, so the run folder keeps it)."""
    if isinstance(task, MultiTask):
        blocks = task.split(probs)
        parts = {n: (blocks[n], target[:, task.target_slices[n]][:, 0]) for n in task.names}
    else:
        parts = {config.labels[0]: (probs, target)}
    tasks = task.tasks if isinstance(task, MultiTask) else {config.labels[0]: task}
    for name, (p, t) in parts.items():
        if tasks[name].problem_type != BINARY:
            continue
        keep = ~np.isnan(np.asarray(t, dtype=np.float64))
        th = tune_threshold(p[keep], t[keep], config.tune_threshold)
        tasks[name].threshold = th
        config.decision_threshold[name] = th
        log(f"  decision threshold for {name!r}: {th:.4f} (maximises validation {config.tune_threshold})")


def ensure_usable(df: pd.DataFrame, prep: Preprocessor, allow_missing: Sequence[str] = ()) -> pd.DataFrame:
    """A table to predict must hold every column the model was trained on: one left out would silently
    predict as if that input were missing. Columns named in `allow_missing` are added empty instead (a missing
    modality, as for a blank cell)."""
    columns = prep.feature_columns()
    unknown = [c for c in allow_missing if c not in columns]
    if unknown:
        raise DataError(f"--allow-missing names {', '.join(map(repr, unknown))}, which the model does not take "
                        f"(its input columns: {', '.join(columns)})", file=df.attrs.get("source"))
    missing = [c for c in columns if c not in df.columns]
    if len(missing) == len(columns):
        raise DataError(f"none of the model's input columns ({', '.join(columns)}) are in the "
                        "table", file=df.attrs.get("source"))
    refused = [c for c in missing if c not in allow_missing]
    if refused:
        raise DataError(f"the model was trained on column(s) {', '.join(map(repr, refused))}, which the table "
                        f"lacks: add them, or predict without them as missing inputs with "
                        f"{' '.join(f'--allow-missing {c}' for c in refused)} (Python: allow_missing=[...])",
                        file=df.attrs.get("source"), column=refused[0])
    if not missing:
        return df
    out = df.assign(**{c: np.nan for c in missing})
    out.attrs.update(df.attrs)
    return out
