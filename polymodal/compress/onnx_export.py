"""ONNX export of a whole predictor (encoders + fusion + head) and an onnxruntime prediction path.

The exported graph takes raw encoder inputs as named tensors, because ONNX has no dict inputs:
image `<key>` (U, 3, S, S) float with `<key>__index` (B,) int64 (row b reads image index[b]: rows that
share an image file carry it once; the index is 0..B-1 when they do not); text `<key>__input_ids`,
`<key>__attention_mask` (B, L) int64; audio `<key>` (B, n_mels, T) float; tabular `tabular__numeric`,
`tabular__numeric_missing`, `tabular__categorical`; presence `present__<key>` (B,) bool. Batch is dynamic,
and so are the image count, text length and audio frames. Output: `logits`. The polymodal metadata
(preprocessing, input names, task) is stored in the ONNX file itself
(metadata_props["polymodal"]); text tokenizers are copied beside it (`<file>.tokenizers/<key>/`,
to be moved along with the file).
"""

from __future__ import annotations

import json
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from polymodal.contracts import Batch, outputs_to_answers
from polymodal.data.dataset import Collator, TableDataset, check_rows, raise_or_drop
from polymodal.data.preprocess import Preprocessor
from polymodal.data.readers import as_table
from polymodal.data.text import get_tokenizer
from polymodal.encoders.onnx_runner import eager_attention, ort_session
from polymodal.errors import PolymodalError
from polymodal.tasks import task_from_prep
from polymodal.training.config import FitConfig
from polymodal.training.plots import evaluation_plots
from polymodal.types import AUDIO, IMAGE, TABULAR, TEXT

META_KEY = "polymodal"
OPSET = 17


def _safe(key: str) -> str:
    return re.sub(r"[^0-9A-Za-z_]", "_", key)


@dataclass
class FlatInput:
    """One named graph input: which batch entry it comes from (`key`, sub-field `part` or presence)."""

    name: str
    key: str
    part: str | None  # "input_ids" etc. for dict inputs, None for a plain tensor, "present" for masks,
    # "index" for an image input's row -> distinct image index
    dynamic: dict[int, str]

    def to_dict(self) -> dict:
        return {"name": self.name, "key": self.key, "part": self.part,
                "dynamic": {str(k): v for k, v in self.dynamic.items()}}


def flat_inputs(prep: Preprocessor, keys: list[str]) -> list[FlatInput]:
    """Named graph inputs for the model's encoder keys, in a fixed (sorted) order."""
    out: list[FlatInput] = []
    for key in sorted(keys):
        mod, s = prep.inputs[key].modality, _safe(key)
        if mod == TEXT:
            out += [FlatInput(f"{s}__{p}", key, p, {0: "batch", 1: f"{s}_length"})
                    for p in ("input_ids", "attention_mask")]
        elif mod == TABULAR:
            out += [FlatInput(f"tabular__{p}", key, p, {0: "batch"})
                    for p in ("numeric", "numeric_missing", "categorical")]
        elif mod == AUDIO:
            out.append(FlatInput(s, key, None, {0: "batch", 2: f"{s}_frames"}))
        elif mod == IMAGE:
            out += [FlatInput(s, key, None, {0: f"{s}_images"}), FlatInput(f"{s}__index", key, "index", {0: "batch"})]
        else:
            out.append(FlatInput(s, key, None, {0: "batch"}))
    out += [FlatInput(f"present__{_safe(k)}", k, "present", {0: "batch"}) for k in sorted(keys)]
    return out


class FlatModel(nn.Module):
    """The model with positional tensor inputs (ONNX/TorchScript need flat named tensors, not dicts)."""

    def __init__(self, model: nn.Module, spec: list[FlatInput]) -> None:
        super().__init__()
        self.model, self.spec = model, spec

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.model(unflatten(self.spec, tensors))


def unflatten(spec: list[FlatInput], tensors) -> dict:
    batch: dict = {"inputs": {}, "features": {}, "present": {}, "index": {}}
    for s, t in zip(spec, tensors, strict=True):
        if s.part in ("present", "index"):
            batch[s.part][s.key] = t
        elif s.part is None:
            batch["inputs"][s.key] = t
        else:
            batch["inputs"].setdefault(s.key, {})[s.part] = t
    return batch


