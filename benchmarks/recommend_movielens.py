"""MovieLens-100K recommendation benchmark (issue 17), NCF protocol on the fixed split
(splits/loo_test_99neg.csv: each user's latest interaction vs 99 sampled negatives), plus full-ranking
Recall@10 / NDCG@10 (the test item among every item the user has not rated) and a cold-item split.

Rows: popularity, ItemKNN, EASE (λ chosen on a validation split carved from training: each user's
second-latest interaction vs 99 negatives; and λ = 500 as in SOURCE.md), and the two-tower model through the
product's own front (`Recommender.fit`): id-only, id + content (poster image, plot text, year / genres /
runtime / language; user age / gender / occupation), content-only (no item id embedding), and one-seed
ablations on the cold split (poster only, plot only, tabular only). Cold items: 15% of the items lose every training
interaction; each user with one of them is tested on their latest cold item against 99 other cold items
they never rated (sampled HR/NDCG) and on all their cold items among every cold item (Recall@10).

    nice -n 10 .venv/bin/python benchmarks/recommend_movielens.py [--data DIR] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from polymodal.recommend.baselines import ease, interaction_matrix, item_knn, popularity
from polymodal.recommend.data import (
    ITEM,
    NEGATIVES,
    TIME,
    USER,
    Vocab,
    cold_item_split,
    leave_one_out,
    read_holdout,
    read_interactions,
    sample_negatives,
    sequences,
)
from polymodal.recommend.metrics import full_ranking_metrics, sampled_metrics
from polymodal.recommend.recommender import Recommender

DATA = Path("/work/shared/data/movielens-100k-posters")
GENRES = ["g_unknown", "g_Action", "g_Adventure", "g_Animation", "g_Childrens", "g_Comedy", "g_Crime",
          "g_Documentary", "g_Drama", "g_Fantasy", "g_FilmNoir", "g_Horror", "g_Musical", "g_Mystery", "g_Romance",
          "g_SciFi", "g_Thriller", "g_War", "g_Western"]
TABULAR = ["year", "runtime", "original_language", *GENRES]
USER_COLUMNS = ["age", "gender", "occupation"]
TRAIN = {"epochs": 10, "loss": "full-softmax", "patience": 2, "max_history": 32}  # 2 shared CPU cores: short
# name → (item columns, user columns, model options, extra train options); None = no side table
VARIANTS = {
    "two-tower id-only": ([], None, {}, {}),
    "two-tower id + content (poster, plot, tabular; user columns)": (
        ["image_path", "overview", *TABULAR], USER_COLUMNS, {}, {"item_id_dropout": 0.3}),
    "two-tower content-only (no item id)": (["image_path", "overview", *TABULAR], USER_COLUMNS,
                                            {"item_id": False}, {}),
}
ABLATIONS = {  # content-only towers (no item id), cold split, one seed: which content carries cold items
    "content-only: poster + tabular": (["image_path", *TABULAR], USER_COLUMNS, {"item_id": False}, {}),
    "content-only: plot + tabular": (["overview", *TABULAR], USER_COLUMNS, {"item_id": False}, {}),
    "content-only: tabular": (TABULAR, USER_COLUMNS, {"item_id": False}, {}),
}
METRICS = ("hr@10", "ndcg@10", "mrr", "recall@10", "full_ndcg@10")


def baseline_metrics(scorer, users: Vocab, items: Vocab, holdout: pd.DataFrame, x_train: np.ndarray) -> dict:
    """Sampled HR/NDCG/MRR on the holdout's candidates and full-ranking Recall/NDCG (training items excluded)."""
    u = users.lookup(holdout[USER].tolist(), "user")
    cand = np.column_stack([items.lookup(holdout[ITEM].tolist(), "item"),
                            np.array([items.lookup(n, "item") for n in holdout[NEGATIVES]])])
    s = scorer(u)
    picked = np.take_along_axis(s, cand, axis=1)
    out = sampled_metrics(picked[:, 0], picked[:, 1:], ks=(10,))
    full = full_ranking_metrics(s, [c[:1] for c in cand], [np.flatnonzero(x_train[i]) for i in u], ks=(10,))
    out.update({k: v for k, v in full.items() if k != "users"})
    return out


