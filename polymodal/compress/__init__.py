"""polymodal.compress: int8 quantisation, pruning, distillation, ONNX export, and size/speed reports.

>>> from polymodal.compress import compress_run, export_predictor, OnnxPredictor, load_compressed

The names below are re-exported lazily: `polymodal.predictor` imports `compress.artifacts` (to load
compressed folders) while `compress.pipeline` builds on `polymodal.predictor`, so this package's own
`__init__` must not import the pipeline when a child module is imported.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "OnnxPredictor": "onnx_export", "check_parity": "onnx_export", "export_model": "onnx_export",
    "export_predictor": "onnx_export", "load_compressed": "pipeline", "compress_run": "pipeline",
    "distill_predictor": "pipeline", "prune_predictor": "pipeline", "quantize_predictor_onnx": "pipeline",
    "quantize_predictor_torch": "pipeline",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"polymodal.compress.{_EXPORTS[name]}"), name)
    raise AttributeError(name)
