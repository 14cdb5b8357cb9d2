"""VQA-RAD open questions answered by generation (task vqa-open), against MEVF's open accuracy (40.7 / 43.9).

python benchmarks/vqa_rad_open.py [--seeds 0 1 2] [--epochs 20] [--no-classifier]

One generative model per seed is trained on all MEVF training questions (open and closed, 1,797) and scored
by exact match (VQA answer normalisation) on the 179 open and 272 closed test questions. For reference, the
answer classifier on the same frozen features (`MultimodalPredictor(label="answer")`, concat fusion) is
scored the same way: it can only name answers seen in training.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
from common import WORK, vqa_rad_tables, write_markdown

from polymodal import MultimodalPredictor
from polymodal.training.text_metrics import exact_match, normalize_answer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--label-smoothing", type=float, default=0.1)
    ap.add_argument("--num-beams", type=int, default=3)
    ap.add_argument("--no-classifier", action="store_true", help="skip the answer-classifier reference rows")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "vqa_rad_open.md"))
    args = ap.parse_args()
    train, test = vqa_rad_tables(closed_only=False, with_answer_type=True)
    is_open = (test["answer_type"] == "open").to_numpy()
    seen = {normalize_answer(a) for a in train["answer"]}
    open_seen = np.mean([normalize_answer(a) in seen for a in test["answer"][is_open]])
    rows, per_seed = [], []
    for seed in args.seeds:
        t0 = time.time()
        p = MultimodalPredictor(
            label="answer", task="vqa-open", path=WORK / f"vqa_rad_open_{seed}", verbose=False, progress=False,
            seed=seed, encoder_opts={"image": {"image_size": args.image_size}}, d_model=args.d_model,
            layers=args.layers, max_epochs=args.epochs, patience=6, lr=args.lr, batch_size=32,
            label_smoothing=args.label_smoothing, max_target_tokens=24)
        p.fit(train)
        fit_s = time.time() - t0
        for name, settings in (("greedy", {"method": "greedy"}),
                               (f"beam {args.num_beams}", {"method": "beam", "num_beams": args.num_beams})):
            m = p.evaluate(test, **settings)
            per_seed.append({"seed": seed, "model": f"polymodal vqa-open ({name})",
                             "open (%)": 100 * m["accuracy_open"], "closed (%)": 100 * m["accuracy_closed"],
                             "all (%)": 100 * m["accuracy"], "BLEU-1 (all)": m["bleu_1"],
                             "epochs": p.metrics["epochs"], "fit s": round(fit_s)})
            print(per_seed[-1], flush=True)
        if not args.no_classifier:
            t0 = time.time()
            c = MultimodalPredictor(
                label="answer", path=WORK / f"vqa_rad_open_cls_{seed}", verbose=False, progress=False, seed=seed,
                encoder_opts={"image": {"image_size": args.image_size}}, max_epochs=30, lr=1e-3, batch_size=32,
                patience=8, valid_fraction=0.15, class_weighting=False)
            c.fit(train.drop(columns="answer_type"))
            known = test["answer"].isin(set(c.prep.classes)).to_numpy()
            pred = np.array([""] * len(test), dtype=object)
            pred[known] = c.predict(test[known].drop(columns="answer_type")).to_numpy()  # unseen: always wrong
            refs = test["answer"].to_numpy()
            per_seed.append({"seed": seed, "model": "answer classifier, same features (concat)",
                             "open (%)": 100 * exact_match(list(pred[is_open]), list(refs[is_open])),
                             "closed (%)": 100 * exact_match(list(pred[~is_open]), list(refs[~is_open])),
                             "all (%)": 100 * exact_match(list(pred), list(refs)), "BLEU-1 (all)": np.nan,
                             "epochs": c.metrics["epochs"], "fit s": round(time.time() - t0)})
            print(per_seed[-1], flush=True)
    seeds = pd.DataFrame(per_seed)
    for model, g in seeds.groupby("model", sort=False):
        rows.append({"model": model, **{col: f"{g[col].mean():.1f} ± {g[col].std(ddof=0):.1f}"
                                        for col in ("open (%)", "closed (%)", "all (%)")}})
    rows += [{"model": "SAN + MEVF (Nguyen et al. 2019)", "open (%)": "40.7", "closed (%)": "74.1",
              "all (%)": ""},
             {"model": "BAN + MEVF (Nguyen et al. 2019)", "open (%)": "43.9", "closed (%)": "75.1",
              "all (%)": ""},
             {"model": "ceiling for any answer classifier: open test answers seen in training",
              "open (%)": f"{100 * open_seen:.1f}", "closed (%)": "", "all (%)": ""}]
    table = pd.DataFrame(rows)
    cmd = "python benchmarks/vqa_rad_open.py " + " ".join(
        f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in vars(args).items() if k not in ("out", "no_classifier")) + \
        (" --no-classifier" if args.no_classifier else "")
    notes = f"""
Mean ± std over {len(args.seeds)} seeds (exact match after VQA answer normalisation, per test question).
Train: MEVF's 1,797 freeform + paraphrased questions (open and closed together; 10% of the (image, question)
pairs held out for early stopping); test: the 451 test_freeform + test_para questions (179 open, 272 closed).
Inputs: EfficientNet-Lite0 {args.image_size} px grid tokens and MiniLM-L6 question tokens, both frozen and
cached; the decoder ({args.layers} layers, width {args.d_model}) cross-attends to them and writes the answer
with MiniLM's WordPiece vocabulary (restricted to the tokens training answers use).

The ceiling row counts open test answers that occur, after normalisation, among the training answers: an
answer classifier can name nothing else, and a decoder gets credit beyond it only by composing an unseen
answer word for word. The image features are ImageNet ones (frozen), where MEVF pre-trains on medical images.

Per seed:

{seeds.round(2).to_markdown(index=False)}
"""
    write_markdown(args.out, "VQA-RAD open questions by generation (179 open / 272 closed test questions)", cmd,
                   table, notes)


if __name__ == "__main__":
    main()
