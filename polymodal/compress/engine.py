"""Inference engines for table models on CPU: onnxruntime when a verified ONNX graph of the run exists,
PyTorch otherwise.

`EngineChoice.module(engine, ...)` returns what the one inference loop (`training.pipeline.run_inference`)
runs: the PyTorch model, or an `OnnxModule` — the run's ONNX graph behind the model's own interface
(`module(batch) -> logits`), so predict, evaluate and the server stay one code path.

- "auto" (the default; `POLYMODAL_ENGINE` overrides): the ONNX graph when the run has a folder, the model is
  on CPU, and the graph passes the parity check; PyTorch otherwise, with the reason logged once.
- "onnx": the graph, or an error saying why not. "torch": PyTorch eager.

The graph is exported lazily, on the first predict, to `<run>/onnx/model.onnx` and checked against PyTorch
on the first rows predicted plus a random batch with absent modalities; `<run>/onnx/parity.json` records
the run's `model_id`, the graph's SHA-256, the max |ONNX - PyTorch| over the logits and the share of rows
whose answer agrees. Both files are written atomically, parity.json last (the commit marker); a cache whose
model_id or SHA-256 differs from the run's (retrained, edited, half-copied) is exported again. A failed
export is recorded too, so later processes do not retry it.

Threads: onnxruntime's intra-op threads = physical cores (`POLYMODAL_ORT_THREADS` overrides), inter-op 1,
and no spin-waiting between ops (`POLYMODAL_ORT_SPIN=1` turns it on): on a shared 2-core machine spinning
threads take the cores the other thread needs (measured in docs/benchmarks.md, "Inference engines"). The
engine names and these settings are defined in `encoders/onnx_runner.py`, which the feature cache's encoder
passes share (it sits below this module in the pipeline).
"""

from __future__ import annotations

import copy
import json
import logging
import operator
import os
import tempfile
import threading
import weakref
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from polymodal.compress.onnx_export import (
    FlatInput,
    export_model,
    flat_inputs,
    random_batch,
    table_batch,
    to_numpy_feeds,
)
from polymodal.data.preprocess import Preprocessor
from polymodal.encoders.onnx_runner import (  # noqa: F401  (ENGINES, default_engine...: this module's API too)
    ENGINES,
    atomic_bytes,
    default_engine,
    ort_session,
    ort_threads,
    physical_cores,
    resolve_engine,
    sha256,
)
from polymodal.encoders.onnx_runner import warn_once as runner_warn_once
from polymodal.errors import PolymodalError
from polymodal.problem_types import REGRESSION
from polymodal.training.artifacts import atomic_write_json
from polymodal.version import __version__

ENGINE_HELP = ("auto: onnxruntime when the run's ONNX graph (exported on first use into <run>/onnx/) matches "
               "PyTorch, PyTorch otherwise; torch; onnx. Default: $POLYMODAL_ENGINE, else auto")
FOLDER, GRAPH, PARITY = "onnx", "model.onnx", "parity.json"
# Accepted max |ONNX - PyTorch| on the logits, relative to their scale (fp32 kernels differ by ~1e-6 on
# small models, ~1e-5 on EfficientNet + MiniLM); every checked row's answer must also agree.
TOLERANCE = 1e-3
CHECK_ROWS = 16
_log = logging.getLogger(__name__)


def warn_once(key: str, msg: str, level: int = logging.WARNING) -> None:
    """encoders/onnx_runner.warn_once (one record of what was said), under this module's logger."""
    runner_warn_once(key, msg, level, _log)


def info_once(key: str, msg: str) -> None:
    warn_once(key, msg, logging.INFO)


