"""POST /recommend: the top-k items for a user of a recommendation run.

    POST /recommend {"user": "42", "k": 10, "include_seen": false}
    → {"user": "42", "items": [{"item": "50", "score": 9.12, "cold": false}, ...]}

Items the user already interacted with are left out unless `include_seen` is true; "cold" marks items with
no training interaction (scored from their columns alone). An unknown user, a k out of range or an unknown
field is a 422 naming the field. `recommend_router(rec)` can join any app; `recommend_app(rec)` is the
recommender-only server (a recommendation run has no /predict), with /health, /ready and /schema.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from polymodal.errors import DataError
from polymodal.recommend.recommender import Recommender
from polymodal.serve.inputs import InputError, parse_json_body

MAX_K = 1000
FIELDS = ("user", "k", "include_seen")
OPENAPI_RECOMMEND = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "additionalProperties": False, "required": ["user"], "properties": {
        "user": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
        "k": {"type": "integer", "minimum": 1, "maximum": MAX_K, "default": 10},
        "include_seen": {"type": "boolean", "default": False}}}}}}}


class RecommendedItem(BaseModel):
    item: str
    score: float
    cold: bool


class RecommendResponse(BaseModel):
    user: str
    items: list[RecommendedItem]


class Error(BaseModel):
    detail: str
    field: str | None = None


def recommend_request(body: Any, max_k: int = MAX_K) -> tuple[str, int, bool]:
    """(user, k, include_seen) of a JSON body; InputError (422) naming the field for anything else."""
    if not isinstance(body, dict):
        raise InputError(422, "the JSON body must be an object: {\"user\": ..., \"k\": 10}")
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise InputError(422, f"unknown field '{unknown[0]}'; /recommend takes {', '.join(FIELDS)}", unknown[0])
    user = body.get("user")
    if isinstance(user, bool) or not isinstance(user, (str, int)) or str(user).strip() == "":
        raise InputError(422, "'user' must be a user id (a string or an integer)", "user")
    k = body.get("k", 10)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= max_k:
        raise InputError(422, f"'k' must be an integer from 1 to {max_k}", "k")
    seen = body.get("include_seen", False)
    if not isinstance(seen, bool):
        raise InputError(422, "'include_seen' must be true or false", "include_seen")
    return str(user).strip(), k, seen


def recommend_router(recommender: Recommender, max_k: int = MAX_K) -> APIRouter:
    """The POST /recommend route over a loaded Recommender (its FAISS index is built here, not per request)."""
    router = APIRouter(tags=["recommendation"])
    recommender.index  # noqa: B018 (build the item index once, before the first request)

    @router.post("/recommend", response_model=RecommendResponse, openapi_extra=OPENAPI_RECOMMEND,
                 responses={s: {"model": Error} for s in (400, 415, 422)})
    async def recommend(request: Request) -> dict:
        """The k best items for a user, best first (never ones the user already interacted with)."""
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise InputError(415, f"send application/json {{\"user\": ..., \"k\": ...}}, not "
                                  f"'{ctype or 'no content type'}'")
        body = await run_in_threadpool(parse_json_body, await request.body())
        user, k, include_seen = recommend_request(body, max_k)
        try:
            items = await run_in_threadpool(recommender.top_k, user, k, not include_seen)
        except DataError as exc:  # an unknown user: the client's mistake, named
            raise InputError(422, exc.detail, "user") from None
        return {"user": user, "items": items}

    return router


def recommend_app(recommender: Recommender, max_k: int = MAX_K) -> FastAPI:
    """A server for a recommendation run alone: POST /recommend, GET /schema, /health, /ready."""
    app = FastAPI(title="polymodal recommender", version="1",
                  description=f"Recommends among {len(recommender.items):,} items for {len(recommender.users):,} "
                              "users.")

    @app.exception_handler(InputError)
    async def _input_error(request: Request, exc: InputError):
        return JSONResponse({"detail": exc.message, "field": exc.field}, status_code=exc.status)

    app.include_router(recommend_router(recommender, max_k))

    @app.get("/schema")
    def schema() -> dict:
        info = recommender.describe()
        return {"kind": info["kind"], "users": info["users"], "items": info["items"], "max_k": max_k,
                "item_columns": info["item_columns"], "user_columns": info["user_columns"]}

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.get("/ready")
    def ready() -> dict:
        return {"ready": True}

    return app
