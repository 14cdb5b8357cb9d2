"""The run folder: everything needed to rebuild a trained model on a machine with no network.

config.json (fit config + per-input encoder names), preprocess.json (schema, scalers, vocabularies, label
encoder), model.safetensors (all weights, frozen encoders included), tokenizers/<input>/ , metrics.json,
history.csv, README.md (model card), plots/*.png. Files are written to temporary names and moved into
place, so an interrupted save never leaves a half-written model next to a good config.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from polymodal.data.preprocess import Preprocessor
from polymodal.data.text import get_tokenizer
from polymodal.errors import PolymodalError
from polymodal.files import sha256_file
from polymodal.types import TABULAR, TEXT
from polymodal.version import __version__

CONFIG, PREPROCESS, WEIGHTS, METRICS = "config.json", "preprocess.json", "model.safetensors", "metrics.json"
MANIFEST = "manifest.json"  # SHA-256 of every model file (write_manifest)
DECODER_TOKENIZER = "decoder_tokenizer"  # subfolder with a text generator's decoder tokenizer
FIT_STATE = "fit_state.json"  # written when training starts: what `fit --resume` needs to continue


@contextmanager
def atomic_open(path: Path) -> Iterator[TextIO]:
    """A text file written under a temporary name beside `path` and moved into place when the block ends
    without error; on error it is removed and any earlier `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_open(path) as f:
        f.write(text)


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default))


def _json_default(o):
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


def save_weights(model: torch.nn.Module, path: Path) -> str:
    """Save a state dict as safetensors (atomically); returns its SHA-256 as the model id."""
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    save_file(state, tmp, metadata={"polymodal_version": __version__})
    os.replace(tmp, path)
    return file_id(path)


def load_weights(model: torch.nn.Module, path: Path) -> None:
    try:
        state = load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own SafetensorError (and OSError) for damaged files
        raise damaged(path, f"{type(exc).__name__}: {exc}") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise PolymodalError(f"{path} does not match the model in config.json "
                             f"(missing {missing[:3]}, unexpected {unexpected[:3]})")


def save_run(run_dir: str | os.PathLike, model, prep: Preprocessor, fit_config: dict, metrics: dict,
             history: pd.DataFrame | None = None, extra: dict | None = None) -> str:
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    inputs = {}
    for key, enc in model.encoders.items():
        spec = prep.inputs[key]
        inputs[key] = {"modality": spec.modality, "cache_id": getattr(enc, "cache_id", ""),
                       "out_dim": enc.out_dim}
        if spec.modality == TEXT:
            get_tokenizer(spec.config["tokenizer"]).save_pretrained(str(run / "tokenizers" / key))
            if hasattr(enc, "model") and hasattr(enc.model, "config"):  # architecture, for offline rebuilds
                enc.model.config.save_pretrained(str(run / "tokenizers" / key))
    model_id = save_weights(model, run / WEIGHTS)
    atomic_write_json(run / PREPROCESS, prep.to_dict())
    atomic_write_json(run / CONFIG, {"polymodal_version": __version__, "model_id": model_id, "fit": fit_config,
                                     "inputs": inputs, **(extra or {})})
    atomic_write_json(run / METRICS, metrics)
    if history is not None and len(history):
        atomic_write_text(run / "history.csv", history.to_csv(index=False))
    return model_id


def read_run(run_dir: str | os.PathLike, require_weights: bool = True) -> tuple[dict, Preprocessor]:
    """config.json and preprocess.json of a run folder; text inputs point at the folder's own tokenizers.
    A damaged file is a clear error naming it (never a JSONDecodeError/KeyError traceback)."""
    run = Path(run_dir)
    for name in (CONFIG, PREPROCESS) + ((WEIGHTS,) if require_weights else ()):
        if not (run / name).exists():
            raise PolymodalError(f"{run} is not a polymodal run folder: {name} is missing")
    verify_manifest(run)
    config = read_json(run / CONFIG)
    if not isinstance(config.get("fit"), dict):
        raise damaged(run / CONFIG, "it has no 'fit' settings object")
    try:
        prep = Preprocessor.from_dict(read_json(run / PREPROCESS))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise damaged(run / PREPROCESS, f"{type(exc).__name__}: {exc}") from None
    for key, spec in prep.inputs.items():
        tok_dir = run / "tokenizers" / key
        if spec.modality == TEXT and tok_dir.exists():
            spec.config["tokenizer"] = str(tok_dir)  # the run's own copy: no hub access needed
    return config, prep


def damaged(path: Path, why: str) -> PolymodalError:
    return PolymodalError(f"{path} is damaged ({why}): restore the run folder from a copy, or train it again")


def read_json(path: Path) -> dict:
    """A run folder's JSON object file, or a clear error naming it."""
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise damaged(path, f"not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise damaged(path, f"a JSON {type(obj).__name__} where an object is expected")
    return obj


def file_id(path: Path) -> str:
    """The model id of a weights file: the first 16 hex digits of its SHA-256 (what save_weights returns)."""
    return sha256_file(path)[:16]


def model_files(run: Path) -> list[Path]:
    """The files a rebuild reads: config, preprocessing, weights, tokenizers and the decoder's vocabulary
    files. Reports (metrics, history, model card, plots) and training state are not among them."""
    files = [run / n for n in (CONFIG, PREPROCESS, WEIGHTS) if (run / n).exists()]
    for sub in ("tokenizers", DECODER_TOKENIZER):
        files += sorted(p for p in (run / sub).rglob("*") if p.is_file())
    return files


def write_manifest(run_dir: str | os.PathLike) -> None:
    """manifest.json: the SHA-256 of every model file, written last when a run is saved."""
    run = Path(run_dir)
    atomic_write_json(run / MANIFEST, {"polymodal_version": __version__, "sha256": {
        p.relative_to(run).as_posix(): sha256_file(p) for p in model_files(run)}})


def verify_manifest(run: Path) -> bool:
    """Every file manifest.json lists must exist with the same SHA-256: a changed byte anywhere (a flipped
    class order in preprocess.json, edited weights) is an error naming the file, never a silently different
    prediction. False when the folder has no manifest (runs saved before it existed)."""
    if not (run / MANIFEST).exists():
        return False
    listed = read_json(run / MANIFEST).get("sha256")
    if not isinstance(listed, dict) or not listed:
        raise damaged(run / MANIFEST, "it lists no files")
    for name, digest in listed.items():
        path = run / str(name)
        if ".." in Path(str(name)).parts or not path.is_file():
            raise damaged(path, f"it is listed in {MANIFEST} but missing")
        if sha256_file(path) != digest:
            raise damaged(path, f"its SHA-256 differs from the one {MANIFEST} recorded when the run was saved")
    return True


def check_weights(path: Path, model_id: str | None) -> None:
    """model.safetensors must be the file config.json's model_id names: changed bytes would predict silently
    wrong answers, so they are an error instead."""
    if model_id and file_id(path) != model_id:
        raise damaged(path, f"its SHA-256 does not match the model id {model_id} recorded in config.json when "
                            "it was saved")


def is_tabular(key: str) -> bool:
    return key == TABULAR
