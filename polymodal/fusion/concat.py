"""Early fusion: concatenate the (optionally projected) vectors, then an optional MLP to `hidden`."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from polymodal.fusion.base import Fusion, MissingEmbeddings, slot


class ConcatFusion(Fusion):
    """`[x_a; x_b; ...]` in sorted key order; a missing input is replaced by its learned embedding.

    Options: `proj_dim` projects each input to that size before concatenating; `mlp=False` returns the
    concatenation itself (out_dim = the summed widths) instead of Linear → GELU → Dropout to `hidden`.
    """

    def __init__(self, in_dims: dict[str, int], hidden: int = 256, dropout: float = 0.1, *,
                 proj_dim: int | None = None, mlp: bool = True, **base) -> None:
        super().__init__(in_dims, hidden, dropout, **base)
        self.proj = nn.ModuleDict({slot(k): nn.Linear(d, proj_dim) for k, d in self.in_dims.items()}) \
            if proj_dim else None
        widths = {k: proj_dim or d for k, d in self.in_dims.items()}
        self.missing = MissingEmbeddings(widths)
        total = sum(widths.values())
        self.mlp = nn.Sequential(nn.Linear(total, hidden), nn.GELU(), nn.Dropout(dropout)) if mlp else None
        self.out_dim = hidden if mlp else total

    def fuse(self, x: dict[str, Tensor], present: dict[str, Tensor], masks: dict[str, Tensor]) -> Tensor:
        if self.proj is not None:
            x = {k: self.proj[slot(k)](v) for k, v in x.items()}
        z = torch.cat(list(self.missing(x, present).values()), -1)
        return self.mlp(z) if self.mlp is not None else z
