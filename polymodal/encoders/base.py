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
"""

from __future__ import annotations

import json
import os
from pathlib import Path

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

    def from_prefix(self, h: Tensor, tokens: bool = False) -> Tensor:  # pragma: no cover - split encoders override
        raise NotImplementedError

    def top_modules(self) -> list[nn.Module]:
        """The modules holding the trainable top's parameters."""
        self.prefix(None)  # raises the clear error for encoders that cannot be split
        return []

    def tokens(self, x) -> Tensor:  # pragma: no cover - every concrete encoder overrides it
        raise NotImplementedError

    def preprocess_config(self) -> dict:
        return {}


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
