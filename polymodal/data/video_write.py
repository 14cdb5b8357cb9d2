"""Writing video files: frames and an optional sound track, codecs chosen by the extension.

Tests, demos and benchmarks make their clips with it; reading lives in `data/video.py`.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np

from polymodal.data.video import require_av
from polymodal.errors import PolymodalError

CODECS = {".mp4": ("libx264", "aac"), ".webm": ("libvpx-vp9", "libopus"), ".avi": ("mpeg4", "mp3"),
          ".mkv": ("libx264", "aac"), ".mov": ("libx264", "aac")}


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float = 8.0, audio: np.ndarray | None = None,
                sample_rate: int = 16000, gop: int | None = None) -> None:
    """Encode uint8 RGB frames (n, H, W, 3) (H, W even) and an optional mono float waveform in [-1, 1] to a
    video file whose codecs follow its extension (H.264 + AAC for .mp4, VP9 + Opus for .webm, MPEG-4 + MP3 for
    .avi). `gop`: key-frame interval in frames (the encoder's default if None). Written to a temporary name
    and moved into place."""
    av = require_av()
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in CODECS:
        raise PolymodalError(f"write_video: unsupported extension {suffix!r}; use one of {', '.join(CODECS)}")
    vcodec, acodec = CODECS[suffix]
    frames = np.asarray(frames, dtype=np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[1] % 2 or frames.shape[2] % 2:
        raise PolymodalError(f"write_video: frames must be (n, H, W, 3) with even H and W, got {frames.shape}")
    tmp = path.with_name(f".{path.name}.tmp{suffix}")
    with av.open(str(tmp), "w") as container:
        stream = container.add_stream(vcodec, rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        if gop:
            stream.codec_context.gop_size = int(gop)
        sound = None
        if audio is not None:
            sound = container.add_stream(acodec, rate=sample_rate)
            sound.layout = "mono"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
        if sound is not None:
            wave = np.clip(np.asarray(audio, dtype=np.float32), -1, 1)
            step = sound.codec_context.frame_size or 1024
            for s in range(0, len(wave), step):
                chunk = av.AudioFrame.from_ndarray(wave[None, s:s + step], format="flt", layout="mono")
                chunk.sample_rate, chunk.pts = sample_rate, s
                container.mux(sound.encode(chunk))
            container.mux(sound.encode())
    os.replace(tmp, path)
