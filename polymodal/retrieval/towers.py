"""The two sides of an aligned model: their towers and what goes into them.

A side (``left`` or ``right``) is one column: image, text or audio paths/strings through the pretrained
encoders of ``polymodal.encoders``, or ``vector`` cells (lists / JSON arrays of numbers, e.g. pre-extracted
features) through a trainable MLP tower. Pretrained towers are locked by default (LiT): their outputs come
from the content-keyed feature cache, so re-running with other settings costs no encoder passes. A tower
that trains (``finetune``, or any vector tower) instead gets its inputs decoded into memory once.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from polymodal.data.dataset import raise_or_drop
from polymodal.data.preprocess import InputSpec, Preprocessor
from polymodal.data.readers import resolve_path
from polymodal.data.schema import Schema
from polymodal.data.text import get_tokenizer
from polymodal.data.transforms import load_audio_features, load_image
from polymodal.encoders import build_encoder
from polymodal.encoders.cache import precompute_features
from polymodal.errors import DataError, PolymodalError
from polymodal.retrieval.align import DualEncoder, Side, VectorTower
from polymodal.retrieval.columns import parse_vector, vector_matrix
from polymodal.retrieval.config import VECTOR, AlignConfig, Log
from polymodal.types import IMAGE, TEXT

__all__ = ["SideSpec", "build_tower", "new_dual_encoder", "paired_inputs", "query_input", "side_inputs"]

TowerInput = torch.Tensor | dict[str, torch.Tensor]


@dataclass
class SideSpec:
    """One side of the model: its column, modality, encoder and preprocessing."""

    column: str
    modality: str
    encoder: str | None = None
    encoder_opts: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)  # preprocessing (InputSpec.config) or vector stats
    frozen: bool = True

    def input_spec(self) -> InputSpec:
        return InputSpec(self.column, self.modality, [self.column], self.config)


def build_tower(spec: SideSpec, architecture_dir: str | None = None) -> tuple[nn.Module, int]:
    """The tower of one side and its output width; fills ``spec.config`` with the encoder's preprocessing
    when empty. ``architecture_dir``: a saved text architecture (weights then come from the run's file)."""
    if spec.modality == VECTOR:
        tower = VectorTower(spec.config["dim"], spec.config["hidden"], spec.config["hidden"])
        return tower, tower.out_dim
    opts = dict(spec.encoder_opts)
    name = spec.encoder
    if architecture_dir:  # a run folder: architecture from its saved config, weights from model.safetensors
        name, opts["weights"] = architecture_dir, False
        opts.pop("num_layers", None)
    enc = build_encoder(spec.modality, name, **opts)
    if not spec.config:
        spec.config = enc.preprocess_config()
    if spec.frozen:
        enc.freeze()
    return enc, enc.out_dim


def new_dual_encoder(sides: dict[str, SideSpec], config: AlignConfig,
                     architecture_dirs: dict[str, str | None] | None = None) -> DualEncoder:
    """The dual encoder a config and its two sides describe (fresh heads; towers as `build_tower` gives)."""
    dirs = architecture_dirs or {}
    towers = {side: build_tower(spec, dirs.get(side)) for side, spec in sides.items()}
    return DualEncoder(towers["left"][0], towers["right"][0], towers["left"][1], towers["right"][1],
                       config.embed_dim, (sides["left"].frozen, sides["right"].frozen), config.head_hidden)


def _preprocessor(specs: Sequence[SideSpec]) -> Preprocessor:
    schema = Schema({s.column: s.modality for s in specs}, label="", problem_type="")
    return Preprocessor(schema=schema, inputs={s.column: s.input_spec() for s in specs})


def _tokenize(spec: SideSpec, texts: list[str], padding: bool) -> dict[str, torch.Tensor]:
    enc = get_tokenizer(spec.config["tokenizer"])(texts, padding=padding, truncation=True,
                                                  max_length=spec.config.get("max_length", 64),
                                                  return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def _standardise(spec: SideSpec, x: np.ndarray) -> torch.Tensor:
    """Vector cells scaled by the training rows' mean and std (saved in the side's config)."""
    cfg = spec.config
    return torch.from_numpy((x.astype(np.float32) - np.asarray(cfg["mean"], np.float32))
                            / np.asarray(cfg["std"], np.float32))


def _decoded_inputs(spec: SideSpec, df: pd.DataFrame) -> TowerInput:
    """Decode a trainable tower's inputs for every row into memory (tensors with rows along dim 0)."""
    col, cfg = spec.column, spec.config
    if spec.modality == VECTOR:
        return _standardise(spec, vector_matrix(df, col, cfg["dim"]))
    if spec.modality == TEXT:
        return _tokenize(spec, [str(v) for v in df[col]], padding=True)
    base = df.attrs.get("base_dir", os.getcwd())
    arrays = []
    for r, v in zip(df.index, df[col]):
        try:
            path = resolve_path(v, base)
            arrays.append(load_image(path, cfg["image_size"], cfg["mean"], cfg["std"]) if spec.modality == IMAGE
                          else load_audio_features(path, cfg))
        except DataError as exc:
            raise DataError(exc.detail, file=df.attrs.get("source"), row=int(r), column=col) from None
    longest = max(a.shape[-1] for a in arrays)
    out = np.zeros((len(arrays), *arrays[0].shape[:-1], longest), np.float32)
    for i, a in enumerate(arrays):
        out[i, ..., :a.shape[-1]] = a
    return torch.from_numpy(out)


def query_input(spec: SideSpec, value: Any) -> TowerInput:
    """One query (text, image/audio bytes or path, or a vector) → a batch of one for the tower."""
    cfg = spec.config
    if spec.modality == TEXT:
        return _tokenize(spec, [str(value)], padding=False)
    if spec.modality == VECTOR:
        arr = parse_vector(value)
        if arr is None or len(arr) != cfg["dim"] or not np.isfinite(arr).all():
            raise PolymodalError(f"the query must be {cfg['dim']} finite numbers")
        return _standardise(spec, arr[None])
    src = io.BytesIO(value) if isinstance(value, (bytes, bytearray)) else str(value)
    x = (load_image(src, cfg["image_size"], cfg["mean"], cfg["std"]) if spec.modality == IMAGE
         else load_audio_features(src, cfg))
    return torch.from_numpy(x[None])


def side_inputs(model: DualEncoder, side: Side, spec: SideSpec, df: pd.DataFrame, config: AlignConfig,
                device: str, log: Log = print) -> tuple[pd.DataFrame, TowerInput]:
    """Tower inputs for every row: cached tower features for locked towers, decoded inputs otherwise.
    Rows whose file cannot be decoded are raised or dropped (``on_bad_rows``); the kept rows come back."""
    if not spec.frozen:
        return df, _decoded_inputs(spec, df)

    def progress(key, done, total):
        if done == total or done % 1024 < 64:
            log(f"  encoding {key}: {done}/{total}")

    feats, problems, _ = precompute_features(
        df, _preprocessor([spec]), {spec.column: model.tower(side)}, [spec.column], config.cache_dir,
        64, device, 0, progress)
    f = feats[spec.column][0]
    if problems:
        kept, _ = raise_or_drop(df, problems, config.on_bad_rows)
        f = f[df.index.isin(kept.index)]
        log(f"  skipped {len(df) - len(kept)} rows whose {spec.column} cannot be read")
        df = kept
    return df, torch.from_numpy(f)


def paired_inputs(model: DualEncoder, sides: dict[str, SideSpec], df: pd.DataFrame, config: AlignConfig,
                  device: str, log: Log) -> tuple[pd.DataFrame, TowerInput, TowerInput]:
    """Left and right tower inputs for the same rows (a row unreadable on either side is dropped from both)."""
    kept, left = side_inputs(model, "left", sides["left"], df, config, device, log)
    both, right = side_inputs(model, "right", sides["right"], kept, config, device, log)
    if len(both) != len(kept):
        _, left = side_inputs(model, "left", sides["left"], both, config, device, log)
    return both, left, right
