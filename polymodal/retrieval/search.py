"""Searching a saved VectorIndex: a searcher callable ``search(query: dict) -> list[dict]``.

query: {"k": int, and one of "text": str, "image": bytes, "audio": bytes, "vector": [float]}; results, best
first: dicts with "id", "score" and the item's stored metadata (caption, name, thumbnail). This is the
contract `polymodal search` and the HTTP `/search` route (``polymodal.serve.search``) both call.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from polymodal.errors import PolymodalError
from polymodal.retrieval.aligned import AlignedModel
from polymodal.retrieval.config import VECTOR, is_alignment_run
from polymodal.retrieval.index import ModelMismatchError, VectorIndex

__all__ = ["IndexSearcher", "load_searcher"]


class IndexSearcher:
    """A searcher over a `polymodal.retrieval.VectorIndex`.

    Vector queries work as is; `embed(query) -> (1, D) array` adds text/image queries (the aligned model's
    query tower) and `modalities` names the query kinds it understands.
    """

    def __init__(self, index: VectorIndex, embed: Callable[[dict], Any] | None = None,
                 modalities: tuple[str, ...] = ()) -> None:
        self.index, self.embed = index, embed
        self.modalities = ("vector", *modalities)

    def __call__(self, query: dict) -> list[dict]:
        k = int(query.get("k", 10))
        if "vector" in query:
            q = np.asarray(query["vector"], dtype=np.float32).reshape(1, -1)
            if q.shape[1] != self.index.dim:
                raise PolymodalError(f"the query vector has {q.shape[1]} numbers; this index needs {self.index.dim}")
            if not np.isfinite(q).all() or not np.abs(q).sum():
                raise PolymodalError("the query vector must be finite and not all zeros")
        elif self.embed is not None:
            q = np.asarray(self.embed(query), dtype=np.float32).reshape(1, -1)
        else:
            raise PolymodalError("this index is searched with a \"vector\" query of "
                                 f"{self.index.dim} numbers")
        scores, rows = self.index.search_rows(q, k)
        meta = self.index.metadata
        out = []
        for s, r in zip(scores[0], rows[0]):
            if r < 0:
                continue
            # gallery file paths stay on the server: clients get the file name and thumbnail only
            extra = {k: v for k, v in meta[r].items() if k != "path"} if meta and meta[r] else {}
            out.append({**extra, "id": self.index.ids[r], "score": float(s)})
        return out


def load_searcher(index_path: str | os.PathLike, run: str | os.PathLike | None = None) -> IndexSearcher:
    """A serve/CLI searcher over a saved index: vector queries always; text/image/audio queries through the
    alignment run that built it (``run``, default: the run recorded in the index), whose model id must match."""
    index = VectorIndex.load(index_path)
    run = run or index.source.get("run")
    if not run:
        return IndexSearcher(index)
    if not is_alignment_run(run):
        raise PolymodalError(f"index {index_path} was built by {run}, which is not an alignment run folder "
                             "(moved? pass --run)")
    model = AlignedModel.load(run)
    if model.model_id != index.model_id:
        raise ModelMismatchError(f"index {index_path} was built with model {index.model_id[:12]}…, not "
                                 f"{model.model_id[:12]}… ({run}): rebuild it with `polymodal index`")
    side = index.source.get("side")
    return IndexSearcher(index, embed=lambda q: model.embed_query(q, side),
                         modalities=tuple(m for m in model.query_modalities() if m != VECTOR))
