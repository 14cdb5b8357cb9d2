"""Size / CPU latency / throughput / metric-delta report for compressed models (Markdown + PNG).

Latency is end-to-end from preprocessed tensors through the whole model (every encoder, fusion, head):
decoding and tokenising are excluded, because they are the same for every variant.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from polymodal.compress.onnx_export import to_numpy_feeds
from polymodal.training.artifacts import atomic_write_text


@dataclass
class Measurement:
    name: str
    size_mb: float
    p50_b1_ms: float
    p95_b1_ms: float
    p50_b32_ms: float
    p95_b32_ms: float
    throughput_rows_s: float
    metric: float | None = None
    extra: dict = field(default_factory=dict)


def file_size_mb(path: str | Path) -> float:
    """Size of a file, or of every file under a folder (an ONNX file's tokenizers excluded)."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_size / 1e6
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) / 1e6


def state_size_mb(model: torch.nn.Module) -> float:
    """Bytes torch.save writes for the model's state dict (quantised packed weights included)."""
    import io

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return len(buf.getvalue()) / 1e6


def time_call(fn: Callable[[], object], repeats: int, warmup: int = 2) -> np.ndarray:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return np.asarray(out) * 1000


def torch_runner(model: torch.nn.Module) -> Callable[[dict], Callable[[], object]]:
    model = model.eval()

    def make(batch: dict):
        def run():
            with torch.inference_mode():
                return model(batch)
        return run
    return make


def onnx_runner(sess, spec) -> Callable[[dict], Callable[[], object]]:
    def make(batch: dict):
        feeds = to_numpy_feeds(spec, batch)
        return lambda: sess.run(None, feeds)
    return make


def measure(name: str, runner: Callable[[dict], Callable[[], object]], batch1: dict, batch32: dict,
            size_mb: float, repeats1: int = 20, repeats32: int = 5, metric: float | None = None,
            **extra) -> Measurement:
    """p50/p95 latency at batch 1 and 32, and rows/s at batch 32."""
    t1 = time_call(runner(batch1), repeats1)
    t32 = time_call(runner(batch32), repeats32, warmup=1)
    n32 = len(next(iter(batch32["present"].values())))
    return Measurement(name, round(size_mb, 2), *(round(float(np.percentile(t, q)), 2) for t in (t1, t32)
                                                 for q in (50, 95)),
                       round(n32 / (np.median(t32) / 1000), 1), metric, extra)


def table(measurements: list[Measurement], metric_name: str = "accuracy", baseline: int = 0) -> pd.DataFrame:
    base = measurements[baseline]
    rows = []
    for m in measurements:
        r = {"model": m.name, "size (MB)": m.size_mb, "size ×": round(base.size_mb / m.size_mb, 2),
             "p50 b1 (ms)": m.p50_b1_ms, "p95 b1 (ms)": m.p95_b1_ms, "p50 b32 (ms)": m.p50_b32_ms,
             "p95 b32 (ms)": m.p95_b32_ms, "speed-up b1 ×": round(base.p50_b1_ms / m.p50_b1_ms, 2),
             "speed-up b32 ×": round(base.p50_b32_ms / m.p50_b32_ms, 2), "rows/s (b32)": m.throughput_rows_s}
        if m.metric is not None:
            r[metric_name] = round(m.metric, 4)
            if base.metric is not None:
                r[f"Δ {metric_name}"] = round(m.metric - base.metric, 4)
        r.update(m.extra)
        rows.append(r)
    return pd.DataFrame(rows)


def plot(df: pd.DataFrame, path: str | Path, metric_name: str = "accuracy") -> Path:
    """Three bar panels: size, p50 latency at batch 1 and 32, and the metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [("size (MB)", "file size (MB)"), ("p50 b1 (ms)", "p50 latency, batch 1 (ms)"),
            ("p50 b32 (ms)", "p50 latency, batch 32 (ms)")]
    if metric_name in df:
        cols.append((metric_name, metric_name))
    fig, axes = plt.subplots(1, len(cols), figsize=(4 * len(cols), 3.6))
    for ax, (c, title) in zip(np.atleast_1d(axes), cols, strict=True):
        ax.bar(range(len(df)), df[c], color=[f"C{i}" for i in range(len(df))])
        ax.set_xticks(range(len(df)), df["model"], rotation=30, ha="right", fontsize=8)
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def write_report(out_dir: str | Path, title: str, measurements: list[Measurement], metric_name: str = "accuracy",
                 notes: str = "") -> pd.DataFrame:
    """`report.md` + `report.png` in `out_dir`; returns the table."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    df = table(measurements, metric_name)
    plot(df, out / "report.png", metric_name)
    threads = torch.get_num_threads()
    md = (f"# {title}\n\nCPU, {os.cpu_count()} cores, torch intra-op threads {threads}; latency end-to-end from "
          f"preprocessed tensors through every encoder, fusion and head. First row is the baseline.\n\n"
          + df.to_markdown(index=False) + "\n\n![report](report.png)\n")
    if notes:
        md += "\n" + notes.strip() + "\n"
    atomic_write_text(out / "report.md", md)
    return df


def as_dict(m: Measurement) -> dict:
    return asdict(m)
