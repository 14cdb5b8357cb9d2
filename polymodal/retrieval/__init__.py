"""Cross-modal retrieval: contrastive alignment (InfoNCE), retrieval metrics, a FAISS vector index, and the
alignment pipeline on tables (:class:`AlignedModel`, `polymodal align`).

The core pieces take plain tensors/arrays and ``nn.Module`` towers. ``index`` needs the optional ``faiss``
dependency only when an index is built or loaded. The table pipeline (which pulls in the data readers and
the pretrained encoders) is re-exported lazily, so ``import polymodal.retrieval`` stays light.
"""

from __future__ import annotations

from typing import Any

from polymodal.retrieval.align import (
    AlignmentResult,
    DualEncoder,
    VectorTower,
    encode,
    train_alignment,
    zero_shot_classify,
)
from polymodal.retrieval.config import AlignConfig, is_alignment_run
from polymodal.retrieval.index import IndexFormatError, ModelMismatchError, VectorIndex
from polymodal.retrieval.losses import ContrastiveLoss, clip_loss
from polymodal.retrieval.metrics import cross_modal_metrics, per_query_ranks_and_ap, retrieval_metrics

_LAZY = {"AlignedModel": "aligned", "load_alignment_run": "aligned", "IndexSearcher": "search",
         "load_searcher": "search"}

__all__ = [
    "AlignConfig",
    "AlignedModel",
    "AlignmentResult",
    "ContrastiveLoss",
    "DualEncoder",
    "IndexFormatError",
    "IndexSearcher",
    "ModelMismatchError",
    "VectorIndex",
    "VectorTower",
    "clip_loss",
    "cross_modal_metrics",
    "encode",
    "is_alignment_run",
    "load_alignment_run",
    "load_searcher",
    "per_query_ranks_and_ap",
    "retrieval_metrics",
    "train_alignment",
    "zero_shot_classify",
]


def __getattr__(name: str) -> Any:
    # Lazy re-export of this package's own children: the table pipeline imports the data readers and the
    # pretrained encoders, which users of the tensor-level pieces above need not pay for.
    if name in _LAZY:
        from polymodal.retrieval import aligned, search

        return getattr({"aligned": aligned, "search": search}[_LAZY[name]], name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
