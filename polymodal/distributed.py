"""Process rank under Lightning DDP/FSDP, torchrun or SLURM, and a cross-process file lock.

Lightning's `ddp` strategy re-runs the launching script once per extra device, so code after
`trainer.fit` runs on every rank: files (run folder, reports) must be written by global rank 0 only, and
feature-cache fills must not race between ranks.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch.distributed as dist


def global_rank() -> int:
    """This process's global rank: the process group's when one exists, else the launcher's environment
    (torchrun/SLURM set RANK; Lightning's script launcher sets NODE_RANK and LOCAL_RANK in the re-run
    processes it starts), else 0."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    for var in ("RANK", "SLURM_PROCID"):
        if var in os.environ:
            return int(os.environ[var])
    local = int(os.environ.get("LOCAL_RANK", 0))
    node = int(os.environ.get("NODE_RANK", 0))
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("SLURM_NTASKS_PER_NODE", 1)))
    return node * per_node + local if node else local


def is_global_zero() -> bool:
    return global_rank() == 0


def world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", 1))


@contextmanager
def exclusive_lock(path: str | os.PathLike) -> Iterator[None]:
    """An advisory lock on `path` (created if missing) held across processes on this host/shared disk:
    the first rank to take it fills a cache, the next ones find the filled cache when they get it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
