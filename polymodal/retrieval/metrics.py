"""Retrieval metrics (Recall@K, median/mean rank, mAP) with several positives per query, computed in chunks.

Similarity is the dot product of query and gallery rows (pass L2-normalised embeddings for cosine). Ground
truth is given either by labels (gallery item j is relevant to query i when ``query_labels[i] ==
gallery_labels[j]``, e.g. same category or same pair id) or by ``positives``, one collection of relevant
gallery indices per query.

Queries are processed ``chunk_size`` at a time, so memory is O(chunk_size * Ng) and a 100k x 100k evaluation
never builds the full similarity matrix (about 24 bytes per chunk cell while mAP is computed: scores, sort
order, relevance).

Ties are resolved deterministically and *against* the query (pessimistic):
- rank of a query = number of non-relevant gallery items scoring >= its best-scoring relevant item (0-based),
  so a collapsed model that gives every item the same score gets the worst rank, not a perfect one;
- average precision treats tied scores as one threshold, exactly as
  ``sklearn.metrics.average_precision_score`` does (precision taken at the end of each block of tied scores).
Queries with no relevant gallery item are left out of every metric and counted in ``n_without_positive``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

__all__ = ["cross_modal_metrics", "per_query_ranks_and_ap", "retrieval_metrics"]

ArrayLike = np.ndarray | torch.Tensor


def _as_tensor(x: ArrayLike, device: torch.device | str | None) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    return t.to(device=device if device is not None else t.device)


def _label_codes(query_labels: Sequence, gallery_labels: Sequence) -> tuple[torch.Tensor, torch.Tensor]:
    """Map arbitrary (e.g. string) labels to shared integer codes so relevance is a tensor comparison."""
    if isinstance(query_labels, torch.Tensor) and isinstance(gallery_labels, torch.Tensor):
        return query_labels.reshape(-1), gallery_labels.reshape(-1)
    q, g = np.asarray(query_labels).reshape(-1), np.asarray(gallery_labels).reshape(-1)
    _, inverse = np.unique(np.concatenate([q, g]), return_inverse=True)
    inverse = torch.as_tensor(inverse.reshape(-1), dtype=torch.long)
    return inverse[: len(q)], inverse[len(q):]


def _positives_csr(positives: Sequence[Iterable[int]], n_gallery: int) -> tuple[np.ndarray, np.ndarray]:
    lists = [np.unique(np.asarray(list(p), dtype=np.int64)) for p in positives]
    indptr = np.zeros(len(lists) + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([len(p) for p in lists])
    indices = np.concatenate(lists) if lists else np.zeros(0, dtype=np.int64)
    if indices.size and (indices.min() < 0 or indices.max() >= n_gallery):
        raise ValueError(f"positive gallery indices must lie in [0, {n_gallery})")
    return indptr, indices


def per_query_ranks_and_ap(
    queries: ArrayLike,
    gallery: ArrayLike,
    *,
    query_labels: Sequence | None = None,
    gallery_labels: Sequence | None = None,
    positives: Sequence[Iterable[int]] | None = None,
    chunk_size: int = 256,
    compute_map: bool = True,
    device: torch.device | str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per query: 0-based rank of the best relevant item (-1 when none) and average precision (NaN when none
    or when ``compute_map`` is False)."""
    if (positives is None) == (query_labels is None or gallery_labels is None):
        raise ValueError("give either query_labels and gallery_labels, or positives")
    q = _as_tensor(queries, device).float()
    g = _as_tensor(gallery, q.device).float()
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise ValueError(f"queries (Nq, D) and gallery (Ng, D) must share D; got {tuple(q.shape)}, "
                         f"{tuple(g.shape)}")
    nq, ng = q.shape[0], g.shape[0]
    if positives is not None:
        if len(positives) != nq:
            raise ValueError(f"positives has {len(positives)} entries for {nq} queries")
        indptr, indices = _positives_csr(positives, ng)
    else:
        ql, gl = _label_codes(query_labels, gallery_labels)
        if len(ql) != nq or len(gl) != ng:
            raise ValueError("label vectors must match the number of queries and gallery items")
        ql, gl = ql.to(q.device), gl.to(q.device)

    ranks = np.full(nq, -1, dtype=np.int64)
    aps = np.full(nq, np.nan, dtype=np.float64)
    positions = torch.arange(ng, device=q.device)
    for start in range(0, nq, chunk_size):
        stop = min(start + chunk_size, nq)
        sims = q[start:stop] @ g.T
        if positives is not None:
            rel = torch.zeros_like(sims, dtype=torch.bool)
            lo, hi = indptr[start], indptr[stop]
            rows = np.repeat(np.arange(stop - start), np.diff(indptr[start:stop + 1]))
            cols = indices[lo:hi]
            rel[torch.as_tensor(rows, device=q.device), torch.as_tensor(cols, device=q.device)] = True
        else:
            rel = ql[start:stop, None] == gl[None, :]
        n_pos = rel.sum(dim=1)
        has_pos = n_pos > 0

        best_pos = sims.masked_fill(~rel, float("-inf")).amax(dim=1, keepdim=True)
        rank = ((sims >= best_pos) & ~rel).sum(dim=1)
        ranks[start:stop] = torch.where(has_pos, rank, torch.full_like(rank, -1)).cpu().numpy()

        if compute_map:
            # A hand-written AP: sklearn's is per query in Python and would not scale to 100k queries; tests
            # check this one against sklearn.metrics.average_precision_score.
            order = torch.argsort(sims, dim=1, descending=True, stable=True)
            s_sorted = torch.gather(sims, 1, order)
            rel_sorted = torch.gather(rel, 1, order).to(torch.float64)
            tp = rel_sorted.cumsum(dim=1)
            block_end = torch.ones_like(s_sorted, dtype=torch.bool)
            block_end[:, :-1] = s_sorted[:, 1:] != s_sorted[:, :-1]
            # For every position, the last position of its block of tied scores (reverse cumulative min).
            end_idx = torch.where(block_end, positions, torch.full_like(positions, ng))
            end_idx = torch.flip(torch.cummin(torch.flip(end_idx, [1]), dim=1).values, [1])
            precision_at_end = torch.gather(tp, 1, end_idx) / (end_idx + 1).to(torch.float64)
            ap = (rel_sorted * precision_at_end).sum(dim=1) / n_pos.clamp(min=1)
            aps[start:stop] = torch.where(has_pos, ap, torch.full_like(ap, float("nan"))).cpu().numpy()
    return ranks, aps


