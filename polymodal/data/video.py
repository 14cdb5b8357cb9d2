"""Video decoding and frame sampling (PyAV), for video columns: file paths (mp4/webm/avi/...) or folders of frames.

A video cell becomes a fixed-size encoder input `{"frames": float32 (N, 3, S, S), "mask": bool (N,)}`: N =
`num_frames` sampled frames, decoded straight to S×S RGB by FFmpeg's scaler and normalised with the per-frame
image encoder's mean/std (as `transforms.load_image` does for images); frames the clip does not have are zero
and masked out. Sampling strategies:

- "uniform": N frames at the centres of N equal segments of the clip (temporal segment sampling, TSN); with
  augmentation each time is drawn uniformly inside its segment. Always N frames: a clip with fewer frames
  repeats them.
- "fps": one frame every 1/fps seconds from the start, at most N (a clip shorter than N/fps gives fewer,
  masked); with augmentation the grid starts at a random offset in [0, 1/fps).
- "keyframes": the key (intra-coded) frames only, decoded with `codec_context.skip_frame = "NONKEY"` (the
  decoder skips the other frames' work; frames of decoders that ignore the setting are filtered by their
  key-frame flag); more than N are thinned to N evenly spaced ones.

The frame shown at time t is the last frame whose timestamp is ≤ t. Long clips are not decoded end to end:
a target more than `SEEK_GAP` seconds past the last decoded frame is reached by seeking to the key frame
before it. A folder of frames (.jpg/.png/..., natural order: frame2 before frame10) is a clip at `folder_fps`
frames per second whose every frame is a key frame.

Sound track: a video column also feeds an audio input keyed `"<column>:audio"` (`audio_track_key`) with the
audio encoder and its log-mel settings (`transforms.load_audio_features` with `source="video"` in the input's
config calls `load_video_wave`). A clip without an audio stream (and every folder of frames) has that input
missing (presence False), not an error; `encoder_opts={"video": {"audio": False}}` drops the input.
"""

from __future__ import annotations

import io
import math
import os
import re
from collections.abc import Iterator

import numpy as np

from polymodal.data.audio import fit_length
from polymodal.errors import DataError, PolymodalError

SAMPLING = ("uniform", "fps", "keyframes")
FRAME_EXT = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
SEEK_GAP = 4.0  # seconds: a farther target is reached by seeking rather than decoding every frame up to it
AUDIO_TRACK = "video:audio"  # encoder_configs key of the sound-track inputs' audio settings
TRACK_SUFFIX = ":audio"


def audio_track_key(column: str) -> str:
    """Input key of a video column's sound track."""
    return column + TRACK_SUFFIX


def require_av():
    try:
        import av
    except ImportError:
        raise PolymodalError("video columns need PyAV: pip install 'polymodal[video]'") from None
    return av


def _name(src) -> str:
    return src if isinstance(src, (str, os.PathLike)) else "<uploaded video>"


def _natural_key(name: str) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def frame_files(folder: str | os.PathLike) -> list[str]:
    """Image files of a folder of frames, in natural name order."""
    names = [n for n in os.listdir(folder) if n.lower().endswith(FRAME_EXT) and not n.startswith(".")]
    return [os.path.join(folder, n) for n in sorted(names, key=_natural_key)]


def is_frame_folder(src) -> bool:
    return isinstance(src, (str, os.PathLike)) and os.path.isdir(src)


def _open(src):
    """av.open with the user's errors made DataErrors naming the file."""
    av = require_av()
    if isinstance(src, (str, os.PathLike)) and not os.path.exists(src):
        raise DataError(f"video file not found: {src}")
    try:
        return av.open(src if isinstance(src, (str, os.PathLike)) else _rewound(src), "r")
    except Exception as exc:  # FFmpeg reports corrupt or unknown containers with many error types
        raise DataError(f"cannot decode video {_name(src)}: {exc}") from None


def _rewound(f):
    if isinstance(f, (bytes, bytearray)):
        return io.BytesIO(f)
    f.seek(0)
    return f


# ---- targets -------------------------------------------------------------------------------------------

def sample_times(duration: float, num_frames: int, sampling: str, fps: float,
                 rng: np.random.Generator | None = None) -> np.ndarray:
    """Target times in seconds from the clip's start for "uniform" and "fps" sampling."""
    if sampling == "uniform":
        offset = rng.uniform(0, 1, num_frames) if rng is not None else np.full(num_frames, 0.5)
        return (np.arange(num_frames) + offset) * duration / num_frames
    if sampling == "fps":
        step = 1.0 / fps
        start = float(rng.uniform(0, step)) if rng is not None else 0.0
        n = max(1, min(num_frames, math.ceil((duration - start) / step - 1e-9)))
        return start + np.arange(n) * step
    raise PolymodalError(f"no target times for sampling {sampling!r}")


