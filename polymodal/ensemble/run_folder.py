"""An ensemble run folder — an ordinary run (`runs.load_run` loads it, offline):

config.json (kind "ensemble", fit settings, ensemble settings, members, weights, temperature),
featurizer/ (a table run folder: preprocessing + frozen encoders), members/<member>/r<repeat>f<fold>/ (a
table run folder per fusion-network fold, model.joblib per other fold), leaderboard.csv, metrics.json,
README.md (model card with the leaderboard) and manifest.json (SHA-256 of every model file, checked before
anything is unpickled)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from polymodal.ensemble.config import EnsembleSettings
from polymodal.ensemble.features import Featurizer
from polymodal.ensemble.fit import Ensemble, MemberResult, one_blas_thread
from polymodal.ensemble.members import Rows, build_member, problem_of
from polymodal.ensemble.multitask import TaskBlend, for_problem, multitask_output
from polymodal.ensemble.scoring import metric_value
from polymodal.ensemble.selection import apply_temperature, blend
from polymodal.errors import PolymodalError
from polymodal.files import sha256_file
from polymodal.tasks import task_from_prep
from polymodal.training import artifacts
from polymodal.training.config import FitConfig
from polymodal.version import __version__

ENSEMBLE_RUN = "ensemble"
LEADERBOARD = "leaderboard.csv"


def is_ensemble(path: str | os.PathLike) -> bool:
    config = Path(path) / artifacts.CONFIG
    return config.exists() and artifacts.read_json(config).get("kind") == ENSEMBLE_RUN


def single_model_only(path, ens: Ensemble | None = None) -> str:
    """Why export / compress refuse an ensemble run: they convert one network; an ensemble has many."""
    names = f" ({', '.join(n for n, w in ens.weights.items() if w > 0)})" if ens is not None else ""
    return (f"{path or 'this run'} is an ensemble{names}: export and compress take a single-model run (train one "
            "with --preset fast); an ensemble predicts, evaluates and serves as it is")


def refuse_ensemble(path: str | os.PathLike | None) -> None:
    """A clear error for single-model tools given an ensemble run folder."""
    if path is not None and is_ensemble(path):
        raise PolymodalError(single_model_only(path))


def member_dir(root: Path, name: str, rep: int, fold: int) -> Path:
    return root / "members" / name.replace(":", "-") / f"r{rep}f{fold}"


def fitted(ens: Ensemble, name: str) -> list:
    """A member's fold models, every repeat; those of a loaded run are read on first use."""
    res = ens.results[name]
    for folds in res.folds:
        for i, m in enumerate(folds):
            if isinstance(m, Path):
                folds[i] = res.member.load(m)
    return [m for folds in res.folds for m in folds]


def fold_mean(models: list, predict: Callable[[object], np.ndarray]) -> np.ndarray:
    """A member's bagged prediction: the mean of `predict(model)` over its fold models (every repeat)."""
    return sum(predict(m) for m in models) / len(models)


def member_predictions(ens: Ensemble, rows: Rows, names: list[str]) -> dict[str, np.ndarray]:
    """Each member's prediction: the mean over its fold models (bagging)."""
    out = {}
    with one_blas_thread():
        for name in names:
            member = ens.results[name].member
            out[name] = fold_mean(fitted(ens, name), lambda m, mb=member: mb.predict(m, rows, ens.problem))
    return out


def leaderboard(ens: Ensemble, test: dict[str, float] | None = None, test_seconds: dict | None = None
                ) -> pd.DataFrame:
    """Every member's out-of-fold score (and test score), ensemble weight, fit and predict time, status."""
    rows = [{"model": "ensemble", "score_val": ens.scores.get("ensemble"), "weight": 1.0,
             "fit_time_s": round(ens.fit_seconds, 2), "pred_time_val_s": None, "repeats": None,
             "folds": ens.settings.folds, "status": status(ens)}]
    for name, res in ens.results.items():
        rows.append({"model": name, "score_val": ens.scores.get(name), "weight": ens.weights.get(name, 0.0),
                     "fit_time_s": round(res.fit_seconds, 2), "pred_time_val_s": round(res.predict_seconds, 3),
                     "repeats": len(res.folds), "folds": ens.settings.folds, "status": res.status})
    board = pd.DataFrame(rows)
    board.insert(2, "eval_metric", ens.metric)
    if test is not None:
        board.insert(3, "score_test", board["model"].map(test))
        board.insert(7, "pred_time_test_s", board["model"].map(test_seconds or {}))
    return board


def status(ens: Ensemble) -> str:
    """The ensemble row's status: its temperature(s)."""
    if ens.tasks is not None:
        return "per label: " + ", ".join(f"{k} T={b.temperature:.3f}" if b.temperature != 1.0 else f"{k}"
                                         for k, b in ens.tasks.items())
    return "ok" if ens.problem.regression else f"temperature {ens.temperature:.3f}"


def test_scores(ens: Ensemble, rows: Rows, timer) -> tuple[dict[str, float], dict[str, float]]:
    """(member → test metric, member → predict seconds) for every member that finished, and the ensemble."""
    names = [n for n, r in ens.results.items() if r.folds and r.status == "ok"]
    preds, seconds = {}, {}
    for name in names:
        t = timer()
        preds.update(member_predictions(ens, rows, [name]))
        seconds[name] = round(timer() - t, 3)
    task = task_from_prep(ens.featurizer.prep, ens.config) if ens.problem.multitask else None
    scores = {n: metric_value(ens.metric, p, rows.y, task) for n, p in preds.items()}
    scores["ensemble"] = metric_value(ens.metric, ensemble_output(ens, preds), rows.y, task)
    return scores, seconds


