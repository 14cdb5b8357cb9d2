"""`polymodal serve RUN`: load the run folder once and serve it with uvicorn."""

from __future__ import annotations

from pathlib import Path

import typer

from polymodal.errors import user_errors


@user_errors
def serve(
    run: Path = typer.Argument(..., help="run folder written by `polymodal fit` (or `polymodal align`, with --index)"),
    port: int = typer.Option(8000, help="TCP port"),
    host: str = typer.Option("127.0.0.1", help="interface to bind (0.0.0.0 exposes the server on the network)"),
    max_batch: int = typer.Option(32, help="most requests in one model forward"),
    max_wait_ms: float = typer.Option(5.0, help="how long the first request of a batch waits for company"),
    batching: bool = typer.Option(True, "--batching/--no-batching", help="dynamic micro-batching"),
    index: Path | None = typer.Option(None, help="a gallery index (`polymodal index`) enabling POST /search"),
    cors_origin: list[str] | None = typer.Option(None, help="allow this browser origin (repeatable); "
                                                            "CORS is off by default"),
    max_file_mb: float = typer.Option(10.0, help="largest accepted upload per file, in MB"),
    device: str | None = typer.Option(None, help="cpu, cuda, ... (default cpu)"),
    log_level: str = typer.Option("info", help="uvicorn log level"),
) -> None:
    """Serve a trained model over HTTP: /predict, /search, /schema, /health, /ready, /metrics and a web page."""
    import uvicorn

    from polymodal.errors import PolymodalError
    from polymodal.retrieval.pipeline import is_alignment_run
    from polymodal.serve.app import app_from_run
    from polymodal.serve.inputs import MB

    if not (run / "config.json").exists() and not is_alignment_run(run):
        raise PolymodalError(f"{run} is not a run folder (no config.json): train one with `polymodal fit`")
    if max_batch < 1 or max_wait_ms < 0 or max_file_mb <= 0:
        raise PolymodalError("--max-batch must be >= 1, --max-wait-ms >= 0 and --max-file-mb > 0")
    searcher = None
    if index is not None:
        from polymodal.serve.search import load_index_searcher

        searcher = load_index_searcher(index, run if is_alignment_run(run) else None)
    app = app_from_run(run, device=device, max_batch=max_batch, max_wait_ms=max_wait_ms, batching=batching,
                       searcher=searcher, cors_origins=cors_origin or (), max_file_bytes=int(max_file_mb * MB))
    uvicorn.run(app, host=host, port=port, log_level=log_level)


if __name__ == "__main__":  # `python -m polymodal.serve.cli RUN ...` works before the command is registered
    typer.run(serve)
