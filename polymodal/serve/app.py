"""The HTTP API: /predict (micro-batched), /search, /speak, /schema, /health, /ready, /metrics and the web page.

`create_app(predictor)` builds a FastAPI app around an already loaded MultimodalPredictor; `app_from_run(path)`
loads it once from a run folder. Each request is validated and decoded from its uploaded bytes (in a worker
thread), then queued for the micro-batcher, which runs one forward for many concurrent requests.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from polymodal.errors import PolymodalError
from polymodal.runs import ALIGNMENT, RECOMMENDATION_RUN, load_run, run_kind
from polymodal.serve.batching import MicroBatcher
from polymodal.serve.docs import add_docs
from polymodal.serve.health import ModelHealth
from polymodal.serve.inputs import MAX_TEXT_CHARS, MB, InputError, RowBuilder, Upload, parse_json_body
from polymodal.serve.metrics import ServerMetrics
from polymodal.serve.recommend import recommend_app
from polymodal.serve.runner import ModelRunner
from polymodal.serve.search import Searcher, jsonable
from polymodal.serve.speak import speak_router
from polymodal.types import NUMERIC

log = logging.getLogger("polymodal.serve")
STATIC = Path(__file__).parent / "static"
ENDPOINTS = {"/", "/predict", "/search", "/schema", "/health", "/ready", "/metrics", "/openapi.json", "/docs",
             "/speak"}
MAX_SEARCH_K = 100


class PredictResponse(BaseModel):
    prediction: str | float | dict[str, str | float]  # a dict of label → prediction for multi-task models
    probabilities: dict[str, float] | None = None
    latency_ms: float


class SearchResponse(BaseModel):
    results: list[dict[str, Any]]
    latency_ms: float


class ErrorResponse(BaseModel):
    detail: str
    field: str | None = None


ERRORS = {s: {"model": ErrorResponse} for s in (400, 413, 415, 422, 503)}


class BodyTooLarge(Exception):
    pass


class _Guard:
    """Pure ASGI middleware: body size limit (413 before parsing), request counts/latency for /metrics, and a
    last-resort 500 for an unhandled exception.

    The 500 is answered here, inside the app, rather than by Starlette's outer error middleware: that one
    re-raises after answering, which makes uvicorn close the keep-alive connection, and its response never
    passed through this counter, so 5xx were missing from /metrics."""

    def __init__(self, app, metrics: ServerMetrics, max_body: int) -> None:
        self.app, self.metrics, self.max_body = app, metrics, max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        path = scope["path"]
        endpoint = path if path in ENDPOINTS else "/static" if path.startswith("/static/") else \
            "/docs" if path.startswith("/docs/") else "other"
        started = False

        async def send_and_count(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                self.metrics.observe_request(endpoint, message["status"], time.perf_counter() - start)
            await send(message)

        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_body:
            response = JSONResponse({"detail": f"request body is {int(length) / MB:.1f} MB; the limit is "
                                               f"{self.max_body / MB:g} MB"}, status_code=413)
            return await response(scope, receive, send_and_count)
        received = 0

        async def limited_receive():  # chunked uploads have no Content-Length: count as they arrive
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise BodyTooLarge()
            return message

        try:
            await self.app(scope, limited_receive, send_and_count)
        except Exception:
            log.exception("unhandled error answering %s %s", scope.get("method"), path)
            if started:  # half a response is out: only closing the connection can tell the client
                raise
            response = JSONResponse({"detail": "internal server error: the request could not be answered; the "
                                               "server log has the details"}, status_code=500)
            await response(scope, receive, send_and_count)


def _openapi_predict(builder: RowBuilder) -> dict:
    props: dict[str, dict] = {}
    for name, f in builder.fields.items():
        if f.is_file:
            props[name] = {"type": "string", "format": "binary", "description": f"{f.modality} file"}
        elif f.modality == NUMERIC:
            props[name] = {"type": "number", "description": "numeric column"}
        else:
            props[name] = {"type": "string", "description": f"{f.modality} column"}
    plain = {k: v for k, v in props.items() if v.get("format") != "binary"}
    content = {"multipart/form-data": {"schema": {"type": "object", "properties": props,
                                                  "additionalProperties": False}}}
    if plain:
        content["application/x-www-form-urlencoded"] = {"schema": {"type": "object", "properties": plain,
                                                                   "additionalProperties": False}}
        content["application/json"] = {"schema": {"type": "object", "additionalProperties": False,
                                                  "properties": {k: {**v, "nullable": True}
                                                                 for k, v in plain.items()}}}
    return {"requestBody": {"required": True, "content": content}}


OPENAPI_SEARCH = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"type": "object", "additionalProperties": False, "properties": {
        "text": {"type": "string"}, "k": {"type": "integer", "minimum": 1, "maximum": MAX_SEARCH_K},
        "vector": {"type": "array", "items": {"type": "number"}}}}},
    "multipart/form-data": {"schema": {"type": "object", "additionalProperties": False, "properties": {
        "text": {"type": "string"}, "k": {"type": "integer", "minimum": 1, "maximum": MAX_SEARCH_K},
        "image": {"type": "string", "format": "binary"}, "audio": {"type": "string", "format": "binary"}}}}}}}


def create_app(predictor, *, max_batch: int = 32, max_wait_ms: float = 5.0, batching: bool = True,
               searcher: Searcher | None = None, cors_origins: list[str] | tuple[str, ...] = (),
               max_file_bytes: int = 10 * MB, max_pixels: int = 40_000_000,
               max_text_chars: int = MAX_TEXT_CHARS, tts_engine: str | None = None) -> FastAPI:
    """A FastAPI app serving `predictor` (a loaded MultimodalPredictor); `searcher` enables POST /search.

    With `predictor=None` the app only searches (an alignment run's index): no /predict route. POST /speak
    voices texts with `tts_engine` (default: the first installed), and a caption run's captions of uploads."""
    if predictor is None and searcher is None:
        raise PolymodalError("nothing to serve: give a predictor, a searcher or both")
    metrics = ServerMetrics()
    runner = batcher = builder = prep = model_health = None
    if predictor is not None:
        runner = ModelRunner(predictor)
        builder = RowBuilder(predictor.prep, max_file_bytes=max_file_bytes, max_pixels=max_pixels,
                             max_text_chars=max_text_chars)
        batcher = MicroBatcher(runner, max_batch=max_batch, max_wait_ms=max_wait_ms, enabled=batching,
                               on_batch=metrics.observe_batch)
        metrics.counters["polymodal_batch_company_waits_total"] = (
            "Forwards held back for company (a lone request waiting for others to share its forward).",
            lambda: batcher.company_waits)
        metrics.counters["polymodal_batch_company_wait_seconds_total"] = (
            "Seconds forwards were held back waiting for company.", lambda: batcher.company_wait_s)
        metrics.counters["polymodal_batch_checks_kept_batching_total"] = (
            "Online checks (batching vs one row per forward, by request latency) that kept batching.",
            lambda: batcher.policy.kept_batching)
        metrics.counters["polymodal_batch_checks_total"] = (
            "Online checks of batching vs one row per forward while serving.", lambda: batcher.policy.checks)
        model_health = ModelHealth(batcher, builder, metrics)
        prep = predictor.prep

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if batcher is not None:
            await batcher.start()
            await model_health.probe()  # warm-up (the first forward allocates; not a client's); sets metrics.ready
            if model_health.fault is None:  # how large a batch pays on this machine (serve/batching.py)
                await batcher.calibrate(builder.probe_item())
        else:
            metrics.ready = True
        yield
        metrics.ready = False
        if batcher is not None:
            await batcher.stop()

    description = ("Searches a gallery." if prep is None else
                   f"Predicts `{prep.schema.label}` ({prep.schema.problem_type}) from {', '.join(builder.fields)}.")
    # docs_url/redoc_url off: FastAPI's pages load their scripts from a CDN (blank offline); see serve.docs
    app = FastAPI(title="polymodal", version="1", lifespan=lifespan, description=description, docs_url=None,
                  redoc_url=None)
    app.state.batcher, app.state.metrics, app.state.runner, app.state.builder = batcher, metrics, runner, builder
    app.state.health = model_health
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["*"])
    n_files = max(1, len(builder.file_fields) if builder else 1)
    max_body = max_file_bytes * n_files + MB  # + room for fields and boundaries
    app.add_middleware(_Guard, metrics=metrics, max_body=max_body)

    @app.exception_handler(InputError)
    async def _input_error(request: Request, exc: InputError):
        return JSONResponse({"detail": exc.message, "field": exc.field}, status_code=exc.status)

    @app.exception_handler(BodyTooLarge)
    async def _too_large(request: Request, exc: BodyTooLarge):
        return JSONResponse({"detail": f"request body is larger than the {max_body / MB:g} MB limit"},
                            status_code=413)

    async def read_values(request: Request, parse_json, parse_form) -> dict:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "application/json":  # parsed in a worker thread: a large body does not stall the event loop
            return parse_json(await run_in_threadpool(parse_json_body, await request.body()))
        if ctype in ("multipart/form-data", "application/x-www-form-urlencoded"):
            async with request.form(max_files=16, max_fields=256) as form:
                return await parse_form(form)
        if not ctype and not await request.body():  # an empty POST: answered as "no inputs", not a type error
            return parse_json({})
        raise InputError(415, f"send multipart/form-data (files and fields), a url-encoded form or "
                              f"application/json, not "
                              f"'{ctype or 'no content type'}'")

    if predictor is not None:
        @app.post("/predict", response_model=PredictResponse, responses=ERRORS,
                  openapi_extra=_openapi_predict(builder))
        async def predict(request: Request) -> dict:
            """One row: image/audio files by column name plus text/numeric/categorical fields (all optional,
            at least one)."""
            start = time.perf_counter()
            values = await read_values(request, builder.from_json, builder.from_form)
            # decoding and tokenising in this request's worker thread: the batcher receives a ready item
            item = await run_in_threadpool(builder.build, values)
            out = await model_health.answer(item)
            return {**out, "latency_ms": round((time.perf_counter() - start) * 1000, 3)}

    if searcher is not None:
        async def search_form(form) -> dict:
            query: dict[str, Any] = {}
            for name, v in form.multi_items():
                if name in ("image", "audio"):
                    if isinstance(v, str):
                        raise InputError(422, f"'{name}' must be an uploaded file; paths are never read", name)
                    data = await v.read()
                    if len(data) > max_file_bytes:
                        raise InputError(413, f"the {name} is larger than the {max_file_bytes / MB:g} MB limit",
                                         name)
                    if data:
                        query[name] = Upload(data, v.content_type or "", v.filename or "")
                elif name in ("text", "k"):
                    if not isinstance(v, str):
                        raise InputError(422, f"'{name}' must be a form field, not a file", name)
                    query[name] = v
                else:
                    raise InputError(422, f"unknown field '{name}'; /search takes text, image, audio, k", name)
            return check_search(query, from_form=True)

        def check_search(query: Any, from_form: bool = False) -> dict:
            if not isinstance(query, dict):
                raise InputError(422, "the JSON body must be an object: {\"text\": ..., \"k\": ...}")
            unknown = set(query) - {"text", "image", "audio", "vector", "k"}
            if unknown:
                raise InputError(422, f"unknown field '{sorted(unknown)[0]}'; /search takes text, image, "
                                      "audio, vector, k", sorted(unknown)[0])
            k = query.get("k", 10)
            try:
                k = int(k) if not isinstance(k, (bool, float)) else None
            except (TypeError, ValueError):
                k = None
            if k is None or not 1 <= k <= MAX_SEARCH_K:
                raise InputError(422, f"'k' must be an integer from 1 to {MAX_SEARCH_K}", "k")
            out: dict[str, Any] = {"k": k}
            text = query.get("text")
            if text is not None:
                if not isinstance(text, str):
                    raise InputError(422, "'text' must be a string", "text")
                if len(text) > max_text_chars:
                    raise InputError(413, f"'text' has {len(text):,} characters; the limit is {max_text_chars:,} "
                                          "(serve --max-text-chars)", "text")
                if text.strip():
                    out["text"] = text
            for kind in ("image", "audio"):
                if kind in query:
                    if not from_form:
                        raise InputError(422, f"'{kind}' must be uploaded as a file (multipart/form-data); paths "
                                              "and URLs are never read", kind)
                    out[kind] = query[kind].data
            vec = query.get("vector")
            if vec is not None:
                if not isinstance(vec, list) or not vec or not all(
                        isinstance(x, (int, float)) and not isinstance(x, bool) for x in vec):
                    raise InputError(422, "'vector' must be a non-empty list of numbers", "vector")
                out["vector"] = vec
            if len(out) == 1:
                raise InputError(422, "send a query: text, an image or audio upload, or a vector")
            return out

        @app.post("/search", response_model=SearchResponse, responses=ERRORS, openapi_extra=OPENAPI_SEARCH)
        async def search(request: Request) -> dict:
            """Top-k gallery items for a text, image, audio or vector query."""
            start = time.perf_counter()
            query = await read_values(request, check_search, search_form)
            try:
                results = await run_in_threadpool(searcher, query)
            except (PolymodalError, ValueError) as exc:
                raise InputError(422, str(exc)) from None
            return {"results": jsonable(list(results)),
                    "latency_ms": round((time.perf_counter() - start) * 1000, 3)}

    @app.get("/schema")
    def schema() -> dict:
        """The model's input columns and modalities, its label and classes; drives the web page's form."""
        return {"label": prep.schema.label if prep else None,
                "problem_type": prep.schema.problem_type if prep else None,
                "classes": list(prep.classes) if prep else [],
                "inputs": [f.to_dict() for f in builder.fields.values()] if builder else [],
                "max_file_bytes": max_file_bytes, "model_id": getattr(predictor, "model_id", None),
                "search": None if searcher is None else
                {"modalities": list(getattr(searcher, "modalities", ("text", "image")))}}

    @app.get("/health")
    def health() -> dict:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/ready", responses={503: {"model": ErrorResponse}})
    async def ready():
        """Readiness: the model is loaded, warmed up, its outputs are finite and the batch worker runs."""
        if model_health is not None and model_health.fault is not None and batcher.accepting:
            await model_health.probe()  # a model found non-finite is checked again: a transient fault clears
        if model_health is not None and model_health.fault is not None:
            return JSONResponse({"detail": model_health.fault}, status_code=503)
        if metrics.ready and (batcher is None or batcher.accepting):
            return {"ready": True}
        return JSONResponse({"detail": "model not ready"}, status_code=503)

    @app.get("/metrics", response_class=PlainTextResponse)
    def prometheus() -> PlainTextResponse:
        """Prometheus text format: requests by status, latency and batch-size histograms."""
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.include_router(speak_router(tts_engine))  # POST /speak: a text, or a caption run's text, as audio/wav
    add_docs(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def app_from_run(run_dir: str | os.PathLike, device: str | None = None, **options) -> FastAPI:
    """Load the run folder's predictor once and serve it (an alignment run serves only its search index, a
    recommendation run POST /recommend)."""
    if run_kind(run_dir) == RECOMMENDATION_RUN:
        return recommend_app(load_run(run_dir, device=device))
    if run_kind(run_dir) == ALIGNMENT:
        if options.get("searcher") is None:
            raise PolymodalError(f"{run_dir} is an alignment run: serve it with --index GALLERY.index "
                                 "(built by `polymodal index`)")
        return create_app(None, **options)
    return create_app(load_run(run_dir, device=device), **options)
