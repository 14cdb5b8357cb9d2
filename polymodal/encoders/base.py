"""What every encoder shares: the freeze/train behaviour and the attributes the rest of the code reads.

An encoder is an `Encoder`: `forward(x) -> (B, out_dim)` float32, `tokens(x) -> (B, T, token_dim)`,
`cache_id` (feature-cache key: weights + preprocessing), `pretrained`, `freeze()` and
`preprocess_config()` (JSON settings for the data layer). `polymodal.contracts.Encoder` states the same
contract as a Protocol.
"""

from __future__ import annotations

from torch import Tensor, nn

from polymodal.errors import PolymodalError


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

    def freeze(self) -> Encoder:
        """No trainable parameters, and eval mode (BatchNorm statistics, dropout) that `.train()` keeps."""
        for p in self.parameters():
            p.requires_grad_(False)
        self.frozen = True
        return self.train(False)

    def train(self, mode: bool = True) -> Encoder:
        # A parent's .train() recurses into children; a frozen feature extractor must not switch
        # BatchNorm back to batch statistics or its features would drift from the cached ones.
        return super().train(mode and not getattr(self, "frozen", False))

    def tokens(self, x) -> Tensor:  # pragma: no cover - every concrete encoder overrides it
        raise NotImplementedError

    def preprocess_config(self) -> dict:
        return {}
