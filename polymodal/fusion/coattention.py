"""Parallel co-attention (Lu, Yang, Batra & Parikh, "Hierarchical Question-Image Co-Attention", NeurIPS 2016)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from polymodal.fusion.ban import PairFusion, masked_softmax


class CoAttentionFusion(PairFusion):
    """Visual tokens V (N × H) and query tokens Q (M × H), both projected to `hidden`, attend to each other
    through one affinity matrix:

    - C = tanh(Q W_b Vᵀ) (M × N), zero where either token is padding or a stand-in for a missing input;
    - H_v = tanh(V W_v + Cᵀ (Q W_q)), H_q = tanh(Q W_q + C (V W_v));
    - a_v = softmax_valid(H_v w_v), a_q = softmax_valid(H_q w_q); v̂ = Σ a_v V, q̂ = Σ a_q Q;
    - output tanh(W_o (v̂ + q̂)) plus the projected other inputs (the paper's one-level answer layer).

    A missing input is one learned stand-in token (see `as_tokens`). Options: `visual`/`query` (which inputs).
    """

    def __init__(self, in_dims: dict[str, int], hidden: int = 256, dropout: float = 0.1, *,
                 visual: str | None = None, query: str | None = None, **base) -> None:
        super().__init__(in_dims, hidden, dropout, visual=visual, query=query, **base)
        self.v_in = nn.Linear(self.in_dims[self.visual], hidden)
        self.q_in = nn.Linear(self.in_dims[self.query], hidden)
        self.w_b = nn.Linear(hidden, hidden, bias=False)
        self.w_v = nn.Linear(hidden, hidden, bias=False)
        self.w_q = nn.Linear(hidden, hidden, bias=False)
        # no bias on the scores: a softmax ignores a shared shift, it would never train
        self.score_v = nn.Linear(hidden, 1, bias=False)
        self.score_q = nn.Linear(hidden, 1, bias=False)
        self.out = nn.Linear(hidden, hidden)
        self.out_dim = hidden

    def fuse(self, x: dict[str, Tensor], present: dict[str, Tensor], masks: dict[str, Tensor]) -> Tensor:
        v, vm, q, qm = self.pair_tokens(x, present, masks)
        V, Q = self.drop(self.v_in(v)), self.drop(self.q_in(q))
        C = torch.tanh(self.w_b(Q) @ V.transpose(1, 2)) * (qm.unsqueeze(2) & vm.unsqueeze(1))  # (B, M, N)
        wv, wq = self.w_v(V), self.w_q(Q)
        h_v = torch.tanh(wv + C.transpose(1, 2) @ wq)
        h_q = torch.tanh(wq + C @ wv)
        a_v = masked_softmax(self.score_v(h_v).squeeze(-1), vm, 1)
        a_q = masked_softmax(self.score_q(h_q).squeeze(-1), qm, 1)
        pooled = (a_v.unsqueeze(-1) * V).sum(1) + (a_q.unsqueeze(-1) * Q).sum(1)
        return self.drop(self.add_others(torch.tanh(self.out(pooled)), x, present, masks))
