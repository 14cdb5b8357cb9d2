"""Video encoders: a per-frame image encoder (any `encoders.image` name) and temporal pooling over the frames.

Input: `{"frames": float (B, N, 3, S, S), "mask": bool (B, N)}` from `data.video.load_video` (padded frames
masked out and never run through the backbone). Names:

- "frames-mean" (default): masked mean of the frame features. No parameters of its own, so with a pretrained
  backbone the whole encoder is pretrained: frozen, and its pooled output cached per file like an image's.
- "frames-attn": attention pooling (a learned scoring MLP, softmax over the clip's frames; Ilse et al. 2018).
- "frames-transformer": a small temporal transformer (learned frame-position embeddings, pre-norm layers with
  key-padding masks) over projected frame features, masked-mean pooled.

The last two train their temporal layers; a pretrained backbone stays frozen inside them (eval mode, no
gradients) unless `finetune_backbone=True` (`--finetune video` sets it), and, since the encoder trains, its
frames are decoded and run through the backbone every epoch (no feature cache). `tokens(x)` gives per-frame
features (B, N, D) with padded frames zero, for token-level fusions.

Options: backbone ("efficientnet-lite0"), backbone_opts ({}), image_size (the backbone's default),
num_frames (8), sampling ("uniform" | "fps" | "keyframes"), fps (2.0), folder_fps (25.0, folders of frames),
audio (True: the clip's sound track becomes the audio input "<column>:audio", see `data.video`),
finetune_backbone (False), hidden (256), layers (1), heads (4), dropout (0.1).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from polymodal.data.video import _check_options
from polymodal.encoders.base import Encoder
from polymodal.encoders.image import build_image_encoder
from polymodal.errors import PolymodalError

POOLINGS = ("mean", "attn", "transformer")


class VideoEncoder(Encoder):
    def __init__(self, pooling: str = "mean", backbone: str = "efficientnet-lite0", backbone_opts: dict | None = None,
                 image_size: int | None = None, num_frames: int = 8, sampling: str = "uniform", fps: float = 2.0,
                 folder_fps: float = 25.0, audio: bool = True, finetune_backbone: bool = False, hidden: int = 256,
                 layers: int = 1, heads: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise PolymodalError(f"unknown temporal pooling {pooling!r}: use one of {', '.join(POOLINGS)}")
        _check_options(num_frames, sampling, fps)
        opts = dict(backbone_opts or {})
        if image_size is not None:
            opts["image_size"] = int(image_size)
        self.backbone = build_image_encoder(backbone, **opts)
        self.backbone_trains = not self.backbone.pretrained or bool(finetune_backbone)
        if not self.backbone_trains:
            self.backbone.freeze()
        self.pooling = pooling
        self.num_frames = int(num_frames)
        self.sampling, self.fps, self.folder_fps = sampling, float(fps), float(folder_fps)
        self.audio_track = bool(audio)
        dim = self.backbone.out_dim
        if pooling == "attn":
            self.score = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        elif pooling == "transformer":
            heads = math.gcd(int(heads), int(hidden))
            self.proj = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden))
            self.position = nn.Parameter(torch.randn(self.num_frames, hidden) * 0.02)
            layer = nn.TransformerEncoderLayer(hidden, heads, 2 * hidden, dropout, activation="gelu",
                                               batch_first=True, norm_first=True)
            self.temporal = nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(hidden),
                                                  enable_nested_tensor=False)
            dim = hidden
        self.out_dim = self.token_dim = dim
        # Pretrained (frozen and cached by default) only when nothing in it is freshly initialised.
        self.pretrained = self.backbone.pretrained and pooling == "mean"
        self.cache_id = f"video:frames-{pooling}:{self.backbone.cache_id}" + (":ft" if finetune_backbone else "")

    def frame_features(self, x: dict) -> tuple[Tensor, Tensor]:
        """Per-frame backbone features (B, N, D) (zeros at padded frames) and the frame mask (B, N)."""
        frames, mask = x["frames"], x["mask"].bool()
        b, n = mask.shape
        if n > self.num_frames:
            raise PolymodalError(f"the encoder takes at most {self.num_frames} frames, got {n}")
        flat_mask = mask.reshape(-1)
        out = frames.new_zeros(b * n, self.backbone.out_dim, dtype=torch.float32)
        if bool(flat_mask.any()):
            with torch.set_grad_enabled(torch.is_grad_enabled() and self.backbone_trains):
                f = self.backbone(frames.reshape(b * n, *frames.shape[2:])[flat_mask]).float()
            out = out.index_put((flat_mask.nonzero().squeeze(1),), f)
        return out.view(b, n, -1), mask

    def _temporal(self, f: Tensor, mask: Tensor) -> Tensor:
        h = self.proj(f) + self.position[: f.shape[1]]
        # a row without frames (a missing video) would attend to nothing (NaN): let it see its first slot;
        # its output is masked to zero below and the fusion ignores absent rows anyway
        pad = (~mask).clone()
        pad[~mask.any(1), 0] = False
        h = self.temporal(h, src_key_padding_mask=pad)
        return h * mask.unsqueeze(-1).to(h.dtype)

    def tokens(self, x: dict) -> Tensor:
        f, mask = self.frame_features(x)
        if self.pooling == "transformer":
            return self._temporal(f, mask)
        return f

    def forward(self, x: dict) -> Tensor:
        f, mask = self.frame_features(x)
        m = mask.unsqueeze(-1).to(f.dtype)
        if self.pooling == "attn":
            scores = self.score(f).squeeze(-1).masked_fill(~mask, torch.finfo(f.dtype).min)
            w = torch.softmax(scores, dim=1) * m.squeeze(-1)  # rows without frames: weights (and output) zero
            return (w.unsqueeze(-1) * f).sum(1)
        if self.pooling == "transformer":
            f = self._temporal(f, mask)
        return (f * m).sum(1) / m.sum(1).clamp(min=1)

    def preprocess_config(self) -> dict:
        cfg = self.backbone.preprocess_config()
        return {"num_frames": self.num_frames, "sampling": self.sampling, "fps": self.fps,
                "folder_fps": self.folder_fps, "image_size": cfg["image_size"], "mean": cfg["mean"],
                "std": cfg["std"]}


def _pooled(pooling: str) -> Callable[..., VideoEncoder]:
    def build(**opts) -> VideoEncoder:
        return VideoEncoder(pooling=pooling, **opts)

    return build


BUILTIN: dict[str, Callable[..., VideoEncoder]] = {f"frames-{p}": _pooled(p) for p in POOLINGS}


def build_video_encoder(name: str, **opts) -> VideoEncoder:
    if name not in BUILTIN:
        raise PolymodalError(f"unknown video encoder '{name}': use one of {sorted(BUILTIN)}")
    return BUILTIN[name](**opts)
