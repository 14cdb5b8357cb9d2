"""Cross-modal transformer: all inputs' tokens in one sequence behind a CLS token."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from polymodal.fusion.base import Fusion, slot


class TransformerFusion(Fusion):
    """Project each input's tokens to `hidden`, add a learned type embedding, prepend CLS, encode, return CLS.

    Pooled (B, D) inputs are one token. Missing inputs and padded tokens (`masks[key]` False) are hidden from
    attention by the key-padding mask; the CLS token is always valid, so every row has an output.
    Options: `layers` (2), `heads` (4; lowered to a divisor of `hidden` if needed), `ff_mult` (4).
    """

    accepts_tokens = True

    def __init__(self, in_dims: dict[str, int], hidden: int = 256, dropout: float = 0.1, *,
                 layers: int = 2, heads: int = 4, ff_mult: int = 4, **base) -> None:
        super().__init__(in_dims, hidden, dropout, **base)
        heads = math.gcd(heads, hidden)
        self.proj = nn.ModuleDict({slot(k): nn.Linear(d, hidden) for k, d in self.in_dims.items()})
        self.type_emb = nn.ParameterDict({slot(k): nn.Parameter(torch.randn(hidden) * 0.02)
                                          for k in self.keys})
        self.cls = nn.Parameter(torch.randn(hidden) * 0.02)
        layer = nn.TransformerEncoderLayer(hidden, heads, ff_mult * hidden, dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        # nested tensors are off: they need norm_first=False and would only save time on heavy padding
        self.encoder = nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(hidden),
                                             enable_nested_tensor=False)
        self.out_dim = hidden

    def fuse(self, x: dict[str, Tensor], present: dict[str, Tensor], masks: dict[str, Tensor]) -> Tensor:
        batch = x[self.keys[0]].shape[0]
        seq = [self.cls.expand(batch, 1, -1)]
        valid = [present[self.keys[0]].new_ones(batch, 1)]
        for k in self.keys:
            t = x[k] if x[k].dim() == 3 else x[k].unsqueeze(1)
            seq.append(self.proj[slot(k)](t) + self.type_emb[slot(k)])
            ok = present[k].unsqueeze(1).expand(-1, t.shape[1])
            valid.append(ok & masks[k] if k in masks else ok)
        h = self.encoder(torch.cat(seq, 1), src_key_padding_mask=~torch.cat(valid, 1))
        return h[:, 0]
