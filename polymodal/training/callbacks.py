"""Callbacks and a sampler that make training resumable and reproducible after a kill.

- `AtomicCheckpoint` writes each checkpoint to a temporary name and renames it into place: a process
  killed mid-write (SIGKILL) leaves the previous `last.ckpt` intact instead of a truncated file.
- `EpochSeed` reseeds torch/numpy/random at every epoch start from (seed, epoch), and `EpochSampler`
  shuffles from (seed, epoch): a run resumed at epoch k draws the same batches, augmentations and
  dropout masks as an uninterrupted run, so both end with the same weights.
"""

from __future__ import annotations

import os
import random
from weakref import proxy

import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch.utils.data import Sampler

from polymodal.distributed import global_rank, world_size


class AtomicCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose files are written whole (a `.partial` file renamed into place), and whose
    `last.ckpt` is the last epoch run.

    Lightning 2.6 writes `last.ckpt` only in a step that also saved a top-k checkpoint, i.e. when the monitored
    score improved; `fit --resume` after an interruption would then restart from the last improving epoch and
    train the later ones again. Here `last.ckpt` is written at every epoch's save point."""

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_anyway(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_anyway(trainer)

    def _save_last_anyway(self, trainer) -> None:
        # skipped when this step already saved (a better top-k checkpoint and last), in sanity checks and
        # outside fitting
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        tmp = f"{filepath}.partial"
        trainer.save_checkpoint(tmp, self.save_weights_only)
        if trainer.is_global_zero:
            os.replace(tmp, filepath)
        trainer.strategy.barrier("atomic_checkpoint")
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class EpochSeed(Callback):
    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        seed_all(self.seed * 100_003 + trainer.current_epoch)


class EpochSampler(Sampler[int]):
    """Yields `epoch * n + i` so the dataset knows the epoch (for augmentation) even inside workers.

    With `weights`, each epoch draws n rows with replacement in proportion to them (resampling for class
    imbalance), from the same (seed, epoch) generator, so a resumed run draws the same rows.

    Under DDP/FSDP (Lightning's distributed sampler is off, see trainer.py) every rank draws the same epoch
    order and takes every world-th position from its rank on, padded by wrapping to equal length: rank r's
    k-th batch of b rows plus the other ranks' k-th batches are exactly positions [k·b·w, (k+1)·b·w) of the
    order, i.e. the single-process batch of b·w rows, so N-process training matches 1-process training with
    the same global batch (DistributedSampler would reshuffle and split differently)."""

    def __init__(self, n: int, seed: int, shuffle: bool = True, weights=None, distributed: bool = False,
                 lengths=None, batch_size: int | None = None, groups=None) -> None:
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0
        self.distributed = distributed  # shard across ranks (loaders given to the Trainer only)
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)
        if lengths is not None and not batch_size:
            raise ValueError("length bucketing needs the batch size")
        self.lengths = None if lengths is None else np.asarray(lengths)
        self.batch_size = batch_size
        # group codes per row: a shuffled epoch keeps each group's rows together (see `group_together`)
        self.groups = None if groups is None else pd.factorize(np.asarray(groups))[0]
        if self.groups is not None and len(self.groups) != n:
            raise ValueError(f"{len(self.groups)} group codes for {n} rows")

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this at the start of every epoch
        self.epoch = epoch

    def _shard(self) -> tuple[int, int]:
        # read at iteration time: under Lightning's DDP the process group exists only once fit() started
        return (global_rank(), world_size()) if self.distributed else (0, 1)

    def __len__(self) -> int:
        _, world = self._shard()
        return -(-self.n // world)

    def __iter__(self):
        if self.weights is not None:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=g).tolist()
        elif self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = range(self.n)
        order = list(order)
        rank, world = self._shard()
        if self.groups is not None and self.shuffle:
            order = group_together(order, self.groups, g)  # takes precedence over length bucketing
        elif self.lengths is not None and self.shuffle:
            order = bucket_by_length(order, self.lengths, self.batch_size * world, g)
        if world > 1:
            total = -(-self.n // world) * world
            order = (order + order[:total - len(order)])[rank::world]
        base = self.epoch * self.n
        return iter([base + i for i in order])


def group_together(order: list[int], groups: np.ndarray, g: torch.Generator) -> list[int]:
    """Rows of one group next to each other, the groups in random order, each group's rows in their order in
    the shuffled `order` (so a batch holds all the rows of a few groups). Why: a fine-tuned image top runs once
    per distinct image in a batch (encoders/base.py dedupes), so a batch of 64 questions about 7 images costs 7
    passes instead of ~57. The epoch sees every row once, as without grouping; which rows share a batch changes.
    A permutation of `order`."""
    rows = np.asarray(order, dtype=np.int64)
    rank = torch.randperm(int(groups.max()) + 1, generator=g).numpy()
    return rows[np.argsort(rank[groups[rows]], kind="stable")].tolist()


BUCKET_BATCHES = 50  # global batches per sorted window: wide enough to match lengths, narrow enough to stay random


def bucket_by_length(order: list[int], lengths: np.ndarray, batch: int, g: torch.Generator) -> list[int]:
    """Length bucketing for trained text encoders (as transformers' LengthGroupedSampler): cut the shuffled
    `order` into windows of BUCKET_BATCHES batches, sort each window by length (longest first), cut it into
    batches of `batch` rows (the global batch under DDP, so every rank's share is alike too) and shuffle the
    batches, keeping the longest batch first so an out-of-memory shows at the first step. Rows of one batch
    then have similar lengths, so far less padding is computed. A permutation of `order`."""
    window = batch * BUCKET_BATCHES
    batches: list[list[int]] = []
    for s in range(0, len(order), window):
        part = sorted(order[s:s + window], key=lambda i: -int(lengths[i]))
        batches += [part[b:b + batch] for b in range(0, len(part), batch)]
    # a short (last) batch goes last, so batch boundaries stay at multiples of `batch`
    full = [b for b in batches if len(b) == batch]
    short = [b for b in batches if len(b) < batch]
    if not full:
        return [i for b in short for i in b]
    longest = max(range(len(full)), key=lambda k: int(lengths[full[k][0]]))
    rest = [b for k, b in enumerate(full) if k != longest]
    perm = torch.randperm(len(rest), generator=g).tolist()
    return [i for b in [full[longest], *(rest[k] for k in perm), *short] for i in b]