def flatten(spec: list[FlatInput], batch: dict) -> list[torch.Tensor]:
    """The batch's tensors in `spec`'s order. An image input's index is 0..B-1 when the batch has none; a graph
    without index inputs (exported before they existed) gets its distinct images expanded to one per row."""
    out, index, indexed = [], batch.get("index", {}), {s.key for s in spec if s.part == "index"}
    for s in spec:
        if s.part == "present":
            out.append(batch["present"][s.key])
        elif s.part == "index":
            rows = len(batch["present"][s.key])
            out.append(index[s.key] if s.key in index else torch.arange(rows, dtype=torch.int64))
        elif s.part is None:
            t = batch["inputs"][s.key]
            out.append(t[index[s.key]] if s.key in index and s.key not in indexed else t)
        else:
            out.append(batch["inputs"][s.key][s.part])
    return out


def table_batch(prep: Preprocessor, df: pd.DataFrame, shared_images: bool = False) -> dict:
    """Raw encoder inputs for every row of `df` (no feature cache): what an exported model consumes. One
    image per row, or with `shared_images` each distinct image file once and the batch's row -> image index
    (as predict's batches: fewer encoder passes; not for feeds sliced by row, such as calibration's)."""
    ds = TableDataset(df, prep, None, train=False, with_target=False)
    return Collator(prep)(ds.__getitems__(list(range(len(ds)))) if shared_images else [ds[i] for i in range(len(ds))])


