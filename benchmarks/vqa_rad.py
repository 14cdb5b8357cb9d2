"""VQA-RAD as answer classification under two protocols (issue 18), closed and open questions scored apart.

- clean (the headline): train = freeform + para (1,797) + the `question_frame` rewrites of those training
  questions (983); nothing derived from a test question. Scored on all 451 test questions and on
  test_freeform (308).
- as published: MEVF's training file rebuilt from the public json (freeform + para + all 1,267 frames, i.e.
  also the rewrites of 284 test questions, with their answers) and MEVF's scoring (test_freeform only). Only
  for comparison with the papers, which trained on that file.

Answers are normalised as MEVF does (tools/compute_softscore.py: VQA punctuation/number/article rules,
contractions, commas dropped, "x ray" -> "xray"); one answer vocabulary from the training answers; a test
answer outside it counts as wrong. Validation for early stopping keeps each image's questions together
(`group_column="image"`): all 203 test images also occur in training, so a row-level split would lie.
Each row also gets the answerable ceiling and two lookups that learn nothing (the answer of the nearest
training question by TF-IDF cosine, over all training questions or only those about the same image).

python benchmarks/vqa_rad.py [--seeds 0 1 2] [--fusions concat ban] [--published-fusions ban]
                             [--protocols clean published]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from common import WORK, machine, need
from sklearn.feature_extraction.text import TfidfVectorizer

from polymodal import MultimodalPredictor
from polymodal.data.transforms import load_image
from polymodal.encoders import build_encoder
from polymodal.encoders.base import Encoder
from polymodal.training.text_metrics import normalize_answer

RESULTS = Path(__file__).parent / "results"
TRAIN_PHRASES, TEST_PHRASES = ("freeform", "para"), ("test_freeform", "test_para")
# MEVF's contraction table maps apostrophe-less spellings to the apostrophe form; VQA-RAD's answers contain
# none of the words in it (checked), so the negations stand for the whole table here
CONTRACTIONS = {w: w[:-2] + "n't" for w in ("isnt", "arent", "wasnt", "werent", "doesnt", "dont", "didnt",
                                            "hasnt", "havent", "cant", "couldnt", "shouldnt", "wouldnt")}
PUBLISHED = {  # (closed, open) accuracy % as the papers state them; trained on MEVF's file (test frames in)
    "MEVF + SAN (Nguyen et al., MICCAI 2019)": (74.1, 40.7),
    "MEVF + BAN (Nguyen et al., MICCAI 2019)": (75.1, 43.9),
    "MMQ (Do et al., MICCAI 2021; no outside images)": (75.8, 53.7),
    "QCR's re-run of MEVF + BAN, all 451 (Zhan et al. 2020)": (77.2, 49.2),
    "PubMedCLIP (Eslami et al. 2021; outside image-text pretraining)": (80.0, 60.1),
}


def mevf_answer(text: str) -> str:
    """MEVF's `preprocess_answer`: VQA normalisation, contractions, commas dropped, "x ray" → "xray"."""
    words = [CONTRACTIONS.get(w, w) for w in normalize_answer(text).split()]
    return " ".join(words).replace(",", "").replace("x ray", "xray")


def load() -> pd.DataFrame:
    root = need("vqa-rad")
    df = pd.DataFrame(json.loads((root / "VQA_RAD_Dataset_Public.json").read_text()))
    df["image"] = [str(root / "images" / n) for n in df["image_name"]]
    df["answer"] = df["answer"].map(mevf_answer)
    df["answer_type"] = df["answer_type"].astype(str).str.strip().str.lower()  # two read "CLOSED "
    frame = df["question_frame"].astype(str).str.strip()
    df["frame"] = frame.where(frame.str.upper() != "NULL")
    return df


def frames(rows: pd.DataFrame) -> pd.DataFrame:
    """The templated rewrites of `rows` as questions of their own (same image, same answer)."""
    f = rows[rows["frame"].notna()].copy()
    f["question"] = f["frame"]
    f["phrase_type"] = "frame"
    return f


