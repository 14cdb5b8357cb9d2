"""`polymodal compress` and `polymodal export` (registered in polymodal/cli.py)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from polymodal.compress.artifacts import is_compressed
from polymodal.compress.onnx_export import export_predictor
from polymodal.compress.pipeline import compress_run
from polymodal.compress.quantize import Int8Options
from polymodal.ensemble.run_folder import refuse_ensemble
from polymodal.errors import PolymodalError, console, user_errors
from polymodal.predictor import MultimodalPredictor


@user_errors
def compress(
    run: Path = typer.Argument(..., help="trained run folder to compress"),
    out: Path = typer.Option(..., "--out", "-o", help="compressed run folder to write"),
    quantize: str | None = typer.Option(None, help="int8: post-training quantisation"),
    backend: str = typer.Option("onnx", help="int8 back end: onnx (static, CNNs included; onnxruntime) or "
                                             "torch (dynamic Linear + 8-bit embeddings)"),
    prune: float = typer.Option(0.0, help="fraction of neurons (structured) or weights (unstructured) to prune"),
    prune_mode: str = typer.Option("structured", help="structured (removes neurons) | unstructured (zeros)"),
    prune_encoders: bool = typer.Option(False, help="also prune transformer text encoders' FFN neurons"),
    distill_from: Path | None = typer.Option(None, help="teacher run: train a smaller student from it"),
    student: str = typer.Option("fast", help="student preset: fast (MobileNetV2 at half the side, half the text "
                                             "layers, trained) | small (same CNN at 4/7 of the side, 1/3 of the "
                                             "text layers) | tiny"),
    train: Path | None = typer.Option(None, help="training table (distillation, pruning fine-tune, calibration)"),
    valid: Path | None = typer.Option(None, help="validation table (model selection and the report's metric)"),
    epochs: int | None = typer.Option(None, help="epochs for distillation (15) / fine-tuning (5)"),
    int8_convs: str = typer.Option("auto", help="onnx int8 convolutions: auto (sensitivity sweep on --valid rows, or "
                                                "--train rows, keeps agreement with float >= --min-agreement) | all "
                                                "(all but each CNN's first and last) | none"),
    int8_text: str = typer.Option("dynamic", help="onnx int8 transformer MatMuls: dynamic | static | float"),
    gelu_float: bool = typer.Option(True, help="keep MatMuls fed by a GELU (transformer FFN outputs) float"),
    int8_dense: bool = typer.Option(False, help="also quantise the fusion and head layers"),
    int8_exclude: list[str] = typer.Option([], help="regex on ONNX node names to keep float (repeatable), e.g. "
                                                    "'_blocks\\.0/'"),
    per_channel: bool = typer.Option(True, help="per-channel weight scales (else one per tensor)"),
    calibration: str = typer.Option("minmax", help="activation ranges: minmax | entropy | percentile"),
    calibration_rows: int = typer.Option(128, help="training rows that calibrate int8 activation ranges and, with "
                                                   "--prune-encoders, the pruned CNN blocks' refit"),
    min_agreement: float = typer.Option(0.99, help="--int8-convs auto: least share of validation rows whose "
                                                   "prediction stays the float model's"),
    reduce_range: bool = typer.Option(False, help="7-bit weights (CPUs without VNNI)"),
) -> None:
    """Distil, prune and/or quantise a run; writes the compressed folder with report.md and report.png."""
    refuse_ensemble(run)  # a clear error before any table is read: compression converts one network
    refuse_ensemble(distill_from)
    int8 = Int8Options(per_channel=per_channel, calibration=calibration, convs=int8_convs, text=int8_text,
                       gelu_float=gelu_float, dense=int8_dense, exclude=tuple(int8_exclude),
                       min_agreement=min_agreement, reduce_range=reduce_range)
    res = compress_run(run, out, train, valid, quantize, backend, prune, prune_mode, prune_encoders,
                       distill_from, student, epochs, int8=int8, calibration_rows=calibration_rows,
                       log=lambda m: console.print(m, highlight=False))
    if "report" in res:
        Console().print(res["report"].to_string(index=False))
    console.print(f"compressed run: {out}")


@user_errors
def export(
    run: Path = typer.Argument(..., help="run folder (or a compressed one with float weights)"),
    out: Path = typer.Option(..., "--out", "-o", help="ONNX file to write"),
    format: str = typer.Option("onnx", "--format", help="onnx"),
    check: Path | None = typer.Option(None, help="table whose rows are also compared with PyTorch"),
    opset: int = typer.Option(17, help="ONNX opset"),
) -> None:
    """Export the whole model (encoders + fusion + head) to ONNX and check it against PyTorch."""
    if format != "onnx":
        raise PolymodalError(f"--format supports 'onnx', got {format!r}")
    refuse_ensemble(run)
    p = MultimodalPredictor.load(run)
    if is_compressed(run) and (not isinstance(p, MultimodalPredictor)
                               or any("quantized" in type(m).__module__ for m in p.model.modules())):
        raise PolymodalError(f"{run} holds an int8 or ONNX artefact; export its float source run instead")
    report = export_predictor(p, out, check, opset)
    console.print(str(report), highlight=False, soft_wrap=True)
    console.print(f"predict with: polymodal.compress.OnnxPredictor({str(out)!r}).predict(table)",
                  highlight=False, soft_wrap=True)
