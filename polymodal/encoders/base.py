"""What every encoder shares: the freeze/train behaviour and the attributes the rest of the code reads.

An encoder is an `Encoder`: `forward(x) -> (B, out_dim)` float32, `tokens(x) -> (B, T, token_dim)`,
`cache_id` (feature-cache key: weights + preprocessing), `pretrained`, `freeze()` and
`preprocess_config()` (JSON settings for the data layer). `polymodal.contracts.Encoder` states the same
contract as a Protocol.

Partial fine-tuning (`train_top = k`, e.g. `--finetune image:top=3`): the encoder is a frozen prefix and a
trainable top (its last k blocks or layers). The prefix's output is what the feature cache stores, so training
runs only the top: `prefix(x)` → cached activations, `from_prefix(h, tokens)` → the pooled vector or the token
sequence, equal to `forward(x)` / `tokens(x)`. Encoders that can be split implement `prefix`, `prefix_shape`,
`from_prefix` and `top_modules`.

Rows that share an input (VQA: many questions about one image) have identical cached prefixes: `from_prefix`
runs the top once per distinct prefix in the batch and indexes the result back (`unique_rows`), which gives the
same outputs and the same parameter gradients as running it per row, because the top maps each row on its own
(BatchNorm keeps its pretrained statistics while fine-tuning). One difference in training mode: duplicates share
one stochastic-depth / dropout draw instead of drawing their own.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import Tensor, nn

from polymodal.errors import PolymodalError
from polymodal.files import sha256_file

ADAPTED_META, ADAPTED_WEIGHTS = "adapted.json", "encoder.safetensors"  # `polymodal adapt`'s output folder


class MissingDependencyError(PolymodalError, ImportError):
    """An optional package an encoder needs is not installed (the message says what to install)."""


class Encoder(nn.Module):
    """Base of the built-in encoders."""

    out_dim: int
    token_dim: int
    cache_id: str
    pretrained: bool = False

    def __init__(self) -> None:
        super().__init__()
        self.frozen = False

    train_top: int = 0  # > 0: only the last train_top blocks/layers train; the prefix below is frozen and cached
    dedupe: bool = True  # from_prefix: run the top once per distinct cached prefix in a batch

    def freeze(self) -> Encoder:
        """No trainable parameters, and eval mode (BatchNorm statistics, dropout) that `.train()` keeps.
        With `train_top`, the top's parameters stay trainable."""
        for p in self.parameters():
            p.requires_grad_(False)
        self.frozen = True
        for m in self.top_modules() if self.train_top else ():
            for p in m.parameters():
                p.requires_grad_(True)
        return self.train(False)

    def train(self, mode: bool = True) -> Encoder:
        # A parent's .train() recurses into children; a frozen feature extractor must not switch
        # BatchNorm back to batch statistics or its features would drift from the cached ones.
        frozen = getattr(self, "frozen", False)
        super().train(mode and not frozen)
        if mode and frozen and self.train_top:
            # the top trains (dropout on) but keeps the pretrained BatchNorm statistics: a fine-tuning batch is
            # too small and too narrow a domain to re-estimate them
            for m in self.top_modules():
                m.train(True)
                for b in m.modules():
                    if isinstance(b, nn.modules.batchnorm._BatchNorm):
                        b.train(False)
        return self

    # ---- partial fine-tuning (see the module docstring) -------------------------------------------------
    def prefix(self, x) -> Tensor:
        """The frozen prefix's output for `x`: what the feature cache stores for a `train_top` encoder."""
        raise PolymodalError(f"{self.cache_id}: this encoder cannot be split for partial fine-tuning (top=k); "
                             "fine-tune it whole (--finetune MODALITY) or choose a built-in pretrained one")

    def prefix_shape(self) -> tuple[int, ...]:  # pragma: no cover - split encoders override
        """The shape of one row's prefix output (for a batch in which every value is missing)."""
        raise NotImplementedError

    def from_prefix(self, h: Tensor, tokens: bool = False) -> Tensor:
        """The top over cached prefix outputs `h` (B, ...): pooled (B, out_dim) or, with `tokens`, (B, T, D).
        Runs once per distinct row of `h` (see the module docstring); `dedupe = False` runs every row."""
        if not self.dedupe:
            return self.top_forward(h, tokens)
        uniq, inverse = unique_rows(h)
        if inverse is None:
            return self.top_forward(h, tokens)
        return self.top_forward(uniq, tokens)[inverse]

    def top_forward(self, h: Tensor, tokens: bool = False) -> Tensor:  # pragma: no cover - split encoders override
        """`from_prefix` row by row (no de-duplication)."""
        raise NotImplementedError

    def top_modules(self) -> list[nn.Module]:
        """The modules holding the trainable top's parameters."""
        self.prefix(None)  # raises the clear error for encoders that cannot be split
        return []

    def top_layers(self) -> list[list[nn.Module]]:
        """The trainable top as its layers, bottom to top, each as the modules holding its parameters (what
        layer-wise learning-rate decay steps over)."""
        return [[m] for m in self.top_modules()]

    layer_decay: float = 0.0  # > 0: layer-wise lr decay over the top (training/module.param_groups)

    def set_layer_decay(self, decay: float) -> Encoder:
        """Layer-wise learning-rate decay (`--finetune text:top=2,text:llrd=0.8`): the top-most layer of the
        trainable top learns at the encoder's learning rate, each layer below at `decay` times the one above
        (Howard & Ruder 2018; Clark et al. 2020)."""
        decay = float(decay)
        if not 0 < decay <= 1:
            raise PolymodalError(f"{self.cache_id}: layer decay (llrd) must be in (0, 1], not {decay}")
        if not self.train_top:
            raise PolymodalError(f"{self.cache_id}: layer decay (llrd) applies to a fine-tuned top: add top=K")
        self.layer_decay = decay
        return self

    def tokens(self, x) -> Tensor:  # pragma: no cover - every concrete encoder overrides it
        raise NotImplementedError

    def preprocess_config(self) -> dict:
        return {}


