"""Encoder inputs from media files: images, and audio features from a sound file or a video's sound track
(waveforms and spectrograms: `data/audio.py`; video frames: `data/video.py`; time series: `data/timeseries.py`).

Hand-written on PIL/numpy because torchvision cannot be installed beside the small CPU torch build
(it needs a 5.9 GB CUDA torch); the operations are the standard ones (resize, random-resized-crop,
light colour jitter, ImageNet-style normalisation).
"""

from __future__ import annotations

import functools
import math

import numpy as np
from PIL import Image, ImageEnhance

from polymodal.data.audio import WHISPER_SAMPLE_RATE, WHISPER_SECONDS, load_wave, log_mel, whisper_features
from polymodal.data.video import load_video_wave
from polymodal.errors import DataError


def load_image(path: str, size: int, mean: list[float], std: list[float], augment: bool = False,
               rng: np.random.Generator | None = None) -> np.ndarray:
    """Decode an image file to a normalised float32 (3, size, size) array."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.load()
    except FileNotFoundError:
        raise DataError(f"image file not found: {path}") from None
    except Exception as exc:  # PIL's plugins raise many types on corrupt data (OSError, SyntaxError, struct.error…)
        raise DataError(f"cannot decode image {path}: {exc}") from None
    if augment:
        rng = rng or np.random.default_rng()
        im = _random_resized_crop(im, rng)
        im = ImageEnhance.Brightness(im).enhance(float(rng.uniform(0.9, 1.1)))
        im = ImageEnhance.Contrast(im).enhance(float(rng.uniform(0.9, 1.1)))
    im = im.resize((size, size), Image.BILINEAR)
    pixels = np.asarray(im)  # (size, size, 3) uint8
    table = normalise_table(tuple(mean), tuple(std))
    out = np.empty((3, size, size), np.float32)
    for c in range(3):  # a look-up per channel: 2-3x faster than float arithmetic on every pixel
        np.take(table[c], pixels[:, :, c], out=out[c])
    return out


@functools.lru_cache(maxsize=16)
def normalise_table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """(3, 256) float32: ((v / 255) - mean) / std per channel for every uint8 value v, computed with the same
    float32 operations as the per-pixel form, so the looked-up arrays are bit-identical to it."""
    values = np.arange(256, dtype=np.float32)[None] / 255.0
    table = (values - np.asarray(mean, dtype=np.float32)[:, None]) / np.asarray(std, dtype=np.float32)[:, None]
    table.flags.writeable = False  # shared by every call
    return table


def _random_resized_crop(im: Image.Image, rng: np.random.Generator, scale=(0.8, 1.0),
                         ratio=(3 / 4, 4 / 3)) -> Image.Image:
    w, h = im.size
    area = w * h
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            return im.crop((x0, y0, x0 + cw, y0 + ch))
    return im


def load_audio_features(path: str, cfg: dict, augment: bool = False,
                        rng: np.random.Generator | None = None) -> np.ndarray | None:
    """Audio file → the encoder's input features (log-mel (n_mels, T) scaled to about [-2, 2]).

    Whisper encoders (`cfg["kind"] == "whisper"`) take Whisper's own 30 s, 80-mel features instead.
    A video's sound track (`cfg["source"] == "video"`, see `data/video.py`) is decoded with PyAV; a clip
    without sound gives None (the input is missing).
    """
    whisper = cfg.get("kind") == "whisper"
    rate, seconds = (WHISPER_SAMPLE_RATE, float(WHISPER_SECONDS)) if whisper else (cfg["sample_rate"],
                                                                                   cfg.get("max_seconds"))
    if cfg.get("source") == "video":
        wave = load_video_wave(path, rate, seconds, augment=augment and not whisper, rng=rng)
        if wave is None:
            return None
    else:
        wave = load_wave(path, rate, seconds, augment=augment and not whisper, rng=rng)
    if whisper:
        return whisper_features(wave, WHISPER_SAMPLE_RATE).astype(np.float32)
    peak = float(np.abs(wave).max())
    if peak > 1.0:
        # Float WAVs may hold any magnitude (a corrupt one, up to 3e38), whose float32 power overflows to inf/NaN.
        # log_mel is relative to the clip's loudest bin, so scaling to unit peak leaves the features unchanged.
        wave = wave / peak
    mel = log_mel(wave, cfg["sample_rate"], n_mels=cfg["n_mels"], n_fft=cfg["n_fft"],
                  hop_length=cfg["hop_length"])
    if not np.isfinite(mel).all():
        raise DataError(f"audio features are not finite (corrupt samples?) in {path}")
    return mel.astype(np.float32)
