"""polymodal.compress: int8 quantisation, pruning, distillation, ONNX export, and size/speed reports.

>>> from polymodal.compress import compress_run, export_predictor, OnnxPredictor, load_compressed
"""

from polymodal.compress.artifacts import load_compressed
from polymodal.compress.onnx_export import OnnxPredictor, check_parity, export_model, export_predictor
from polymodal.compress.pipeline import (
    compress_run,
    distill_predictor,
    prune_predictor,
    quantize_predictor_onnx,
    quantize_predictor_torch,
)

__all__ = ["OnnxPredictor", "check_parity", "compress_run", "distill_predictor", "export_model", "export_predictor",
           "load_compressed", "prune_predictor", "quantize_predictor_onnx", "quantize_predictor_torch"]