def cold_holdout(full: pd.DataFrame, test: pd.DataFrame, cold: list[str], seed: int = 0) -> pd.DataFrame:
    """Each user's latest cold interaction vs up to 99 cold items the user never rated."""
    cold_vocab = Vocab(cold)
    rng = np.random.default_rng(seed)
    seen = full.groupby(USER)[ITEM].agg(set)
    last = test.groupby(USER, sort=False).tail(1)
    negatives = [[cold[j] for j in sample_negatives({cold_vocab.index[i] for i in seen[u] if i in cold_vocab.index},
                                                    len(cold), 99, rng)] for u in last[USER]]
    return pd.DataFrame({USER: last[USER].to_numpy(), ITEM: last[ITEM].to_numpy(), NEGATIVES: negatives})


def cold_baselines(warm_train: pd.DataFrame, holdout: pd.DataFrame, cold: list[str], users: Vocab, items: Vocab,
                   repeats: int = 20) -> dict:
    """Popularity (every cold item has count 0, so all tie: with half-rank ties the positive sits at rank 49.5
    and HR@10 is 0) and random order (random scores, mean of `repeats` draws: HR@10 → 10/100)."""
    x_warm = interaction_matrix(sequences(warm_train, users, items), len(items))
    u = users.lookup(holdout[USER].tolist(), "user")
    cand = np.column_stack([items.lookup(holdout[ITEM].tolist(), "item"),
                            np.array([items.lookup(n, "item") for n in holdout[NEGATIVES]])])
    picked = np.take_along_axis(popularity(x_warm)(u), cand, axis=1)
    out = {"popularity (cold items all tie at count 0)": {
        **sampled_metrics(picked[:, 0], picked[:, 1:]),
        "cold_items_with_a_count": int((x_warm[:, items.lookup(cold, "item")].sum(0) > 0).sum())}}
    rng = np.random.default_rng(0)
    draws = [sampled_metrics(*(lambda s: (s[:, 0], s[:, 1:]))(rng.random(cand.shape))) for _ in range(repeats)]
    out[f"random order (mean of {repeats} draws)"] = {k: float(np.mean([d[k] for d in draws]))
                                                     for k in ("hr@10", "ndcg@10", "mrr")}
    return out


def fit(train: pd.DataFrame, data: Path, variant: tuple, seed: int) -> tuple[Recommender, float]:
    item_cols, user_cols, model, extra = variant
    t0 = time.time()
    raw = train.rename(columns={USER: "user_id", ITEM: "item_id", TIME: "timestamp"})  # as the file names them
    rec = Recommender.fit(raw, users=None if user_cols is None else data / "users.csv", items=data / "items.csv",
                          item_columns=item_cols, user_columns=user_cols, model=model,
                          train={**TRAIN, **extra, "seed": seed}, log=lambda s: print("   ", s, flush=True))
    return rec, time.time() - t0