class OnnxModule(nn.Module):
    """An ONNX graph behind the model's interface: `module(batch) -> logits` (a torch tensor), so the one
    inference loop runs it like the PyTorch model. Raw inputs only: the feature cache does not apply."""

    runs_torch_kernels = False  # the loop skips torch's thread and inference-mode settings (onnxruntime has its own)

    def __init__(self, graph: bytes, spec: list[FlatInput], threads: int | None = None) -> None:
        super().__init__()
        self.session = ort_session(graph, threads)
        # The exporter drops inputs the graph never reads (an empty categorical block): feed only the rest.
        names = {i.name for i in self.session.get_inputs()}
        self.spec = [s for s in spec if s.name in names]
        # No weights live in torch: this empty parameter tells the loop the device (CPU).
        self.anchor = nn.Parameter(torch.zeros(0), requires_grad=False)

    def forward(self, batch: dict) -> torch.Tensor:
        return torch.from_numpy(self.session.run(["logits"], to_numpy_feeds(self.spec, batch))[0])


def answers_agree(task, ref: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Per row: does the answer from `out` logits equal the one from `ref` (regression: within 1e-3 of the
    label's spread; multi-task: every label's)?"""
    def answers(logits):
        values = task.labels(task.probabilities(torch.from_numpy(logits)).numpy())
        return values if isinstance(values, dict) else {"": values}

    a, b = answers(ref), answers(out)
    ok = np.ones(len(ref), dtype=bool)
    for name in a:
        x, y = np.asarray(a[name]), np.asarray(b[name])
        sub = task.tasks[name] if name else task
        if sub.problem_type == REGRESSION:
            scale = abs(float(getattr(sub, "target_std", 1.0) or 1.0))
            ok &= np.isclose(x.astype(float), y.astype(float), rtol=1e-3, atol=TOLERANCE * scale, equal_nan=True)
        else:
            ok &= x == y
    return ok


def parity(model: nn.Module, module: OnnxModule, task, prep: Preprocessor, df: pd.DataFrame | None) -> dict:
    """ONNX vs PyTorch logits on the first rows of `df` and on a random batch (absent modalities, padding)."""
    batches = [random_batch(prep, model, batch_size=5, seq_len=7, frames=23, seed=1)]
    if df is not None and len(df):
        batches.append(table_batch(prep, df.head(CHECK_ROWS)))
    diff, scale, agree, rows = 0.0, 1.0, [], 0
    for b in batches:
        with torch.inference_mode():
            ref = model(b).float().numpy()
        out = module(b).numpy()
        diff = max(diff, float(np.abs(out - ref).max()) if out.size else 0.0)
        scale = max(scale, float(np.abs(ref).max()) if ref.size else 0.0)
        agree.append(answers_agree(task, ref, out))
        rows += len(ref)
    agreement = float(np.concatenate(agree).mean())
    return {"max_abs_diff": diff, "answer_agreement": agreement, "rows": rows,
            "rows_from_table": rows - 5, "tolerance": TOLERANCE * scale,
            "passed": bool(diff <= TOLERANCE * scale and agreement == 1.0)}


def cached_graph(folder: Path, model_id: str | None) -> tuple[dict, bytes | None] | None:
    """(parity report, graph bytes) of a cache made for `model_id`; None when absent, stale or damaged.
    A recorded failure comes back with no bytes."""
    try:
        report = json.loads((folder / PARITY).read_text())
        if (not isinstance(report, dict) or model_id is None or report.get("model_id") != model_id
                or report.get("polymodal_version") != __version__):  # a newer exporter may do better
            return None
        if "sha256" not in report:
            return report, None
        graph = (folder / GRAPH).read_bytes()
    except (OSError, ValueError):
        return None
    return (report, graph) if sha256(graph) == report["sha256"] else None


def export_graph(model: nn.Module, prep: Preprocessor) -> bytes:
    """The model as an ONNX graph (a copy is exported: the exporter switches HF attention to its eager path)."""
    with tempfile.TemporaryDirectory(prefix="polymodal-onnx-") as tmp:
        export_model(copy.deepcopy(model).eval(), prep, Path(tmp) / GRAPH)
        return (Path(tmp) / GRAPH).read_bytes()


def build_onnx(run_dir: str | Path | None, model: nn.Module, task, prep: Preprocessor, model_id: str | None,
               check_df: pd.DataFrame | None) -> tuple[OnnxModule | None, dict]:
    """The run's ONNX graph as a module with its parity report (cached in `<run>/onnx/`; exported and
    checked when absent or stale), or (None, report with the reason)."""
    spec = flat_inputs(prep, list(model.encoders.keys()))
    folder = Path(run_dir) / FOLDER if run_dir else None
    found = cached_graph(folder, model_id) if folder else None
    if found is not None:
        report, graph = found
        if graph is None or not report.get("passed"):
            return None, report
        return OnnxModule(graph, spec), report
    try:
        graph = export_graph(model, prep)
        module = OnnxModule(graph, spec)
        report = {"model_id": model_id, "polymodal_version": __version__, "sha256": sha256(graph),
                  **parity(model.eval(), module, task, prep, check_df)}
    except Exception as err:  # an op without an ONNX form, an input kind the graph cannot take: PyTorch runs
        graph, module = None, None
        report = {"model_id": model_id, "polymodal_version": __version__, "passed": False,
                  "error": f"{type(err).__name__}: {err}"}
    if folder is not None and model_id is not None:
        try:
            folder.mkdir(exist_ok=True)
            if graph is not None:
                atomic_bytes(folder / GRAPH, graph)
            atomic_write_json(folder / PARITY, report)  # last: the commit marker
        except OSError as err:  # a read-only run folder: use the graph in memory, export again next process
            warn_once(f"write:{folder}", f"cannot cache the ONNX graph in {folder} ({err}); it is kept in memory")
    return (module if report.get("passed") else None), report


# Bumped whenever any module anywhere registers (is assigned) a parameter, buffer or submodule: the list of a
# model's tensors that `weights_state` reads is walked again only then.
_structure = [0]


def _structure_changed(*_args) -> None:
    _structure[0] += 1


for _register in (torch.nn.modules.module.register_module_parameter_registration_hook,
                  torch.nn.modules.module.register_module_buffer_registration_hook,
                  torch.nn.modules.module.register_module_module_registration_hook):
    _register(_structure_changed)
_tensors: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> (structure count, tensors, ids)
_version = operator.attrgetter("_version")
_data_ptr = torch.Tensor.data_ptr


def _model_tensors(model: nn.Module) -> tuple[list[torch.Tensor], tuple[int, ...]]:
    found = _tensors.get(model)
    if found is None or found[0] != _structure[0]:
        out, stack = [], [model]
        while stack:
            m = stack.pop()
            out.extend(t for t in (*m._parameters.values(), *m._buffers.values()) if t is not None)
            stack.extend(c for c in m._modules.values() if c is not None)
        found = _tensors[model] = (_structure[0], out, tuple(map(id, out)))
    return found[1], found[2]


def weights_state(model: nn.Module) -> tuple:
    """A cheap fingerprint of the weights held in memory: each tensor's version counter (bumped by in-place
    writes: optimiser steps, load_state_dict, `fill_` under no_grad) and storage address (`.data = ...`), over
    the model's tensors as last listed (their ids, taken when listed); parameters, buffers or submodules
    assigned anew (registration hooks) list them again. `parameters()`/`buffers()` (named_modules, name
    strings, memo set) cost a one-row predict ~8 ms on the demo model's ~400 tensors, a fresh walk ~1 ms, a
    per-tensor tuple ~0.2 ms, this (two C-level maps) 0.05 ms in a tight loop and ~0.5 ms right after a
    `session.run`, which has flushed the caches (four cache lines per tensor: the Python object, the tensor,
    its version counter, its storage). No cheaper sound check was found: `.data =` keeps the version counter,
    writes through `.data` bump none, and no hook sees in-place writes under no_grad."""
    tensors, ids = _model_tensors(model)
    return ids, tuple(map(_version, tensors)), tuple(map(_data_ptr, tensors))


class EngineChoice:
    """One predictor's engines: the ONNX module built once per model (and run folder), reasons kept.

    `saved`: the model as loaded from (or just saved to) run folder `folder`; its fingerprint tells later
    whether the weights in memory are still the ones the run's `model_id` names (the graph cached in that
    folder is theirs)."""

    def __init__(self, saved: nn.Module | None = None, folder: str | os.PathLike | None = None) -> None:
        self._saved = (id(saved), weights_state(saved)) if saved is not None else None
        self.folder = folder
        self._key: tuple | None = None
        self._module: OnnxModule | None = None
        self.report: dict = {}
        self._int8: tuple[int, bool] = (0, False)
        self._lock = threading.Lock()  # server threads: one export, not one per concurrent request

    def _quantized(self, model: nn.Module) -> bool:
        """Whether `model` holds PyTorch int8 layers (looked up once per model: a walk over ~300 modules costs
        milliseconds, which a one-row predict notices)."""
        if self._int8[0] != id(model):
            self._int8 = (id(model), any("quantized" in type(m).__module__ for m in model.modules()))
        return self._int8[1]

    def module(self, engine: str | None, model: nn.Module, task, prep: Preprocessor, run_dir, model_id,
               rows: pd.DataFrame | None, onnx_able: bool = True) -> nn.Module:
        """What runs for `engine`: `model` (PyTorch) or its verified ONNX module. `onnx_able` False: the
        run's kind has no graph (text generators), so "auto" is PyTorch and "onnx" is an error."""
        engine = resolve_engine(engine)
        if engine == "torch":
            return model
        run_dir = self.folder if self.folder is not None else run_dir  # where these weights were saved
        reason, failed = None, False
        if not onnx_able:
            reason = "this kind of model has no ONNX graph"
        elif self._quantized(model):
            reason = ("it is a PyTorch int8 model (dynamic quantisation scales each batch, so no one graph check "
                      "holds; `polymodal compress --backend onnx` makes an int8 ONNX model)")
        elif any(t.device.type != "cpu" for t in _model_tensors(model)[0][:1]):  # listed: no parameters() walk
            reason = "the model is on a GPU (the ONNX engine runs on CPU)"
        elif self._saved != (id(model), state := weights_state(model)):
            model_id = None  # changed in memory since load/save: neither the cache nor `auto` may trust the id
            if engine == "auto":
                reason = "its weights changed in memory since they were loaded or saved (save them, or pass " \
                         "engine='onnx')"
        if reason is None and (run_dir is None or model_id is None) and engine == "auto":
            reason = "the weights are not saved in a run folder to keep an ONNX graph beside (save them, or pass " \
                     "engine='onnx')"
        if reason is None:
            key = (str(run_dir), model_id, id(model), None if model_id else state)
            with self._lock:
                if key != self._key:
                    self._module, self.report = build_onnx(run_dir, model, task, prep, model_id, rows)
                    self._key = key
            if self._module is not None:
                return self._module
            failed = True
            reason = (f"its ONNX export failed ({self.report['error']})" if "error" in self.report else
                      f"its ONNX graph differs from PyTorch (max |diff| {self.report.get('max_abs_diff'):.3g}, "
                      f"answers agree on {self.report.get('answer_agreement', 0):.0%} of checked rows)")
        if engine == "onnx":
            raise PolymodalError(f"engine 'onnx' is not available: {reason}; use engine 'torch' or 'auto'")
        # A graph that failed is worth a warning (once per run and process); a model that has none by design
        # (generator, int8, GPU, unsaved) only an info line.
        (warn_once if failed else info_once)(f"{run_dir}:{model_id}", f"{run_dir or 'model'}: using PyTorch, {reason}")
        return model
