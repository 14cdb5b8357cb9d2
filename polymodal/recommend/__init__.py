"""Cross-modal recommendation (issue 17): interactions and splits (data), side-table columns through the
frozen-encoder cache (features), the two-tower model (model, train), ranking metrics, baselines, and the
front: `Recommender` (recommender; run folder in run_folder), `polymodal recommend` (cli).

`from polymodal.recommend import Recommender` is resolved lazily, so importing the metrics or the data
helpers does not load the encoders and the FAISS index behind the front."""

from __future__ import annotations

from typing import Any

__all__ = ["Recommender"]


def __getattr__(name: str) -> Any:
    # Lazy re-export of this package's own child (see the docstring).
    if name == "Recommender":
        from polymodal.recommend import recommender

        return recommender.Recommender
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
