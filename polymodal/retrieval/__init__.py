"""Cross-modal retrieval: contrastive alignment (InfoNCE), retrieval metrics, and a FAISS vector index.

Everything takes plain tensors/arrays and ``nn.Module`` towers; the CLI and the modality encoders plug in
on top.
``index`` needs the optional ``faiss`` dependency and is imported only when used.
"""

from __future__ import annotations

from polymodal.retrieval.align import (
    AlignmentResult,
    DualEncoder,
    VectorTower,
    encode,
    train_alignment,
    zero_shot_classify,
)
from polymodal.retrieval.losses import ContrastiveLoss, clip_loss
from polymodal.retrieval.metrics import cross_modal_metrics, per_query_ranks_and_ap, retrieval_metrics

__all__ = [
    "AlignmentResult",
    "ContrastiveLoss",
    "DualEncoder",
    "IndexFormatError",
    "ModelMismatchError",
    "VectorIndex",
    "VectorTower",
    "clip_loss",
    "cross_modal_metrics",
    "encode",
    "per_query_ranks_and_ap",
    "retrieval_metrics",
    "train_alignment",
    "zero_shot_classify",
]


def __getattr__(name: str):
    # Lazy: faiss is an optional extra, so `import polymodal.retrieval` must work without it.
    if name in ("VectorIndex", "ModelMismatchError", "IndexFormatError"):
        from polymodal.retrieval import index

        return getattr(index, name)
    raise AttributeError(name)
