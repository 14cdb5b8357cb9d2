"""What every fusion shares: input checks, missing-row sanitising, modality dropout, missing embeddings.

A fusion subclasses `Fusion` and implements `fuse(x, present, masks)`; `forward` has already
- put the keys in sorted order (as TorchMultimodal's LateFusion) and checked shapes,
- zeroed the features of absent rows (and of padded tokens), so garbage there, NaN included, can never
  reach the output or the gradients (0 * NaN would otherwise poison the weight gradients),
- applied modality dropout during training.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from polymodal.errors import PolymodalError
from polymodal.types import Features, Present


def slot(key: str) -> str:
    """ModuleDict/ParameterDict-safe name for an input key (columns may hold '.' or be 'values')."""
    return "m_" + key.replace(".", "_")


def _rows(p: Tensor, x: Tensor) -> Tensor:
    """(B,) mask reshaped to broadcast against x of shape (B, ...)."""
    return p.view(-1, *([1] * (x.dim() - 1)))


def fill_missing(x: Tensor, present: Tensor, embedding: Tensor) -> Tensor:
    """Rows of x where `present` is False replaced by `embedding` (broadcast over tokens for (B, T, D))."""
    return torch.where(_rows(present, x), x, embedding.to(x.dtype))


def masked_mean(x: Tensor, mask: Tensor | None) -> Tensor:
    """Mean over the token axis of (B, T, D), counting only tokens where mask (B, T) is True."""
    if mask is None:
        return x.mean(1)
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp(min=1)


def drop_modalities(present: Present, p: float) -> Present:
    """Drop each present modality per row with probability p, keeping one random present one if all drop."""
    keys = list(present)
    pres = torch.stack([present[k] for k in keys], 1)  # (B, M)
    keep = pres & (torch.rand(pres.shape, device=pres.device) >= p)
    emptied = pres.any(1) & ~keep.any(1)
    # a random originally present modality per row: argmax of uniform noise over the present slots
    pick = torch.where(pres, torch.rand(pres.shape, device=pres.device), -1.0).argmax(1)
    rescue = nn.functional.one_hot(pick, len(keys)).bool() & emptied.unsqueeze(1)
    keep = keep | rescue
    return {k: keep[:, i] for i, k in enumerate(keys)}


class MissingEmbeddings(nn.Module):
    """One learned vector per input that stands in for that input in rows where it is missing."""

    def __init__(self, dims: dict[str, int]) -> None:
        super().__init__()
        self.emb = nn.ParameterDict({slot(k): nn.Parameter(torch.randn(d) * 0.02) for k, d in dims.items()})

    def forward(self, x: Features, present: Present) -> Features:
        return {k: fill_missing(v, present[k], self.emb[slot(k)]) for k, v in x.items()}


class Fusion(nn.Module):
    """Base of all fusions: `forward(features, present, masks=None) -> (B, out_dim)`.

    `in_dims[key]` is the last dimension of that input; `present[key]` (B,) bool is False where the row's
    input is missing (a key absent from `present` counts as always present); `masks[key]` (B, T) bool marks
    valid tokens of (B, T, D) inputs (token-level fusions only). `num_outputs` is accepted by every fusion so
    callers can pass it uniformly; only logit-producing fusions use it.
    """

    produces_logits: bool = False
    accepts_tokens: bool = False
    out_dim: int

    def __init__(self, in_dims: dict[str, int], hidden: int = 256, dropout: float = 0.1,
                 modality_dropout: float = 0.0, num_outputs: int | None = None) -> None:
        super().__init__()
        if not in_dims:
            raise PolymodalError("a fusion needs at least one input")
        if not 0.0 <= modality_dropout < 1.0:
            raise PolymodalError(f"modality_dropout must be in [0, 1), got {modality_dropout}")
        self.keys = sorted(in_dims)
        if len({slot(k) for k in self.keys}) != len(self.keys):
            raise PolymodalError(f"input names {self.keys} clash once '.' becomes '_'; rename a column")
        self.in_dims = {k: int(in_dims[k]) for k in self.keys}
        self.hidden = int(hidden)
        self.modality_dropout = float(modality_dropout)
        self.num_outputs = num_outputs
        self.drop = nn.Dropout(dropout)

    def forward(self, features: Features, present: Present | None = None,
                masks: dict[str, Tensor] | None = None) -> Tensor:
        unknown = set(features) - set(self.keys)
        if unknown or set(self.keys) - set(features):
            raise KeyError(f"{type(self).__name__} expects inputs {self.keys}, got {sorted(features)}")
        present = present or {}
        masks = masks or {}
        batch = features[self.keys[0]].shape[0]
        pres, toks = {}, {}
        for k in self.keys:
            x = features[k]
            if x.dim() not in (2, 3) or x.shape[-1] != self.in_dims[k] or x.shape[0] != batch:
                raise ValueError(f"input '{k}': expected (B, {self.in_dims[k]}) or (B, T, {self.in_dims[k]}) "
                                 f"with B={batch}, got {tuple(x.shape)}")
            if x.dim() == 3 and not self.accepts_tokens:
                raise ValueError(f"{type(self).__name__} takes pooled (B, D) features; '{k}' is (B, T, D)")
            p = present.get(k)
            pres[k] = torch.ones(batch, dtype=torch.bool, device=x.device) if p is None else p.bool()
            if x.dim() == 3 and k in masks:
                toks[k] = masks[k].bool()
                pres[k] = pres[k] & toks[k].any(1)  # a row with no valid token has no input
        if self.training and self.modality_dropout > 0:
            pres = drop_modalities(pres, self.modality_dropout)
        clean = {}
        for k in self.keys:
            x = torch.where(_rows(pres[k], features[k]), features[k], 0.0)
            if k in toks:
                x = torch.where(toks[k].unsqueeze(-1), x, 0.0)
            clean[k] = x
        return self.fuse(clean, pres, toks)

    def fuse(self, x: Features, present: Present, masks: dict[str, Tensor]) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def stacked_present(self, present: Present) -> Tensor:
        """(B, M) bool in sorted key order."""
        return torch.stack([present[k] for k in self.keys], 1)
