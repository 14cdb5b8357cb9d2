"""Ranking metrics for recommendation.

Sampled protocol (NCF, He et al. 2017): each held-out item is ranked against its own sampled negatives;
rank = number of negatives scoring higher + half the number tied (so a constant scorer gets the rank a
random order would get on average, instead of the best one). HR@K = share of ranks < K,
NDCG@K = mean of 1 / log2(rank + 2) over ranks < K, MRR = mean of 1 / (rank + 1).

Full ranking: every candidate item is scored, items the user already interacted with are excluded, and
Recall@K = hits in the top K / min(K, number of relevant items) (Liang et al. 2018), NDCG@K = DCG@K / ideal
DCG@K with binary relevance. Exact score ties are broken by item order (stable sort).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def sampled_ranks(positive: np.ndarray, negatives: np.ndarray) -> np.ndarray:
    """0-based rank of each positive score (N,) among its negatives (N, M); NaN negatives (padding for rows
    with fewer negatives) are ignored. Ties count half."""
    pos = np.asarray(positive, np.float64)[:, None]
    neg = np.asarray(negatives, np.float64)
    valid = ~np.isnan(neg)
    return ((neg > pos) & valid).sum(1) + 0.5 * ((neg == pos) & valid).sum(1)


def hit_rate(ranks: np.ndarray, k: int) -> float:
    return float(np.mean(np.asarray(ranks) < k))


def ndcg_from_ranks(ranks: np.ndarray, k: int) -> float:
    r = np.asarray(ranks, np.float64)
    return float(np.mean(np.where(r < k, 1.0 / np.log2(r + 2.0), 0.0)))


def mrr(ranks: np.ndarray) -> float:
    return float(np.mean(1.0 / (np.asarray(ranks, np.float64) + 1.0)))


def sampled_metrics(positive: np.ndarray, negatives: np.ndarray, ks: Sequence[int] = (10,)) -> dict[str, float]:
    """HR@K, NDCG@K for each K and MRR, on the sampled (1 + M candidates) protocol."""
    ranks = sampled_ranks(positive, negatives)
    out: dict[str, float] = {}
    for k in ks:
        out[f"hr@{k}"] = hit_rate(ranks, k)
        out[f"ndcg@{k}"] = ndcg_from_ranks(ranks, k)
    out["mrr"] = mrr(ranks)
    out["users"] = int(len(ranks))
    return out


def full_ranking_metrics(scores: np.ndarray, relevant: Sequence[np.ndarray],
                         exclude: Sequence[np.ndarray] | None = None, ks: Sequence[int] = (10,),
                         ) -> dict[str, float]:
    """Recall@K and NDCG@K over all candidates (columns of `scores`, one row per user).

    `relevant[u]`: column indices of user u's held-out items; `exclude[u]`: columns not to rank (the user's
    training items). Users with no relevant item are skipped."""
    s = np.array(scores, np.float64, copy=True)
    if exclude is not None:
        for u, cols in enumerate(exclude):
            if len(cols):
                s[u, cols] = -np.inf
    kmax = min(max(ks), s.shape[1])
    # top-kmax per row, best first; ties by column order (stable sort of the negated scores)
    top = np.argsort(-s, axis=1, kind="stable")[:, :kmax]
    discounts = 1.0 / np.log2(np.arange(2, kmax + 2))
    out = {f"{m}@{k}": [] for k in ks for m in ("recall", "full_ndcg")}
    for u, rel in enumerate(relevant):
        rel = np.asarray(rel)
        if len(rel) == 0:
            continue
        hits = np.isin(top[u], rel)
        for k in ks:
            kk = min(k, kmax)
            n_rel = min(k, len(rel))
            out[f"recall@{k}"].append(hits[:kk].sum() / n_rel)
            out[f"full_ndcg@{k}"].append((hits[:kk] * discounts[:kk]).sum() / discounts[:n_rel].sum())
    result = {k: float(np.mean(v)) if v else float("nan") for k, v in out.items()}
    result["users"] = int(sum(len(r) > 0 for r in relevant))
    return result
