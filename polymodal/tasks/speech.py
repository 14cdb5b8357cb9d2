"""Speech recognition with the converted Whisper, and word error rate."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from polymodal.data.audio import WHISPER_SAMPLE_RATE, WHISPER_SAMPLES, load_wave, resample
from polymodal.encoders.whisper import load_whisper
from polymodal.errors import PolymodalError

AudioInput = Any  # a path, a 16 kHz mono waveform, or (waveform, sample_rate)
_LOADED: dict[str, tuple] = {}


def _model(model) -> tuple:
    """(model, processor) from None (the packaged tiny.en, loaded once per process), a name or a pair."""
    if model is None or isinstance(model, str):
        name = model or "tiny.en"
        if name not in _LOADED:
            _LOADED[name] = load_whisper(name)
        return _LOADED[name]
    return model


def _wave(item: AudioInput) -> np.ndarray:
    if isinstance(item, (str, Path)):
        return load_wave(str(item), WHISPER_SAMPLE_RATE)
    if isinstance(item, tuple):
        wave, sr = item
        wave = np.asarray(wave, np.float32)
        wave = wave.mean(axis=1) if wave.ndim == 2 else wave
        return resample(wave, sr, WHISPER_SAMPLE_RATE) if sr != WHISPER_SAMPLE_RATE else wave
    wave = np.asarray(item, np.float32)
    return wave.mean(axis=1) if wave.ndim == 2 else wave


@torch.inference_mode()
def transcribe(paths_or_waves: Sequence[AudioInput] | AudioInput, model=None, beam_size: int = 1,
               language_hint: str | None = None, batch_size: int = 8, max_new_tokens: int = 128) -> list[str]:
    """Transcribe audio files or waveforms (greedy for beam_size=1, else beam search).

    `model`: None for the packaged Whisper tiny.en, a name for `load_whisper`, or a (model, processor)
    pair. Audio longer than Whisper's 30 s window is cut into consecutive 30 s pieces whose texts are
    joined. `language_hint` ("en", "french", ...) picks the language of multilingual models; English-only
    models accept only English.
    """
    if isinstance(paths_or_waves, (str, Path, tuple, np.ndarray)):
        paths_or_waves = [paths_or_waves]
    if beam_size < 1:
        raise PolymodalError(f"beam_size must be ≥ 1, got {beam_size}")
    whisper, processor = _model(model)
    gen = whisper.generation_config
    multilingual = bool(getattr(gen, "is_multilingual", False))
    if not multilingual and language_hint not in (None, "en", "english", "English"):
        raise PolymodalError(f"this Whisper is English-only; language_hint={language_hint!r} is not possible")
    pieces, owner = [], []
    for i, item in enumerate(paths_or_waves):
        wave = _wave(item)
        for s in range(0, max(len(wave), 1), WHISPER_SAMPLES):
            pieces.append(wave[s:s + WHISPER_SAMPLES])
            owner.append(i)
    texts = [""] * len(pieces)
    device = next(whisper.parameters()).device
    for s in range(0, len(pieces), batch_size):
        chunk = pieces[s:s + batch_size]
        feats = processor.feature_extractor(chunk, sampling_rate=WHISPER_SAMPLE_RATE,
                                            return_tensors="pt").input_features
        kwargs: dict[str, Any] = {"num_beams": beam_size, "max_new_tokens": max_new_tokens}
        if multilingual:
            kwargs.update(language=language_hint, task="transcribe")
        else:
            # The same prompt CTranslate2 is given: <|startoftranscript|><|notimestamps|>. Without it, HF's
            # generate() starts from <|startoftranscript|> alone and decodes differently.
            prompt = [gen.decoder_start_token_id, gen.no_timestamps_token_id]
            kwargs["decoder_input_ids"] = torch.tensor([prompt] * len(chunk), device=device)
        out = whisper.generate(input_features=feats.to(device, next(whisper.parameters()).dtype), **kwargs)
        for j, seq in enumerate(out.tolist()):
            # every id from <|endoftext|> up is a special or timestamp token
            words = [t for t in seq if t < gen.eos_token_id]
            texts[s + j] = processor.tokenizer.decode(words, skip_special_tokens=True).strip()
    joined = [""] * len(paths_or_waves)
    for i, text in zip(owner, texts, strict=True):
        joined[i] = f"{joined[i]} {text}".strip()
    return joined


# --------------------------------------------------------------------------- word error rate

_NUMBERS = {str(i): w for i, w in enumerate(["zero", "one", "two", "three", "four", "five", "six", "seven",
                                              "eight", "nine"])}


def normalize_words(text: str, digits_to_words: bool = True) -> list[str]:
    """Lower-case words with punctuation removed; single digits 0-9 become words ("7." → "seven")."""
    text = text.lower().replace("-", " ")
    words = re.sub(r"[^\w\s']", " ", text).replace("_", " ").split()
    words = [w.strip("'") for w in words if w.strip("'")]
    if digits_to_words:
        words = [_NUMBERS.get(w, w) for w in words]
    return words


@dataclass
class UtteranceWER:
    ref: str
    hyp: str
    ref_words: int
    substitutions: int
    deletions: int
    insertions: int

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def wer(self) -> float:
        # An empty reference has WER 0 when the hypothesis is empty too, else 1 (jiwer raises instead).
        return self.errors / self.ref_words if self.ref_words else float(self.errors > 0)


def _align(ref: list[str], hyp: list[str]) -> tuple[int, int, int]:
    """(substitutions, deletions, insertions) of a minimum-edit word alignment.

    A plain Levenshtein DP with a backtrace: jiwer does the same but is not a dependency, and the counts
    per edit type are what the per-utterance breakdown needs.
    """
    n, m = len(ref), len(hyp)
    d = np.zeros((n + 1, m + 1), np.int64)
    d[:, 0], d[0, :] = np.arange(n + 1), np.arange(m + 1)
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            d[i, j] = min(d[i - 1, j - 1] + (ref[i - 1] != hyp[j - 1]), d[i - 1, j] + 1, d[i, j - 1] + 1)
    s = dl = ins = 0
    i, j = n, m
    while i or j:
        if i and j and d[i, j] == d[i - 1, j - 1] + (ref[i - 1] != hyp[j - 1]):
            s += ref[i - 1] != hyp[j - 1]
            i, j = i - 1, j - 1
        elif i and d[i, j] == d[i - 1, j] + 1:
            dl, i = dl + 1, i - 1
        else:
            ins, j = ins + 1, j - 1
    return int(s), dl, ins


def wer_breakdown(refs: Sequence[str], hyps: Sequence[str],
                  digits_to_words: bool = True) -> list[UtteranceWER]:
    """Per-utterance substitutions / deletions / insertions after `normalize_words`."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    out = []
    for r, h in zip(refs, hyps, strict=True):
        rw, hw = normalize_words(r, digits_to_words), normalize_words(h, digits_to_words)
        out.append(UtteranceWER(r, h, len(rw), *_align(rw, hw)))
    return out


def word_error_rate(refs: Sequence[str], hyps: Sequence[str], digits_to_words: bool = True) -> float:
    """Corpus WER: total word edits / total reference words (as jiwer.wer computes it)."""
    rows = wer_breakdown(refs, hyps, digits_to_words)
    total = sum(r.ref_words for r in rows)
    if total == 0:
        raise ValueError("the references hold no words")
    return sum(r.errors for r in rows) / total
