"""Per-modality encoders and the one function that builds them.

Every encoder is an `Encoder` (`encoders/base.py`). Names map to builders in plain dicts: `BUILDERS`
(modality → builder) here, and each modality module's `BUILTIN` (name → class). Heavy optional packages
(timm, torchvision, transformers' models, the Whisper weights) are imported only when an encoder that needs
them is built.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from polymodal.data import text as text_models
from polymodal.encoders import audio, image, tabular, text, timeseries, video
from polymodal.encoders.base import Encoder, MissingDependencyError
from polymodal.errors import PolymodalError

__all__ = ["DEFAULT_ENCODERS", "BUILDERS", "Encoder", "MissingDependencyError", "build_encoder",
           "encoder_names"]

DEFAULT_ENCODERS: dict[str, str] = {
    "image": "efficientnet-lite0",
    "text": text_models.DEFAULT_TEXT,
    "audio": "logmel-cnn",
    "video": "frames-mean",
    "timeseries": "ts-cnn",
    "tabular": "mlp",
}

BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "image": image.build_image_encoder,
    "text": text.build_text_encoder,
    "audio": audio.build_audio_encoder,
    "video": video.build_video_encoder,
    "timeseries": timeseries.build_timeseries_encoder,
    "tabular": tabular.build_tabular_encoder,
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
    return {"image": sorted(image.BUILTIN), "text": sorted(text_models.BUILTIN), "audio": sorted(audio.BUILTIN),
            "video": sorted(video.BUILTIN), "timeseries": sorted(timeseries.BUILTIN),
            "tabular": sorted(tabular.BUILTIN)}
