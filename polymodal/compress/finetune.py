"""A small training loop shared by pruning (fine-tuning) and distillation.

Frozen encoders' features come from the feature cache (computed once), so epochs only run the trainable
parts. It is a plain loop rather than the Lightning module because the losses (distillation) and the
parameter state (pruning masks) differ from a normal fit, and a compressed model is trained in minutes.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch

from polymodal.data.dataset import check_rows, raise_or_drop
from polymodal.model import MultimodalModel, move_batch
from polymodal.training.build import frozen_keys
from polymodal.training.config import FitConfig
from polymodal.training.module import param_groups
from polymodal.training.pipeline import features_for, make_loader, predict_probs

LossFn = Callable[[MultimodalModel, dict], tuple[torch.Tensor, dict[str, float]]]


def clean_table(df: pd.DataFrame, prep, on_bad_rows: str = "error") -> pd.DataFrame:
    """Rows usable for training (labels known, media readable), with a fresh 0..n-1 index."""
    df, _ = raise_or_drop(df, check_rows(df, prep, with_target=True), on_bad_rows)
    out = df.reset_index(drop=True)
    out.attrs.update(df.attrs)
    return out


def cached_features(model: MultimodalModel, prep, config: FitConfig, df: pd.DataFrame, log=print) -> dict:
    keys = frozen_keys(model, prep, config)
    _, feats, _, _ = features_for(df, prep, model, keys, config, "cpu", log, "error")
    return feats


def score(model: MultimodalModel, task, prep, config: FitConfig, df: pd.DataFrame, feats: dict) -> dict:
    probs, target = predict_probs(model, task, prep, df, config, feats, device="cpu")
    return task.metrics(probs, target)


def train_loop(model: MultimodalModel, task, prep, config: FitConfig, train_df: pd.DataFrame,
               valid_df: pd.DataFrame | None, loss_fn: LossFn, epochs: int, lr: float,
               extra_params: list[torch.nn.Parameter] | None = None, log=print,
               encoder_lr_scale: float = 0.1) -> pd.DataFrame:
    """AdamW + cosine decay for `epochs` (trained pretrained encoders at `lr * encoder_lr_scale`); keeps the
    best validation state. Returns per-epoch history."""
    torch.manual_seed(config.seed)
    train_feats = cached_features(model, prep, config, train_df, log)
    valid_feats = cached_features(model, prep, config, valid_df, log) if valid_df is not None else {}
    loader = make_loader(train_df, prep, train_feats, dataclasses.replace(config, num_workers=0), train=True)
    opt = torch.optim.AdamW(param_groups(model, lr, encoder_lr_scale, extra_params), lr=lr,
                            weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, epochs * len(loader)))
    name, mode = task.monitor
    best, best_state, rows = None, None, []
    for epoch in range(epochs):
        model.train()
        for part in (loader.dataset, loader.sampler, getattr(loader, "batch_sampler", None)):
            if hasattr(part, "set_epoch"):  # a new augmentation draw / shuffle order per epoch
                part.set_epoch(epoch)
        sums: dict[str, float] = {}
        n = 0
        for batch in loader:
            batch = move_batch(batch, "cpu")
            loss, parts = loss_fn(model, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            b = len(batch["row"])
            n += b
            for k, v in {"loss": loss.item(), **parts}.items():
                sums[k] = sums.get(k, 0.0) + v * b
        row = {"epoch": epoch, **{f"train_{k}": v / n for k, v in sums.items()}}
        if valid_df is not None:
            metrics = score(model, task, prep, config, valid_df, valid_feats)
            row[f"val_{name}"] = metrics[name]
            better = best is None or (metrics[name] > best if mode == "max" else metrics[name] < best)
            if better:
                best, best_state = metrics[name], copy.deepcopy(model.state_dict())
        rows.append(row)
        log("  epoch " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    if best_state is not None:
        model.load_state_dict(best_state)
    return pd.DataFrame(rows)


def task_loss(task) -> LossFn:
    def fn(model: MultimodalModel, batch: dict):
        loss = task.loss(model(batch), batch["target"])
        return loss, {}

    return fn


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Share of rows whose decoded prediction (argmax) is the same."""
    return float((np.asarray(a).argmax(-1) == np.asarray(b).argmax(-1)).mean())
