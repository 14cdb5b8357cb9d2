"""Ensemble selection (Caruana, Niculescu-Mizil, Crew & Ksikes, ICML 2004) on out-of-fold predictions, and
temperature scaling (Guo et al., ICML 2017) of the blended probabilities.

Multi-label probabilities ((N, L), one sigmoid per label) share one temperature on their logits: a
per-label temperature would be fitted on a rare label's handful of positives; a shared one leaves every
label's 0.5 decision (and so F1) unchanged, as softmax temperature leaves the argmax."""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit, log_softmax, logit

from polymodal.ensemble.scoring import score


def caruana(preds: dict[str, np.ndarray], y: np.ndarray, metric: str, rounds: int = 25
            ) -> tuple[dict[str, float], float]:
    """Greedy forward selection with replacement: start from the best member, add (again) whichever member
    most improves the blend's `metric`, `rounds` times; keep the best blend seen. Returns (member → weight,
    its score; higher is better). The first blend is the best single member, so the result is never worse
    than it on these rows."""
    names = sorted(preds)
    scores = {n: score(metric, preds[n], y) for n in names}
    best_single = max(names, key=lambda n: (scores[n], -names.index(n)))
    counts = {best_single: 1}
    total = preds[best_single].astype(np.float64)
    best, best_counts = scores[best_single], dict(counts)
    for step in range(2, rounds + 1):
        trial = {n: score(metric, (total + preds[n]) / step, y) for n in names}
        pick = max(names, key=lambda n: trial[n])
        total = total + preds[pick]
        counts[pick] = counts.get(pick, 0) + 1
        if trial[pick] > best + 1e-12:  # strictly better: ties keep the smaller blend
            best, best_counts = trial[pick], dict(counts)
    size = sum(best_counts.values())
    return {n: best_counts.get(n, 0) / size for n in names}, best


def blend(preds: dict[str, np.ndarray], weights: dict[str, float]) -> np.ndarray:
    used = [n for n, w in weights.items() if w > 0]
    return sum(weights[n] * np.asarray(preds[n], np.float64) for n in used)


def fit_temperature(probs: np.ndarray, y: np.ndarray) -> float:
    """The T minimising the negative log-likelihood of softmax(log p / T) (multi-label, `y` (N, L): of
    sigmoid(logit p / T)) on these rows (searched over log T in [-3, 3]); the decisions, and so accuracy and
    F1, are unchanged."""
    multilabel = np.ndim(y) == 2
    if multilabel:
        z, t = logit(np.clip(probs, 1e-12, 1 - 1e-12)), np.asarray(y, np.float64)

        def nll(log_t: float) -> float:
            s = z / np.exp(log_t)  # -log sigmoid(s) = logaddexp(0, -s)
            return float(np.mean(t * np.logaddexp(0, -s) + (1 - t) * np.logaddexp(0, s)))
    else:
        logp = np.log(np.clip(probs, 1e-12, 1.0))
        rows = np.arange(len(y))

        def nll(log_t: float) -> float:
            return float(-log_softmax(logp / np.exp(log_t), axis=1)[rows, y].mean())

    res = minimize_scalar(nll, bounds=(-3.0, 3.0), method="bounded")
    return float(np.exp(res.x)) if res.fun <= nll(0.0) else 1.0


def apply_temperature(probs: np.ndarray, t: float, multilabel: bool = False) -> np.ndarray:
    if t == 1.0:
        return probs
    if multilabel:
        return expit(logit(np.clip(probs, 1e-12, 1 - 1e-12)) / t)
    return np.exp(log_softmax(np.log(np.clip(probs, 1e-12, 1.0)) / t, axis=1))
