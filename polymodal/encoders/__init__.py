"""Per-modality encoders and the one function that builds them.

Every encoder is an `Encoder`: `forward(x) -> (B, out_dim)` float32, `tokens(x) -> (B, T, token_dim)`,
`cache_id` (feature-cache key: weights + preprocessing), `pretrained`, `freeze()` and
`preprocess_config()` (JSON settings for the data layer). Names map to builders in plain dicts; the
modality modules (and their heavy dependencies) are imported only when a builder runs.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from polymodal.errors import PolymodalError

__all__ = ["DEFAULT_ENCODERS", "BUILDERS", "Encoder", "MissingDependencyError", "build_encoder",
           "encoder_names"]

DEFAULT_ENCODERS: dict[str, str] = {
    "image": "efficientnet-lite0",
    "text": "minilm-l6",
    "audio": "logmel-cnn",
    "video": "frames-mean",
    "timeseries": "ts-cnn",
    "tabular": "mlp",
}


class MissingDependencyError(PolymodalError, ImportError):
    """An optional package an encoder needs is not installed (the message says what to install)."""


class Encoder(nn.Module):
    """Base of all encoders: the freeze/train behaviour and the attributes the rest of the code reads."""

    out_dim: int
    token_dim: int
    cache_id: str
    pretrained: bool = False

    def __init__(self) -> None:
        super().__init__()
        self.frozen = False

    def freeze(self) -> Encoder:
        """No trainable parameters, and eval mode (BatchNorm statistics, dropout) that `.train()` keeps."""
        for p in self.parameters():
            p.requires_grad_(False)
        self.frozen = True
        return self.train(False)

    def train(self, mode: bool = True) -> Encoder:
        # A parent's .train() recurses into children; a frozen feature extractor must not switch
        # BatchNorm back to batch statistics or its features would drift from the cached ones.
        return super().train(mode and not getattr(self, "frozen", False))

    def tokens(self, x) -> Tensor:  # pragma: no cover - every concrete encoder overrides it
        raise NotImplementedError

    def preprocess_config(self) -> dict:
        return {}


def _image(name: str, **opts) -> nn.Module:
    from polymodal.encoders.image import build_image_encoder

    return build_image_encoder(name, **opts)


def _text(name: str, **opts) -> nn.Module:
    from polymodal.encoders.text import build_text_encoder

    return build_text_encoder(name, **opts)


def _audio(name: str, **opts) -> nn.Module:
    from polymodal.encoders.audio import build_audio_encoder

    return build_audio_encoder(name, **opts)


def _video(name: str, **opts) -> nn.Module:
    from polymodal.encoders.video import build_video_encoder

    return build_video_encoder(name, **opts)


def _timeseries(name: str, **opts) -> nn.Module:
    from polymodal.encoders.timeseries import build_timeseries_encoder

    return build_timeseries_encoder(name, **opts)


def _tabular(name: str, **opts) -> nn.Module:
    from polymodal.encoders.tabular import build_tabular_encoder

    return build_tabular_encoder(name, **opts)


BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "image": _image,
    "text": _text,
    "audio": _audio,
    "video": _video,
    "timeseries": _timeseries,
    "tabular": _tabular,
}


def build_encoder(modality: str, name: str | None = None, **opts) -> nn.Module:
    """Build the encoder `name` (default: `DEFAULT_ENCODERS[modality]`) for `modality` with options `opts`.

    Image names beyond the built-ins: "timm:<model>" and "torchvision:<model>" (need polymodal[vision]);
    text names beyond "minilm-l6": any Hugging Face model id or local directory.
    """
    if modality not in BUILDERS:
        raise PolymodalError(f"no encoders for modality '{modality}'; known: {sorted(BUILDERS)}")
    return BUILDERS[modality](name or DEFAULT_ENCODERS[modality], **opts)


def encoder_names() -> dict[str, list[str]]:
    """Built-in encoder names per modality (prefixed/hub names are accepted on top of these)."""
    from polymodal.data import text
    from polymodal.encoders import audio, image, tabular, timeseries, video

    return {"image": sorted(image.BUILTIN), "text": sorted(text.BUILTIN), "audio": sorted(audio.BUILTIN),
            "video": sorted(video.BUILTIN), "timeseries": sorted(timeseries.BUILTIN),
            "tabular": sorted(tabular.BUILTIN)}
