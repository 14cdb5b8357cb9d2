"""Prometheus text exposition (format 0.0.4) for the server's counters and histograms.

Hand-written because `prometheus_client` is not a dependency of the project (the serve extra is kept to
fastapi/uvicorn/python-multipart) and the server needs only one counter family, two histogram families and
a gauge: about sixty lines against a new package.
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict
from collections.abc import Callable

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    def esc(v: str) -> str:
        return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')

    return "{" + ",".join(f'{k}="{esc(v)}"' for k, v in pairs) + "}" if pairs else ""


def _num(v: float) -> str:
    return repr(float(v)) if isinstance(v, float) else str(v)


class Histogram:
    """Cumulative-bucket histogram keyed by a label tuple."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = tuple(sorted(buckets))
        self.counts: dict[tuple, list[int]] = defaultdict(lambda: [0] * (len(self.buckets) + 1))
        self.sums: dict[tuple, float] = defaultdict(float)

    def observe(self, value: float, labels: tuple = ()) -> None:
        self.counts[labels][bisect.bisect_left(self.buckets, value)] += 1
        self.sums[labels] += value

    def lines(self, name: str) -> list[str]:
        out = []
        for labels, counts in sorted(self.counts.items()):
            cum = 0
            for le, c in zip([*map(_num, self.buckets), "+Inf"], counts):
                cum += c
                out.append(f"{name}_bucket{_labels((*labels, ('le', le)))} {cum}")
            out.append(f"{name}_sum{_labels(labels)} {_num(self.sums[labels])}")
            out.append(f"{name}_count{_labels(labels)} {cum}")
        return out


class ServerMetrics:
    """Request counts by endpoint/status, request latency, model batch sizes, readiness."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple, int] = defaultdict(int)
        self.latency = Histogram(LATENCY_BUCKETS)
        self.batch_size = Histogram(BATCH_BUCKETS)
        self.ready = False
        # counters read from elsewhere at render time: name -> (help, read())
        self.counters: dict[str, tuple[str, Callable[[], float]]] = {}

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(("endpoint", endpoint), ("status", str(status)))] += 1
            self.latency.observe(seconds, (("endpoint", endpoint),))

    def observe_batch(self, size: int) -> None:
        with self._lock:
            self.batch_size.observe(size)

    def render(self) -> str:
        with self._lock:
            lines = ["# HELP polymodal_requests_total HTTP requests by endpoint and status code.",
                     "# TYPE polymodal_requests_total counter"]
            lines += [f"polymodal_requests_total{_labels(k)} {v}" for k, v in sorted(self.requests.items())]
            lines += ["# HELP polymodal_request_latency_seconds Time from request start to response start.",
                      "# TYPE polymodal_request_latency_seconds histogram",
                      *self.latency.lines("polymodal_request_latency_seconds"),
                      "# HELP polymodal_batch_size Rows per model forward (micro-batching).",
                      "# TYPE polymodal_batch_size histogram",
                      *self.batch_size.lines("polymodal_batch_size"),
                      "# HELP polymodal_model_ready 1 once the model is loaded and warmed up.",
                      "# TYPE polymodal_model_ready gauge",
                      f"polymodal_model_ready {int(self.ready)}"]
            for name, (text, read) in sorted(self.counters.items()):
                lines += [f"# HELP {name} {text}", f"# TYPE {name} counter", f"{name} {_num(read())}"]
        return "\n".join(lines) + "\n"