def retrieval_metrics(
    queries: ArrayLike,
    gallery: ArrayLike,
    *,
    query_labels: Sequence | None = None,
    gallery_labels: Sequence | None = None,
    positives: Sequence[Iterable[int]] | None = None,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 256,
    compute_map: bool = True,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """Recall@K (fraction in [0, 1] of queries whose best relevant item ranks within K), median and mean rank
    (1-based), mAP over the full ranking, and query counts. See the module docstring for tie handling."""
    ranks, aps = per_query_ranks_and_ap(
        queries, gallery, query_labels=query_labels, gallery_labels=gallery_labels, positives=positives,
        chunk_size=chunk_size, compute_map=compute_map, device=device)
    valid = ranks >= 0
    if not valid.any():
        raise ValueError("no query has a relevant gallery item")
    r = ranks[valid]
    out: dict[str, float] = {f"R@{k}": float(np.mean(r < k)) for k in ks}
    out["median_rank"] = float(np.median(r + 1))
    out["mean_rank"] = float(np.mean(r + 1))
    if compute_map:
        out["mAP"] = float(np.mean(aps[valid]))
    out["n_queries"] = int(valid.sum())
    out["n_without_positive"] = int((~valid).sum())
    return out


def cross_modal_metrics(
    left: ArrayLike,
    right: ArrayLike,
    pair_ids: Sequence | None = None,
    right_pair_ids: Sequence | None = None,
    **kwargs,
) -> dict[str, dict[str, float]]:
    """Both directions, left->right and right->left. Row i of ``left`` is relevant to row j of ``right`` when
    their pair ids are equal (default: ids are row numbers, i.e. only the paired row is relevant; category ids
    give category-level relevance). ``right_pair_ids`` defaults to ``pair_ids`` (aligned rows)."""
    if pair_ids is None:
        if len(left) != len(right):
            raise ValueError("without pair_ids, left and right must have the same number of rows")
        pair_ids = np.arange(len(left))
    if right_pair_ids is None:
        right_pair_ids = pair_ids
    return {
        "left_to_right": retrieval_metrics(left, right, query_labels=pair_ids, gallery_labels=right_pair_ids,
                                           **kwargs),
        "right_to_left": retrieval_metrics(right, left, query_labels=right_pair_ids, gallery_labels=pair_ids,
                                           **kwargs),
    }
