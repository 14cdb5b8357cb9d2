"""Per-modality loading and transforms: images, audio, numbers, categories (video frames and sound tracks:
`data/video.py`; time series: `data/timeseries.py`).

Hand-written on PIL/numpy because torchvision cannot be installed beside the small CPU torch build
(it needs a 5.9 GB CUDA torch); the operations are the standard ones (resize, random-resized-crop,
light colour jitter, ImageNet-style normalisation).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageEnhance

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
    arr = np.asarray(im, dtype=np.float32) / 255.0
    arr = (arr - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


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


def load_wave(path: str, sample_rate: int, max_seconds: float | None = None, augment: bool = False,
              rng: np.random.Generator | None = None) -> np.ndarray:
    """Decode an audio file to mono float32 at `sample_rate`, cropped or zero-padded to `max_seconds`."""
    import soundfile as sf

    try:
        wave, sr = sf.read(path, dtype="float32", always_2d=True)
    except FileNotFoundError:
        raise DataError(f"audio file not found: {path}") from None
    except Exception as exc:  # soundfile raises LibsndfileError/RuntimeError for corrupt files
        try:  # formats libsndfile lacks (e.g. some mp3/m4a) go through librosa's audioread fallback
            import librosa

            mono, sr = librosa.load(path, sr=None, mono=True)
            wave = mono[:, None].astype(np.float32)
        except Exception:
            raise DataError(f"cannot decode audio {path}: {exc}") from None
    if wave.shape[0] == 0:
        raise DataError(f"audio file has no samples: {path}")
    if not np.isfinite(wave).all():  # float WAVs can hold NaN/inf; they would poison the features silently
        raise DataError(f"audio samples are not finite (NaN or infinity) in {path}")
    if sr <= 0:  # a corrupt header; resampling would divide by zero
        raise DataError(f"audio file declares an invalid sample rate ({sr} Hz): {path}")
    wave = wave.mean(axis=1)
    if max_seconds and len(wave) > math.ceil(max_seconds * sr):
        # Crop before resampling: resampling costs time and memory in proportion to the whole clip, and a
        # corrupt header that declares 1 Hz turns a 3 s clip into 13 hours (minutes and gigabytes to resample).
        n_src = math.ceil(max_seconds * sr)
        start = int((rng or np.random.default_rng()).integers(0, len(wave) - n_src + 1)) if augment else 0
        wave = wave[start:start + n_src]
    if sr != sample_rate:
        import librosa

        wave = librosa.resample(wave, orig_sr=sr, target_sr=sample_rate).astype(np.float32)
    return fit_length(wave, sample_rate, max_seconds, augment, rng, random_crop=False).astype(np.float32)


def fit_length(wave: np.ndarray, sample_rate: int, max_seconds: float | None, augment: bool = False,
               rng: np.random.Generator | None = None, random_crop: bool = True) -> np.ndarray:
    """Crop (at random when augmenting and `random_crop`) or zero-pad (at a random offset when augmenting)
    to `max_seconds`, then, when augmenting, scale the gain by U(0.8, 1.2)."""
    if max_seconds:
        n = int(round(max_seconds * sample_rate))
        if len(wave) > n:  # after an exact crop at the source rate: a sample or two of resampling rounding
            start = int((rng or np.random.default_rng()).integers(0, len(wave) - n + 1)) \
                if augment and random_crop else 0
            wave = wave[start:start + n]
        elif len(wave) < n:
            pad = n - len(wave)
            left = int((rng or np.random.default_rng()).integers(0, pad + 1)) if augment else 0
            wave = np.pad(wave, (left, pad - left))
    if augment:
        wave = wave * float((rng or np.random.default_rng()).uniform(0.8, 1.2))
    return wave


def load_audio_features(path: str, cfg: dict, augment: bool = False,
                        rng: np.random.Generator | None = None) -> np.ndarray | None:
    """Audio file → the encoder's input features (log-mel (n_mels, T) scaled to about [-2, 2]).

    Whisper encoders (`cfg["kind"] == "whisper"`) take Whisper's own 30 s, 80-mel features instead.
    A video's sound track (`cfg["source"] == "video"`, see `data/video.py`) is decoded with PyAV; a clip
    without sound gives None (the input is missing).
    """
    whisper = cfg.get("kind") == "whisper"
    rate, seconds = (16000, 30.0) if whisper else (cfg["sample_rate"], cfg.get("max_seconds"))
    if cfg.get("source") == "video":
        from polymodal.data.video import load_video_wave

        wave = load_video_wave(path, rate, seconds, augment=augment and not whisper, rng=rng)
        if wave is None:
            return None
    else:
        wave = load_wave(path, rate, seconds, augment=augment and not whisper, rng=rng)
    if whisper:
        from polymodal.encoders.whisper import whisper_features

        return whisper_features(wave, 16000).astype(np.float32)
    from polymodal.encoders.audio import log_mel

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
