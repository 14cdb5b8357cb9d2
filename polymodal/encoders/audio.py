"""Audio encoders: a small CNN over log-mel spectrograms, and the converted Whisper encoder (`whisper.py`).

Input to the CNN: (B, n_mels, T) float from `data.audio.log_mel`, any T ≥ 1.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from polymodal.encoders.base import Encoder
from polymodal.encoders.whisper import WhisperAudioEncoder
from polymodal.errors import PolymodalError


class LogMelCNN(Encoder):
    """Conv blocks (Conv3x3-BN-ReLU-MaxPool2) over the (1, n_mels, T) image, frequency averaged away,
    then mean and max over time → linear → out_dim. Not pretrained."""

    def __init__(self, out_dim: int = 256, channels: tuple[int, ...] = (32, 64, 128, 128),
                 dropout: float = 0.1, sample_rate: int = 16000, n_mels: int = 64, n_fft: int = 400,
                 hop_length: int = 160, max_seconds: float | None = 4.0) -> None:
        super().__init__()
        self.config = {"sample_rate": sample_rate, "n_mels": n_mels, "n_fft": n_fft, "hop_length": hop_length,
                       "max_seconds": max_seconds}
        chans = [1, *channels]
        blocks: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:], strict=True):
            # ceil_mode: a 1-frame clip (the missing-value placeholder) still yields one frame per block
            blocks += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2, ceil_mode=True)]
        self.convs = nn.Sequential(*blocks)
        self.token_dim = chans[-1]
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * self.token_dim, out_dim),
                                  nn.ReLU(inplace=True))
        self.out_dim = out_dim
        self.pretrained = False
        cfg = ":".join(f"{k}={v}" for k, v in self.config.items())
        self.cache_id = f"audio:logmel-cnn:{cfg}"

    def tokens(self, x: Tensor) -> Tensor:
        """Per-frame features (B, T', C), T' = ceil(T / 2**len(channels))."""
        if x.dim() == 3:
            x = x.unsqueeze(1)
        return self.convs(x.float()).mean(dim=2).transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        t = self.tokens(x)
        return self.head(torch.cat([t.mean(dim=1), t.amax(dim=1)], dim=-1))

    def preprocess_config(self) -> dict:
        return dict(self.config)


BUILTIN: dict[str, Callable[..., nn.Module]] = {"logmel-cnn": LogMelCNN, "whisper-tiny.en": WhisperAudioEncoder}


def build_audio_encoder(name: str, **opts) -> nn.Module:
    if name not in BUILTIN:
        raise PolymodalError(f"unknown audio encoder '{name}': use one of {sorted(BUILTIN)}")
    return BUILTIN[name](**opts)
