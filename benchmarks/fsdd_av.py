"""FSDD spoken digits + scikit-learn 8x8 digit images: audio-only, image-only and fused accuracy.

python benchmarks/fsdd_av.py [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
from common import WORK, fsdd_av_tables, write_markdown

from polymodal import MultimodalPredictor


def run(train: pd.DataFrame, test: pd.DataFrame, cols: list[str], seed: int, fusion: str, epochs: int) -> dict:
    t0 = time.time()
    p = MultimodalPredictor(
        label="digit", path=None, verbose=False, progress=False, seed=seed, fusion=fusion,
        encoders={"image": "small-cnn"},
        encoder_opts={"image": {"image_size": 32}, "audio": {"sample_rate": 8000, "max_seconds": 1.0}},
        max_epochs=epochs, batch_size=64, lr=2e-3, patience=6, num_workers=1)
    p.fit(train[cols + ["digit"]])
    m = p.evaluate(test[cols + ["digit"]])
    return {"accuracy": m["accuracy"], "seconds": time.time() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "fsdd_av.md"))
    args = ap.parse_args()
    train, test = fsdd_av_tables()
    WORK.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, cols, fusion in [("audio only", ["audio"], "concat"), ("image only", ["image"], "concat"),
                               ("audio + image (concat)", ["audio", "image"], "concat"),
                               ("audio + image (late)", ["audio", "image"], "late")]:
        accs, secs = [], []
        for seed in args.seeds:
            r = run(train, test, cols, seed, fusion, args.epochs)
            accs.append(100 * r["accuracy"])
            secs.append(r["seconds"])
            print(name, seed, r, flush=True)
        s = pd.Series(accs)
        rows.append({"model": name, "test accuracy (%)": f"{s.mean():.2f} ± {s.std(ddof=0):.2f}",
                     "seeds": len(accs), "train+eval seconds": f"{sum(secs) / len(secs):.0f}"})
    write_markdown(args.out, "FSDD spoken digits + scikit-learn digit images (300 test pairs)",
                   f"python benchmarks/fsdd_av.py --seeds {' '.join(map(str, args.seeds))} --epochs {args.epochs}",
                   pd.DataFrame(rows),
                   "Audio: log-mel CNN trained from scratch (8 kHz, 1 s); image: small CNN from scratch on 8x8 "
                   "digits upscaled to 32x32. Official FSDD split (takes 0-4 test); speaker column ignored.")


if __name__ == "__main__":
    main()
