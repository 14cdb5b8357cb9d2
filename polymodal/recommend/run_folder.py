"""The recommendation run folder (kind "recommendation").

| file | content |
|---|---|
| config.json | kind, model_id, the TowerConfig ("model"), column names, threshold, train settings |
| preprocess.json | user and item ids (catalogue order), the side tables' column specs and fitted preprocessing |
| model.safetensors | "model/…" weights, the encoded side tables ("items/…", "users/…"), histories, warm masks |
| metrics.json, history.csv, README.md | validation scores, per-epoch log, a short card |
| manifest.json | SHA-256 of config, preprocess and weights (written last; checked on load) |

The side tables' image and text columns are stored encoded, so loading needs neither the network nor the
encoders' weights. Every file is written under a temporary name and moved into place.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from polymodal.errors import PolymodalError
from polymodal.training.artifacts import (
    CONFIG,
    METRICS,
    PREPROCESS,
    WEIGHTS,
    atomic_write_json,
    atomic_write_text,
    check_weights,
    damaged,
    file_id,
    read_json,
    verify_manifest,
    write_manifest,
)
from polymodal.version import __version__

RECOMMENDATION_RUN = "recommendation"  # the run kind config.json names


def is_recommendation_run(path: str | os.PathLike) -> bool:
    config = Path(path) / CONFIG
    if not config.is_file():
        return False
    try:
        return read_json(config).get("kind") == RECOMMENDATION_RUN
    except PolymodalError:
        return False


def _card(info: dict, metrics: dict) -> str:
    lines = ["# Recommendation run", "", f"{info['users']:,} users ({info['cold_users']:,} with no training "
             f"interaction), {info['items']:,} items ({info['cold_items']:,} cold: served from their columns "
             f"alone), {info['interactions']:,} interactions.", "",
             "Item columns: " + (", ".join(f"{c} ({m})" for c, m in info["item_columns"].items()) or "none"),
             "User columns: " + (", ".join(f"{c} ({m})" for c, m in info["user_columns"].items()) or "none"), ""]
    if metrics:
        lines += ["Validation (" + str(metrics.get("split", "")) + "): "
                  + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)), ""]
    lines += ["Load: `polymodal.recommend.Recommender.load(PATH)`; top-k: `polymodal recommend top-k PATH --user U`."]
    return "\n".join(lines) + "\n"


def write_run(path: str | os.PathLike, tensors: dict[str, torch.Tensor], config: dict, prep: dict, metrics: dict,
              history: list[dict], info: dict, overwrite: bool = False) -> str:
    """Write a recommendation run folder; returns its model id (the weights file's SHA-256 prefix)."""
    run = Path(path)
    if run.exists() and not run.is_dir():
        raise PolymodalError(f"{run} is a file, not a folder")
    if run.is_dir() and any(run.iterdir()) and not overwrite:
        raise PolymodalError(f"{run} is not empty: choose another folder or pass --overwrite")
    run.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=run, prefix=f".{WEIGHTS}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, tmp,
                  metadata={"polymodal_version": __version__})
        os.replace(tmp, run / WEIGHTS)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    model_id = file_id(run / WEIGHTS)
    atomic_write_json(run / PREPROCESS, prep)
    atomic_write_json(run / CONFIG, {"polymodal_version": __version__, "model_id": model_id, **config})
    atomic_write_json(run / METRICS, metrics)
    if history:
        atomic_write_text(run / "history.csv", pd.DataFrame(history).to_csv(index=False))
    atomic_write_text(run / "README.md", _card(info, metrics))
    write_manifest(run)  # last: a folder without it was interrupted before it was complete
    return model_id


def read_run(path: str | os.PathLike, kind: str = RECOMMENDATION_RUN,
             ) -> tuple[dict[str, torch.Tensor], dict, dict, dict, str]:
    """(tensors, config, preprocess, metrics, model id) of a run folder, each file checked."""
    run = Path(path)
    if not run.is_dir():
        raise PolymodalError(f"{run} is not a run folder (no such folder)")
    for name in (CONFIG, PREPROCESS, WEIGHTS):
        if not (run / name).is_file():
            raise PolymodalError(f"{run} is not a recommendation run folder: {name} is missing")
    verify_manifest(run)
    config = read_json(run / CONFIG)
    if config.get("kind") != kind:
        raise PolymodalError(f"{run} is a {config.get('kind', 'table')!r} run, not a {kind!r} run")
    model_id = str(config.get("model_id", ""))
    check_weights(run / WEIGHTS, model_id)
    try:
        tensors = load_file(str(run / WEIGHTS), device="cpu")
    except Exception as exc:  # safetensors raises its own error type for damaged files
        raise damaged(run / WEIGHTS, f"{type(exc).__name__}: {exc}") from None
    metrics = read_json(run / METRICS) if (run / METRICS).is_file() else {}
    return tensors, config, read_json(run / PREPROCESS), metrics, model_id