def _check_options(num_frames: int, sampling: str, fps: float) -> None:
    if sampling not in SAMPLING:
        raise PolymodalError(f"unknown frame sampling {sampling!r}: use one of {', '.join(SAMPLING)}")
    if int(num_frames) < 1:
        raise PolymodalError(f"num_frames must be at least 1, got {num_frames}")
    if not fps > 0:
        raise PolymodalError(f"fps must be positive, got {fps}")


# ---- decoding ------------------------------------------------------------------------------------------

def read_frames(src, num_frames: int = 8, sampling: str = "uniform", fps: float = 2.0, size: int | None = None,
                folder_fps: float = 25.0, rng: np.random.Generator | None = None,
                seek_gap: float = SEEK_GAP) -> tuple[np.ndarray, np.ndarray]:
    """Sampled frames of a video file, file object or folder of frames: (uint8 (n, H, W, 3), times (n,)).

    `size`: frames resized to size×size (as images are); None keeps the decoded size (files only).
    `rng`: random temporal jitter (training augmentation). Raises DataError for unreadable clips.
    """
    _check_options(num_frames, sampling, fps)
    if is_frame_folder(src):
        return _read_folder(src, num_frames, sampling, fps, size, folder_fps, rng)
    with _open(src) as container:
        if not container.streams.video:
            raise DataError(f"no video stream in {_name(src)}")
        stream = container.streams.video[0]
        try:
            if sampling == "keyframes":
                frames, times = _keyframes(stream, container, num_frames, size)
            else:
                frames, times = _frames_at_times(container, stream, num_frames, sampling, fps, size, rng,
                                                 seek_gap)
        except Exception as exc:  # noqa: BLE001 - FFmpeg and frame conversion raise many types on corrupt data
            raise DataError(f"cannot decode video {_name(src)}: {exc}") from None
    if not frames:
        raise DataError(f"no frame could be decoded from {_name(src)}")
    return np.stack(frames), np.asarray(times, dtype=np.float64)


def _to_rgb(frame, size: int | None) -> np.ndarray:
    if size:
        return frame.to_ndarray(format="rgb24", width=size, height=size, interpolation="BILINEAR")
    return frame.to_ndarray(format="rgb24")


def _time(frame, count: int, rate: float) -> float:
    # frames without a timestamp (some AVI/raw streams) fall back to their decode order
    return float(frame.time) if frame.time is not None else count / rate


def _stream_span(container, stream) -> tuple[float, float | None]:
    """(start time, duration) in seconds from the stream or container headers; duration None if unknown."""
    tb = stream.time_base
    start = float(stream.start_time * tb) if stream.start_time is not None and tb else 0.0
    if stream.duration and tb:
        return start, float(stream.duration * tb)
    tag = _tag_seconds(stream.metadata.get("DURATION"))  # Matroska/WebM keep per-stream durations as tags
    if tag:
        return start, tag
    if container.duration:  # every stream's span: may exceed the video's when the sound runs longer
        import av

        return start, container.duration / av.time_base
    if stream.frames and stream.average_rate:
        return start, float(stream.frames / stream.average_rate)
    return start, None


def _tag_seconds(tag: str | None) -> float | None:
    """"HH:MM:SS.fffffffff" → seconds (None if absent or malformed)."""
    try:
        h, m, sec = str(tag).split(":")
        return int(h) * 3600 + int(m) * 60 + float(sec)
    except (ValueError, AttributeError):
        return None


def _frames_at_times(container, stream, num_frames, sampling, fps, size, rng, seek_gap):
    rate = float(stream.average_rate or 25)
    start, duration = _stream_span(container, stream)
    if duration is None or duration <= 0:  # no usable header: decode the whole clip once, then pick
        decoded = [(f, _time(f, i, rate)) for i, f in enumerate(container.decode(stream))]
        if not decoded:
            return [], []
        start = decoded[0][1]
        duration = decoded[-1][1] - start + 1.0 / rate
        targets = start + sample_times(duration, num_frames, sampling, fps, rng)
        picked = _pick(iter(decoded), targets)
    else:
        targets = start + sample_times(duration, num_frames, sampling, fps, rng)
        picked = _pick_seeking(container, stream, targets, rate, seek_gap)
    if sampling == "fps" and picked:
        # a header duration longer than the frames (sound running past them): no grid point after the last
        # frame's display time; uniform sampling keeps its N frames
        end = max(t for _, t in picked) + 1.0 / rate
        picked = [p for p, target in zip(picked, targets) if target < end - 1e-6]
    converted: dict[int, np.ndarray] = {}  # a frame picked for several targets is converted once
    for f, _ in picked:
        if id(f) not in converted:
            converted[id(f)] = _to_rgb(f, size)
    return [converted[id(f)] for f, _ in picked], [t for _, t in picked]


