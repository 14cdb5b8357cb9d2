"""Multiplicative fusion: element-wise product of the projected inputs."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from polymodal.fusion.base import Fusion, slot


class ProductFusion(Fusion):
    """`Π_present (W_m x_m + b_m)` element-wise; an absent input contributes ones."""

    def __init__(self, in_dims: dict[str, int], hidden: int = 256, dropout: float = 0.1, **base) -> None:
        super().__init__(in_dims, hidden, dropout, **base)
        self.proj = nn.ModuleDict({slot(k): nn.Linear(d, hidden) for k, d in self.in_dims.items()})
        self.out_dim = hidden

    def fuse(self, x: dict[str, Tensor], present: dict[str, Tensor], masks: dict[str, Tensor]) -> Tensor:
        out = None
        for k, v in x.items():
            h = torch.where(present[k].unsqueeze(1), self.proj[slot(k)](v), 1.0)
            out = h if out is None else out * h
        return self.drop(out)