def mean_std(runs: list[dict], keys=METRICS) -> dict:
    return {k: [float(np.mean([r[k] for r in runs])), float(np.std([r[k] for r in runs]))] for k in keys}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--cold-fraction", type=float, default=0.15)
    ap.add_argument("--no-ablations", action="store_true")
    ap.add_argument("--baselines-only", action="store_true",
                    help="recompute the baseline rows (warm and cold) into an existing --out, keeping its "
                         "two-tower rows")
    ap.add_argument("--more-seeds", nargs="*", default=list(VARIANTS)[:2],
                    help="variants that get the seeds after the first (default: id-only, id + content)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/recommend_movielens.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)  # 2 cores shared with other jobs: one thread thrashes least
    t_start = time.time()
    frame = read_interactions(args.data / "interactions.csv")
    test = read_holdout(args.data / "splits" / "loo_test_99neg.csv")
    test_pairs = set(zip(test[USER], test[ITEM]))
    train = frame[[p not in test_pairs for p in zip(frame[USER], frame[ITEM])]]
    train.attrs.update(frame.attrs)
    users = Vocab(sorted(set(frame[USER]), key=int))
    items = Vocab([str(i) for i in range(1, 1683)])
    fit_part, valid = leave_one_out(train, n_negatives=99, seed=0, catalogue=items.ids)
    x_fit = interaction_matrix(sequences(fit_part, users, items), len(items))
    x_all = interaction_matrix(sequences(train, users, items), len(items))
    result: dict = {"protocol": "NCF leave-latest-out on splits/loo_test_99neg.csv: 1 test item + 99 sampled "
                                "negatives per user (943 users); full ranking: the test item among all items "
                                "the user did not rate in training",
                    "train_interactions": len(train), "models": {}, "cold_items": {}}
    previous = json.loads(args.out.read_text()) if args.baselines_only and args.out.exists() else None
    lam_scores = {lam: baseline_metrics(ease(x_fit, lam), users, items, valid, x_fit)["ndcg@10"]
                  for lam in (50, 100, 200, 500, 1000)}
    lam = max(lam_scores, key=lam_scores.get)
    result["ease_lambda_valid_ndcg@10"] = lam_scores
    baselines = (("popularity", popularity), ("itemknn (cosine)", item_knn),
                 (f"ease (λ={lam}, chosen on validation)", lambda x: ease(x, lam)),
                 ("ease (λ=500, SOURCE.md's setting)", lambda x: ease(x, 500.0)))
    for name, make in baselines:
        t0 = time.time()
        result["models"][name] = {"test": baseline_metrics(make(x_all), users, items, test, x_all),
                                  "seconds": round(time.time() - t0, 2)}
        print(name, {k: round(v, 4) for k, v in result["models"][name]["test"].items()}, flush=True)

    def save() -> None:
        result["total_seconds"] = round(time.time() - t_start, 1)
        args.out.write_text(json.dumps(result, indent=1, ensure_ascii=False))

    def run_seed(name: str, seed: int) -> None:
        rec, seconds = fit(train, args.data, VARIANTS[name], seed)
        m = rec.evaluate(test)
        entry = result["models"].setdefault(name, {"runs": []})
        entry["runs"].append({"seed": seed, "epochs": len(rec.history), "best_epoch": rec.metrics.get("epoch"),
                              "seconds": round(seconds, 1), **{k: m[k] for k in METRICS}})
        entry["test_mean_std"] = mean_std(entry["runs"])
        print(name, seed, {k: round(v, 4) if isinstance(v, float) else v for k, v in entry["runs"][-1].items()},
              flush=True)
        save()

    # first seed of every variant, then the cold split, then the other seeds (so a cut-short run still has
    # every row)
    if previous is None:
        for name in VARIANTS:
            run_seed(name, args.seeds[0])
    else:  # keep the trained rows; the baseline rows above replace theirs
        result["models"] = {**previous["models"], **result["models"]}
        result["total_seconds_of_the_full_run"] = previous.get("total_seconds")

    # cold items: their every training interaction is removed; the model meets them through content only
    warm_train, cold_test, cold = cold_item_split(train, args.cold_fraction, seed=0)
    holdout = cold_holdout(frame, cold_test, cold)
    result["cold_items"] = {"items": len(cold), "users": len(holdout), "interactions": len(cold_test),
                            "protocol": "latest cold interaction vs up to 99 cold items the user never rated; "
                                        "recall@10 = all of the user's cold items among every cold item",
                            "models": {} if previous is None else {
                                k: v for k, v in previous["cold_items"]["models"].items() if "seconds" in v}}
    result["cold_items"]["models"].update(cold_baselines(warm_train, holdout, cold, users, items))
    save()
    if args.baselines_only:
        return
    cold_variants = {k: v for k, v in VARIANTS.items() if v[0]}  # id-only has no content: cold items tie at 0
    for name, variant in {**cold_variants, **({} if args.no_ablations else ABLATIONS)}.items():
        rec, seconds = fit(warm_train, args.data, variant, args.seeds[0])
        m = rec.evaluate(holdout)
        full = rec.evaluate(cold_test, candidates=cold)
        row = {"seed": args.seeds[0], "seconds": round(seconds, 1), "hr@10": m["hr@10"], "ndcg@10": m["ndcg@10"],
               "mrr": m["mrr"], "recall@10": full["recall@10"], "full_ndcg@10": full["full_ndcg@10"]}
        result["cold_items"]["models"][name] = row
        print(name, "cold", {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
        save()
    for seed in args.seeds[1:]:
        for name in VARIANTS:
            if name in args.more_seeds:
                run_seed(name, seed)
    save()


if __name__ == "__main__":
    main()
