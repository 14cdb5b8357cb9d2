"""The contracts between stages, as types: what an encoder, a fusion, a task and a predictor front offer.

They are `typing.Protocol`s (structural: no base class needed, nothing registers itself) so a user's own
module fits as long as it has these members; `runtime_checkable` lets tests and loaders check a candidate.
docs/design.md draws who implements each one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol, TypedDict, runtime_checkable

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from polymodal.problem_types import REGRESSION


class Batch(TypedDict, total=False):
    """What the Collator builds and every model takes (all tensors share the batch dimension B).

    - inputs: per input key, what its encoder reads (images (B, 3, H, W), token dicts, waves, tabular, ...)
    - features: per input key, precomputed frozen-encoder output (B, D) or (B, T, D): the encoder is skipped
    - present: per input key, (B,) bool, False where the row's value is missing (a missing modality)
    - target: the encoded label(s), (B,) or (B, K); generation: decoder ids (B, L)
    - index (optional): per image input key, (B,) int64: `inputs[key]` then holds U <= B distinct images and
      row b reads image `index[key][b]` (rows that share a file, encoded once)
    """

    inputs: dict[str, Any]
    index: dict[str, Tensor]
    features: dict[str, Tensor]
    present: dict[str, Tensor]
    target: Tensor


@runtime_checkable
class Encoder(Protocol):
    """One input (column or tabular block) → a vector per row, or a token sequence for token fusions."""

    out_dim: int
    cache_id: str  # feature-cache key: weights + preprocessing; changes whenever the output would
    pretrained: bool

    def __call__(self, x: Any) -> Tensor: ...  # (B, out_dim) float32

    def freeze(self) -> Encoder: ...

    def preprocess_config(self) -> dict: ...  # JSON settings the data layer needs (image size, tokenizer)


@runtime_checkable
class Fusion(Protocol):
    """Per-input features (sorted keys) and presence masks → one fused tensor (B, out_dim)."""

    out_dim: int

    def __call__(self, features: dict[str, Tensor], present: dict[str, Tensor],
                 masks: dict[str, Tensor] | None = None) -> Tensor: ...


@runtime_checkable
class Task(Protocol):
    """What a head predicts: its loss, metrics, and how raw outputs decode into answers."""

    problem_type: str
    num_outputs: int
    monitor: tuple[str, str]  # (validation metric, "min" | "max") for early stopping and checkpoints

    def loss(self, outputs: Tensor, target: Tensor) -> Tensor: ...

    def probabilities(self, outputs: Tensor) -> Tensor: ...

    def metrics(self, probs: np.ndarray, target: np.ndarray) -> dict[str, float]: ...


@runtime_checkable
class Predictor(Protocol):
    """A front over a trained run: what the CLI, `serve/` and `compress/` may call, whatever the run's kind
    (a classifier/regressor, a text generator, a compressed or ONNX model)."""

    kind: str  # "table" | "generation" | "onnx" (runs.RUN_KINDS lists every run-folder kind)
    task: Any
    prep: Any

    def predict(self, data: Any, as_pandas: bool = True) -> pd.Series | pd.DataFrame | np.ndarray: ...

    def predict_proba(self, data: Any, as_pandas: bool = True) -> pd.DataFrame | np.ndarray: ...

    def evaluate(self, data: Any, plots_dir: str | os.PathLike | None = None) -> dict[str, float]: ...

    def answer_batch(self, batch: Batch) -> list[dict]: ...  # collated rows → {"prediction", "probabilities"}

    def save(self, path: str | os.PathLike) -> Path: ...


def outputs_to_answers(task: Any, outputs: Tensor | np.ndarray, label: str) -> list[dict]:
    """Per-row answers {"prediction", "probabilities"} from a batch of raw model outputs (logits), with the
    probability columns named by the task (`task.output_columns(label)`): the one formatting every front and the
    server use."""
    logits = torch.as_tensor(outputs)
    probs = task.probabilities(logits).float().cpu().numpy()
    cols = task.output_columns(label)
    labels = task.labels(probs)
    if task.problem_type == REGRESSION:
        return [{"prediction": float(p), "probabilities": None} for p in probs.reshape(len(probs))]
    if isinstance(labels, dict):  # multi-task: one prediction per label; probabilities as "label:class"
        return [{"prediction": {n: labels[n][i] for n in labels},
                 "probabilities": {c: float(x) for c, x in zip(cols, row)}}
                for i, row in enumerate(probs)]
    return [{"prediction": label, "probabilities": {c: float(x) for c, x in zip(cols, row)}}
            for label, row in zip(labels, probs)]
