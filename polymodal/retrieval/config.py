"""What defines an alignment run (:class:`AlignConfig`) and how its run folder is recognised.

Run folder: ``align.json`` (config, sides, model id, metrics, history), ``model.safetensors`` (the whole
dual encoder, towers included: it loads offline), ``tokenizers/<side>/`` for text towers, ``README.md``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from polymodal.retrieval.align import Side

__all__ = ["ALIGN_CONFIG", "SIDES", "VECTOR", "WEIGHTS", "AlignConfig", "Log", "is_alignment_run"]

ALIGN_CONFIG = "align.json"
WEIGHTS = "model.safetensors"
VECTOR = "vector"  # the modality of a column of number lists: it gets a trainable MLP tower
SIDES: tuple[Side, Side] = ("left", "right")
Log = Callable[[str], None]


@dataclass
class AlignConfig:
    """Everything that defines an alignment run (saved in align.json)."""

    left: str
    right: str
    column_types: dict[str, str] = field(default_factory=dict)  # column → image|text|audio|vector
    encoders: dict[str, str] = field(default_factory=dict)  # modality → encoder name
    encoder_opts: dict[str, dict] = field(default_factory=dict)  # modality → builder options
    finetune: list[str] = field(default_factory=list)  # columns whose pretrained tower is fine-tuned
    pair_id: str | None = None  # rows sharing this column's value are positives of each other
    embed_dim: int = 256
    head_hidden: int | None = None  # None: linear projections (CLIP/LiT); else an MLP head
    vector_hidden: int = 512  # MLP tower width for vector columns
    epochs: int = 30
    batch_size: int = 256
    lr: float = 1e-3
    encoder_lr_scale: float = 0.1
    weight_decay: float = 0.1
    patience: int = 5
    valid_fraction: float = 0.1
    metric: str = "mean_r1"  # early stopping on mean R@1 of both directions, or "map"
    hard_negatives: bool = False
    seed: int = 0
    on_bad_rows: str = "error"
    cache_dir: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> AlignConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def is_alignment_run(path: str | os.PathLike) -> bool:
    """True for a folder written by `polymodal align` (it holds ``align.json``)."""
    return (Path(path) / ALIGN_CONFIG).is_file()
