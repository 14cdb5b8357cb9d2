"""Attention-weighted sum: score each projected input, softmax over the present ones, weighted sum."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from polymodal.fusion.base import Fusion, slot


class AttentionFusion(Fusion):
    """`Σ_m α_m h_m`, `h_m = W_m x_m + b_m`, `α = softmax_present(v·tanh(U h_m + c))`.

    Unlike TorchMultimodal's AttentionFusionModule (weights from the concatenated inputs), each input is
    scored from its own projection, so a missing input needs no stand-in: it simply gets weight 0.
    A row with no input at all gives zeros.
    """

    def __init__(self, in_dims: dict[str, int], hidden: int = 256, dropout: float = 0.1, **base) -> None:
        super().__init__(in_dims, hidden, dropout, **base)
        self.proj = nn.ModuleDict({slot(k): nn.Linear(d, hidden) for k, d in self.in_dims.items()})
        # no bias on the last layer: softmax ignores a shared shift, it would never train
        self.score = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1, bias=False)) \
            if len(self.keys) > 1 else None  # one input: its weight is always 1
        self.out_dim = hidden

    def weights(self, h: Tensor, pres: Tensor) -> Tensor:
        """(B, M) attention weights; zero for absent inputs and for rows with none present."""
        if self.score is None:
            return pres.to(h.dtype)
        s = self.score(h).squeeze(-1).masked_fill(~pres, torch.finfo(h.dtype).min)  # finite: no NaN grads
        return torch.softmax(s, 1) * pres

    def fuse(self, x: dict[str, Tensor], present: dict[str, Tensor], masks: dict[str, Tensor]) -> Tensor:
        h = torch.stack([self.proj[slot(k)](x[k]) for k in self.keys], 1)  # (B, M, H)
        a = self.weights(h, self.stacked_present(present))
        return self.drop((a.unsqueeze(-1) * h).sum(1))
