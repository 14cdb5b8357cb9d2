"""Fusion of per-input features into one vector (or, for late fusion, logits).

Every fusion is `Cls(in_dims, hidden=256, dropout=0.1, **opts)` with `out_dim`, `produces_logits` and
`forward(features, present, masks=None) -> (B, out_dim)`; shared behaviour lives in `base.Fusion`.
Names map to classes in the plain dict `FUSIONS`.
"""

from __future__ import annotations

import inspect

from torch import nn

from polymodal.errors import PolymodalError
from polymodal.fusion.attention import AttentionFusion
from polymodal.fusion.ban import BANFusion
from polymodal.fusion.base import Fusion, MissingEmbeddings, drop_modalities, fill_missing, masked_mean
from polymodal.fusion.coattention import CoAttentionFusion
from polymodal.fusion.concat import ConcatFusion
from polymodal.fusion.film import FiLMFusion
from polymodal.fusion.gating import GatedFusion
from polymodal.fusion.late import LateFusion
from polymodal.fusion.product import ProductFusion
from polymodal.fusion.tensor import LowRankFusion, TensorFusion
from polymodal.fusion.transformer import TransformerFusion
from polymodal.fusion.weighted import SumFusion, WeightedSumFusion

__all__ = ["FUSIONS", "AttentionFusion", "BANFusion", "CoAttentionFusion",
           "ConcatFusion", "FiLMFusion", "Fusion", "GatedFusion", "LateFusion",
           "LowRankFusion", "MissingEmbeddings", "ProductFusion", "SumFusion", "TensorFusion",
           "TransformerFusion", "WeightedSumFusion", "build_fusion", "drop_modalities", "fill_missing",
           "fusion_names", "masked_mean"]

FUSIONS: dict[str, type[Fusion]] = {
    "concat": ConcatFusion,
    "sum": SumFusion,
    "weighted": WeightedSumFusion,
    "product": ProductFusion,
    "attention": AttentionFusion,
    "gated": GatedFusion,
    "tensor": TensorFusion,
    "lmf": LowRankFusion,
    "film": FiLMFusion,
    "transformer": TransformerFusion,
    "ban": BANFusion,
    "coattention": CoAttentionFusion,
    "late": LateFusion,
}


def fusion_names() -> list[str]:
    return list(FUSIONS)


def _options(cls: type) -> set[str]:
    names = set()
    for c in (cls, Fusion):
        names |= {p.name for p in inspect.signature(c.__init__).parameters.values()
                  if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name not in ("self", "in_dims")}
    return names


def build_fusion(name: str, in_dims: dict[str, int], **opts) -> nn.Module:
    """`FUSIONS[name](in_dims, **opts)`; unknown names and options fail with the valid ones listed."""
    if name not in FUSIONS:
        raise PolymodalError(f"unknown fusion {name!r}; choose one of {', '.join(FUSIONS)}")
    cls = FUSIONS[name]
    unknown = set(opts) - _options(cls)
    if unknown:
        raise PolymodalError(f"fusion {name!r} has no option(s) {sorted(unknown)}; "
                             f"valid: {sorted(_options(cls))}")
    return cls(in_dims, **opts)
