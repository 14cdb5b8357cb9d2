"""VQA-RAD closed questions as answer classification, against the MEVF baselines (74.1 / 75.1).

python benchmarks/vqa_rad.py [--seeds 0 1 2] [--finetune text] [--image-size 224]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
from common import WORK, vqa_rad_tables, write_markdown

from polymodal import MultimodalPredictor


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--fusion", default="concat")
    ap.add_argument("--finetune", default="", help="comma list of modalities to fine-tune (image,text)")
    ap.add_argument("--image-encoder", default="efficientnet-lite0")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "vqa_rad_closed.md"))
    args = ap.parse_args()
    train, test = vqa_rad_tables(closed_only=True)
    # Answers seen only in test cannot be predicted by a classifier; they stay in the denominator.
    rows = []
    for seed in args.seeds:
        t0 = time.time()
        frozen = {m: False for m in args.finetune.split(",") if m}
        p = MultimodalPredictor(
            label="answer", path=WORK / f"vqa_rad_{seed}", verbose=False, progress=False, seed=seed,
            encoders={"image": args.image_encoder}, encoder_opts={"image": {"image_size": args.image_size}},
            frozen=frozen, fusion=args.fusion, max_epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
            patience=8, valid_fraction=0.15, class_weighting=False)
        p.fit(train)
        known = test[test["answer"].isin(set(p.prep.classes))]
        pred = p.predict(known)
        correct = int((pred.to_numpy() == known["answer"].to_numpy()).sum())
        acc = correct / len(test)
        rows.append({"seed": seed, "test accuracy (closed, %)": round(100 * acc, 2),
                     "valid accuracy (%)": round(100 * p.metrics["valid"]["accuracy"], 2),
                     "epochs": p.metrics["epochs"], "seconds": round(time.time() - t0)})
        print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    accs = table["test accuracy (closed, %)"].to_numpy()
    summary = pd.DataFrame([
        {"model": f"polymodal ({args.fusion}, image {args.image_encoder} {args.image_size}px, MiniLM"
                  f"{', fine-tuned ' + args.finetune if args.finetune else ', frozen'})",
         "closed accuracy (%)": f"{accs.mean():.1f} ± {accs.std():.1f} ({len(accs)} seeds)"},
        {"model": "SAN + MEVF (Nguyen et al. 2019)", "closed accuracy (%)": "74.1"},
        {"model": "BAN + MEVF (Nguyen et al. 2019)", "closed accuracy (%)": "75.1"},
        {"model": "majority answer ('no'/'yes' prior)",
         "closed accuracy (%)": f"{100 * (test['answer'] == train['answer'].mode()[0]).mean():.1f}"}])
    cmd = "python benchmarks/vqa_rad.py " + " ".join(
        f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in vars(args).items() if k != "out" and v != "")
    write_markdown(args.out, "VQA-RAD closed questions (272 test questions)", cmd,
                   pd.concat([summary]), "Per seed:\n\n" + table.to_markdown(index=False))
    np.save(WORK / "vqa_rad_accs.npy", accs)


if __name__ == "__main__":
    main()
