"""Round trip text → speech → text: word error rate of Whisper tiny.en on what each TTS engine says.

python benchmarks/speak_roundtrip.py [--engines piper piper-noisy espeak-ng] [--run RUN --images 100]

Sets: the 24 distinct easy-vqa captions ("a blue circle": colour + shape, the texts a caption run writes), and
30 ordinary sentences (the 20 of transcribe_wer.py plus 10 more with numbers, names and questions). Each text
is voiced by `polymodal.tasks.tts.speak` and transcribed by `polymodal.tasks.speech.transcribe` (greedy), in
memory. With `--run` (a caption run folder, e.g. the one caption_easy_vqa.py trains), easy-vqa test images
also go the whole way: image → generated caption → speech → transcript, scored against the reference caption.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from common import write_markdown
from transcribe_wer import SENTENCES

from polymodal.demo import easy_vqa_captions
from polymodal.predictor import MultimodalPredictor
from polymodal.tasks.speech import normalize_words, transcribe, wer_breakdown, word_error_rate
from polymodal.tasks.tts import engine_status, load_engine

MORE_SENTENCES = [
    "There are twelve eggs in a dozen and seven days in a week.",
    "Where did you park the car this morning?",
    "Anna and Peter are getting married in June.",
    "The library opens at eight and closes at six.",
    "Could you pass me the salt and pepper, please?",
    "A small green frog sat quietly on the lily pad.",
    "The price of bread has gone up again this year.",
    "Remember to lock the door when you leave the house.",
    "The river flows slowly through the old stone bridge.",
    "Two hundred people came to the concert on Saturday night.",
]
# name → (engine, options): piper as polymodal runs it (sampling noise off: deterministic), and with the voice's
# own sampling noises (noise_scale 0.667, noise_w 0.8: every call differs)
VARIANTS = {"piper": ("piper", {}), "piper-noisy": ("piper", {"noise_scale": None, "noise_w": None}),
            "espeak-ng": ("espeak-ng", {}), "espeak-ng-140": ("espeak-ng", {"rate": 140})}


def round_trip(variant: str, texts: list[str], refs: list[str] | None = None) -> tuple[dict, list]:
    engine, options = VARIANTS[variant]
    voice = load_engine(engine, **options)
    voice.synthesize("warm up")
    t0 = time.perf_counter()
    audio = [(voice.synthesize(t), voice.sample_rate) for t in texts]
    synth = time.perf_counter() - t0
    seconds = sum(len(w) / sr for w, sr in audio)
    t1 = time.perf_counter()
    hyps = transcribe(audio)
    asr = time.perf_counter() - t1
    refs = refs or texts
    rows = wer_breakdown(refs, hyps)
    exact = np.mean([normalize_words(r) == normalize_words(h) for r, h in zip(refs, hyps, strict=True)])
    return {"engine": f"{variant}: {voice.describe()}", "texts": len(texts),
            "WER %": round(100 * word_error_rate(refs, hyps), 2),
            "S/D/I": "/".join(str(sum(getattr(r, k) for r in rows)) for k in ("substitutions", "deletions",
                                                                            "insertions")),
            "texts exactly right %": round(100 * exact, 1), "audio s / text": round(seconds / len(texts), 2),
            "synthesis real-time factor": round(synth / seconds, 3),
            "transcribe s / text": round(asr / len(texts), 3)}, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--engines", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--run", default=None, help="a caption run folder trained on easy-vqa: image → speech rows")
    ap.add_argument("--images", type=int, default=100, help="easy-vqa test images for --run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "speak_roundtrip.md"))
    args = ap.parse_args()
    command = " ".join(["python benchmarks/speak_roundtrip.py", *sys.argv[1:]])
    status = engine_status()
    captions = sorted(set(easy_vqa_captions("test")["caption"]))
    sentences = SENTENCES + MORE_SENTENCES
    generated = None
    if args.run:
        images = easy_vqa_captions("test", args.images, seed=args.seed)
        p = MultimodalPredictor.load(args.run)
        generated = (images, p.predict(images[["image"]]).tolist())
    results, notes = [], []
    for variant in args.engines:
        engine = VARIANTS[variant][0]
        if status[engine] is not None:
            notes.append(f"{variant} skipped: {status[engine]}")
            continue
        for set_name, texts, refs in (("easy-vqa captions (24 distinct)", captions, None),
                                      ("ordinary sentences", sentences, None),
                                      *([(f"easy-vqa test images → caption run → speech ({args.images})",
                                          generated[1], generated[0]["caption"].tolist())] if generated else [])):
            res, rows = round_trip(variant, texts, refs)
            results.append({"set": set_name, **res})
            print(results[-1], flush=True)
            wrong = [f"'{r.ref}' → '{r.hyp}'" for r in rows if r.errors]
            if wrong:
                notes.append(f"{variant}, {set_name}: " + "; ".join(wrong[:12])
                             + (f" (+{len(wrong) - 12} more)" if len(wrong) > 12 else ""))
    if generated:
        images, texts = generated
        notes.append(f"caption run {args.run}: generated captions exactly right on "
                     f"{100 * np.mean([t.strip(' .') == c for t, c in zip(texts, images['caption'])]):.1f} % of "
                     "the images (the WER of the image rows counts caption and speech errors together)")
    notes.append("Whisper tiny.en greedy, batch size 8, on the engine's 22.05 kHz audio resampled to 16 kHz. "
                 "real-time factor = synthesis wall time / audio duration (one process, torch and onnxruntime "
                 f"threads at their defaults); load average when it finished: {os.getloadavg()[0]:.1f} on "
                 f"{os.cpu_count()} cores.")
    write_markdown(args.out, "Text → speech → text: Whisper tiny.en WER per TTS engine", command,
                   pd.DataFrame(results), "\n\n".join(notes))


if __name__ == "__main__":
    main()
