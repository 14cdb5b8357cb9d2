"""The /search contract: a callable `search(query: dict) -> list[dict]`.

query: {"k": int, and one or more of "text": str, "image": bytes (an uploaded image), "vector": [float]}.
results, best first: dicts with at least "id" and "score"; a "thumbnail" (data: URI or URL served by the
deployer) and a "caption" are shown by the web page when present. A searcher may raise PolymodalError /
ValueError for a query it cannot answer (the client gets a 422 with the message). An optional attribute
`modalities` (e.g. ("text", "image")) tells the page which query inputs to offer.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from polymodal.errors import PolymodalError

Searcher = Callable[[dict], list[dict]]


class IndexSearcher:
    """A searcher over a `polymodal.retrieval.VectorIndex`.

    Vector queries work as is; `embed(query) -> (1, D) array` adds text/image queries (the aligned model's
    query tower) and `modalities` names the query kinds it understands.
    """

    def __init__(self, index, embed: Callable[[dict], Any] | None = None,
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


def load_index_searcher(path: str | os.PathLike, run: str | os.PathLike | None = None) -> IndexSearcher:
    """Open a saved VectorIndex (PATH and PATH.json): vector queries, plus text/image/audio queries when the
    index was built by an alignment run (`polymodal index`; `run` overrides the recorded run folder)."""
    from polymodal.retrieval.pipeline import load_searcher

    return load_searcher(path, run)


def jsonable(value: Any) -> Any:
    """numpy scalars/arrays and tuples in searcher results → plain JSON types."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
