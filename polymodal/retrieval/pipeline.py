"""Alignment on tables: train a dual encoder on two columns, evaluate it, index a gallery, search it.

This module is the public entry point of the table pipeline (`polymodal align / evaluate / index / search /
zero-shot` and Python code import from here); the pieces live in their own modules:

- ``config``: :class:`AlignConfig`, the run-folder names and :func:`is_alignment_run`;
- ``columns``: column modalities, vector cells, positive groups, missing rows, the validation split;
- ``towers``: the two sides (:class:`SideSpec`), their towers and inputs (cached features or decoded);
- ``fit``: training; ``run_folder``: saving and reading a run folder;
- ``aligned``: :class:`AlignedModel` (embed, evaluate, index, zero-shot) and :func:`load_alignment_run`;
- ``search``: searching a saved index (:func:`load_searcher`).
"""

from __future__ import annotations

from polymodal.retrieval.aligned import AlignedModel, load_alignment_run
from polymodal.retrieval.columns import column_modality, positive_groups, split_alignment_pairs, vector_matrix
from polymodal.retrieval.config import ALIGN_CONFIG, VECTOR, AlignConfig, is_alignment_run
from polymodal.retrieval.search import IndexSearcher, load_searcher
from polymodal.retrieval.towers import SideSpec

__all__ = [
    "ALIGN_CONFIG",
    "VECTOR",
    "AlignConfig",
    "AlignedModel",
    "IndexSearcher",
    "SideSpec",
    "column_modality",
    "is_alignment_run",
    "load_alignment_run",
    "load_searcher",
    "positive_groups",
    "split_alignment_pairs",
    "vector_matrix",
]
