"""`fit_ensemble`: features from the fit pipeline's prepare stage → every member bagged over k folds (repeated
with new folds while time remains) → out-of-fold predictions → ensemble selection → temperature scaling
(multi-task labels: per label, ensemble/multitask.py).

A member that raises, or would overrun its share of `--time-limit`, is dropped with a line in the log; the
fit goes on with the others (and fails only when none is left)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from polymodal.data.readers import keep_rows
from polymodal.ensemble.bagging import Budget, fold_groups, make_folds
from polymodal.ensemble.config import EnsembleSettings
from polymodal.ensemble.features import Featurizer, featurize
from polymodal.ensemble.members import Member, Problem, Rows, build_member, problem_of
from polymodal.ensemble.multitask import TaskBlend, for_problem, mean_weights, multitask_output, select_tasks
from polymodal.ensemble.scoring import check_metric, metric_value
from polymodal.ensemble.selection import blend, calibrate, caruana
from polymodal.errors import PolymodalError
from polymodal.problem_types import MULTILABEL, MULTITASK, REGRESSION
from polymodal.tasks import task_from_prep
from polymodal.training.config import FitConfig
from polymodal.training.pipeline import Log


@dataclass
class MemberResult:
    """A member's bagged fold models (one list per completed repeat) and its out-of-fold record."""

    member: Member
    folds: list[list] = field(default_factory=list)  # repeat → fold → fitted state
    oof_sum: np.ndarray | None = None
    fit_seconds: float = 0.0
    predict_seconds: float = 0.0  # predicting the held-out rows, all folds of all repeats
    status: str = "ok"

    @property
    def oof(self) -> np.ndarray:
        return self.oof_sum / len(self.folds)


@dataclass
class Ensemble:
    """A trained ensemble in memory (ensemble/run_folder.py writes and reads it)."""

    config: FitConfig
    settings: EnsembleSettings
    featurizer: Featurizer
    problem: Problem
    metric: str
    results: dict[str, MemberResult]
    weights: dict[str, float]
    temperature: float
    scores: dict[str, float]  # member (and "ensemble") → out-of-fold metric value
    fit_seconds: float = 0.0
    y: np.ndarray | None = None  # the training targets the scores were computed on
    log: list[str] = field(default_factory=list)
    tasks: dict[str, TaskBlend] | None = None  # multi-task: each label's sub-ensemble (weights: their mean)


def targets(df: pd.DataFrame, featurizer: Featurizer) -> np.ndarray:
    """Class ids, (N, L) 0/1 for multi-label, or values in the label's units; multi-task: the encoded target
    as it is (NaN where a row has no label; ensemble/multitask.py reads each label's part)."""
    prep = featurizer.prep
    y = prep.encode_target(df)
    if prep.schema.problem_type == MULTITASK:
        return y.astype(np.float64)
    if prep.schema.problem_type == REGRESSION:
        return y.astype(np.float64) * prep.target_std + prep.target_mean
    return y.astype(np.int64)