def _pick(decoded: Iterator, targets: np.ndarray) -> list:
    """For each sorted target time, the (frame, time) shown then: the last one at or before it."""
    picked, prev, i = [], None, 0
    for f, t in decoded:
        while i < len(targets) and t > targets[i] + 1e-6:
            picked.append(prev or (f, t))
            i += 1
        if i == len(targets):
            break
        prev = (f, t)
    while i < len(targets) and prev is not None:  # targets past the last frame show the last frame
        picked.append(prev)
        i += 1
    return picked


def _pick_seeking(container, stream, targets: np.ndarray, rate: float, seek_gap: float) -> list:
    """`_pick` over a decode that seeks to the key frame before a target when it is far ahead."""
    picked, prev, i = [], None, 0
    seeked_for = -1
    frames = container.decode(stream)
    # time of the last decoded frame; before any, the stream's start (a first target far into the clip seeks)
    last = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
    count = 0
    while i < len(targets):
        if targets[i] - last > seek_gap and seeked_for != i:
            # seek to the key frame at or before the target (once per target: a long GOP may land far before it)
            container.seek(int(targets[i] / stream.time_base), stream=stream, backward=True, any_frame=False)
            frames, prev, seeked_for = container.decode(stream), None, i
        f = next(frames, None)
        if f is None:
            break
        t = _time(f, count, rate)
        count += 1
        last = t
        while i < len(targets) and t > targets[i] + 1e-6:
            picked.append(prev or (f, t))
            i += 1
        prev = (f, t)
    while i < len(targets) and prev is not None:
        picked.append(prev)
        i += 1
    return picked


def _keyframes(stream, container, num_frames: int, size: int | None):
    stream.codec_context.skip_frame = "NONKEY"
    frames, times = [], []
    rate = float(stream.average_rate or 25)
    for count, f in enumerate(container.decode(stream)):
        if f.key_frame:  # decoders that ignore skip_frame (e.g. VP9) still return every frame
            frames.append(_to_rgb(f, size))  # converted now: a long clip's full-size key frames would pile up
            times.append(_time(f, count, rate))
    if len(frames) > num_frames:
        keep = np.round(np.linspace(0, len(frames) - 1, num_frames)).astype(int)
        frames, times = [frames[k] for k in keep], [times[k] for k in keep]
    return frames, times


def _read_folder(folder, num_frames, sampling, fps, size, folder_fps, rng):
    from PIL import Image

    files = frame_files(folder)
    if not files:
        raise DataError(f"folder of frames has no image files ({', '.join(FRAME_EXT)}): {folder}")
    n = len(files)
    if sampling == "keyframes":  # every stored image is a key frame: evenly spaced ones, at most N
        idx = np.round(np.linspace(0, n - 1, min(n, num_frames))).astype(int)
    else:
        times = sample_times(n / folder_fps, num_frames, sampling, fps, rng)
        idx = np.minimum(np.floor(times * folder_fps + 1e-6).astype(int), n - 1)
    out = []
    for k in idx:
        try:
            with Image.open(files[k]) as im:
                im = im.convert("RGB")
                if size:
                    im = im.resize((size, size), Image.BILINEAR)
                out.append(np.asarray(im, dtype=np.uint8))
        except Exception as exc:  # PIL raises many types on corrupt files
            raise DataError(f"cannot decode frame {files[k]}: {exc}") from None
    if size is None and len({a.shape for a in out}) > 1:
        raise DataError(f"frames of {folder} differ in size; give a frame size")
    return np.stack(out), idx / folder_fps


