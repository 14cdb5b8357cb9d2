"""Time-series encoders, trained from scratch. Input: `{"values": float (B, T, C) standardised, "mask": bool (B, T)}`
from `data.timeseries` (padded steps masked; every row's real steps come first).

- "ts-cnn" (default): Conv1d-BN-ReLU-MaxPool blocks (kernel 5; padded steps zeroed before each), then masked
  mean and max over time → linear.
- "ts-gru": a bidirectional GRU over the real steps (packed sequences, so padding never enters the state);
  the last layer's final states of both directions → linear.
- "ts-transformer": non-overlapping patches of `patch` steps embedded by a strided Conv1d (as PatchTST),
  sinusoidal positions, pre-norm transformer layers with key-padding masks, masked mean → linear.

`in_channels` comes from the column's schema (`Schema.series_channels`); `max_length` (1024 steps) is the crop
the data layer applies. `tokens(x)` gives per-step (or per-patch) states (B, T', D), padded ones zero.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polymodal.encoders.base import Encoder
from polymodal.errors import PolymodalError


def _downsample(mask: Tensor, factor: int) -> Tensor:
    """(B, T) step mask → (B, ceil(T / factor)): a pooled position is real when any of its steps is."""
    if factor == 1:
        return mask
    return F.max_pool1d(mask.float().unsqueeze(1), factor, factor, ceil_mode=True).squeeze(1).bool()


def _masked_mean_max(h: Tensor, mask: Tensor) -> Tensor:
    m = mask.unsqueeze(-1).to(h.dtype)
    mean = (h * m).sum(1) / m.sum(1).clamp(min=1)
    mx = h.masked_fill(~mask.unsqueeze(-1), torch.finfo(h.dtype).min).amax(1)
    return torch.cat([mean, torch.where(mask.any(1, keepdim=True), mx, torch.zeros_like(mx))], -1)


class SeriesEncoder(Encoder):
    """Shared parts: channel count, crop length, cache id and preprocessing settings."""

    def __init__(self, name: str, in_channels: int, out_dim: int, max_length: int) -> None:
        super().__init__()
        if int(in_channels) < 1:
            raise PolymodalError(f"a time series needs at least one channel, got in_channels={in_channels}")
        self.in_channels, self.out_dim, self.max_length = int(in_channels), int(out_dim), int(max_length)
        self.pretrained = False
        self.cache_id = f"timeseries:{name}:{self.in_channels}"

    def preprocess_config(self) -> dict:
        return {"max_length": self.max_length}

    def forward(self, x: dict) -> Tensor:
        h, mask = self._states(x)
        return self.head(_masked_mean_max(h, mask))

    def tokens(self, x: dict) -> Tensor:
        h, mask = self._states(x)
        return h * mask.unsqueeze(-1).to(h.dtype)

    def _states(self, x: dict) -> tuple[Tensor, Tensor]:  # pragma: no cover - every subclass overrides it
        raise NotImplementedError


class TSCNN(SeriesEncoder):
    def __init__(self, in_channels: int = 1, out_dim: int = 128, channels: tuple[int, ...] = (64, 128, 128),
                 kernel: int = 5, dropout: float = 0.1, max_length: int = 1024) -> None:
        super().__init__("ts-cnn", in_channels, out_dim, max_length)
        chans = [self.in_channels, *channels]
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv1d(cin, cout, kernel, padding=kernel // 2, bias=False), nn.BatchNorm1d(cout),
                          nn.ReLU(inplace=True))
            for cin, cout in zip(chans[:-1], chans[1:], strict=True))
        self.token_dim = chans[-1]
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * self.token_dim, self.out_dim), nn.ReLU())

    def _states(self, x: dict) -> tuple[Tensor, Tensor]:
        v, mask = x["values"].float(), x["mask"].bool()
        h = v.transpose(1, 2)
        for block in self.blocks:
            # padded steps are zeroed before every convolution, as its own zero padding is: a series' output
            # does not depend on how far its batch was padded
            h = block(h * mask.unsqueeze(1).to(h.dtype))
            # ceil_mode: a 1-step series (the missing-value placeholder) still yields one position per block;
            # after the ReLU a padded zero never wins a max over real values
            h = F.max_pool1d(h * mask.unsqueeze(1).to(h.dtype), 2, 2, ceil_mode=True)
            mask = _downsample(mask, 2)
        return h.transpose(1, 2), mask


class TSGRU(SeriesEncoder):
    def __init__(self, in_channels: int = 1, out_dim: int = 128, hidden: int = 64, layers: int = 2,
                 dropout: float = 0.1, max_length: int = 1024) -> None:
        super().__init__("ts-gru", in_channels, out_dim, max_length)
        self.gru = nn.GRU(self.in_channels, hidden, num_layers=layers, batch_first=True, bidirectional=True,
                          dropout=dropout if layers > 1 else 0.0)
        self.token_dim = 2 * hidden
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * hidden, self.out_dim), nn.ReLU())

    def _run(self, x: dict) -> tuple[Tensor, Tensor, Tensor]:
        v, mask = x["values"].float(), x["mask"].bool()
        lengths = mask.sum(1).clamp(min=1).cpu()  # a missing series (no real step) runs over its zero step
        packed = nn.utils.rnn.pack_padded_sequence(v, lengths, batch_first=True, enforce_sorted=False)
        out, h_n = self.gru(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=v.shape[1])
        return out, mask, torch.cat([h_n[-2], h_n[-1]], -1)  # last layer, forward and backward

    def _states(self, x: dict) -> tuple[Tensor, Tensor]:
        out, mask, _ = self._run(x)
        return out, mask

    def forward(self, x: dict) -> Tensor:
        _, mask, last = self._run(x)
        return self.head(last * mask.any(1, keepdim=True).to(last.dtype))


def sinusoid(length: int, dim: int, device=None) -> Tensor:
    """(length, dim) sine/cosine position encodings (Vaswani et al. 2017)."""
    pos = torch.arange(length, device=device, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim, device=device)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return pe


class TSTransformer(SeriesEncoder):
    def __init__(self, in_channels: int = 1, out_dim: int = 128, hidden: int = 64, layers: int = 2,
                 heads: int = 4, patch: int = 8, dropout: float = 0.1, max_length: int = 1024) -> None:
        super().__init__("ts-transformer", in_channels, out_dim, max_length)
        self.patch = int(patch)
        self.embed = nn.Conv1d(self.in_channels, hidden, self.patch, stride=self.patch)
        layer = nn.TransformerEncoderLayer(hidden, math.gcd(int(heads), int(hidden)), 2 * hidden, dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(hidden), enable_nested_tensor=False)
        self.token_dim = hidden
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * hidden, self.out_dim), nn.ReLU())

    def _states(self, x: dict) -> tuple[Tensor, Tensor]:
        v, mask = x["values"].float(), x["mask"].bool()
        v = v * mask.unsqueeze(-1).to(v.dtype)
        extra = -v.shape[1] % self.patch
        if extra:  # pad to whole patches
            v, mask = F.pad(v, (0, 0, 0, extra)), F.pad(mask, (0, extra))
        h = self.embed(v.transpose(1, 2)).transpose(1, 2)
        h = h + sinusoid(h.shape[1], h.shape[2], h.device)
        pmask = _downsample(mask, self.patch)
        pad = (~pmask).clone()
        pad[~pmask.any(1), 0] = False  # a row without steps would attend to nothing (NaN)
        h = self.encoder(h, src_key_padding_mask=pad)
        return h * pmask.unsqueeze(-1).to(h.dtype), pmask


BUILTIN: dict[str, Callable[..., SeriesEncoder]] = {"ts-cnn": TSCNN, "ts-gru": TSGRU, "ts-transformer": TSTransformer}


def build_timeseries_encoder(name: str, **opts) -> SeriesEncoder:
    if name not in BUILTIN:
        raise PolymodalError(f"unknown time-series encoder '{name}': use one of {sorted(BUILTIN)}")
    return BUILTIN[name](**opts)
