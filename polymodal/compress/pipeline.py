"""`compress_run`: distil → prune → quantise a trained run, save the result and its report.

Also the building blocks as functions on predictors: `prune_predictor`, `distill_predictor`,
`quantize_predictor_onnx`, `quantize_predictor_torch`.
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
import tempfile
from pathlib import Path

import pandas as pd

from polymodal.compress import prune as P
from polymodal.compress import report as R
from polymodal.compress.artifacts import (
    INT8_ONNX,
    is_compressed,
    read_compression,
    save_float,
    save_int8_torch,
    save_onnx,
)
from polymodal.compress.distill import distill
from polymodal.compress.finetune import cached_features, clean_table, score, task_loss, train_loop
from polymodal.compress.onnx_export import OnnxPredictor, export_predictor, flat_inputs, table_batch, to_numpy_feeds
from polymodal.compress.quantize import Int8Options, quantize_dynamic_torch, quantize_onnx
from polymodal.data.readers import as_table
from polymodal.errors import PolymodalError
from polymodal.predictor import MultimodalPredictor
from polymodal.problem_types import REGRESSION
from polymodal.training import artifacts


def load_compressed(path: str | Path) -> MultimodalPredictor | OnnxPredictor:
    """Load what `polymodal compress` wrote (MultimodalPredictor.load does the same for any run folder)."""
    if not is_compressed(path):
        read_compression(path)  # the clear error: not a compressed run folder
    return MultimodalPredictor.load(path)


def _clone(predictor, model=None, prep=None, config=None):
    q = MultimodalPredictor(label=predictor.config.label, verbose=False)
    q.config = config or predictor.config
    q.prep = prep or predictor.prep
    q.task = predictor.task
    q.model = model if model is not None else copy.deepcopy(predictor.model)
    q.metrics = {}
    q.model_id = getattr(predictor, "model_id", None)
    return q


@dataclasses.dataclass
class PruneResult:
    predictor: object
    masked: dict  # parameter name → bool tensor of pruned positions (before shrinking)
    sizes: dict  # layer → (neurons before, after), structured only
    sparsity: float  # share of zero weights among the pruned Linear layers (unstructured)
    params_before: int
    params_after: int
    history: pd.DataFrame


def prune_predictor(predictor, train, valid=None, amount: float = 0.5, mode: str = "structured",
                    encoders: bool = False, epochs: int = 5, lr: float = 5e-4, log=print,
                    cnn_calibration_rows: int = 128) -> PruneResult:
    """Prune, fine-tune on `train` with the masks in place (best `valid` epoch kept), then make it permanent;
    structured pruning then physically removes the pruned neurons. Structured with `encoders` also removes
    the `amount` fraction of hidden channels of each inverted-residual block of MobileNetV2 /
    EfficientNet-Lite image encoders (`prune.prune_cnn_channels`), before fine-tuning."""
    if not 0 < amount < 1:
        raise PolymodalError(f"--prune must be between 0 and 1 (a fraction), got {amount}")
    if mode not in ("structured", "unstructured"):
        raise PolymodalError(f"prune mode must be 'structured' or 'unstructured', got {mode!r}")
    p = _clone(predictor)
    model = p.model
    before = P.count_params(model)
    pairs = P.linear_pairs(model, encoders)
    train_df = clean_table(as_table(train), p.prep)
    valid_df = clean_table(as_table(valid), p.prep) if valid is not None else None
    cnn_sizes: dict = {}
    if mode == "structured":
        if encoders:
            # CNN channels are removed for real before fine-tuning (no masks), each block refitted to the
            # unpruned CNN on `cnn_calibration_rows` training images; the fusion/head then retrain on the
            # smaller CNN's features, re-cached under its new cache_id when it is frozen (it stays frozen).
            images = _cnn_calibration_images(p, train_df, cnn_calibration_rows)
            if images:
                log(f"  pruning CNN channels of {', '.join(images)} (refitted on {cnn_calibration_rows} rows)")
            cnn_sizes = P.prune_cnn_channels(model, amount, images)
        if not pairs and not cnn_sizes:
            raise PolymodalError("structured pruning found no Linear → activation → Linear pair to shrink"
                                 + ("" if encoders else " (--prune-encoders also prunes CNN image encoders)"))
        P.structured_masks(pairs, amount)
    else:
        layers = P.unstructured_masks(model, amount, encoders)
        if not layers:
            raise PolymodalError("unstructured pruning found no trainable Linear layer")
    # Frozen encoders whose weights are now masked give other features: a new cache key for them.
    for enc in model.encoders.values():
        if any(n.endswith("_mask") for n, _ in enc.named_buffers()) and hasattr(enc, "cache_id"):
            enc.cache_id = f"{enc.cache_id}:pruned-{mode}-{amount}-{getattr(predictor, 'model_id', '')}"
    masked = P.masked_positions(model)
    history = train_loop(model, p.task, p.prep, p.config, train_df, valid_df, task_loss(p.task), epochs, lr,
                         log=log)
    P.make_permanent(model)
    zeros = total = 0
    for name in masked:
        w = model.get_parameter(name)
        zeros += int((w == 0).sum())
        total += w.numel()
    sizes = {**cnn_sizes, **P.shrink(pairs)} if mode == "structured" else {}
    p.model = model.eval()
    if valid_df is not None:
        p.metrics = {"valid": score(p.model, p.task, p.prep, p.config, valid_df,
                                    cached_features(p.model, p.prep, p.config, valid_df, log))}
    return PruneResult(p, masked, sizes, zeros / max(total, 1), before, P.count_params(p.model), history)


def _cnn_calibration_images(predictor, df: pd.DataFrame, rows: int, seed: int = 0) -> dict:
    """{image key: normalised images of up to `rows` random rows} for encoders with inverted-residual blocks."""
    keys = [k for k, enc in predictor.model.encoders.items()
            if predictor.prep.inputs[k].modality == "image" and P.inverted_blocks(enc)]
    if not keys or rows < 1:
        return {}
    batch = table_batch(predictor.prep, df.sample(min(rows, len(df)), random_state=seed))
    return {k: batch["inputs"][k][batch["present"][k]] for k in keys if batch["present"][k].any()}


def distill_predictor(teacher, train, valid=None, student: str = "fast", overrides: dict | None = None,
                      epochs: int = 15, log=print, **kw):
    """A student MultimodalPredictor distilled from `teacher` (see distill.distill)."""
    res = distill(teacher, as_table(train), as_table(valid) if valid is not None else None, student, overrides,
                  epochs=epochs, log=log, **kw)
    p = _clone(teacher, res.model, res.prep, res.config)
    p.metrics = {"valid": res.valid_metrics} if res.valid_metrics else {}
    return p, res.history


def _feeds(predictor, df: pd.DataFrame, batch: int) -> list[dict]:
    """Feed dicts for `df` in batches of `batch`, text padded to one length across all of them: histogram
    calibrators (entropy, percentile) need every batch of a tensor to have the same shape."""
    spec = flat_inputs(predictor.prep, list(predictor.model.encoders.keys()))
    whole = to_numpy_feeds(spec, table_batch(predictor.prep, df))  # one image per row: the index is 0..n-1
    index = {s.name for s in spec if s.part == "index"}  # per batch, it counts from 0 again
    return [{k: v[i:i + batch] - i if k in index else v[i:i + batch] for k, v in whole.items()}
            for i in range(0, len(df), batch)]


def calibration_feeds(predictor, table, rows: int = 128, batch: int = 32, seed: int = 0) -> list[dict]:
    """Feeds of `rows` random rows of `table` (unreadable rows skipped) for static int8 calibration."""
    df = clean_table(as_table(table), predictor.prep, "skip")
    return _feeds(predictor, df.sample(min(rows, len(df)), random_state=seed), batch)


def validation_feeds(predictor, table, rows: int = 512, batch: int = 32, seed: int = 1) -> list[dict]:
    """Feeds of up to `rows` rows of `table` (all of them when fewer), for the int8 sensitivity sweep."""
    df = clean_table(as_table(table), predictor.prep, "skip")
    if len(df) > rows:
        df = df.sample(rows, random_state=seed)
    return [f for i in range(0, len(df), 256) for f in _feeds(predictor, df.iloc[i:i + 256], batch)]


def quantize_predictor_onnx(predictor, out_file: str | Path, calibration_table, rows: int = 128,
                            options=None, validation_table=None, validation_rows: int = 512, log=print):
    """Export to ONNX, then int8 (`quantize.Int8Options`; defaults: sensitivity-guided conv selection on
    `validation_table`, or on `calibration_table` when none is given). Returns (float parity, Int8Result)."""
    options = options or Int8Options()
    out_file = Path(out_file)
    with tempfile.TemporaryDirectory() as tmp:
        fp = Path(tmp) / "model.onnx"
        parity = export_predictor(predictor, fp, as_table(calibration_table).head(16))
        valid = None
        if options.convs == "auto":
            valid = validation_feeds(predictor, validation_table if validation_table is not None
                                     else calibration_table, validation_rows)
        result = quantize_onnx(fp, out_file, calibration_feeds(predictor, calibration_table, rows), options,
                               valid, log=log)
        tok = Path(str(fp) + ".tokenizers")
        if tok.exists():
            dst = Path(str(out_file) + ".tokenizers")
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(tok, dst)
    return parity, result


def quantize_predictor_torch(predictor, embeddings: bool = True):
    """A predictor whose model is PyTorch dynamic int8 (Linear) + 8-bit embeddings."""
    p = _clone(predictor, quantize_dynamic_torch(predictor.model, embeddings))
    return p


def compress_run(run: str | Path, out: str | Path, train=None, valid=None, quantize: str | None = None,
                 backend: str = "onnx", prune: float = 0.0, prune_mode: str = "structured",
                 prune_encoders: bool = False, distill_from: str | Path | None = None, student: str = "fast",
                 epochs: int | None = None, report: bool = True, int8=None, calibration_rows: int = 128,
                 log=print) -> dict:
    """Apply the requested steps in order distil → prune → quantise; write `out` and its report.

    `int8`: `quantize.Int8Options` for the onnx back end (None: the defaults). Its sensitivity sweep
    (convs="auto") measures agreement on `valid` rows, or on `train` rows when no `valid` is given.
    `calibration_rows`: training rows for the int8 activation ranges and the pruned CNN blocks' refit.
    """
    if not (quantize or prune or distill_from):
        raise PolymodalError("nothing to do: give --quantize int8, --prune FRACTION and/or --distill-from RUN")
    if quantize not in (None, "int8"):
        raise PolymodalError(f"--quantize supports 'int8', got {quantize!r}")
    if backend not in ("onnx", "torch"):
        raise PolymodalError(f"--backend must be 'onnx' or 'torch', got {backend!r}")
    if (prune or distill_from) and train is None:
        raise PolymodalError("pruning (fine-tuning) and distillation train on a table: give --train TABLE")
    if quantize and backend == "onnx" and train is None and valid is None:
        raise PolymodalError("static int8 quantisation needs calibration rows: give --train or --valid")
    if calibration_rows < 1:
        raise PolymodalError(f"--calibration-rows must be at least 1, got {calibration_rows}")
    int8 = int8 or Int8Options()
    out = Path(out)
    original = MultimodalPredictor.load(run)
    current = original
    steps: list[dict] = []
    history = None
    if distill_from:
        teacher = original if Path(distill_from).resolve() == Path(run).resolve() \
            else MultimodalPredictor.load(distill_from)
        log(f"distilling {distill_from} into a '{student}' student")
        current, history = distill_predictor(teacher, train, valid, student, epochs=epochs or 15, log=log)
        steps.append({"step": "distill", "teacher": str(distill_from), "student": student,
                      "encoders": current.config.encoders, "encoder_opts": current.config.encoder_opts})
    if prune:
        log(f"pruning {prune:.0%} ({prune_mode}) and fine-tuning")
        res = prune_predictor(current, train, valid, prune, prune_mode, prune_encoders, epochs or 5, log=log,
                              cnn_calibration_rows=calibration_rows)
        current, history = res.predictor, res.history
        steps.append({"step": "prune", "amount": prune, "mode": prune_mode, "encoders": prune_encoders,
                      "params_before": res.params_before, "params_after": res.params_after,
                      "sparsity": round(res.sparsity, 4), "layers": {k: list(v) for k, v in res.sizes.items()}})
    base = {"source_run": str(run), "steps": steps}
    save_float(current, out, {**base, "steps": steps}, history)  # architecture + preprocessing (+ float weights)
    if quantize:
        log(f"quantising to int8 ({backend})")
        if backend == "onnx":
            with tempfile.TemporaryDirectory() as tmp:
                parity, q = quantize_predictor_onnx(current, Path(tmp) / INT8_ONNX,
                                                    train if train is not None else valid, calibration_rows,
                                                    int8, valid, log=log)
                if q.validation_agreement is not None:
                    log(f"  int8 agrees with float on {q.validation_agreement:.2%} of the validation rows")
                steps.append({"step": "quantize", "backend": "onnxruntime-qdq", "dtype": "int8",
                              "options": int8.to_dict(), **q.summary(), "float_onnx_parity": str(parity)})
                (out / "model.safetensors").unlink(missing_ok=True)
                save_onnx(q.path, current, out, {**base, "steps": steps})
        else:
            qp = quantize_predictor_torch(current)
            steps.append({"step": "quantize", "backend": "torch-dynamic", "dtype": "int8", "embeddings": True})
            save_int8_torch(qp.model, current, out, {**base, "steps": steps, "embeddings": True})
    result = {"out": str(out), "steps": steps}
    if report:
        table = valid if valid is not None else train
        result["report"] = report_pair(original, run, out, table, log=log)
        log(f"report: {out / 'report.md'}")
    return result


def report_pair(original, run: str | Path, out: str | Path, table, log=print) -> pd.DataFrame:
    """Measure the original run and the compressed folder on `table` and write out/report.md + .png."""
    df = clean_table(as_table(table), original.prep, "skip")
    compressed = load_compressed(out)
    metric_name = original.task.monitor[0] if original.task.problem_type != REGRESSION else "rmse"
    ms = []
    for name, p, size in (("original", original, R.file_size_mb(Path(run) / artifacts.WEIGHTS)),
                          ("compressed", compressed, R.file_size_mb(Path(out) / read_compression(out)["artefact"]))):
        b1, b32 = table_batch(p.prep, df.head(1)), table_batch(p.prep, df.head(32))
        runner = R.onnx_runner(p.session, p.spec) if isinstance(p, OnnxPredictor) else R.torch_runner(p.model)
        metric = p.evaluate(df).get(metric_name)
        ms.append(R.measure(name, runner, b1, b32, size, metric=metric))
    steps = read_compression(out)["steps"]
    notes = "Steps: " + "; ".join(", ".join(f"{k}={v}" for k, v in s.items() if k != "layers") for s in steps)
    return R.write_report(out, f"Compression report: {Path(out).name}", ms, metric_name, notes)
