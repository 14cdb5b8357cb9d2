"""Bilinear attention networks (BAN; Kim, Jun & Zhang, NeurIPS 2018) over two token sequences.

`PairFusion` is what BAN and co-attention share: which two inputs are the "visual" and the "query" sequence,
each as (B, T, D) tokens with a (B, T) mask (a pooled input is one token; a row whose input is missing is one
learned stand-in token), and the other inputs pooled and added as a projection.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from polymodal.errors import PolymodalError
from polymodal.fusion.base import Fusion, MissingEmbeddings, masked_mean, slot

VISUAL_HINTS = ("image", "img", "photo", "picture", "scan")
QUERY_HINTS = ("question", "query", "text", "prompt", "caption")


def pick_pair(keys: list[str], visual: str | None, query: str | None) -> tuple[str, str]:
    """(visual, query) keys: the given ones, else the first key whose name suggests an image (resp. a question),
    else the first sorted key that does not look like text (resp. the first remaining key). One input attends
    over itself (visual = query)."""
    for name, given in (("visual", visual), ("query", query)):
        if given is not None and given not in keys:
            raise PolymodalError(f"{name}={given!r} is not one of the fusion's inputs {keys}")
    def hinted(k: str, hints: tuple[str, ...]) -> bool:
        return any(h in k.lower() for h in hints)

    v = visual
    if v is None:
        cands = [k for k in keys if k != query] or keys
        v = next((k for k in cands if hinted(k, VISUAL_HINTS)), None) \
            or next((k for k in cands if not hinted(k, QUERY_HINTS)), cands[0])
    rest = [k for k in keys if k != v] or [v]
    q = query or next((k for k in rest if hinted(k, QUERY_HINTS)), rest[0])
    if q == v and len(keys) > 1:
        raise PolymodalError(f"visual and query are both {v!r}; name two different inputs")
    return v, q


def as_tokens(x: Tensor, present: Tensor, mask: Tensor | None, missing: Tensor) -> tuple[Tensor, Tensor]:
    """(B, T, D) tokens and their (B, T) mask. A pooled (B, D) input is one token; in a row where the input is
    missing, token 0 becomes the learned `missing` vector and is the only valid one (so attention always has
    something to attend to, and the row's real values, already zeroed, never count)."""
    t = x if x.dim() == 3 else x.unsqueeze(1)
    m = mask if mask is not None else torch.ones(t.shape[:2], dtype=torch.bool, device=t.device)
    absent = ~present
    stand_in = torch.zeros_like(m)
    stand_in[:, 0] = absent
    t = torch.where(stand_in.unsqueeze(-1), missing.to(t.dtype), t)
    return t, (m & present.unsqueeze(1)) | stand_in


def masked_softmax(logits: Tensor, mask: Tensor, dim: int | tuple[int, ...]) -> Tensor:
    """Softmax over `dim` counting only positions where mask is True; masked positions are exactly 0 (a finite
    fill value, not -inf, so a row of all-masked entries gives zeros instead of NaN gradients)."""
    dims = (dim,) if isinstance(dim, int) else dim
    filled = logits.masked_fill(~mask, torch.finfo(logits.dtype).min)
    flat = filled.flatten(dims[0], dims[-1]) if len(dims) > 1 else filled
    a = torch.softmax(flat, dims[0]).view_as(filled)
    return a * mask


class PairFusion(Fusion):
    """Base of the two-sequence attention fusions: picks the pair, builds their tokens, pools the rest."""

    accepts_tokens = True

    def __init__(self, in_dims: dict[str, int], hidden: int = 256, dropout: float = 0.1, *,
                 visual: str | None = None, query: str | None = None, **base) -> None:
        super().__init__(in_dims, hidden, dropout, **base)
        self.visual, self.query = pick_pair(self.keys, visual, query)
        pair = {self.visual, self.query}
        self.missing_token = nn.ParameterDict({slot(k): nn.Parameter(torch.randn(self.in_dims[k]) * 0.02)
                                               for k in sorted(pair)})
        self.others = [k for k in self.keys if k not in pair]
        if self.others:  # other inputs (tabular, a second text...) are pooled and added: z + W [x̄_other; ...]
            self.missing_other = MissingEmbeddings({k: self.in_dims[k] for k in self.others})
            self.other_proj = nn.Linear(sum(self.in_dims[k] for k in self.others), hidden)

    def pair_tokens(self, x: dict[str, Tensor], present: dict[str, Tensor],
                    masks: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        v, vm = as_tokens(x[self.visual], present[self.visual], masks.get(self.visual),
                          self.missing_token[slot(self.visual)])
        q, qm = as_tokens(x[self.query], present[self.query], masks.get(self.query),
                          self.missing_token[slot(self.query)])
        return v, vm, q, qm

    def add_others(self, z: Tensor, x: dict[str, Tensor], present: dict[str, Tensor],
                   masks: dict[str, Tensor]) -> Tensor:
        if not self.others:
            return z
        pooled = {k: masked_mean(x[k], masks.get(k)) if x[k].dim() == 3 else x[k] for k in self.others}
        return z + self.other_proj(torch.cat(list(self.missing_other(pooled, present).values()), -1))


class BANFusion(PairFusion):
    """Bilinear attention over visual tokens x_i (i ≤ N) and query tokens y_j (j ≤ M), as in BAN's code:

    - both are projected to `hidden`: v_i = W_v x_i, q⁰_j = W_q y_j (BAN's GRU states; here the encoder's
      tokens);
    - G attention maps from the first query, one low-rank bilinear form each, softmax over all valid (i, j):
      A_g[i, j] ∝ exp(p_gᵀ (relu(U v_i) ∘ relu(V q⁰_j)));
    - glimpse g pools f_g[k] = Σ_ij A_g[i, j] relu(U_g v_i)_k relu(V_g q^g_j)_k (rank `k` per hidden unit,
      sum-pooled in groups of `k`) and updates the query residually: q^{g+1}_j = q^g_j + P_g f_g;
    - output: the mean of the valid tokens of q^G (BAN sums them; the mean keeps the scale independent of the
      question's length), plus the projected other inputs.

    Padded tokens and missing inputs never enter a map (see `as_tokens`). Options: `glimpses` (2), `k` (3),
    `visual`/`query` (which inputs; default by name, see `pick_pair`).
    """

    def __init__(self, in_dims: dict[str, int], hidden: int = 256, dropout: float = 0.1, *,
                 glimpses: int = 2, k: int = 3, visual: str | None = None, query: str | None = None,
                 **base) -> None:
        super().__init__(in_dims, hidden, dropout, visual=visual, query=query, **base)
        if glimpses < 1 or k < 1:
            raise PolymodalError(f"glimpses and k must be ≥ 1, got glimpses={glimpses}, k={k}")
        self.glimpses, self.k = int(glimpses), int(k)
        rank = hidden * self.k
        # visual tokens are projected once to `hidden` and the maps' projections act on that: U_g W_v is a
        # rank-`hidden` factorisation of BAN's U_g, three times cheaper on 1280-d image grid tokens
        self.v_in = nn.Linear(self.in_dims[self.visual], hidden)
        self.q_in = nn.Linear(self.in_dims[self.query], hidden)
        dv = hidden
        self.att_v, self.att_q = nn.Linear(dv, rank), nn.Linear(hidden, rank)
        # no bias on the map logits: a softmax over all (i, j) ignores a shared shift, it would never train
        self.att_p = nn.Parameter(torch.randn(self.glimpses, rank) / rank ** 0.5)
        self.b_v = nn.ModuleList(nn.Linear(dv, rank) for _ in range(self.glimpses))
        self.b_q = nn.ModuleList(nn.Linear(hidden, rank) for _ in range(self.glimpses))
        self.q_prj = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(self.glimpses))
        self.out_dim = hidden

    def attention(self, v: Tensor, vm: Tensor, q: Tensor, qm: Tensor) -> Tensor:
        """(B, G, N, M) maps, each summing to 1 over the valid (i, j) of a row."""
        logits = torch.einsum("bik,gk,bjk->bgij", torch.relu(self.att_v(v)), self.att_p,
                              torch.relu(self.att_q(q)))
        valid = (vm.unsqueeze(2) & qm.unsqueeze(1)).unsqueeze(1).expand_as(logits)
        return masked_softmax(logits, valid, (2, 3))

    def fuse(self, x: dict[str, Tensor], present: dict[str, Tensor], masks: dict[str, Tensor]) -> Tensor:
        x_v, vm, y, qm = self.pair_tokens(x, present, masks)
        v, q = self.v_in(x_v), self.q_in(y)
        att = self.attention(v, vm, q, qm)
        for g in range(self.glimpses):
            bv = self.drop(torch.relu(self.b_v[g](v)))
            bq = self.drop(torch.relu(self.b_q[g](q)))
            f = torch.einsum("bik,bij,bjk->bk", bv, att[:, g], bq)
            if self.k > 1:
                f = f.view(f.shape[0], -1, self.k).sum(-1)
            q = q + self.q_prj[g](f).unsqueeze(1)
        return self.drop(self.add_others(masked_mean(q, qm), x, present, masks))
