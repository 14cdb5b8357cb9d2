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


def caruana(preds: dict[str, np.ndarray], y: np.ndarray, metric: str, rounds: int = 25, tie: float = 1e-9
            ) -> tuple[dict[str, float], float]:
    """Greedy forward selection with replacement: start from the best member, add (again) whichever member
    most improves the blend, `rounds` times; keep the best blend seen. Returns (member → weight, its score on
    `metric`; higher is better).

    Blends are ordered by `metric`, and where it ties (within `tie`) by log loss (RMSE for regression). A
    discrete metric such as accuracy ties everywhere on a few hundred rows (breast cancer, 426 out-of-fold
    rows: the first member in name order used to win every tie, and blends no better on the metric were
    kept); the log loss says which of the tied blends is surer where it is right. A blend replaces the best
    single member only when it is better in this order, so the result is never worse than that member on
    these rows, and the single member stands when no blend beats it by more than a tie."""
    names = sorted(preds)
    second = "rmse" if metric in ("rmse", "mae", "r2") else "log_loss"

    def key(p: np.ndarray) -> tuple[float, float]:
        return score(metric, p, y), score(second, p, y)

    def better(a: tuple[float, float], b: tuple[float, float]) -> bool:
        return a[0] > b[0] + tie or (abs(a[0] - b[0]) <= tie and a[1] > b[1] + tie)

    def best_of(keys: dict[str, tuple[float, float]]) -> str:
        top = names[0]
        for n in names[1:]:  # ties on both keep the earlier name: deterministic
            if better(keys[n], keys[top]):
                top = n
        return top

    first = best_of({n: key(preds[n]) for n in names})
    counts = {first: 1}
    total = preds[first].astype(np.float64)
    best, best_counts = key(preds[first]), dict(counts)
    for step in range(2, rounds + 1):
        trial = {n: key((total + preds[n]) / step) for n in names}
        pick = best_of(trial)
        total = total + preds[pick]
        counts[pick] = counts.get(pick, 0) + 1
        if better(trial[pick], best):  # strictly better: ties keep the smaller blend
            best, best_counts = trial[pick], dict(counts)
    size = sum(best_counts.values())
    return {n: best_counts.get(n, 0) / size for n in names}, best[0]


def blend(preds: dict[str, np.ndarray], weights: dict[str, float]) -> np.ndarray:
    used = [n for n, w in weights.items() if w > 0]
    return sum(weights[n] * np.asarray(preds[n], np.float64) for n in used)


def calibrate(blended: np.ndarray, y: np.ndarray, metric: str) -> tuple[float, np.ndarray]:
    """(temperature, calibrated blend) for class probabilities. Decisions are unchanged, but a ranking metric
    (multiclass one-vs-rest ROC AUC) can move: the metric decides, so a temperature that lowers it is not
    applied (1.0)."""
    t = fit_temperature(blended, y)
    if t == 1.0:
        return t, blended
    calibrated = apply_temperature(blended, t, np.ndim(y) == 2)
    if score(metric, calibrated, y) >= score(metric, blended, y) - 1e-12:
        return t, calibrated
    return 1.0, blended


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