def ensemble_output(ens: Ensemble, preds: dict[str, np.ndarray]) -> np.ndarray:
    if ens.tasks is not None:
        return multitask_output(preds, ens.tasks, ens.problem)
    out = blend(preds, ens.weights)
    return out if ens.problem.regression else apply_temperature(out, ens.temperature, ens.problem.multilabel)


def save_ensemble(ens: Ensemble, path: str | os.PathLike, metrics: dict) -> Path:
    """Write the run folder (see the module docstring); model files first, manifest, then reports."""
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    ens.featurizer.save(root / "featurizer")
    members = {}
    for name, res in ens.results.items():
        if res.status == "ok" and res.folds:
            for rep, folds in enumerate(res.folds):
                for i, _ in enumerate(folds):
                    res.member.save(fitted(ens, name)[rep * len(folds) + i], member_dir(root, name, rep, i))
        members[name] = {"repeats": len(res.folds) if res.status == "ok" else 0,
                         "folds": [len(f) for f in res.folds], "status": res.status,
                         "fit_seconds": res.fit_seconds, "predict_seconds": res.predict_seconds}
    artifacts.atomic_write_json(root / artifacts.CONFIG, {
        "polymodal_version": __version__, "kind": ENSEMBLE_RUN, "fit": ens.config.to_dict(),
        "ensemble": ens.settings.to_dict(), "problem_type": ens.problem.problem_type, "classes": ens.problem.classes,
        "eval_metric": ens.metric, "members": members, "weights": ens.weights, "temperature": ens.temperature,
        "scores": ens.scores, "fit_seconds": ens.fit_seconds,
        **({"tasks": {k: b.to_dict() for k, b in ens.tasks.items()}} if ens.tasks is not None else {})})
    files = sorted(p for p in root.rglob("*") if p.is_file() and (p.parent != root or p.name == artifacts.CONFIG))
    artifacts.atomic_write_json(root / artifacts.MANIFEST, {"polymodal_version": __version__, "sha256": {
        p.relative_to(root).as_posix(): sha256_file(p) for p in files if p.name != artifacts.MANIFEST}})
    artifacts.atomic_write_json(root / artifacts.METRICS, metrics)
    board = leaderboard(ens)
    artifacts.atomic_write_text(root / LEADERBOARD, board.to_csv(index=False))
    write_card(root, ens, board, metrics)
    return root


def load_ensemble(path: str | os.PathLike) -> tuple[Ensemble, dict]:
    """(the ensemble, metrics.json); fold models are read when first used."""
    root = Path(path)
    if not artifacts.verify_manifest(root):
        raise PolymodalError(f"{root} is an ensemble run without {artifacts.MANIFEST}: it cannot be checked before "
                             "its pickled members are read")
    c = artifacts.read_json(root / artifacts.CONFIG)
    featurizer = Featurizer.load(root / "featurizer")
    try:
        config, settings = FitConfig.from_dict(c["fit"]), EnsembleSettings.from_dict(c["ensemble"])
        problem = problem_of(featurizer.prep, config.seed)
        if problem.problem_type != c["problem_type"]:
            raise ValueError(f"problem_type {c['problem_type']!r}, but the featurizer's is {problem.problem_type!r}")
        results = {}
        for name, m in c["members"].items():
            res = MemberResult(for_problem(build_member(name, config), problem), status=m["status"],
                               fit_seconds=m["fit_seconds"], predict_seconds=m["predict_seconds"])
            if m["status"] == "ok":
                res.folds = [[member_dir(root, name, r, i) for i in range(n)] for r, n in enumerate(m["folds"])]
            results[name] = res
        tasks = {k: TaskBlend(**b) for k, b in c["tasks"].items()} if "tasks" in c else None
        ens = Ensemble(config, settings, featurizer, problem, c["eval_metric"], results,
                       {k: float(v) for k, v in c["weights"].items()}, float(c["temperature"]), dict(c["scores"]),
                       float(c.get("fit_seconds", 0.0)), tasks=tasks)
    except (KeyError, TypeError, ValueError) as exc:
        raise artifacts.damaged(root / artifacts.CONFIG, f"{type(exc).__name__}: {exc}") from None
    metrics_path = root / artifacts.METRICS
    return ens, (artifacts.read_json(metrics_path) if metrics_path.exists() else {})


def write_card(root: Path, ens: Ensemble, board: pd.DataFrame, metrics: dict) -> None:
    prep = ens.featurizer.prep
    lines = [f"# polymodal ensemble: predicts `{ens.config.label}`", "",
             f"- problem type: **{ens.problem.problem_type}**; eval metric: {ens.metric}",
             f"- preset `{ens.settings.preset}`: {ens.settings.folds}-fold bagging, up to {ens.settings.repeats} "
             f"repeat(s), ensemble selection (Caruana et al. 2004)"
             + ("; per label (multi-task)" if ens.tasks is not None else
                f", temperature {ens.temperature:.3f}" if not ens.problem.regression else ""),
             f"- inputs: {', '.join(prep.feature_columns())}",
             f"- fit time: {ens.fit_seconds:.1f} s", "", "## Leaderboard (out-of-fold scores)", "",
             board.to_markdown(index=False), "",
             "## Use", "", "```python", "from polymodal.runs import load_run",
             f"p = load_run({str(root)!r})", "p.predict(df)  # or p.predict_proba(df), p.evaluate(df), "
             "p.leaderboard(test_df)", "```"]
    if metrics.get("test"):
        lines[6:6] = ["- test: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics["test"].items()
                                             if isinstance(v, float))]
    artifacts.atomic_write_text(root / "README.md", "\n".join(lines) + "\n")

