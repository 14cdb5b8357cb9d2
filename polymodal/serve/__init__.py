"""polymodal.serve: an HTTP API (FastAPI + uvicorn) with micro-batching, a web page, and /search.

`create_app(predictor)` / `app_from_run(path)` build the app; `polymodal serve RUN` runs it.
FastAPI is an optional extra (`pip install 'polymodal[serve]'`), so nothing is imported here eagerly.
"""

from __future__ import annotations

__all__ = ["app_from_run", "create_app"]


def __getattr__(name: str):
    if name in __all__:
        from polymodal.serve import app

        return getattr(app, name)
    raise AttributeError(name)
