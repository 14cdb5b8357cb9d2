"""Engine names, onnxruntime settings, and frozen encoders run in onnxruntime for the feature cache.

Why here: the feature cache (encoders/cache.py) runs frozen encoders, and dependencies point down the
pipeline, so it cannot import compress/ (which sits above training/). compress/engine.py, which picks the
whole model's engine, takes the engine names, their resolution and the session settings from this module:
one definition of "auto" | "torch" | "onnx", of the thread settings and of the session options for both.

`OrtEncoder.for_values` gives a frozen encoder's pooled pass (`encoder(x)`: image pixels or text token ids →
features) as an onnxruntime session when the engine is "auto" or "onnx", the device is the CPU and the graph
passes its parity check ("auto": for passes of at least `EXPORT_MIN_VALUES` new values); PyTorch otherwise,
with the reason logged once. The graph is exported once per encoder into its feature-cache folder
(`encoder.onnx`, keyed like the cached features by the encoder's cache_id and preprocessing) and checked on
the first batch of every pass: max |ONNX − PyTorch| over the features must be within `TOLERANCE` of their
scale. `encoder.parity.json` records the graph's SHA-256 and the
last check (a failed export or check is recorded, so later passes do not retry it).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from polymodal.errors import PolymodalError
from polymodal.types import IMAGE, TEXT
from polymodal.version import __version__

ENGINES = ("auto", "torch", "onnx")
# "auto" encodes with onnxruntime only passes of at least this many new values: an export takes seconds
# (EfficientNet-Lite0 ~5 s, MiniLM ~3 s on 2 loaded cores) and every pass runs its first batch through both
# engines for the check, so small passes do not pay (107 questions: 2.6 s with a cached graph vs 2.1 s in
# PyTorch; 256 images: 9.0 vs 22.6 s; benchmarks/inference.py --encode). Engine "onnx" uses it for any pass.
EXPORT_MIN_VALUES = 256
TOLERANCE = 1e-4  # max |ONNX - PyTorch| over features, relative to max(1, their largest magnitude)
GRAPH, PARITY = "encoder.onnx", "encoder.parity.json"
_log = logging.getLogger(__name__)
_warned: set[str] = set()


def default_engine() -> str:
    """The engine used when none is given: `POLYMODAL_ENGINE` (auto|torch|onnx), else "auto"."""
    engine = os.environ.get("POLYMODAL_ENGINE", "auto").strip().lower()
    return engine if engine in ENGINES else "auto"


def resolve_engine(engine: str | None) -> str:
    engine = default_engine() if engine is None else str(engine).strip().lower()
    if engine not in ENGINES:
        raise PolymodalError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    return engine


def physical_cores() -> int:
    """Physical cores (hyper-threads share one core's units: more ORT threads than cores only contend)."""
    try:
        blocks = Path("/proc/cpuinfo").read_text().split("\n\n")
        pairs = {tuple(line.split(":")[1].strip() for line in b.splitlines()
                       if line.startswith(("physical id", "core id"))) for b in blocks if "core id" in b}
        if pairs:
            return len(pairs)
    except OSError:
        pass
    return max(1, os.cpu_count() or 1)


def ort_threads() -> int:
    """onnxruntime intra-op threads: `POLYMODAL_ORT_THREADS`, else the physical cores."""
    value = os.environ.get("POLYMODAL_ORT_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else physical_cores()


def warn_once(key: str, msg: str, level: int = logging.WARNING, log: logging.Logger = _log) -> None:
    if key not in _warned:
        _warned.add(key)
        log.log(level, msg)


def ort_session(graph: bytes | str, threads: int | None = None):
    """An onnxruntime CPU session from the graph's bytes (or its file's path): intra-op threads `ort_threads()`,
    inter-op 1, no spin-waiting between ops (`POLYMODAL_ORT_SPIN=1` turns it on): on a shared machine spinning
    threads take the cores other threads need (measured in docs/benchmarks.md, "Inference engines")."""
    import onnxruntime as ort  # optional heavy dependency: only the ONNX engine needs it

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or ort_threads()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    spin = "1" if os.environ.get("POLYMODAL_ORT_SPIN", "0") == "1" else "0"
    so.add_session_config_entry("session.intra_op.allow_spinning", spin)
    return ort.InferenceSession(graph, so, providers=["CPUExecutionProvider"])


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def atomic_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _Pooled(nn.Module):
    """The encoder's pooled pass with positional tensors (ONNX has no dict inputs)."""

    def __init__(self, encoder: nn.Module, modality: str) -> None:
        super().__init__()
        self.encoder, self.modality = encoder, modality

    def forward(self, *x: torch.Tensor) -> torch.Tensor:
        if self.modality == TEXT:
            return self.encoder({"input_ids": x[0], "attention_mask": x[1]}).float()
        return self.encoder(x[0]).float()


def _names(modality: str) -> list[str]:
    return ["input_ids", "attention_mask"] if modality == TEXT else ["pixels"]


def _example(encoder: nn.Module, modality: str, config: dict) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    if modality == TEXT:
        vocab = encoder.model.config.vocab_size
        ids = torch.randint(1000, vocab, (2, 9), generator=g)
        mask = torch.ones(2, 9, dtype=torch.long)
        mask[1, 5:] = 0  # a padded row: the masked pooling is traced with padding
        return ids, mask
    s = config["image_size"]
    return (torch.randn(2, 3, s, s, generator=g),)


def eager_attention(model: nn.Module) -> None:
    """Hugging Face models: the plain attention path traces into ONNX ops (SDPA's mask logic may not). Used by
    this module's encoder graphs and by compress/onnx_export.py's whole-model graphs."""
    for m in model.modules():
        cfg = getattr(m, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation"):
            try:
                cfg._attn_implementation = "eager"
            except Exception:  # read-only on some versions: the default then has to trace
                pass


def export_encoder(encoder: nn.Module, modality: str, config: dict) -> bytes:
    """The encoder's pooled pass as ONNX bytes (dynamic batch; dynamic length for text). A copy is exported:
    the exporter switches Hugging Face attention to its eager path."""
    enc = copy.deepcopy(encoder).eval().cpu()
    eager_attention(enc)
    names = _names(modality)
    dynamic = {n: ({0: "batch", 1: "length"} if modality == TEXT else {0: "batch"}) for n in names}
    with tempfile.TemporaryDirectory(prefix="polymodal-encoder-onnx-") as tmp, torch.no_grad(), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings: parity is checked on real batches instead
        path = Path(tmp) / GRAPH
        torch.onnx.export(_Pooled(enc, modality).eval(), _example(enc, modality, config), str(path),
                          input_names=names, output_names=["features"], opset_version=17, dynamo=False,
                          dynamic_axes={**dynamic, "features": {0: "batch"}})
        return path.read_bytes()


class OrtEncoder:
    """A frozen encoder's pooled pass in onnxruntime, called like the encoder: `run(x) -> features`."""

    def __init__(self, graph: bytes, modality: str) -> None:
        self.session, self.modality = ort_session(graph), modality

    def __call__(self, x) -> torch.Tensor:
        if self.modality == TEXT:
            feeds = {k: x[k].cpu().numpy() for k in ("input_ids", "attention_mask")}
        else:
            feeds = {"pixels": x.cpu().numpy()}
        return torch.from_numpy(self.session.run(["features"], feeds)[0])

    @classmethod
    def for_values(cls, encoder: nn.Module, modality: str, config: dict, folder: Path | None, engine: str | None,
                   n_values: int, device, pooled: bool) -> Callable | None:
        """The checked onnxruntime pass for `n_values` new values of this encoder, or None (PyTorch runs; the
        reason logged once per encoder folder)."""
        engine = resolve_engine(engine)
        if engine == "torch":
            return None
        reason = None
        if not pooled:
            reason = "its token sequences or partly fine-tuned prefix are cached (only pooled features are exported)"
        elif modality not in (IMAGE, TEXT):
            reason = f"{modality} encoders are not exported (image and text are)"
        elif torch.device(device).type != "cpu":
            reason = "it runs on a GPU (onnxruntime runs on CPU)"
        elif folder is None:
            reason = "no cache folder to keep its graph in"
        if reason is None and engine == "auto" and n_values < EXPORT_MIN_VALUES:
            return None  # by design, not worth a log line: too few values to pay for the export and check
        if reason is None:
            report = _read_report(folder)
            graph = _read_graph(folder, report)
            if report is not None and not report.get("passed", True):
                reason = f"its ONNX graph failed before ({report.get('error') or 'parity check'})"
            elif graph is None:
                try:
                    graph = export_encoder(encoder, modality, config)
                    folder.mkdir(parents=True, exist_ok=True)
                    atomic_bytes(folder / GRAPH, graph)
                    _write_report(folder, {"sha256": sha256(graph), "passed": True, "checked": False})
                except Exception as err:  # an op without an ONNX form: PyTorch encodes
                    _write_report(folder, {"passed": False, "error": f"{type(err).__name__}: {err}"})
                    reason = f"its ONNX export failed ({type(err).__name__}: {err})"
            if reason is None:
                try:
                    return FirstBatchCheck(cls(graph, modality), encoder, folder)
                except Exception as err:  # a graph onnxruntime cannot load (damaged despite its hash)
                    reason = f"onnxruntime cannot load its graph ({type(err).__name__}: {err})"
        warn_once(f"encoder:{folder}", f"feature cache {folder}: encoding with PyTorch, {reason}", logging.INFO)
        return None


class FirstBatchCheck:
    """Runs the first batch through both engines: onnxruntime encodes the rest when the features agree within
    `TOLERANCE` (the first batch keeps PyTorch's features either way); otherwise PyTorch, with a warning and
    the failure recorded beside the graph."""

    def __init__(self, ort_run: OrtEncoder, encoder: nn.Module, folder: Path) -> None:
        self.ort_run, self.encoder, self.folder = ort_run, encoder, folder
        self.use: Callable | None = None
        self.report: dict = {}

    def __call__(self, x):
        if self.use is not None:
            return self.use(x)
        ref = self.encoder(x)
        out = self.ort_run(x).numpy()
        r = ref.float().cpu().numpy()
        diff = float(np.abs(out - r).max()) if r.size else 0.0
        scale = max(1.0, float(np.abs(r).max()) if r.size else 0.0)
        passed = bool(out.shape == r.shape and diff <= TOLERANCE * scale)
        self.report = {**(_read_report(self.folder) or {}), "passed": passed, "checked": True,
                       "max_abs_diff": diff, "tolerance": TOLERANCE * scale, "rows": int(r.shape[0])}
        _write_report(self.folder, self.report)
        if passed:
            self.use = self.ort_run
        else:
            self.use = self.encoder
            warn_once(f"encoder:{self.folder}", f"feature cache {self.folder}: encoding with PyTorch, its ONNX graph "
                      f"differs (max |diff| {diff:.3g} > {TOLERANCE * scale:.3g})")
        return ref


def _read_report(folder: Path) -> dict | None:
    try:
        report = json.loads((folder / PARITY).read_text())
    except (OSError, ValueError):
        return None
    # a newer polymodal may export differently; a damaged report is no report
    return report if isinstance(report, dict) and report.get("polymodal_version") == __version__ else None


def _read_graph(folder: Path, report: dict | None) -> bytes | None:
    """The cached graph when its bytes match the report's SHA-256 (a half-copied file is exported again)."""
    if report is None or "sha256" not in report:
        return None
    try:
        graph = (folder / GRAPH).read_bytes()
    except OSError:
        return None
    return graph if sha256(graph) == report["sha256"] else None


def _write_report(folder: Path, report: dict) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_bytes(folder / PARITY, json.dumps({**report, "polymodal_version": __version__}, indent=1).encode())
    except OSError as err:  # a read-only cache: the graph stays in memory for this pass
        warn_once(f"write:{folder}", f"cannot record the encoder graph's check in {folder} ({err})")
