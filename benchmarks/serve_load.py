"""Bounded load test of `polymodal serve` on loopback: p50/p99 latency and throughput at 1, 8 and 64
concurrent clients, micro-batching on vs off; and single-row `MultimodalPredictor.predict` in-process vs HTTP.

python benchmarks/serve_load.py [--image-encoder efficientnet-lite0] [--seconds 25]

The server runs in a subprocess bound to 127.0.0.1; every phase stops after its request count or its time
budget, whichever comes first. Client and server share the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
from common import WORK, write_markdown

from polymodal import MultimodalPredictor

REQUESTS = {1: 80, 8: 240, 64: 640}


def make_run(root: Path, encoder: str) -> Path:
    """A small image + tabular model (red/blue squares) trained once and reused."""
    from PIL import Image

    run = root / f"run-{encoder}"
    if (run / "model.safetensors").exists():
        return run
    (root / "imgs").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(80):
        color = ["red", "blue"][i % 2]
        base = np.array([220, 30, 30] if color == "red" else [30, 30, 220], np.float32)
        arr = np.clip(base + rng.normal(0, 20, (96, 96, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(root / "imgs" / f"{i}.png")
        rows.append({"image": f"imgs/{i}.png", "size": float(rng.normal()), "shop": "abc"[i % 3], "label": color})
    pd.DataFrame(rows).to_csv(root / "train.csv", index=False)
    MultimodalPredictor(label="label", path=run, encoders={"image": encoder}, verbose=False, progress=False,
                        max_epochs=5, batch_size=16, lr=3e-3).fit(root / "train.csv")
    return run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run: Path, port: int, batching: bool, max_wait_ms: float = 5.0,
                 server: list[str] | None = None, timeout: float = 120) -> subprocess.Popen:
    """`polymodal serve` (or `server`: another entry point taking its options) on `port`, once /ready answers."""
    cmd = [sys.executable, *(server or ["-m", "polymodal.serve.cli"]), str(run), "--host", "127.0.0.1",
           "--port", str(port), "--max-batch", "32", "--max-wait-ms", str(max_wait_ms),
           "--batching" if batching else "--no-batching", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server did not become ready in {timeout:.0f} s")


async def load(url: str, image: bytes, clients: int, n: int, seconds: float) -> dict:
    latencies: list[float] = []
    errors = 0
    sent = 0
    stop_at = time.perf_counter() + seconds

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal sent, errors
        while sent < n and time.perf_counter() < stop_at:
            sent += 1
            t0 = time.perf_counter()
            try:
                r = await client.post(url, files={"image": ("q.png", image, "image/png")},
                                      data={"size": "0.3", "shop": "b"})
            except httpx.TransportError:  # a dropped connection is a failed request, not the end of the phase
                errors += 1
                continue
            if r.status_code == 200:
                latencies.append(time.perf_counter() - t0)
            else:
                errors += 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        await client.post(url, files={"image": ("q.png", image, "image/png")})  # connection + warm-up
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(clients)))
        wall = time.perf_counter() - t0
    ms = np.array(latencies) * 1000
    return {"requests": len(latencies), "errors": errors, "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "throughput_rps": len(latencies) / wall}


def batch_counts(port: int) -> tuple[float, float]:
    """(rows, forwards) the server has run so far, from /metrics."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    vals = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
            if line.startswith("polymodal_batch")}
    return vals.get("polymodal_batch_size_sum", 0.0), vals.get("polymodal_batch_size_count", 0.0)


def batch_sizes(port: int) -> float:
    """Mean rows per forward since the server started."""
    rows, forwards = batch_counts(port)
    return rows / max(forwards, 1)


def in_process_latency(run: Path, root: Path, repeats: int = 40) -> float:
    p = MultimodalPredictor.load(run)
    row = pd.DataFrame({"image": [str(root / "imgs" / "0.png")], "size": [0.3], "shop": ["b"]})
    p.predict(row)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        p.predict(row)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--image-encoder", default="efficientnet-lite0")
    ap.add_argument("--seconds", type=float, default=25.0, help="time budget per phase")
    args = ap.parse_args()
    root = WORK / "serve_load"
    run = make_run(root, args.image_encoder)
    image = (root / "imgs" / "0.png").read_bytes()
    rows = []
    for batching in (True, False):
        port = free_port()
        proc = start_server(run, port, batching)
        try:
            for clients in (1, 8, 64):
                res = asyncio.run(load(f"http://127.0.0.1:{port}/predict", image, clients, REQUESTS[clients],
                                       args.seconds))
                rows.append({"batching": "on" if batching else "off", "clients": clients, **res,
                             "mean_batch": batch_sizes(port)})
                print(rows[-1], flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    table = pd.DataFrame(rows).round(2)
    inproc = in_process_latency(run, root)
    http1 = table[(table.batching == "off") & (table.clients == 1)].p50_ms.iloc[0]
    notes = (f"Model: {args.image_encoder} image encoder (frozen, 224 px) + tabular MLP, concat fusion; one PNG "
             f"upload plus two form fields per request. Server: `polymodal serve --max-batch 32 --max-wait-ms 5` "
             f"in a subprocess on 127.0.0.1; the httpx client runs on the same {os.cpu_count()} cores. "
             f"Each phase stops after {REQUESTS} requests or {args.seconds:g} s. `mean_batch` is the cumulative "
             "mean rows per forward read from /metrics.\n\n"
             f"Single row, in-process `MultimodalPredictor.predict` (DataFrame with an image path): "
             f"median {inproc:.1f} ms; over HTTP (1 client, batching off): p50 {http1:.1f} ms.")
    write_markdown(Path(__file__).parent / "results" / "serve_load.md", "Serving load test (loopback)",
                   "python benchmarks/serve_load.py", table, notes)


if __name__ == "__main__":
    main()