def fit_ensemble(train_df: pd.DataFrame, valid_df: pd.DataFrame | None, config: FitConfig,
                 settings: EnsembleSettings, scratch: str | Path, log: Log = print,
                 members: list[Member] | None = None) -> Ensemble:
    """Train the portfolio on `train_df` (+ `valid_df`: with out-of-fold predictions every row validates, so
    a separate validation table joins the training rows). `members` overrides the preset's."""
    budget = Budget(settings.time_limit)
    scratch = Path(scratch)
    if valid_df is not None:
        log(f"  {len(valid_df)} validation rows join the {len(train_df)} training rows (out-of-fold predictions "
            "validate every row)")
        attrs = dict(train_df.attrs)  # source file and base folder (relative media paths)
        train_df = pd.concat([train_df, valid_df], ignore_index=True)
        train_df.attrs.update(attrs)
    log(f"[{budget.status()}] features: preprocessing and the feature cache")
    featurizer, df, matrix = featurize(train_df, config, log)
    for key in featurizer.skipped():
        log(f"  input {key!r} has no frozen encoder: only the fusion networks read it")
    y = targets(df, featurizer)
    prep = featurizer.prep
    problem = problem_of(prep, config.seed)
    metric = check_metric(settings.eval_metric, problem.problem_type)
    groups = fold_groups(df, prep.schema, config.group_column, log)
    rows = Rows(df, matrix, y)
    members = [for_problem(m, problem) for m in (members if members is not None else
                                                  [build_member(n, config) for n in settings.members])]
    if budget.train_left() <= 0:  # the cache was cold and encoding took the whole budget
        log(f"  the time limit went on computing features ({budget.elapsed():.0f}s): only {members[0].name} trains, "
            "past the limit (the feature cache makes the next fit faster; or raise --time-limit)")
        members = members[:1]
    results = {m.name: MemberResult(m) for m in members}
    for rep in range(settings.repeats):
        live = [r for r in results.values() if r.status == "ok"]
        if not live:
            break
        # multi-task: plain (or group) k-fold; each label's rows spread over the folds at random
        folds = make_folds(y, not problem.regression and not problem.multitask, settings.folds, config.seed + rep,
                           groups)
        if rep:
            if budget.train_left() <= 0:
                break
            log(f"[{budget.status()}] bagging repeat {rep + 1}/{settings.repeats} (new folds)")
        pending = sum(r.member.share for r in live)
        for res in live:
            share = budget.train_left() * res.member.share / pending
            pending -= res.member.share
            if rep and res.fit_seconds / len(res.folds) > budget.train_left():
                log(f"  {res.member.name}: no time left for repeat {rep + 1}; keeps {len(res.folds)} repeat(s)")
                continue
            first = not any(r.folds for r in results.values())  # the first member finishes whatever the clock says
            bag(res, rows, folds, problem, share if rep == 0 else budget.train_left(), budget, scratch, rep, log,
                must_finish=first)
    done = {n: r for n, r in results.items() if r.status == "ok" and r.folds}
    if not done:
        raise PolymodalError("no ensemble member finished: " + "; ".join(f"{n}: {r.status}"
                                                                        for n, r in results.items()))
    oof = {n: r.oof for n, r in done.items()}
    task = task_from_prep(prep, config) if problem.multitask else None  # the multi-task "score" is its metrics'
    blends = None
    if problem.multitask:  # a sub-ensemble per label (ensemble/multitask.py)
        blends = select_tasks(oof, y, problem, settings.selection_rounds)
        weights, temperature = mean_weights(blends), 1.0
        blended = multitask_output(oof, blends, problem)
        for label, b in blends.items():
            used = ", ".join(f"{n} {w:.2f}" for n, w in sorted(b.weights.items(), key=lambda kv: -kv[1]) if w > 0)
            log(f"  {label}: {used}; out-of-fold {b.metric} {b.score:.4f}"
                + (f", temperature {b.temperature:.3f}" if b.temperature != 1.0 else ""))
    else:
        weights, _ = caruana(oof, y, metric, settings.selection_rounds)
        blended = blend(oof, weights)
        temperature, blended = (1.0, blended) if problem.regression else calibrate(blended, y, metric)
    scores = {n: metric_value(metric, p, y, task) for n, p in oof.items()}
    scores["ensemble"] = metric_value(metric, blended, y, task)
    used = ", ".join(f"{n} {w:.2f}" for n, w in sorted(weights.items(), key=lambda kv: -kv[1]) if w > 0)
    log(f"[{budget.status()}] ensemble: {used}; out-of-fold {metric} {scores['ensemble']:.4f}"
        + (f", temperature {temperature:.3f}" if not problem.regression and not problem.multitask else ""))
    return Ensemble(config, settings, featurizer, problem, metric, results, weights, temperature, scores,
                    budget.elapsed(), y, tasks=blends)


