"""Audio waveforms and the spectrogram features audio encoders read.

`load_wave` decodes a file to mono float32 at a sample rate and `fit_length` crops or pads it; `log_mel` is
the log-mel spectrogram of the audio CNN (`encoders/audio.py`); `whisper_features` and `valid_mel_frames`
are Whisper's 30 s log-mel input and the length of the clip inside it (`encoders/whisper.py`). A video's
sound track is decoded in `data/video.py`; `data/transforms.py: load_audio_features` picks the source.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from polymodal.errors import DataError

TOP_DB = 80.0  # log-mel floor below the clip's loudest bin
WHISPER_SAMPLE_RATE = 16000
WHISPER_SECONDS = 30  # Whisper always sees 30 s windows: 3000 mel frames, 1500 encoder positions
WHISPER_SAMPLES = WHISPER_SECONDS * WHISPER_SAMPLE_RATE


def load_wave(path: str, sample_rate: int, max_seconds: float | None = None, augment: bool = False,
              rng: np.random.Generator | None = None) -> np.ndarray:
    """Decode an audio file to mono float32 at `sample_rate`, cropped or zero-padded to `max_seconds`."""
    # soundfile and librosa are optional heavy imports (librosa takes seconds): loaded on first use
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
        wave = resample(wave, sr, sample_rate)
    return fit_length(wave, sample_rate, max_seconds, augment, rng, random_crop=False).astype(np.float32)


def resample(wave: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """librosa's default (soxr) resampling, as float32."""
    import librosa  # optional heavy dependency, see load_wave

    return librosa.resample(wave, orig_sr=orig_sr, target_sr=target_sr).astype(np.float32)


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


def log_mel(wave: np.ndarray, sample_rate: int, n_mels: int, n_fft: int, hop_length: int) -> np.ndarray:
    """Mono waveform → log-mel spectrogram (n_mels, T) float32 scaled to [-2, 2].

    dB relative to the clip's loudest bin, floored at -80 dB (librosa's `power_to_db(ref=np.max,
    top_db=80)`), then mapped linearly from [-80, 0] dB to [-2, 2] so the CNN sees standardised-scale inputs
    without dataset statistics. Relative dB makes the features independent of recording gain.
    """
    import librosa  # optional heavy dependency, see load_wave

    wave = np.asarray(wave, dtype=np.float32)
    if len(wave) < n_fft:  # librosa warns on and mis-sizes clips shorter than one window
        wave = np.pad(wave, (0, n_fft - len(wave)))
    power = librosa.feature.melspectrogram(y=wave, sr=sample_rate, n_fft=n_fft, hop_length=hop_length,
                                           n_mels=n_mels, power=2.0)
    if power.max() <= 1e-10:  # pure silence: power_to_db(ref=max) would put it at 0 dB (the loudest level)
        db = np.full_like(power, -TOP_DB)
    else:
        db = librosa.power_to_db(power, ref=np.max, top_db=TOP_DB)
    return ((db + TOP_DB / 2) / (TOP_DB / 4)).astype(np.float32)


def whisper_features(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    """Mono waveform → Whisper log-mel features (80, 3000): resampled to 16 kHz, padded/cut to 30 s."""
    wave = np.asarray(wave, np.float32)
    if wave.ndim == 2:  # (samples, channels) as soundfile returns it
        wave = wave.mean(axis=1)
    if sample_rate != WHISPER_SAMPLE_RATE:
        wave = resample(wave, sample_rate, WHISPER_SAMPLE_RATE)
    fe = _feature_extractor()
    return fe(wave, sampling_rate=WHISPER_SAMPLE_RATE, return_tensors="np").input_features[0].astype(np.float32)


_FE = None


def _feature_extractor():
    global _FE
    if _FE is None:
        from transformers import WhisperFeatureExtractor  # optional heavy dependency, loaded on first use

        _FE = WhisperFeatureExtractor(feature_size=80, sampling_rate=WHISPER_SAMPLE_RATE)
    return _FE


def valid_mel_frames(x: torch.Tensor) -> torch.Tensor:
    """Number of mel frames before the zero padding, per example of (B, 80, T) Whisper features.

    Whisper's log-mel floors every value at (max - 8 dB·10), so frames of padded digital silence are
    exactly constant at the example's minimum; the last frame with any value above it ends the clip.
    """
    floor = x.amin(dim=(1, 2), keepdim=True)
    live = (x > floor + 1e-6).any(dim=1)  # (B, T)
    idx = torch.arange(x.shape[-1], device=x.device).expand_as(live)
    last = torch.where(live, idx, torch.full_like(idx, -1)).amax(dim=1)
    return (last + 1).clamp(min=1)
