"""Lightning Trainer factory: early stopping, best checkpoint, CSV metrics log, precision by hardware."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping
from lightning.pytorch.loggers import CSVLogger

from polymodal.errors import PolymodalError
from polymodal.training.callbacks import AtomicCheckpoint, EpochSeed

# Lightning lines that say nothing to a polymodal user, silenced where they come from (the fit prints its own
# lines): its setup notes and logger advertisement (INFO on its rank-zero logger), and three warnings about
# choices polymodal makes on purpose: frozen encoders sit in eval mode, metrics are logged per epoch, and its
# pytree helper's use of a name newer torch deprecates.
LIGHTNING_INFO_LOGGER = "lightning.pytorch.utilities.rank_zero"
INTENDED_WARNINGS = (r"Found \d+ module\(s\) in eval mode at the start of training",
                     r"The number of training batches \(\d+\) is smaller than the logging interval",
                     r"`isinstance\(treespec, LeafSpec\)` is deprecated")


def quiet_lightning() -> None:
    """Silence the Lightning output above (warnings about anything else still show)."""
    logging.getLogger(LIGHTNING_INFO_LOGGER).setLevel(logging.WARNING)
    for message in INTENDED_WARNINGS:
        warnings.filterwarnings("ignore", message=message)  # an identical filter is replaced, not added


def default_precision() -> str:
    """bf16 autocast on GPUs that support it, full float32 on CPU (CPU bf16 autocast is slower here)."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def build_trainer(run_dir: str | os.PathLike, monitor: str, mode: str, max_epochs: int = 20,
                  patience: int = 5, precision: str | None = None, accelerator: str = "auto",
                  devices: int | str = "auto", strategy: str = "auto", num_nodes: int = 1,
                  progress: bool = True, max_time: float | None = None,
                  gradient_clip_val: float | None = 1.0, seed: int = 0,
                  deterministic: bool | str | None = None,
                  callbacks: list[Callback] | None = None) -> tuple[L.Trainer, AtomicCheckpoint]:
    """`deterministic=None`: "warn" (deterministic kernels, warn where none exists) on CPU; off on GPUs,
    where cuDNN's deterministic algorithms cost throughput (benchmarks/results/throughput.md) while
    seeded runs still agree to rounding. Pass True/"warn" to force bitwise-reproducible GPU runs.
    `callbacks`: more callbacks (e.g. `averaging.EpochAverage`)."""
    if strategy == "ddp":
        # Some parameters can sit out a step (missing-modality embeddings when every row is present,
        # fusion branches skipped by modality dropout); plain DDP aborts on those at the next step.
        strategy = "ddp_find_unused_parameters_true"
    if strategy.startswith("fsdp") and _resolves_to_cpu(accelerator):
        # PyTorch's FSDP (the one Lightning wraps) refuses CPU devices ("FSDP needs a non-CPU accelerator")
        raise PolymodalError("--strategy fsdp shards the model across GPUs and needs CUDA devices; on CPU use "
                             "--strategy ddp (each process holds the whole model)")
    if deterministic is None:
        deterministic = "warn" if _resolves_to_cpu(accelerator) else False
    quiet_lightning()
    run_dir = Path(run_dir)
    ckpt = AtomicCheckpoint(dirpath=run_dir / "checkpoints", filename="best", monitor=f"val_{monitor}", mode=mode,
                           save_top_k=1, save_last=True, enable_version_counter=False)
    stop = EarlyStopping(monitor=f"val_{monitor}", mode=mode, patience=patience)
    trainer = L.Trainer(
        default_root_dir=str(run_dir), max_epochs=max_epochs, accelerator=accelerator, devices=devices,
        strategy=strategy, num_nodes=num_nodes, precision=precision or default_precision(),
        callbacks=[ckpt, stop, EpochSeed(seed), *(callbacks or [])],
        # flushed at every logging step: a killed fit loses no logged epoch for `fit --resume` to keep
        logger=CSVLogger(str(run_dir), name="", version="logs", flush_logs_every_n_steps=1),
        enable_progress_bar=progress, enable_model_summary=False, log_every_n_steps=10,
        deterministic=deterministic, gradient_clip_val=gradient_clip_val,
        max_time={"seconds": int(max_time)} if max_time else None,
        num_sanity_val_steps=0,
        # polymodal's EpochSampler shards itself per rank (same batches as one process); Lightning's
        # DistributedSampler would re-shuffle and hide the sampler's per-epoch seeding
        use_distributed_sampler=False)
    return trainer, ckpt


def _resolves_to_cpu(accelerator: str) -> bool:
    return accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