def random_batch(prep: Preprocessor, model: nn.Module, batch_size: int = 3, seq_len: int = 11,
                 frames: int = 40, seed: int = 0) -> dict:
    """Random raw inputs of every encoder's shape (random token ids, categories, presence bits)."""
    g = torch.Generator().manual_seed(seed)
    batch: dict = {"inputs": {}, "features": {}, "present": {}}
    for key in model.encoders.keys():
        spec = prep.inputs[key]
        if spec.modality == IMAGE:
            s = spec.config["image_size"]
            x = torch.randn(batch_size, 3, s, s, generator=g)
        elif spec.modality == AUDIO:
            x = torch.randn(batch_size, spec.config["n_mels"], frames, generator=g)
        elif spec.modality == TEXT:
            vocab = model.encoders[key].model.config.vocab_size
            ids = torch.randint(1000, vocab, (batch_size, seq_len), generator=g)
            mask = torch.ones(batch_size, seq_len, dtype=torch.long)
            mask[0, seq_len // 2:] = 0  # one padded row, so the masked pooling is exercised
            x = {"input_ids": ids, "attention_mask": mask}
        else:
            cfg = spec.config
            cats = [len(prep.vocab[c]) + 1 for c in cfg["categorical"]]
            num = torch.randn(batch_size, len(cfg["numeric"]), generator=g)
            x = {"numeric": num, "numeric_missing": (torch.rand(num.shape, generator=g) < 0.2).float(),
                 "categorical": torch.stack([torch.randint(0, c, (batch_size,), generator=g) for c in cats], 1)
                 if cats else torch.zeros(batch_size, 0, dtype=torch.long)}
        batch["inputs"][key] = x
        present = torch.rand(batch_size, generator=g) < 0.8
        present[0] = True
        batch["present"][key] = present if spec.modality != TABULAR else torch.ones(batch_size, dtype=torch.bool)
    return batch


def to_numpy_feeds(spec: list[FlatInput], batch: dict) -> dict[str, np.ndarray]:
    return {s.name: t.detach().cpu().numpy() for s, t in zip(spec, flatten(spec, batch), strict=True)}


def export_model(model: nn.Module, prep: Preprocessor, path: str | Path, meta: dict | None = None,
                 opset: int = OPSET) -> list[FlatInput]:
    """Write `model` (a MultimodalModel) as ONNX with dynamic batch / text length / audio frames."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu()
    eager_attention(model)
    spec = flat_inputs(prep, list(model.encoders.keys()))
    example = random_batch(prep, model)
    # image inputs with a row -> image index (traced as a Gather after the encoder; 0..B-1 here)
    example["index"] = {s.key: torch.arange(len(example["present"][s.key])) for s in spec if s.part == "index"}
    flat = FlatModel(model, spec).eval()
    with torch.no_grad(), warnings.catch_warnings():
        # Tracer warnings (Python values read from tensors in HF mask code) are expected: parity on other
        # batch sizes and lengths is checked after export by `check_parity`.
        warnings.simplefilter("ignore")
        # The TorchScript exporter (dynamo=False): it works offline with HF models and dynamic axes.
        # nn.TransformerEncoderLayer's fused inference kernel (token-level transformer fusion) has no ONNX
        # symbolic: export the plain layer ops instead.
        fastpath = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            torch.onnx.export(flat, tuple(flatten(spec, example)), str(path), input_names=[s.name for s in spec],
                              output_names=["logits"], opset_version=opset, dynamo=False,
                              dynamic_axes={**{s.name: s.dynamic for s in spec}, "logits": {0: "batch"}})
        finally:
            torch.backends.mha.set_fastpath_enabled(fastpath)
    return _write_meta(path, model, prep, spec, meta or {})


def _write_meta(path: Path, model: nn.Module, prep: Preprocessor, spec: list[FlatInput], meta: dict
                ) -> list[FlatInput]:
    """Store the preprocessing, tokenizers and graph inputs beside the graph; returns the inputs the graph
    kept: the exporter drops one the model never reads (the categorical block of a table with only numeric
    columns), and a feed naming it would be refused ("Invalid input name")."""
    import copy

    import onnx

    m = onnx.load(str(path), load_external_data=False)
    kept = {i.name for i in m.graph.input}
    spec = [s for s in spec if s.name in kept]
    prep_d = copy.deepcopy(prep.to_dict())  # to_dict shares the config dicts with the live Preprocessor
    tok_root = Path(str(path) + ".tokenizers")
    for key, s in prep.inputs.items():
        if s.modality == TEXT:
            target = tok_root / key
            if target.exists():
                shutil.rmtree(target)
            get_tokenizer(s.config["tokenizer"]).save_pretrained(str(target))
            enc = model.encoders[key]
            if hasattr(enc, "model") and hasattr(enc.model, "config"):  # AutoTokenizer reads the model type
                enc.model.config.save_pretrained(str(target))
            prep_d["inputs"][key]["config"]["tokenizer"] = key  # found at <onnx file>.tokenizers/<key>
    payload = {"preprocess": prep_d, "inputs": [s.to_dict() for s in spec], **meta}
    del m.metadata_props[:]
    entry = m.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(payload)
    onnx.save(m, str(path))
    return spec


def read_meta(path: str | Path) -> dict:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    for p in m.metadata_props:
        if p.key == META_KEY:
            return json.loads(p.value)
    raise PolymodalError(f"{path} was not exported by polymodal (no '{META_KEY}' metadata)")


def session(path: str | Path, threads: int | None = None):
    """An exported (or compressed) graph's session with the engine's settings (no spinning threads taking the
    cores that preprocessing and other requests need; onnx_runner.ort_session)."""
    return ort_session(str(path), threads)


@dataclass
class ParityReport:
    path: str
    max_abs_diff_random: float
    max_abs_diff_real: float | None
    rows_real: int

    def __str__(self) -> str:
        real = f"{self.max_abs_diff_real:.2e} on {self.rows_real} real rows" \
            if self.max_abs_diff_real is not None else "no real rows given"
        return f"{self.path}: max |onnxruntime - PyTorch| logits = {self.max_abs_diff_random:.2e} on random " \
               f"inputs, {real}"


@torch.no_grad()
def check_parity(model: nn.Module, prep: Preprocessor, path: str | Path, df: pd.DataFrame | None = None,
                 max_rows: int = 32) -> ParityReport:
    """Max |ONNX − PyTorch| over the logits on random inputs (batch 5) and on real table rows."""
    meta = read_meta(path)
    spec = [FlatInput(d["name"], d["key"], d["part"], {}) for d in meta["inputs"]]
    sess = session(path)
    model = model.eval().cpu()
    diffs = []
    batches = [random_batch(prep, model, batch_size=5, seq_len=7, frames=23, seed=1)]
    if df is not None and len(df):
        batches.append(table_batch(prep, df.head(max_rows)))
    for b in batches:
        ref = model(b).float().numpy()
        out = sess.run(["logits"], to_numpy_feeds(spec, b))[0]
        diffs.append(float(np.abs(out - ref).max()))
    return ParityReport(str(path), diffs[0], diffs[1] if len(diffs) > 1 else None,
                        min(len(df), max_rows) if df is not None else 0)


def export_predictor(predictor, out: str | Path, check_table=None, opset: int = OPSET) -> ParityReport:
    """Export a MultimodalPredictor to ONNX and check it against PyTorch (random + `check_table` rows)."""
    task = predictor.task
    meta = {"label": predictor.config.label, "problem_type": task.problem_type,
            "classes": list(getattr(task, "classes", []) or []),
            "target_mean": predictor.prep.target_mean, "target_std": predictor.prep.target_std,
            "decision_threshold": dict(predictor.config.decision_threshold),
            "model_id": getattr(predictor, "model_id", None)}
    export_model(predictor.model, predictor.prep, out, meta, opset)
    df = None
    if check_table is not None:
        df = as_table(check_table)
        df, _ = raise_or_drop(df, check_rows(df, predictor.prep, with_target=False), "skip")
    return check_parity(predictor.model, predictor.prep, out, df)


def _only_onnx(engine: str | None) -> None:
    """An exported (compressed) model has only its ONNX graph: engine "auto" or "onnx" (or None)."""
    if engine is not None and str(engine).strip().lower() not in ("auto", "onnx"):
        raise PolymodalError(f"this model is an ONNX file run by onnxruntime: engine {engine!r} does not apply "
                             "(use auto or onnx)")


class OnnxPredictor:
    """Predict with an exported model in onnxruntime, reusing polymodal's table reading and preprocessing.

    >>> OnnxPredictor("model.onnx").predict_proba(df)
    """

    kind = "onnx"

    def __init__(self, path: str | Path, threads: int | None = None, batch_size: int = 32) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise PolymodalError(f"ONNX file not found: {self.path}")
        meta = read_meta(self.path)
        prep_d = meta["preprocess"]
        for s in prep_d["inputs"].values():
            if s["modality"] == TEXT:
                s["config"]["tokenizer"] = str(Path(str(self.path) + ".tokenizers") / s["config"]["tokenizer"])
        self.prep = Preprocessor.from_dict(prep_d)
        self.spec = [FlatInput(d["name"], d["key"], d["part"], {}) for d in meta["inputs"]]
        self.meta = meta
        self.config = FitConfig(label=self.prep.schema.labels if len(self.prep.schema.labels) > 1
                                else self.prep.schema.label,
                                decision_threshold=meta.get("decision_threshold") or {})
        self.task = task_from_prep(self.prep, self.config)
        self.session = session(self.path, threads)
        self.batch_size = batch_size

    def logits(self, data) -> np.ndarray:
        df = as_table(data)
        df, _ = raise_or_drop(df, check_rows(df, self.prep, with_target=False), "error")
        out = []
        for i in range(0, len(df), self.batch_size):
            batch = table_batch(self.prep, df.iloc[i:i + self.batch_size], shared_images=True)
            out.append(self.session.run(["logits"], to_numpy_feeds(self.spec, batch))[0])
        return np.concatenate(out) if out else np.zeros((0, self.task.num_outputs), np.float32)

    def predict_proba(self, data, as_pandas: bool = True, engine: str | None = None) -> pd.DataFrame | np.ndarray:
        _only_onnx(engine)
        df = as_table(data)
        probs = self.task.probabilities(torch.from_numpy(self.logits(df))).numpy()
        if not as_pandas:
            return probs
        return pd.DataFrame(probs.reshape(len(df), -1), columns=self.task.output_columns(self.config.label),
                            index=df.index)

    def predict(self, data, as_pandas: bool = True, engine: str | None = None
                ) -> pd.Series | pd.DataFrame | np.ndarray:
        _only_onnx(engine)
        df = as_table(data)
        values = self.task.labels(self.predict_proba(df, as_pandas=False))
        if isinstance(values, dict):  # multi-task
            frame = pd.DataFrame(values, index=df.index)
            return frame if as_pandas else frame.to_numpy()
        return pd.Series(values, name=self.meta["label"], index=df.index) if as_pandas else np.asarray(values)

    def evaluate(self, data, plots_dir: str | Path | None = None, engine: str | None = None) -> dict[str, float]:
        """The task's metrics on a labelled table (as MultimodalPredictor.evaluate, with its confusion-matrix
        PNG under `plots_dir`)."""
        _only_onnx(engine)
        df = as_table(data)
        probs = self.predict_proba(df, as_pandas=False)
        target = self.prep.encode_target(df)
        evaluation_plots(self.task, self.prep.classes, probs, target, plots_dir)
        return {**self.task.metrics(probs, target), "rows": len(df)}

    def forward_batch(self, batch: dict) -> torch.Tensor:
        """Logits for a collated batch (what the server's Collator builds), through onnxruntime."""
        return torch.from_numpy(self.session.run(["logits"], to_numpy_feeds(self.spec, batch))[0])

    def answer_batch(self, batch: Batch) -> list[dict]:
        """Per-row answers {"prediction", "probabilities"} for a collated batch, as MultimodalPredictor's."""
        return outputs_to_answers(self.task, self.forward_batch(batch), self.config.label)
