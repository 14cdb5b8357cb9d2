"""Sum fusions: per-input projections to `hidden` added over the present inputs."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from polymodal.fusion.base import Fusion, slot


class SumFusion(Fusion):
    """`Σ_present (W_m x_m + b_m)`: each input projected to `hidden` with its own bias, absent skipped."""

    def __init__(self, in_dims: dict[str, int], hidden: int = 256, dropout: float = 0.1, **base) -> None:
        super().__init__(in_dims, hidden, dropout, **base)
        self.proj = nn.ModuleDict({slot(k): nn.Linear(d, hidden) for k, d in self.in_dims.items()})
        self.out_dim = hidden

    def fuse(self, x: dict[str, Tensor], present: dict[str, Tensor], masks: dict[str, Tensor]) -> Tensor:
        out = sum(present[k].unsqueeze(1) * self.proj[slot(k)](v) for k, v in x.items())
        return self.drop(out)


class WeightedSumFusion(Fusion):
    """Learned weighted sum `f = Σ_present W_m x_m + b`: bias-free per-input maps and one shared bias."""

    def __init__(self, in_dims: dict[str, int], hidden: int = 256, dropout: float = 0.1, **base) -> None:
        super().__init__(in_dims, hidden, dropout, **base)
        self.weight = nn.ModuleDict({slot(k): nn.Linear(d, hidden, bias=False)
                                     for k, d in self.in_dims.items()})
        self.bias = nn.Parameter(torch.zeros(hidden))
        self.out_dim = hidden

    def fuse(self, x: dict[str, Tensor], present: dict[str, Tensor], masks: dict[str, Tensor]) -> Tensor:
        # absent rows are already zero, so W_m x_m is zero there; the mask keeps that true for any W
        out = sum(present[k].unsqueeze(1) * self.weight[slot(k)](v) for k, v in x.items())
        return self.drop(out + self.bias)
