"""Gated multimodal unit (Arevalo et al. 2017, "Gated Multimodal Units for Information Fusion"), M inputs."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from polymodal.fusion.base import Fusion, MissingEmbeddings, slot


class GatedFusion(Fusion):
    """`h_m = tanh(W_m x_m)`, gates `z = g(W_z [x_1; ...; x_M])` of shape (M, hidden), `out = Σ_m z_m h_m`.

    `gate="softmax"` (default) normalises the gates over the present inputs per hidden unit; for two inputs
    it is the bimodal GMU's `z h_1 + (1 - z) h_2`. `gate="sigmoid"` is the paper's independent-gate form for
    M inputs. The gate network sees a missing input as its learned embedding; the missing input's `h_m`
    itself is left out of the sum.
    """

    def __init__(self, in_dims: dict[str, int], hidden: int = 256, dropout: float = 0.1, *,
                 gate: str = "softmax", **base) -> None:
        super().__init__(in_dims, hidden, dropout, **base)
        if gate not in ("softmax", "sigmoid"):
            raise ValueError(f"gate must be 'softmax' or 'sigmoid', got {gate!r}")
        self.gate_kind = gate
        self.proj = nn.ModuleDict({slot(k): nn.Linear(d, hidden) for k, d in self.in_dims.items()})
        m = len(self.keys)
        # softmax over one input is constantly 1, so the gate could never train; and with two inputs, a
        # missing one leaves the other's gate at 1, so stand-ins for missing inputs matter from three on
        total = sum(self.in_dims.values())
        self.gate = None if gate == "softmax" and m == 1 else nn.Linear(total, m * hidden)
        self.missing = MissingEmbeddings(self.in_dims) if gate == "sigmoid" or m >= 3 else None
        self.out_dim = hidden

    def fuse(self, x: dict[str, Tensor], present: dict[str, Tensor], masks: dict[str, Tensor]) -> Tensor:
        pres = self.stacked_present(present).unsqueeze(-1)  # (B, M, 1)
        h = torch.stack([torch.tanh(self.proj[slot(k)](x[k])) for k in self.keys], 1)  # (B, M, H)
        if self.gate is None:
            z = pres.to(h.dtype)
        else:
            filled = self.missing(x, present) if self.missing is not None else x
            g = self.gate(torch.cat(list(filled.values()), -1)).view(h.shape)
            if self.gate_kind == "sigmoid":
                z = torch.sigmoid(g) * pres
            else:
                z = torch.softmax(g.masked_fill(~pres, torch.finfo(g.dtype).min), 1) * pres
        return self.drop((z * h).sum(1))
