"""POST /speak: a text, or the caption a caption run writes for an uploaded image, as audio/wav.

`speak_router()` is included by `create_app`; it reads the app's row builder and model health (the micro-batched
answer) from `request.app.state`, so a form upload goes through the same validation and batching as /predict.

- JSON `{"text": "...", "engine": "piper"}` (engine optional): voices the text (any server, any run).
- multipart/form-data or url-encoded form with the run's input fields (as /predict takes them): a caption or
  vqa-open run generates the text, which is voiced; other runs answer 422.

The answer is a 16-bit PCM WAV; the header `X-Spoken-Text` carries the spoken text (percent-encoded UTF-8) and
`X-TTS-Engine` the engine. A server without an engine answers 503 naming what to install. GET /speak lists
the engines and whether each is installed. Synthesis runs in worker threads, at most `MAX_SYNTHESES` at once,
so spoken requests cannot take every core from /predict.
"""

from __future__ import annotations

from functools import partial
from typing import Any
from urllib.parse import quote

import anyio
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from polymodal.errors import PolymodalError
from polymodal.problem_types import GENERATION
from polymodal.serve.inputs import InputError, parse_json_body
from polymodal.tasks.tts import ENGINES, TTSUnavailable, engine_status, load_engine, speak, speakable, wav_bytes

MAX_SPEAK_CHARS = 2000  # ~2.5 minutes of speech; synthesis time grows with the text
MAX_SYNTHESES = 1  # concurrent syntheses (onnxruntime / espeak-ng use the cores themselves)
OPENAPI_SPEAK = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"type": "object", "additionalProperties": False, "required": ["text"],
                                    "properties": {"text": {"type": "string", "minLength": 1,
                                                            "maxLength": MAX_SPEAK_CHARS},
                                                   "engine": {"type": "string", "enum": list(ENGINES)}}}},
    "multipart/form-data": {"schema": {"type": "object", "description": "the run's input fields, as /predict "
                                                                        "takes them (caption / vqa-open runs)"}}}},
    "responses": {"200": {"description": "the spoken text as a 16-bit PCM WAV",
                          "content": {"audio/wav": {"schema": {"type": "string", "format": "binary"}}}}}}


def text_request(body: Any) -> tuple[str, str | None]:
    """(text, engine) of a JSON /speak body; 4xx naming the field for anything else."""
    if not isinstance(body, dict):
        raise InputError(422, "the JSON body must be an object: {\"text\": ..., \"engine\": ...}")
    unknown = sorted(set(body) - {"text", "engine"})
    if unknown:
        raise InputError(422, f"unknown field '{unknown[0]}'; /speak takes text and engine", unknown[0])
    text, engine = body.get("text"), body.get("engine")
    if not isinstance(text, str) or not text.strip():
        raise InputError(422, "'text' must be a non-empty string", "text")
    if len(text) > MAX_SPEAK_CHARS:
        raise InputError(413, f"'text' has {len(text):,} characters; the limit is {MAX_SPEAK_CHARS:,}", "text")
    if engine is not None and engine not in ENGINES:
        raise InputError(422, f"'engine' must be one of {', '.join(ENGINES)}", "engine")
    return text, engine


def writes_text(state) -> bool:
    """True when the served model generates text (a caption or vqa-open run)."""
    runner = getattr(state, "runner", None)
    return runner is not None and getattr(runner.task, "problem_type", None) == GENERATION


async def caption(request: Request) -> str:
    """The text the served caption run generates for the uploaded row (validated and batched as /predict)."""
    state = request.app.state
    if not writes_text(state):
        raise InputError(422, "this server's model does not write text: send JSON {\"text\": ...} to /speak, "
                              "or serve a caption (or vqa-open) run to speak what it generates")
    async with request.form(max_files=16, max_fields=256) as form:
        values = await state.builder.from_form(form)
    item = await run_in_threadpool(state.builder.build, values)  # image decode off the event loop
    out = await state.health.answer(item)  # micro-batched; never a non-finite answer
    text = str(out["prediction"]).strip()
    if not text:
        raise InputError(422, "the model generated an empty text for these inputs: nothing to speak")
    return text[:MAX_SPEAK_CHARS]


def voice(text: str, engine: str | None) -> tuple[bytes, str]:
    """WAV bytes of `text` and the name of the engine that spoke it."""
    loaded = load_engine(engine)
    wave, sr = speak(text, loaded)
    return wav_bytes(wave, sr), loaded.name


def speak_router(engine: str | None = None) -> APIRouter:
    """The /speak routes; `engine` is the default engine (None: the first installed of piper, espeak-ng)."""
    if engine is not None and engine not in ENGINES:
        raise PolymodalError(f"unknown text-to-speech engine {engine!r}; choose one of {', '.join(ENGINES)}")
    router = APIRouter(tags=["speech"])
    limiter: list[anyio.CapacityLimiter] = []  # made on first use, inside the server's event loop

    @router.get("/speak")
    def engines() -> dict:
        """The text-to-speech engines (null when installed, else what to install) and the default one."""
        status = engine_status()
        usable = [n for n, problem in status.items() if problem is None]
        default = (engine if engine in usable else None) if engine else (usable[0] if usable else None)
        return {"engines": status, "default": default}

    @router.post("/speak", response_class=Response, openapi_extra=OPENAPI_SPEAK,
                 responses={s: {"description": "error: {detail, field}"} for s in (413, 415, 422, 503)})
    async def speak_route(request: Request) -> Response:
        """Voice a text (JSON) or the caption of uploaded inputs (a form, caption runs): audio/wav."""
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        chosen = engine
        if ctype == "application/json":  # parsed in a worker thread, depth-bounded, as /predict's JSON
            text, asked = text_request(await run_in_threadpool(parse_json_body, await request.body()))
            chosen = asked or engine
        elif ctype in ("multipart/form-data", "application/x-www-form-urlencoded"):
            text = await caption(request)
        else:
            raise InputError(415, "send application/json {\"text\": ...} or the run's inputs as a form, not "
                                  f"'{ctype or 'no content type'}'")
        if not limiter:
            limiter.append(anyio.CapacityLimiter(MAX_SYNTHESES))
        try:
            audio, name = await anyio.to_thread.run_sync(partial(voice, text, chosen), limiter=limiter[0])
        except TTSUnavailable as exc:  # the server runs, the engine is not installed: say what to install
            raise InputError(503, str(exc)) from None
        except PolymodalError as exc:  # e.g. nothing pronounceable in the text
            raise InputError(422, str(exc), "text") from None
        return Response(audio, media_type="audio/wav",
                        headers={"X-Spoken-Text": quote(speakable(text)), "X-TTS-Engine": name,
                                 "Cache-Control": "no-store"})

    return router
