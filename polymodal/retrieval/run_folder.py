"""An alignment run folder on disk: write one, read one back (offline: text architectures travel with it).

``align.json`` (kind, version, model id, config, sides, metrics, history), ``model.safetensors`` (the whole
dual encoder, towers included), ``tokenizers/<side>/`` (tokenizer and architecture of text towers) and a
``README.md`` card.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

from polymodal.data.text import get_tokenizer
from polymodal.errors import PolymodalError
from polymodal.retrieval.align import DualEncoder
from polymodal.retrieval.config import ALIGN_CONFIG, WEIGHTS, AlignConfig, is_alignment_run
from polymodal.retrieval.towers import SideSpec, new_dual_encoder
from polymodal.training.artifacts import atomic_write_json, atomic_write_text, load_weights, save_weights
from polymodal.types import TEXT
from polymodal.version import __version__

__all__ = ["AlignmentRun", "read_alignment_run", "write_alignment_run"]


@dataclass
class AlignmentRun:
    """The parts of a saved alignment run (``model_id``: the one recorded in align.json)."""

    model: DualEncoder
    sides: dict[str, SideSpec]
    config: AlignConfig
    model_id: str | None
    metrics: dict | None
    history: list | None


def write_alignment_run(path: str | os.PathLike, model: DualEncoder, sides: dict[str, SideSpec],
                        config: AlignConfig, model_id: str, metrics: dict, history: list, card: str) -> Path:
    """Write (or overwrite) the run folder ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for side, spec in sides.items():
        if spec.modality == TEXT:  # tokenizer + architecture: the run rebuilds the tower offline
            tower = model.tower(side)
            get_tokenizer(spec.config["tokenizer"]).save_pretrained(str(path / "tokenizers" / side))
            tower.model.config.save_pretrained(str(path / "tokenizers" / side))
    save_weights(model, path / WEIGHTS)
    atomic_write_json(path / ALIGN_CONFIG, {
        "kind": "alignment", "polymodal_version": __version__, "model_id": model_id,
        "config": config.to_dict(), "sides": {s: dataclasses.asdict(v) for s, v in sides.items()},
        "metrics": metrics, "history": history})
    atomic_write_text(path / "README.md", card)
    return path


def read_alignment_run(path: str | os.PathLike) -> AlignmentRun:
    """Rebuild the dual encoder of a run folder (eval mode) with its sides, config and records."""
    path = Path(path)
    if not is_alignment_run(path):
        raise PolymodalError(f"{path} is not an alignment run folder ({ALIGN_CONFIG} is missing); "
                             "train one with `polymodal align`")
    meta = json.loads((path / ALIGN_CONFIG).read_text())
    config = AlignConfig.from_dict(meta["config"])
    sides = {s: SideSpec(**v) for s, v in meta["sides"].items()}
    arch_dirs: dict[str, str | None] = {}
    for side, spec in sides.items():
        arch = path / "tokenizers" / side
        arch_dirs[side] = str(arch) if spec.modality == TEXT and arch.is_dir() else None
        if arch_dirs[side]:
            spec.config["tokenizer"] = str(arch)
    model = new_dual_encoder(sides, config, arch_dirs)
    load_weights(model, path / WEIGHTS)
    model.eval()
    return AlignmentRun(model, sides, config, meta.get("model_id"), meta.get("metrics"), meta.get("history"))
