"""The /search contract: a callable `search(query: dict) -> list[dict]`.

query: {"k": int, and one or more of "text": str, "image": bytes (an uploaded image), "vector": [float]}.
results, best first: dicts with at least "id" and "score"; a "thumbnail" (data: URI or URL served by the
deployer) and a "caption" are shown by the web page when present. A searcher may raise PolymodalError /
ValueError for a query it cannot answer (the client gets a 422 with the message). An optional attribute
`modalities` (e.g. ("text", "image")) tells the page which query inputs to offer.

The searcher over a saved index lives in `polymodal.retrieval.search`; this module holds only what the
HTTP layer adds (the type it accepts and the JSON conversion of results).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from polymodal.retrieval.search import IndexSearcher, load_searcher

__all__ = ["IndexSearcher", "Searcher", "jsonable", "load_index_searcher"]

Searcher = Callable[[dict], list[dict]]

# The server's name for the retrieval loader (`polymodal serve RUN --index INDEX`).
load_index_searcher = load_searcher


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
