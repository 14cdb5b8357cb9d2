"""Training an alignment on a table: sides from two columns, the split, the towers, contrastive training.

Locked pretrained towers (the default, LiT) contribute cached features and only the projection heads and the
temperature learn; ``finetune`` unlocks a tower, which then trains (without augmentation) at
``lr * encoder_lr_scale``. Early stopping follows ``config.metric`` on the validation pairs.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import pandas as pd
import torch

from polymodal.data.readers import read_table
from polymodal.errors import PolymodalError
from polymodal.retrieval.align import DualEncoder, train_alignment
from polymodal.retrieval.columns import (
    column_modality,
    drop_missing,
    positive_groups,
    split_alignment_pairs,
    vector_matrix,
)
from polymodal.retrieval.config import SIDES, VECTOR, AlignConfig, Log
from polymodal.retrieval.towers import SideSpec, new_dual_encoder, paired_inputs

__all__ = ["AlignmentFit", "fit_alignment"]

Table = pd.DataFrame | str | os.PathLike


@dataclass
class AlignmentFit:
    """What training produced: the model (on the CPU, in eval mode), its sides, metrics and epoch history."""

    model: DualEncoder
    sides: dict[str, SideSpec]
    metrics: dict
    history: list


def _check(config: AlignConfig) -> None:
    if config.left == config.right:
        raise PolymodalError("--left and --right must be two different columns")
    if config.metric not in ("mean_r1", "map"):
        raise PolymodalError("metric must be mean_r1 or map")
    if config.epochs < 1 or config.batch_size < 2:
        raise PolymodalError("epochs must be at least 1 and batch size at least 2 (a pair needs negatives)")


def _sides(train_df: pd.DataFrame, config: AlignConfig, log: Log) -> dict[str, SideSpec]:
    sides = {}
    for side in SIDES:
        col = getattr(config, side)
        mod = column_modality(train_df, col, config.column_types)
        sides[side] = SideSpec(col, mod, config.encoders.get(mod), dict(config.encoder_opts.get(mod, {})),
                               frozen=col not in config.finetune)
        log(f"  {side}: column {col!r} ({mod})")
    for col in config.finetune:
        if col not in (config.left, config.right):
            raise PolymodalError(f"--finetune names {col!r}, which is neither --left nor --right")
    return sides


def fit_alignment(train: Table, config: AlignConfig, valid: Table | None = None, log: Log = print,
                  device: str | None = None) -> AlignmentFit:
    """Train a dual encoder on ``config.left`` ↔ ``config.right`` of ``train`` (validation: ``valid``, or
    ``config.valid_fraction`` of the pairs held out by whole groups)."""
    t0 = time.time()
    train_df = train if isinstance(train, pd.DataFrame) else read_table(train)
    valid_df = None if valid is None else valid if isinstance(valid, pd.DataFrame) else read_table(valid)
    _check(config)
    torch.manual_seed(config.seed)
    sides = _sides(train_df, config, log)
    train_df = drop_missing(train_df, [config.left, config.right], config.on_bad_rows, log)
    if valid_df is None:
        train_df, valid_df = split_alignment_pairs(train_df, config, log)
    else:
        valid_df = drop_missing(valid_df, [config.left, config.right], config.on_bad_rows, log)
    for spec in sides.values():  # vector statistics from the training rows only
        if spec.modality == VECTOR:
            x = vector_matrix(train_df, spec.column)
            spec.frozen = False  # a vector tower has no pretrained weights: it always trains
            spec.config = {"dim": int(x.shape[1]), "hidden": config.vector_hidden,
                           "mean": x.mean(0).tolist(), "std": (x.std(0) + 1e-6).tolist()}
    model = new_dual_encoder(sides, config)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    train_df, *tr_lr = paired_inputs(model, sides, train_df, config, device, log)
    valid_df, *va_lr = paired_inputs(model, sides, valid_df, config, device, log)
    tr, va = dict(zip(SIDES, tr_lr)), dict(zip(SIDES, va_lr))
    ids = positive_groups(train_df, config.left, config.right, config.pair_id)
    v_ids = positive_groups(valid_df, config.left, config.right, config.pair_id)
    given = tuple(s for s in SIDES if sides[s].frozen)
    log(f"  training heads on {len(train_df)} pairs ({len(set(ids))} positive groups), "
        f"validating on {len(valid_df)}")
    result = train_alignment(model, tr["left"], tr["right"], ids, epochs=config.epochs,
                             batch_size=config.batch_size, lr=config.lr, weight_decay=config.weight_decay,
                             valid=(va["left"], va["right"], v_ids), metric=config.metric,
                             patience=config.patience, seed=config.seed, hard_negatives=config.hard_negatives,
                             device=device, features_given=given, tower_lr_scale=config.encoder_lr_scale)
    model.cpu().eval()
    best = result.history[result.best_epoch] if result.history else {}
    names = {"left_to_right": f"{config.left}_to_{config.right}",
             "right_to_left": f"{config.right}_to_{config.left}"}
    valid_metrics = {names[k.split("/")[0]] + "/" + k.split("/")[1]: v for k, v in best.items()
                     if k.split("/")[0] in names}
    metrics = {"valid": {**valid_metrics, config.metric: best.get(config.metric)},
               "best_epoch": result.best_epoch, "fit_seconds": round(time.time() - t0, 1),
               "train_pairs": len(train_df), "valid_pairs": len(valid_df)}
    log(f"  best epoch {result.best_epoch}: {config.metric} = {result.best_score:.4f}")
    return AlignmentFit(model, sides, metrics, result.history)
