"""Compressed run folders: writing them, and `rebuild_compressed` for the loaders.

A compressed run folder holds the usual config.json / preprocess.json / tokenizers/ of the model it
describes, plus `compression.json` (the steps applied and which artefact to load) and one artefact:
- `model.safetensors` (float: distilled and/or pruned; shrunk layers are re-sized from the saved shapes),
- `model.int8.pt` (torch.save of a PyTorch dynamic-int8 state dict, rebuilt by re-applying the transform),
- `model.int8.onnx` / `model.onnx` (onnxruntime; `rebuild_compressed` returns an OnnxPredictor).
`MultimodalPredictor.load` (and `polymodal.runs.load_run`) load every one of them.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from polymodal.compress.onnx_export import OnnxPredictor
from polymodal.compress.prune import resize_to_state
from polymodal.compress.quantize import quantize_dynamic_torch
from polymodal.errors import PolymodalError
from polymodal.training import artifacts
from polymodal.training.build import Rebuilt, rebuild
from polymodal.training.report import write_model_card

COMPRESSION = "compression.json"
INT8_TORCH = "model.int8.pt"
INT8_ONNX = "model.int8.onnx"


def save_float(predictor, out: str | Path, compression: dict, history=None) -> Path:
    """Write a float predictor (student / pruned) as a run folder plus compression.json."""
    out = Path(out)
    artifacts.save_run(out, predictor.model, predictor.prep, predictor.config.to_dict(), predictor.metrics,
                       history)
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


def is_compressed(path: str | Path) -> bool:
    return (Path(path) / COMPRESSION).exists()


def rebuild_compressed(path: str | Path) -> Rebuilt | OnnxPredictor:
    """What `polymodal compress` wrote: the rebuilt PyTorch model (float: distilled/pruned, layers re-sized
    to the saved shapes; or dynamic int8) or, for an ONNX artefact, an OnnxPredictor."""
    path = Path(path)
    comp = read_compression(path)
    art = comp["artefact"]
    if art.endswith(".onnx"):
        return OnnxPredictor(path / art)
    r = rebuild(path, weights=False)
    if art == INT8_TORCH:
        shapes = comp.get("float_shapes")
        if shapes:
            resize_to_state(r.model, {k: torch.empty(v) for k, v in shapes.items()})
        r.model = quantize_dynamic_torch(r.model, embeddings=comp.get("embeddings", True))
        r.model.load_state_dict(torch.load(path / INT8_TORCH, map_location="cpu", weights_only=False))
    else:
        artifacts.check_weights(path / artifacts.WEIGHTS, r.model_id)
        state = load_file(str(path / artifacts.WEIGHTS), device="cpu")
        resize_to_state(r.model, state)
        r.model.load_state_dict(state)
    r.model.eval()
    return r