def load_video(src, cfg: dict, augment: bool = False, rng: np.random.Generator | None = None) -> dict:
    """A video cell → the encoder input {"frames": float32 (N, 3, S, S) normalised, "mask": bool (N,)}."""
    n = int(cfg["num_frames"])
    size = int(cfg["image_size"])
    frames, _ = read_frames(src, n, cfg.get("sampling", "uniform"), float(cfg.get("fps", 2.0)), size,
                            float(cfg.get("folder_fps", 25.0)), (rng or np.random.default_rng()) if augment else None)
    mean = np.asarray(cfg["mean"], np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(cfg["std"], np.float32).reshape(1, 3, 1, 1)
    out = np.zeros((n, 3, size, size), np.float32)
    k = len(frames)
    # (x / 255 - mean) / std in place: a tenth of the time of the temporaries-per-step expression
    np.copyto(out[:k], frames.transpose(0, 3, 1, 2), casting="unsafe")
    out[:k] *= 1.0 / (255.0 * std)
    out[:k] -= mean / std
    mask = np.zeros(n, bool)
    mask[:k] = True
    return {"frames": out, "mask": mask}


def video_placeholder(cfg: dict) -> dict:
    """A missing video: zero frames, all masked."""
    n, size = int(cfg["num_frames"]), int(cfg["image_size"])
    return {"frames": np.zeros((n, 3, size, size), np.float32), "mask": np.zeros(n, bool)}


# ---- sound track ---------------------------------------------------------------------------------------

def load_video_wave(src, sample_rate: int, max_seconds: float | None = None, augment: bool = False,
                    rng: np.random.Generator | None = None) -> np.ndarray | None:
    """The clip's first audio stream as mono float32 at `sample_rate`, cropped or zero-padded to `max_seconds`
    (a random crop when augmenting, as `audio.load_wave`); None when the clip has no sound."""
    if is_frame_folder(src):
        return None
    av = require_av()
    limit = math.ceil(max_seconds * sample_rate) if max_seconds and not augment else None
    chunks, got = [], 0
    with _open(src) as container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
                    got += chunks[-1].size
                if limit is not None and got >= limit:
                    break
            else:
                chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
        except Exception as exc:  # noqa: BLE001 - FFmpeg raises many types on corrupt data
            raise DataError(f"cannot decode the audio track of {_name(src)}: {exc}") from None
    wave = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    if wave.size == 0:
        return None
    if not np.isfinite(wave).all():
        raise DataError(f"audio samples are not finite (NaN or infinity) in {_name(src)}")
    return fit_length(wave, sample_rate, max_seconds, augment, rng)


def has_audio_track(src) -> bool:
    """True when the clip has an audio stream whose first frame decodes (False for unreadable clips too: the
    video input itself reports those)."""
    if is_frame_folder(src):
        return False
    try:
        with _open(src) as container:
            if not container.streams.audio:
                return False
            frame = next(container.decode(container.streams.audio[0]), None)
            return frame is not None and frame.samples > 0
    except Exception:  # noqa: BLE001 - any failure means no usable sound; the video input reports the file
        return False


# ---- checks --------------------------------------------------------------------------------------------

def check_video(path: str) -> str | None:
    """Cheap row check: the container opens and its first frame decodes (a folder: it holds frames)."""
    if is_frame_folder(path):
        return None if frame_files(path) else f"folder of frames has no image files: {path}"
    try:
        with _open(path) as container:
            if not container.streams.video:
                return f"no video stream in {path}"
            if next(container.decode(container.streams.video[0]), None) is None:
                return f"no frame could be decoded from {path}"
    except DataError as exc:
        return exc.detail
    except Exception as exc:  # noqa: BLE001 - any decoder error means the file is unusable
        return f"cannot decode video {path}: {exc}"
    return None


def decode_all(src) -> int:
    """Decode every frame (catches truncated files a header check misses); returns the frame count."""
    if is_frame_folder(src):
        from PIL import Image

        files = frame_files(src)
        for f in files:
            try:
                with Image.open(f) as im:
                    im.load()
            except Exception as exc:  # noqa: BLE001
                raise DataError(f"cannot decode frame {f}: {exc}") from None
        return len(files)
    with _open(src) as container:
        if not container.streams.video:
            raise DataError(f"no video stream in {_name(src)}")
        try:
            n = sum(1 for _ in container.decode(container.streams.video[0]))
        except Exception as exc:  # noqa: BLE001 - FFmpeg raises many types on corrupt data
            raise DataError(f"cannot decode video {_name(src)}: {exc}") from None
    if n == 0:
        raise DataError(f"no frame could be decoded from {_name(src)}")
    return n


def video_size(src) -> tuple[int, int]:
    """(width, height) from the headers (a folder: its first frame)."""
    if is_frame_folder(src):
        from PIL import Image

        files = frame_files(src)
        if not files:
            raise DataError(f"folder of frames has no image files: {src}")
        with Image.open(files[0]) as im:
            return im.size
    with _open(src) as container:
        if not container.streams.video:
            raise DataError(f"no video stream in {_name(src)}")
        ctx = container.streams.video[0].codec_context
        return int(ctx.width), int(ctx.height)
