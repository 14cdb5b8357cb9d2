"""FiLM (Perez et al. 2018): one input's features modulated by a scale and shift computed from the others."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from polymodal.fusion.base import Fusion, MissingEmbeddings, masked_mean


def default_conditioned(keys: list[str], token_keys: tuple[str, ...] | list[str] = ()) -> str:
    """The first key containing "image", else the first key that arrives as tokens, else the first key."""
    for k in keys:
        if "image" in k.lower():
            return k
    for k in keys:
        if k in token_keys:
            return k
    return keys[0]


class FiLMFusion(Fusion):
    """`out = mean_valid_tokens(relu((1 + γ) ⊙ W_c x_c + β))`, `[γ; β] = G [x̄_1; ...]` over the other inputs.

    The conditioned input `conditioned` may be (B, T, D) tokens (pooled (B, D) is one token); the other
    inputs are pooled by a masked mean when they come as tokens. `token_keys` names inputs that arrive as
    tokens, used only to choose the default conditioned input. Missing inputs use learned embeddings
    (the conditioned one in the projected space). `1 + γ` instead of `γ`: the layer starts near identity.
    """

    accepts_tokens = True

    def __init__(self, in_dims: dict[str, int], hidden: int = 256, dropout: float = 0.1, *,
                 conditioned: str | None = None, token_keys: tuple[str, ...] | list[str] = (),
                 **base) -> None:
        super().__init__(in_dims, hidden, dropout, **base)
        self.conditioned = conditioned or default_conditioned(self.keys, token_keys)
        if self.conditioned not in self.in_dims:
            raise ValueError(f"conditioned input {self.conditioned!r} is not one of {self.keys}")
        self.others = [k for k in self.keys if k != self.conditioned]
        self.proj = nn.Linear(self.in_dims[self.conditioned], hidden)
        self.missing_conditioned = nn.Parameter(torch.randn(hidden) * 0.02)
        if self.others:
            self.missing = MissingEmbeddings({k: self.in_dims[k] for k in self.others})
            self.film = nn.Linear(sum(self.in_dims[k] for k in self.others), 2 * hidden)
        self.out_dim = hidden

    def fuse(self, x: dict[str, Tensor], present: dict[str, Tensor], masks: dict[str, Tensor]) -> Tensor:
        c = self.conditioned
        u = self.proj(x[c] if x[c].dim() == 3 else x[c].unsqueeze(1))  # (B, T, H)
        u = torch.where(present[c].view(-1, 1, 1), u, self.missing_conditioned.to(u.dtype))
        mask = masks.get(c)
        if mask is not None:  # a missing row is its embedding alone: count all its (identical) tokens
            mask = mask | ~present[c].unsqueeze(1)
        if self.others:
            pooled = {k: masked_mean(x[k], masks.get(k)) if x[k].dim() == 3 else x[k] for k in self.others}
            gamma, beta = self.film(torch.cat(list(self.missing(pooled, present).values()), -1)).chunk(2, -1)
            u = (1 + gamma.unsqueeze(1)) * u + beta.unsqueeze(1)
        return self.drop(masked_mean(torch.relu(u), mask))