def protocols(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    train = df[df["phrase_type"].isin(TRAIN_PHRASES)]
    clean = pd.concat([train, frames(train)], ignore_index=True)
    published = pd.concat([train, frames(df)], ignore_index=True)
    assert len(clean) == 1797 + 983 and len(published) == 3064, (len(clean), len(published))
    return {"clean": clean, "published": published}


def accuracy(pred: np.ndarray, test: pd.DataFrame) -> dict[str, float]:
    """% correct among closed and open questions (every question in the denominator)."""
    ok = pred == test["answer"].to_numpy()
    return {t: round(100 * float(ok[(test["answer_type"] == t).to_numpy()].mean()), 2) for t in ("closed", "open")}


def lookup(train: pd.DataFrame, test: pd.DataFrame, same_image: bool) -> np.ndarray:
    """Answer of the most similar training question (TF-IDF cosine on word 1-2 grams); with `same_image`,
    among the training questions about the same image when there are any."""
    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit(train["question"])
    sim = (vec.transform(test["question"]) @ vec.transform(train["question"]).T).toarray()
    if same_image:
        same = test["image"].to_numpy()[:, None] == train["image"].to_numpy()[None, :]
        sim = np.where(same.any(1, keepdims=True), np.where(same, sim, -1.0), sim)
    return train["answer"].to_numpy()[sim.argmax(1)]


def encoder_opts(args) -> dict:
    """Image size, and the partial fine-tuning split (--image-top / --text-top K: the last K blocks/layers)."""
    opts = {"image": {"image_size": args.image_size}}
    if args.image_top:
        opts["image"]["train_top"] = args.image_top
    if args.image_llrd:
        opts["image"]["layer_decay"] = args.image_llrd
    if args.text_top:
        opts["text"] = {"train_top": args.text_top}
    if args.text_llrd:
        opts.setdefault("text", {})["layer_decay"] = args.text_llrd
    return opts


# --group-by: what the validation split (and --bag's folds) keeps together. "image" (the default, the issue's
# rule): all the questions about an image. "question": a question with its paraphrase and templated rewrite
# (VQA-RAD's qid_linked_id), images shared across the split, as the clean test is (new questions, seen images).
GROUP_COLUMNS = {"image": "image", "question": "qid_linked_id"}


def fit_predict(train: pd.DataFrame, test: pd.DataFrame, fusion: str, seed: int, name: str,
                args) -> tuple[np.ndarray, dict]:
    opts = {"hidden": args.hidden, **({"glimpses": args.glimpses, "k": args.k} if fusion == "ban" else {})}
    # --bag K: the preset machinery with this one network as its only member: K group folds (an image's questions
    # in one fold), each fold's network early-stopped on its held-out fold, their probabilities averaged
    bag = {"preset": "balanced", "members": [f"fusion:{fusion}"], "folds": args.bag} if args.bag else {}
    p = MultimodalPredictor(**bag,
        label="answer", path=WORK / f"{Path(args.out).stem}_{name}_{fusion}_{seed}", verbose=False, progress=False,
        seed=seed,
        encoders={"image": args.image_encoder}, encoder_opts=encoder_opts(args),
        fusion=fusion, fusion_opts=opts, max_epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
        patience=args.patience, valid_fraction=0.15, class_weighting=False, group_column=GROUP_COLUMNS[args.group_by],
        column_types={"qid_linked_id": "id"} if args.group_by == "question" else {},
        dropout=args.dropout, label_smoothing=args.label_smoothing, weight_decay=args.weight_decay,
        cached_views=args.cached_views, group_batches=args.group_batches, average_epochs=args.average_epochs,
        label_groups=args.label_groups)
    t0 = time.time()
    cols = ["image", "question", "answer"] + (["qid_linked_id"] if args.group_by == "question" else []) \
        + ([args.label_groups] if args.label_groups else [])
    p.fit(train[cols])
    valid = p.metrics["valid"]
    info = {"valid_accuracy": round(100 * valid.get("accuracy", valid.get("oof_accuracy", float("nan"))), 2),
            "epochs": p.metrics.get("epochs"), "train_seconds": round(time.time() - t0)}
    if args.average_epochs and p._result is not None:  # which epochs (from 0) the kept weights average
        info["averaged_epochs"] = p._result.extra.get("averaged_epochs")
    pred = p.predict(test[["image", "question"]], engine="torch").to_numpy().astype(str)  # cached features
    info["seconds"] = round(time.time() - t0)
    return pred, info


def dedupe_timing(train: pd.DataFrame, steps: int, top: int = 3, size: int = 224) -> dict:
    """Training-step time of the image top over random 64-row batches of `train`, run once per row and once per
    distinct image (`Encoder.dedupe`), alternating in one process so that machine load affects both alike."""
    paths, inv = np.unique(train["image"].to_numpy(), return_inverse=True)
    enc = build_encoder("image", "efficientnet-lite0", image_size=size, train_top=top).freeze()
    cfg = enc.preprocess_config()
    with torch.no_grad():  # the cached prefix, float16 as the feature cache stores it
        pre = torch.cat([enc.prefix(torch.from_numpy(np.stack([load_image(p, size, cfg["mean"], cfg["std"])
                                                               for p in paths[s:s + 32]])))
                         for s in range(0, len(paths), 32)]).half()
    enc.train()
    rng, times, distinct = np.random.default_rng(0), {True: [], False: []}, []
    for b in range(steps):
        rows = rng.choice(len(inv), 64, replace=False)
        h = pre[torch.from_numpy(inv[rows])].float()
        distinct.append(len(set(inv[rows])))
        for dedupe in (True, False) if b % 2 else (False, True):
            enc.dedupe = dedupe
            enc.zero_grad()
            t = time.perf_counter()
            enc.from_prefix(h).square().sum().backward()
            times[dedupe].append(time.perf_counter() - t)
    per_row, once = float(np.median(times[False])), float(np.median(times[True]))
    return {"distinct_images_per_batch": round(float(np.mean(distinct)), 1), "step_seconds_per_row": round(per_row, 3),
            "step_seconds_deduplicated": round(once, 3), "speedup": round(per_row / once, 2)}


def mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": round(float(np.mean(values)), 2), "std": round(float(np.std(values)), 2), "n": len(values)}


def cell(v) -> str:
    return f"{v['mean']:.1f} ± {v['std']:.1f}" if isinstance(v, dict) else f"{v:.1f}"


def markdown(result: dict) -> str:
    """One table per protocol and test set: our fusions (mean ± std over seeds), the baselines, the papers."""
    parts = []
    for key, title in (("clean/all", "clean, all 451 test questions"),
                       ("clean/freeform", "clean, test_freeform (308)"),
                       ("published/freeform", "as published (MEVF's training file, test frames in), test_freeform"),
                       ("published/all", "as published, all 451")):
        name, s = key.split("/")
        if key not in result["baselines"]:
            continue
        lines = [f"**{title}**", "", "| model | closed (%) | open (%) |", "|---|---|---|"]
        for fk, cells in result["ablation"].items():
            if fk.startswith(name + "/"):
                n = cells[f"closed_{s}"]["n"]
                lines.append(f"| polymodal, {fk.split('/')[1]} fusion ({n} seed{'s' * (n > 1)}) | "
                             f"{cell(cells[f'closed_{s}'])} | {cell(cells[f'open_{s}'])} |")
        for bk, acc in result["baselines"][key].items():
            lines.append(f"| {bk} | {acc['closed']:.1f} | {acc['open']:.1f} |")
        if key == "published/freeform":
            lines += [f"| {m} | {v['closed']:.1f} | {v['open']:.1f} |" for m, v in result["published_methods"].items()]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--fusions", nargs="+", default=["concat", "ban"], help="fusions trained on the clean protocol")
    ap.add_argument("--published-fusions", nargs="+", default=["ban"],
                    help="fusions trained on MEVF's file (only to compare with the papers; saves CPU time)")
    ap.add_argument("--protocols", nargs="+", default=["clean", "published"])
    ap.add_argument("--headline", default="ban", help="the fusion whose rows fill the clean_*/published_* keys")
    ap.add_argument("--image-encoder", default="efficientnet-lite0")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--image-top", type=int, default=0, help="fine-tune the image encoder's last K blocks")
    ap.add_argument("--text-top", type=int, default=0, help="fine-tune the text encoder's last K layers")
    ap.add_argument("--image-llrd", type=float, default=0.0,
                    help="layer-wise lr decay over the fine-tuned image top (finetune image:llrd=D)")
    ap.add_argument("--text-llrd", type=float, default=0.0,
                    help="layer-wise lr decay over the fine-tuned text top (finetune text:llrd=D)")
    ap.add_argument("--cached-views", type=int, default=0,
                    help="augmented views cached per image (fit --cached-views): augmentation for cached encoders")
    ap.add_argument("--average-epochs", type=int, default=0, metavar="K",
                    help="keep the mean weights of the last K epochs (fit --average-epochs), not the best one")
    ap.add_argument("--label-groups", metavar="COL", default=None,
                    help="fit --label-groups COL (answer_type: a closed/open group classifier and a head per group); "
                         "a training-only column, the test questions' is not read")
    ap.add_argument("--bag", type=int, default=0, metavar="K",
                    help="K-fold bag of the network (fit --preset balanced --members fusion:F --folds K)")
    ap.add_argument("--group-by", choices=sorted(GROUP_COLUMNS), default="image",
                    help="validation groups: image (default) or question (a question and its rewrites)")
    ap.add_argument("--group-batches", action="store_true",
                    help="batches hold all the questions of a few images (fit --group-batches)")
    ap.add_argument("--no-dedupe", action="store_true",
                    help="run a fine-tuned top once per row instead of once per distinct cached input (timing)")
    ap.add_argument("--dedupe-timing", type=int, default=0, metavar="STEPS",
                    help="only time the image top's training step with and without de-duplication (clean rows)")
    ap.add_argument("--hidden", type=int, default=128, help="fusion width")
    ap.add_argument("--glimpses", type=int, default=2)
    ap.add_argument("--k", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--patience", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--dropout", type=float, default=0.2)
    ap.add_argument("--label-smoothing", type=float, default=0.0)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--out", default=str(RESULTS / "vqa_rad.json"))
    args = ap.parse_args()
    Encoder.dedupe = not args.no_dedupe
    start = time.time()
    df = load()
    if args.dedupe_timing:
        print(json.dumps(dedupe_timing(protocols(df)["clean"], args.dedupe_timing, args.image_top or 3)))
        return
    test = df[df["phrase_type"].isin(TEST_PHRASES)].reset_index(drop=True)
    free = (test["phrase_type"] == "test_freeform").to_numpy()
    sets = {"all": np.ones(len(test), bool), "freeform": free}
    result: dict = {"command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
                    "machine": machine(), "date": time.strftime("%Y-%m-%d"),
                    "test_questions": {s: {t: int(((test["answer_type"] == t).to_numpy() & m).sum())
                                           for t in ("closed", "open")} for s, m in sets.items()},
                    "baselines": {}, "runs": [], "ablation": {}}
    trains = {k: v for k, v in protocols(df).items() if k in args.protocols}
    for name, train in trains.items():
        seen = set(train["answer"])
        for s, m in sets.items():
            base = {"ceiling (test answer in the training answers)": test["answer"].isin(seen).to_numpy(),
                    "majority answer": np.full(len(test), train["answer"].mode()[0]) == test["answer"].to_numpy()}
            rows = {k: accuracy(np.where(v[m], test["answer"].to_numpy()[m], ""), test[m]) for k, v in base.items()}
            for same in (False, True):
                key = f"nearest training question (TF-IDF{', same image' if same else ''})"
                rows[key] = accuracy(lookup(train, test[m], same), test[m])
            result["baselines"][f"{name}/{s}"] = rows
            print(name, s, rows, flush=True)
    for name, train in trains.items():
        for fusion in args.fusions if name == "clean" else args.published_fusions:
            for seed in args.seeds:
                pred, info = fit_predict(train, test, fusion, seed, name, args)
                row = {"protocol": name, "fusion": fusion, "seed": seed, **info}
                for s, m in sets.items():
                    row[s] = accuracy(pred[m], test[m])
                result["runs"].append(row)
                print(row, f"({time.time() - start:.0f} s so far)", flush=True)
    runs = pd.DataFrame(result["runs"])
    for (name, fusion), g in runs.groupby(["protocol", "fusion"]):
        result["ablation"][f"{name}/{fusion}"] = {
            f"{t}_{s}": mean_std([r[s][t] for r in g.to_dict("records")]) for s in sets for t in ("closed", "open")}
    for name, s, key in (("published", "freeform", "published"), ("clean", "all", "clean"),
                         ("clean", "freeform", "clean")):
        cell = result["ablation"].get(f"{name}/{args.headline}")
        if cell:
            suffix = "" if key == "published" else f"_{s}"
            for t in ("closed", "open"):
                result[f"{key}_{t}{suffix}"] = cell[f"{t}_{s}"]
    result["published_methods"] = {k: {"closed": c, "open": o} for k, (c, o) in PUBLISHED.items()}
    result["wall_seconds"] = round(time.time() - start)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(markdown(result))


if __name__ == "__main__":
    main()