def unique_rows(h: Tensor) -> tuple[Tensor, Tensor | None]:
    """(the distinct rows of `h`, the index of each row's copy among them), or (h, None) when every row is
    distinct or a graph is being traced/exported (fixed shapes there). Exact: compares whole rows."""
    if len(h) < 2 or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return h, None
    with torch.no_grad():
        flat = h.detach().flatten(1)
        _, inverse = torch.unique(flat, dim=0, return_inverse=True)
        n = int(inverse.max()) + 1
        if n == len(h):
            return h, None
        # the first row holding each distinct value (scatter_reduce's amin over row positions)
        first = torch.full((n,), len(h), dtype=torch.long, device=h.device).scatter_reduce(
            0, inverse, torch.arange(len(h), device=h.device), reduce="amin")
    return h[first], inverse


def read_adapted(folder: str | os.PathLike, modality: str) -> tuple[dict, Path]:
    """(adapted.json's contents, the weights file) of a folder `polymodal adapt` wrote (training/adapt.py),
    the weights checked against the SHA-256 recorded there."""
    folder = Path(folder).expanduser()
    meta_path = folder / ADAPTED_META
    try:
        meta = json.loads(meta_path.read_text())
        kind, sha, _ = meta["modality"], meta["sha256"], meta["base"]
    except FileNotFoundError:
        raise PolymodalError(f"{meta_path} not found: 'adapted:DIR' names a folder written by `polymodal adapt` "
                             "(keep it with the runs trained on it)") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise PolymodalError(f"{meta_path} is damaged ({type(exc).__name__}: {exc})") from None
    if kind != modality:
        raise PolymodalError(f"{folder} holds an adapted {kind} encoder, not a {modality} one")
    weights = folder / ADAPTED_WEIGHTS
    if not weights.is_file() or sha256_file(weights) != sha:
        raise PolymodalError(f"{weights} is missing or does not match {meta_path} (sha256): adapt again")
    return meta, weights
