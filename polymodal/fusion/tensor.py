"""Tensor fusions: TFN (Zadeh et al. 2017) and its low-rank form LMF (Liu et al. 2018)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from polymodal.fusion.base import Fusion, MissingEmbeddings, slot


def with_one(z: Tensor) -> Tensor:
    """`[z, 1]`: the constant 1 keeps every lower-order (unimodal, bimodal) term in the outer product."""
    return torch.cat([z, z.new_ones(z.shape[0], 1)], 1)


def default_tfn_dim(n_inputs: int, budget: int = 17 ** 3) -> int:
    """16 for up to three inputs; beyond, the largest d with (d + 1) ** M within the 3-input size."""
    if n_inputs <= 3:
        return 16
    d = 1
    while (d + 2) ** n_inputs <= budget:
        d += 1
    return d


class TensorFusion(Fusion):
    """TFN: project each input to `d`, append 1, outer product over all inputs, flatten, Linear to `hidden`.

    The product is taken in sorted key order and flattened row-major, i.e. `kron([z_a, 1], [z_b, 1], ...)`.
    A missing input's projection is replaced by its learned embedding.
    """

    def __init__(self, in_dims: dict[str, int], hidden: int = 256, dropout: float = 0.1, *,
                 d: int | None = None, **base) -> None:
        super().__init__(in_dims, hidden, dropout, **base)
        self.d = d or default_tfn_dim(len(self.keys))
        self.proj = nn.ModuleDict({slot(k): nn.Linear(n, self.d) for k, n in self.in_dims.items()})
        self.missing = MissingEmbeddings({k: self.d for k in self.keys})
        self.out = nn.Linear((self.d + 1) ** len(self.keys), hidden)
        self.out_dim = hidden

    def fuse(self, x: dict[str, Tensor], present: dict[str, Tensor], masks: dict[str, Tensor]) -> Tensor:
        z = self.missing({k: self.proj[slot(k)](v) for k, v in x.items()}, present)
        t = None
        for k in self.keys:
            zk = with_one(z[k])
            t = zk if t is None else (t.unsqueeze(2) * zk.unsqueeze(1)).flatten(1)
        return self.out(self.drop(t))


class LowRankFusion(Fusion):
    """LMF: `h = Σ_r w_r Π_m ([z_m, 1] · W_m^(r)) + b`, the TFN weight tensor held as rank-`rank` factors.

    Factors `W_m` (rank, d_m + 1, hidden) live in an `nn.ParameterDict` (MultiBench's Python list hides them
    from the optimiser). `z_m` is the raw input, or its projection to `proj_dim` when given; a missing
    input's `z_m` is replaced by its learned embedding.
    """

    def __init__(self, in_dims: dict[str, int], hidden: int = 256, dropout: float = 0.1, *,
                 rank: int = 4, proj_dim: int | None = None, **base) -> None:
        super().__init__(in_dims, hidden, dropout, **base)
        self.rank = rank
        self.proj = nn.ModuleDict({slot(k): nn.Linear(n, proj_dim) for k, n in self.in_dims.items()}) \
            if proj_dim else None
        dims = {k: proj_dim or n for k, n in self.in_dims.items()}
        self.missing = MissingEmbeddings(dims)
        # std 1/sqrt(d+1) keeps each factor's output O(1) (Xavier on the 3-D factor counts `hidden` in the
        # fan-in, which shrinks the product of M factors towards zero for wide inputs)
        factors = {k: torch.randn(rank, n + 1, hidden) * (n + 1) ** -0.5 for k, n in dims.items()}
        self.factors = nn.ParameterDict({slot(k): nn.Parameter(f) for k, f in factors.items()})
        self.fusion_weights = nn.Parameter(nn.init.xavier_normal_(torch.empty(1, rank)))
        self.fusion_bias = nn.Parameter(torch.zeros(1, hidden))
        self.out_dim = hidden

    def fuse(self, x: dict[str, Tensor], present: dict[str, Tensor], masks: dict[str, Tensor]) -> Tensor:
        if self.proj is not None:
            x = {k: self.proj[slot(k)](v) for k, v in x.items()}
        z = self.missing(x, present)
        prod = None
        for k in self.keys:
            f = torch.einsum("bi,rio->rbo", with_one(z[k]), self.factors[slot(k)])  # (rank, B, hidden)
            prod = f if prod is None else prod * f
        out = torch.einsum("r,rbo->bo", self.fusion_weights[0], prod) + self.fusion_bias
        return self.drop(out)
