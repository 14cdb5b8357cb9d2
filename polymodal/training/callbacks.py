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
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch.utils.data import Sampler


class AtomicCheckpoint(ModelCheckpoint):
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

    def __init__(self, n: int, seed: int, shuffle: bool = True, weights=None, distributed: bool = False) -> None:
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0
        self.distributed = distributed  # shard across ranks (loaders given to the Trainer only)
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this at the start of every epoch
        self.epoch = epoch

    def _shard(self) -> tuple[int, int]:
        # read at iteration time: under Lightning's DDP the process group exists only once fit() started
        from polymodal.training.distributed import global_rank, world_size

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
        if world > 1:
            total = -(-self.n // world) * world
            order = (order + order[:total - len(order)])[rank::world]
        base = self.epoch * self.n
        return iter([base + i for i in order])
