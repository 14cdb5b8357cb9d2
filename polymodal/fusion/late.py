"""Late fusion: one linear head per input, logits averaged over the present inputs."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from polymodal.errors import PolymodalError
from polymodal.fusion.base import Fusion, slot


class LateFusion(Fusion):
    """`mean_present(W_m x_m + b_m)` → (B, num_outputs) logits; a row with no input gets zeros (uniform)."""

    produces_logits = True

    def __init__(self, in_dims: dict[str, int], hidden: int = 256, dropout: float = 0.1, *,
                 num_outputs: int | None = None, **base) -> None:
        if not num_outputs:
            raise PolymodalError("late fusion needs num_outputs (the number of logits each head produces)")
        super().__init__(in_dims, hidden, dropout, num_outputs=num_outputs, **base)
        self.heads = nn.ModuleDict({slot(k): nn.Linear(d, num_outputs) for k, d in self.in_dims.items()})
        self.out_dim = int(num_outputs)

    def fuse(self, x: dict[str, Tensor], present: dict[str, Tensor], masks: dict[str, Tensor]) -> Tensor:
        pres = self.stacked_present(present)
        logits = torch.stack([self.heads[slot(k)](self.drop(x[k])) for k in self.keys], 1)  # (B, M, C)
        total = (logits * pres.unsqueeze(-1)).sum(1)
        return total / pres.sum(1, keepdim=True).clamp(min=1)
