"""Token-level encoder outputs for token-level fusions (cross-modal transformer, FiLM).

`token_features(encoder, x, modality, config)` → (B, T, D) with a fixed T per input spec and padded tokens
exactly zero, so the same tensors can be cached, batched and masked (`token_mask`):
- image: the encoder's final feature-map grid (h·w tokens);
- text: the transformer's last hidden states, padded to the spec's max_length (padding zeroed);
- audio: the encoder's frame states (past the clip's end zeroed for Whisper) average-pooled in time to at
  most AUDIO_TOKENS segments — a 30 s Whisper window has 1500 frames, too many to cache per clip.
Tabular inputs stay one pooled token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from polymodal.data.audio import valid_mel_frames
from polymodal.types import AUDIO, IMAGE, TEXT

TOKEN_MODALITIES = (IMAGE, TEXT, AUDIO)
AUDIO_TOKENS = 32


def token_features(encoder, x, modality: str, config: dict) -> Tensor:
    if modality not in TOKEN_MODALITIES:
        raise ValueError(f"no token features for modality {modality!r}")
    t = encoder.tokens(x).float()
    if modality == TEXT:
        t = t * x["attention_mask"].unsqueeze(-1).to(t.dtype)
        length = int(config.get("max_length", 64))
        if t.shape[1] < length:
            t = F.pad(t, (0, 0, 0, length - t.shape[1]))
        return t[:, :length]
    if modality == AUDIO:
        if config.get("kind") == "whisper":
            n = (valid_mel_frames(x) + 1) // 2  # one encoder state per two mel frames
            live = torch.arange(t.shape[1], device=t.device)[None, :] < n[:, None]
            t = t * live.unsqueeze(-1).to(t.dtype)
        if t.shape[1] > AUDIO_TOKENS:
            t = F.adaptive_avg_pool1d(t.transpose(1, 2), AUDIO_TOKENS).transpose(1, 2)
        elif t.shape[1] < AUDIO_TOKENS:
            t = F.pad(t, (0, 0, 0, AUDIO_TOKENS - t.shape[1]))
    return t


def token_mask(t: Tensor) -> Tensor:
    """(B, T) True for real tokens: padded ones are exactly zero vectors (a real token never is, in practice)."""
    return t.ne(0).any(dim=-1)