def bag(res: MemberResult, rows: Rows, folds: list, problem: Problem, seconds: float, budget: Budget,
        scratch: Path, rep: int, log: Log, must_finish: bool = False) -> None:
    """One bagging repeat of one member within `seconds`: every fold or none (a partial repeat would leave
    rows without an out-of-fold prediction). Errors and overruns drop the member; `must_finish` (the first
    member, so that a fit always ends with a model) only drops it on errors."""
    name, k = res.member.name, len(folds)
    start, fitted, oof, left0 = time.time(), [], None, budget.train_left()
    for i, (tr, va) in enumerate(folds):
        spent = time.time() - start
        why = None if must_finish else overrun(spent, i, k, seconds, left0, budget.train_left())
        if why:
            return drop(res, why, rep, log)
        log(f"[{budget.status()}] {name}: fold {i + 1}/{k}" + (f", repeat {rep + 1}" if rep else ""))
        tr, va = np.sort(tr), np.sort(va)
        folder = scratch / "members" / name.replace(":", "-") / f"r{rep}f{i}"
        try:
            with one_blas_thread():
                model = res.member.fit(rows.take(tr), rows.take(va), problem,
                                       max(1.0, (seconds - spent) / (k - i)), folder, log)
                t = time.time()
                pred = res.member.predict(model, rows.take(va), problem)
            res.predict_seconds += time.time() - t
        except Exception as exc:  # any member failure drops that member, never the whole fit
            return drop(res, f"raised {type(exc).__name__}: {exc}", rep, log)
        if oof is None:
            oof = np.zeros((len(rows.y),) + pred.shape[1:], np.float64)
        oof[va] = pred
        fitted.append(model)
    res.folds.append(fitted)
    res.oof_sum = oof if res.oof_sum is None else res.oof_sum + oof
    res.fit_seconds += time.time() - start


def one_blas_thread():
    """One BLAS/OpenMP thread for the members' small matrix products. Measured on the shared 2-core machine
    (MovieLens mean rating, 704 rows, PCA of text and poster embeddings): a linear-member fold took 1.5-7 s
    with the default threads and 0.2-0.3 s with one; a k-NN fold 1.5 s and 0.2 s."""
    return threadpool_limits(limits=1)


def overrun(spent: float, done: int, k: int, share: float, left_at_start: float, left: float) -> str | None:
    """Why a member should stop before its next fold, or None. Its share of the budget is a soft bound: time
    earlier members left unused rolls over, so a member may take up to half of what was left when it started;
    and no fold starts that the time left cannot hold (estimated from the folds done)."""
    if left <= 0:
        return "no time left"
    if not done:
        return None
    per_fold = spent / done
    if per_fold > left:
        return f"its next fold (~{per_fold:.0f}s) does not fit in the {left:.0f}s left"
    if per_fold * k > max(2 * share, 0.5 * left_at_start):
        return (f"would overrun its {share:.0f}s share of the time limit ({spent:.0f}s for {done}/{k} folds, "
                f"~{per_fold * k:.0f}s for all)")
    return None


def drop(res: MemberResult, why: str, rep: int, log: Log) -> None:
    if rep and res.folds:  # earlier repeats stand: only this repeat is lost
        log(f"  {res.member.name}: repeat {rep + 1} stopped ({why}); keeps {len(res.folds)} repeat(s)")
        return
    res.status = f"dropped: {why}"
    log(f"  {res.member.name} dropped: {why}")


def keep_known(df: pd.DataFrame, prep) -> pd.DataFrame:
    """Rows whose class the ensemble knows (a test row with an unseen class cannot be scored; a multi-label
    row's unseen labels are left out of its target, as for a single model)."""
    if not prep.classes or prep.schema.problem_type == MULTILABEL:
        return df
    return keep_rows(df, df[prep.schema.label].astype(str).isin(set(prep.classes)))
