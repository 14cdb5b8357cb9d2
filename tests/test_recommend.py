"""Recommendation pieces (issue 17): ranking metrics against hand computations and a brute-force reference,
interaction reading, leave-one-out and cold-item splits, and a two-tower smoke fit on tiny generated data."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from polymodal.errors import DataError
from polymodal.recommend.baselines import ease, interaction_matrix, item_knn, popularity
from polymodal.recommend.data import (
    ITEM,
    NEGATIVES,
    USER,
    Vocab,
    cold_item_split,
    leave_one_out,
    read_holdout,
    read_interactions,
    sequences,
)
from polymodal.recommend.metrics import full_ranking_metrics, sampled_metrics, sampled_ranks
from polymodal.recommend.model import TowerConfig, TwoTower
from polymodal.recommend.train import (
    Histories,
    TrainConfig,
    cap_per_group,
    train_two_tower,
    training_bags,
    user_vectors,
)


def test_sampled_metrics_hand_made():
    # positives ranked 0, 1.5 (1 above + half of 1 tie) and 12 (all 12 negatives above)
    pos = np.array([5.0, 3.0, 0.0])
    neg = np.array([[1.0, 2.0, 3.0] + [0.0] * 9,
                    [4.0, 3.0, 1.0] + [0.0] * 9,
                    [1.0] * 12])
    ranks = sampled_ranks(pos, neg)
    assert ranks.tolist() == [0.0, 1.5, 12.0]
    m = sampled_metrics(pos, neg, ks=(1, 10))
    assert m["hr@1"] == pytest.approx(1 / 3)
    assert m["hr@10"] == pytest.approx(2 / 3)
    assert m["ndcg@10"] == pytest.approx((1.0 + 1 / math.log2(3.5)) / 3)
    assert m["mrr"] == pytest.approx((1 + 1 / 2.5 + 1 / 13) / 3)


def test_sampled_metrics_padding_is_ignored():
    m = sampled_metrics(np.array([1.0]), np.array([[2.0, np.nan, np.nan]]), ks=(1,))
    assert m["hr@1"] == 0.0 and m["mrr"] == pytest.approx(0.5)


def _reference_full(scores, relevant, exclude, k):
    """Brute force: sort each row by hand, drop excluded items, count hits in the first k."""
    rec, nd = [], []
    for u in range(len(scores)):
        order = [i for i in sorted(range(scores.shape[1]), key=lambda i: (-scores[u, i], i)) if i not in exclude[u]]
        top = order[:k]
        hits = [1.0 if i in relevant[u] else 0.0 for i in top]
        n = min(k, len(relevant[u]))
        rec.append(sum(hits) / n)
        ideal = sum(1 / math.log2(j + 2) for j in range(n))
        nd.append(sum(h / math.log2(j + 2) for j, h in enumerate(hits)) / ideal)
    return float(np.mean(rec)), float(np.mean(nd))


def test_full_ranking_matches_reference():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, (20, 30)).astype(float)  # many ties: order by item index
    relevant = [rng.choice(30, rng.integers(1, 5), replace=False) for _ in range(20)]
    exclude = [np.setdiff1d(rng.choice(30, 6, replace=False), r) for r in relevant]
    for k in (1, 5, 10):
        m = full_ranking_metrics(scores, relevant, exclude, ks=(k,))
        rec, nd = _reference_full(scores, [set(r) for r in relevant], [set(e) for e in exclude], k)
        assert m[f"recall@{k}"] == pytest.approx(rec)
        assert m[f"full_ndcg@{k}"] == pytest.approx(nd)


def test_full_ranking_hand_made():
    scores = np.array([[0.9, 0.8, 0.7, 0.1]])
    m = full_ranking_metrics(scores, [np.array([2])], [np.array([0])], ks=(2,))
    # item 0 excluded: ranking 1, 2, 3 → the relevant item is second
    assert m["recall@2"] == 1.0
    assert m["full_ndcg@2"] == pytest.approx(1 / math.log2(3))


def _interactions() -> pd.DataFrame:
    return pd.DataFrame({"user_id": [1, 1, 1, 2, 2, 3, 3, 3],
                         "item_id": [10, 11, 12, 10, 13, 11, 12, 13],
                         "rating": [5, 2, 4, 5, 5, 1, 4, 4],
                         "timestamp": [3, 1, 2, 1, 2, 5, 5, 1]})


def test_read_interactions_threshold_and_order():
    f = read_interactions(_interactions())
    assert f[f[USER] == "1"][ITEM].tolist() == ["11", "12", "10"]  # by time
    assert f[f[USER] == "3"][ITEM].tolist() == ["13", "11", "12"]  # ties keep file order
    g = read_interactions(_interactions(), threshold=4)
    assert "2" not in set(g[ITEM]) and len(g) == 6
    with pytest.raises(DataError, match="rating"):
        read_interactions(_interactions().drop(columns="rating"), threshold=4)


def test_leave_one_out_and_holdout_file(tmp_path):
    f = read_interactions(_interactions())
    train, hold = leave_one_out(f, n_negatives=5, seed=0)
    assert dict(zip(hold[USER], hold[ITEM])) == {"1": "10", "2": "13", "3": "12"}
    assert len(train) == len(f) - 3
    for u, negs in zip(hold[USER], hold[NEGATIVES]):
        assert not set(negs) & set(f[f[USER] == u][ITEM])  # never an item the user saw
    path = tmp_path / "split.csv"
    pd.DataFrame({"user_id": [1], "test_item_id": [10], "negative_item_ids": ["11 13"]}).to_csv(path, index=False)
    h = read_holdout(path)
    assert h[NEGATIVES].iloc[0] == ["11", "13"]


def test_cold_item_split_moves_every_interaction():
    f = read_interactions(_interactions())
    train, test, cold = cold_item_split(f, fraction=0.25, seed=1)
    assert len(cold) == 1 and set(test[ITEM]) == set(cold) and not set(train[ITEM]) & set(cold)


def test_two_tower_learns_a_toy_preference():
    # users 0..19 like items 0..4, users 20..39 like items 5..9; the model must rank each group's items first
    rng = np.random.default_rng(0)
    seqs = [rng.permutation(5) + (0 if u < 20 else 5) for u in range(40)]
    hist = Histories(seqs)
    cfg = TowerConfig(n_users=40, n_items=10, dim=8, hidden=16, dropout=0.0)
    model = TwoTower(cfg)
    inputs = {"items": {"frozen": {}, "present": {}, "tabular": {}}, "warm": torch.ones(10, dtype=torch.bool),
              "user_warm": torch.ones(40, dtype=torch.bool), "user_tabular": {}}
    train_two_tower(model, inputs, hist, TrainConfig(epochs=30, batch_size=32, loss="full-softmax",
                                                     history_dropout=0.3), log=lambda s: None)
    with torch.no_grad():
        items, pools = model.item_parts(inputs["items"], inputs["warm"])
        s = model.scores(user_vectors(model, inputs, pools, hist, np.arange(40)), items).numpy()
    top = np.argsort(-s, 1)[:, :5]
    assert (top[:20] < 5).mean() > 0.9 and (top[20:] >= 5).mean() > 0.9


def test_sequences_and_vocab():
    f = read_interactions(_interactions())
    users, items = Vocab(["1", "2", "3"]), Vocab(["10", "11", "12", "13"])
    seqs = sequences(f, users, items)
    assert [s.tolist() for s in seqs] == [[1, 2, 0], [0, 3], [3, 1, 2]]
    with pytest.raises(DataError, match="unknown item id '99'"):
        items.lookup(["99"], "item")


def test_baselines_against_hand_computation():
    x = interaction_matrix([np.array([0, 1]), np.array([1, 2]), np.array([0])], 3)
    assert popularity(x)(np.array([0]))[0].tolist() == [2.0, 2.0, 1.0]
    # cosine(0, 1) = 1 / sqrt(2 * 2), cosine(1, 2) = 1 / sqrt(2 * 1); user 2 has item 0 only
    assert item_knn(x)(np.array([2]))[0] == pytest.approx([0.0, 0.5, 0.0])
    lam = 1.0
    p = np.linalg.inv(x.T @ x + lam * np.eye(3))
    b = np.eye(3) - p @ np.diag(1 / np.diag(p))  # Steck's closed form, diagonal exactly 0
    assert ease(x, lam)(np.arange(3)) == pytest.approx(x @ b)


def test_training_bags_cap_history():
    rng = np.random.default_rng(0)
    group = np.repeat(np.arange(4), [3, 10, 0 + 1, 40])
    mask = rng.random(len(group)) < 0.8
    capped = cap_per_group(mask, group, 5, rng)
    for g in range(4):
        inside = group == g
        assert capped[inside].sum() == min(5, mask[inside].sum())  # the cap, or all when fewer
    assert not (capped & ~mask).any()  # only kept entries survive
    hist = Histories([np.arange(50), np.arange(3)])
    bags = training_bags(hist, np.array([0, 1]), np.array([10, 1]), 1, 0, 0.0, rng, max_history=8)
    idx, offsets = bags[0]
    assert offsets.tolist() == [0, 8] and len(idx) == 10 and 10 not in idx[:8].tolist()
