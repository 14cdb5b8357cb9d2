"""`polymodal serve RUN`: load the run folder once and serve it with uvicorn."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from polymodal.compress.engine import ENGINE_HELP, resolve_engine
from polymodal.errors import PolymodalError, user_errors
from polymodal.runs import ALIGNMENT, run_kind
from polymodal.serve.inputs import MB
from polymodal.serve.search import load_index_searcher


@user_errors
def serve(
    run: Path = typer.Argument(..., help="run folder written by `polymodal fit` (or `polymodal align`, with --index)"),
    port: int = typer.Option(8000, help="TCP port"),
    host: str = typer.Option("127.0.0.1", help="interface to bind (0.0.0.0 exposes the server on the network)"),
    max_batch: int = typer.Option(32, help="most requests in one model forward"),
    max_wait_ms: float = typer.Option(5.0, help="longest a request waits for company (when batching pays)"),
    batching: bool = typer.Option(True, "--batching/--no-batching", help="dynamic micro-batching"),
    index: Path | None = typer.Option(None, help="a gallery index (`polymodal index`) enabling POST /search"),
    cors_origin: list[str] | None = typer.Option(None, help="allow this browser origin (repeatable); "
                                                            "CORS is off by default"),
    max_file_mb: float = typer.Option(10.0, help="largest accepted upload per file, in MB"),
    max_text_chars: int = typer.Option(100_000, help="longest accepted text or category value, in characters"),
    tts_engine: str | None = typer.Option(None, help="POST /speak's text-to-speech engine: piper or espeak-ng "
                                                     "(default: the first installed)"),
    engine: str | None = typer.Option(None, help=ENGINE_HELP),
    device: str | None = typer.Option(None, help="cpu, cuda, ... (default cpu)"),
    log_level: str = typer.Option("info", help="uvicorn log level"),
) -> None:
    """Serve a trained model over HTTP: /predict, /search, /speak, /schema, /health, /ready, /metrics and a web
    page."""
    # the server's packages (fastapi, uvicorn: the `serve` extra) load only when a server starts, so the
    # rest of the CLI works without them
    import uvicorn

    from polymodal.serve.app import app_from_run

    alignment = run_kind(run) == ALIGNMENT  # also the clear error for a folder that is no run
    if max_batch < 1 or max_wait_ms < 0 or max_file_mb <= 0 or max_text_chars < 1:
        raise PolymodalError("--max-batch must be >= 1, --max-wait-ms >= 0, --max-file-mb > 0 and "
                             "--max-text-chars >= 1")
    if engine is not None:  # the default engine of this server process: /predict and the probe row use it
        os.environ["POLYMODAL_ENGINE"] = resolve_engine(engine)
    searcher = None
    if index is not None:
        searcher = load_index_searcher(index, run if alignment else None)
    app = app_from_run(run, device=device, max_batch=max_batch, max_wait_ms=max_wait_ms, batching=batching,
                       searcher=searcher, cors_origins=cors_origin or (), max_file_bytes=int(max_file_mb * MB),
                       max_text_chars=max_text_chars, tts_engine=tts_engine)
    uvicorn.run(app, host=host, port=port, log_level=log_level)


if __name__ == "__main__":  # `python -m polymodal.serve.cli RUN ...` works before the command is registered
    typer.run(serve)
