"""Model assembly by composition: encoders (ModuleDict) → fusion → head, as TorchMultimodal's LateFusion."""

from __future__ import annotations

import torch
from torch import nn

from polymodal.types import Features, Present


class MLPHead(nn.Module):
    """Fused vector → outputs: one hidden layer with dropout (a linear layer when hidden == 0)."""

    def __init__(self, in_dim: int, num_outputs: int, hidden: int = 256, dropout: float = 0.2) -> None:
        super().__init__()
        if hidden:
            self.net = nn.Sequential(nn.LayerNorm(in_dim), nn.Dropout(dropout), nn.Linear(in_dim, hidden),
                                     nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, num_outputs))
        else:
            self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, num_outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MultimodalModel(nn.Module):
    """`encoders[key](inputs[key])` → `fusion(features, present)` → `head`.

    Inputs whose frozen encoder output was precomputed arrive in `batch["features"]` and skip the encoder.
    """

    def __init__(self, encoders: nn.ModuleDict, fusion: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoders = encoders
        self.fusion = fusion
        self.head = head

    def encode(self, batch: dict) -> tuple[Features, Present]:
        features: Features = {}
        for key in sorted(self.encoders.keys()):
            if key in batch.get("features", {}):
                features[key] = batch["features"][key].float()
            else:
                features[key] = self.encoders[key](batch["inputs"][key]).float()
        return features, batch["present"]

    def forward(self, batch: dict) -> torch.Tensor:
        features, present = self.encode(batch)
        return self.head(self.fusion(features, present))


def move_batch(batch, device: torch.device | str):
    """Recursively move a Batch (nested dicts of tensors) to a device."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: move_batch(v, device) for k, v in batch.items()}
    return batch
