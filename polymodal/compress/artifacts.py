"""Compressed run folders and `load_compressed`.

A compressed run folder holds the usual config.json / preprocess.json / tokenizers/ of the model it
describes, plus `compression.json` (the steps applied and which artefact to load) and one artefact:
- `model.safetensors` (float: distilled and/or pruned; shrunk layers are re-sized from the saved shapes),
- `model.int8.pt` (torch.save of a PyTorch dynamic-int8 state dict, rebuilt by re-applying the transform),
- `model.int8.onnx` / `model.onnx` (onnxruntime; `load_compressed` returns an OnnxPredictor).
A plain (float, unshrunk) result also loads with `MultimodalPredictor.load`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from polymodal.errors import PolymodalError
from polymodal.training import artifacts

COMPRESSION = "compression.json"
INT8_TORCH = "model.int8.pt"
INT8_ONNX = "model.int8.onnx"


def save_float(predictor, out: str | Path, compression: dict, history=None) -> Path:
    """Write a float predictor (student / pruned) as a run folder plus compression.json."""
    out = Path(out)
    artifacts.save_run(out, predictor.model, predictor.prep, predictor.config.to_dict(), predictor.metrics,
                       history)
    from polymodal.training.report import write_model_card

    predictor.path = out
    write_model_card(out, predictor)
    artifacts.atomic_write_json(out / COMPRESSION, {**compression, "artefact": artifacts.WEIGHTS})
    return out


def save_int8_torch(qmodel: torch.nn.Module, predictor, out: str | Path, compression: dict) -> Path:
    """Run files of the float model (architecture, preprocessing) + the int8 state dict."""
    out = Path(out)
    save_float(predictor, out, compression)  # config/preprocess/tokenizers, and float shapes for rebuilding
    (out / artifacts.WEIGHTS).unlink()  # the float weights are not part of the int8 artefact
    tmp = out / (INT8_TORCH + ".tmp")
    torch.save(qmodel.state_dict(), tmp)
    os.replace(tmp, out / INT8_TORCH)
    shapes = {k: list(v.shape) for k, v in predictor.model.state_dict().items()}
    artifacts.atomic_write_json(out / COMPRESSION, {**compression, "artefact": INT8_TORCH, "float_shapes": shapes})
    return out


def save_onnx(onnx_path: str | Path, predictor, out: str | Path, compression: dict, name: str = INT8_ONNX) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(onnx_path, out / name)
    tok = Path(str(onnx_path) + ".tokenizers")
    if tok.exists():
        dst = Path(str(out / name) + ".tokenizers")
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(tok, dst)
    artifacts.atomic_write_json(out / COMPRESSION, {**compression, "artefact": name})
    return out


def read_compression(path: str | Path) -> dict:
    f = Path(path) / COMPRESSION
    if not f.exists():
        raise PolymodalError(f"{path} is not a compressed run folder: {COMPRESSION} is missing")
    return json.loads(f.read_text())


def _float_skeleton(path: Path, shapes: dict[str, list[int]] | None = None):
    """A MultimodalPredictor with the run's architecture, weights not loaded (shrunk layers re-sized)."""
    from polymodal import MultimodalPredictor
    from polymodal.compress.prune import resize_to_state
    from polymodal.tasks import task_from_prep
    from polymodal.training.fit import FitConfig, assemble_model, build_encoders, build_tabular_encoder
    from polymodal.types import TABULAR

    config_json = json.loads((path / artifacts.CONFIG).read_text())
    from polymodal.data.preprocess import Preprocessor

    prep = Preprocessor.from_dict(json.loads((path / artifacts.PREPROCESS).read_text()))
    for key, spec in prep.inputs.items():
        if spec.modality == "text" and (path / "tokenizers" / key).exists():
            spec.config["tokenizer"] = str(path / "tokenizers" / key)
    config = FitConfig.from_dict(config_json["fit"])
    p = MultimodalPredictor(label=config.label, verbose=False)
    p.config, p.prep, p.path = config, prep, path
    arch = {k: str(path / "tokenizers" / k) for k in prep.inputs
            if (path / "tokenizers" / k / "config.json").exists()}
    encoders, _ = build_encoders(prep.schema, config, arch)
    if TABULAR in prep.inputs:
        encoders[TABULAR] = build_tabular_encoder(prep, config)
    p.task = task_from_prep(prep, config)
    p.model = assemble_model(encoders, p.task, config, prep)
    if shapes:
        resize_to_state(p.model, {k: torch.empty(v) for k, v in shapes.items()})
    for key, enc in p.model.encoders.items():
        if hasattr(enc, "freeze") and key != TABULAR:
            enc.freeze()
        # A pruned encoder was saved under a suffixed cache_id (e.g. ":pruned-0.5-<hash>"); the rebuilt one has
        # the base id, under which a feature cache holds the unpruned encoder's features: take the saved one.
        saved = config_json.get("inputs", {}).get(key, {}).get("cache_id", "")
        if hasattr(enc, "cache_id") and saved.startswith(f"{enc.cache_id}:"):
            enc.cache_id = saved
    p.model_id = config_json.get("model_id")
    mpath = path / artifacts.METRICS
    p.metrics = json.loads(mpath.read_text()) if mpath.exists() else {}
    return p


def load_compressed(path: str | Path):
    """Load what `polymodal compress` wrote: a MultimodalPredictor (PyTorch artefacts) or an OnnxPredictor."""
    path = Path(path)
    comp = read_compression(path)
    art = comp["artefact"]
    if art.endswith(".onnx"):
        from polymodal.compress.onnx_export import OnnxPredictor

        return OnnxPredictor(path / art)
    if art == INT8_TORCH:
        from polymodal.compress.quantize import quantize_dynamic_torch

        p = _float_skeleton(path, comp.get("float_shapes"))
        p.model = quantize_dynamic_torch(p.model, embeddings=comp.get("embeddings", True))
        p.model.load_state_dict(torch.load(path / INT8_TORCH, map_location="cpu", weights_only=False))
        p.model.eval()
        return p
    from safetensors.torch import load_file

    state = load_file(str(path / artifacts.WEIGHTS), device="cpu")
    p = _float_skeleton(path, {k: list(v.shape) for k, v in state.items()})
    p.model.load_state_dict(state)
    p.model.eval()
    return p
