"""Reference recommenders for the benchmark: popularity, ItemKNN (cosine), EASE (Steck 2019).

Each takes the binary user × item training matrix X (U, I) and returns a scorer: scores(users) → (len(users), I).
They are exact, small and deterministic, which is what a baseline has to be to measure the two-tower model
against.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Scorer = Callable[[np.ndarray], np.ndarray]


def interaction_matrix(seqs: list[np.ndarray], n_items: int) -> np.ndarray:
    """Binary (U, I) float64 matrix from per-user item index sequences."""
    x = np.zeros((len(seqs), n_items))
    for u, s in enumerate(seqs):
        x[u, np.asarray(s, np.int64)] = 1.0
    return x


def popularity(x: np.ndarray) -> Scorer:
    """Every user gets the items' training counts."""
    counts = x.sum(0)
    return lambda users: np.broadcast_to(counts, (len(users), len(counts))).copy()


def item_knn(x: np.ndarray) -> Scorer:
    """score(u, i) = sum over u's items j of cos(i, j) (all neighbours; an item's self-similarity is 0)."""
    norms = np.sqrt(x.sum(0))
    norms[norms == 0] = 1.0
    sim = (x.T @ x) / np.outer(norms, norms)
    np.fill_diagonal(sim, 0.0)
    return lambda users: x[users] @ sim


def ease(x: np.ndarray, lam: float = 500.0) -> Scorer:
    """EASE^R (Steck, WWW 2019): B = I - P diagMat(1 / diag(P)) with P = (XᵀX + λI)⁻¹; score = X B."""
    g = x.T @ x + lam * np.eye(x.shape[1])
    p = np.linalg.inv(g)
    b = -p / np.diag(p)
    np.fill_diagonal(b, 0.0)
    return lambda users: x[users] @ b
