"""polymodal `--preset best` against AutoGluon Tabular `best_quality` and polymodal's single models, same
splits, same time budget, same machine, in one run (issue 19).

Per table and seed (a 75/25 split, stratified for classes): polymodal `--preset best --time-limit T`; the best
single polymodal model (the ensemble member with the best out-of-fold score, scored on the test rows: chosen
by validation, not by test); polymodal `--preset fast` (the one fusion network `polymodal fit` trains by
default); AutoGluon Tabular `TabularPredictor(...).fit(presets="best_quality", time_limit=T)`, run in its own
virtualenv through a subprocess (JSON in, JSON out: never imported here).

    python3 -m venv /tmp/agvenv && /tmp/agvenv/bin/pip install "autogluon.tabular[lightgbm,catboost,xgboost]"
    nice -n 10 .venv/bin/python benchmarks/automl_peer.py --time-limit 60 --seeds 0 1 2 \
        --autogluon-python /tmp/agvenv/bin/python --out benchmarks/results/presets.json

`--tables` picks among breast_cancer, wine, diabetes, movielens_rating (MovieLens-100K items: plot overview +
poster + year/runtime → mean rating of items with ≥ 20 ratings; AutoGluon reads the overview as text n-grams
and gets no poster column, since AutoGluon Tabular ignores images), movielens_genres (the same columns for all
1,680 items with a genre → their 18 genres as a multi-label, "Action|Comedy"; AutoGluon trains one binary
predictor per genre, `--time-limit / 18` seconds each), and the media tables of
benchmarks/peer_tables.py on their published splits (the seed changes the models' seeds, and easy-vqa's
sample of training images): vqa_rad_closed, fsdd_digits, easy_vqa.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peer_tables import EASY_VQA_IMAGES, MEDIA_TABLES, autogluon_view, label_counts, media_split  # noqa: E402

CLASSIFICATION = {"breast_cancer", "wine", *MEDIA_TABLES}
MULTILABEL = {"movielens_genres"}


def load_table(name: str) -> tuple[pd.DataFrame, str, dict]:
    """(table, label column, extra info). Class labels are strings, as a user's CSV would have them."""
    from sklearn import datasets

    if name in ("breast_cancer", "wine", "diabetes"):
        loader = {"breast_cancer": datasets.load_breast_cancer, "wine": datasets.load_wine,
                  "diabetes": datasets.load_diabetes}[name]
        df = loader(as_frame=True).frame.rename(columns={"target": "label"})
        if name in CLASSIFICATION:
            df["label"] = "class_" + df["label"].astype(str)
        return df, "label", {}
    if name == "movielens_rating":
        from common import need  # benchmarks/common.py: the shared data location

        root = need("movielens-100k-posters")
        items = pd.read_csv(root / "items.csv")
        ratings = pd.read_csv(root / "interactions.csv").groupby("item_id")["rating"].agg(["mean", "count"])
        items = items.join(ratings, on="item_id")
        items = items[items["count"] >= 20]
        df = pd.DataFrame({"overview": items["overview"], "year": items["year"], "runtime": items["runtime"],
                           "poster": [str(root / p) if isinstance(p, str) else np.nan for p in items["image_path"]],
                           "label": items["mean"]}).reset_index(drop=True)
        return df, "label", {"media_columns": ["poster"]}
    if name == "movielens_genres":
        from common import need

        root = need("movielens-100k-posters")
        items = pd.read_csv(root / "items.csv")
        items = items[items["genres"] != "unknown"]  # the 2 items with no genre
        df = pd.DataFrame({"overview": items["overview"], "year": items["year"], "runtime": items["runtime"],
                           "poster": [str(root / p) if isinstance(p, str) else np.nan for p in items["image_path"]],
                           "label": items["genres"]}).reset_index(drop=True)
        return df, "label", {"media_columns": ["poster"]}
    raise SystemExit(f"unknown table {name!r}")


def problem_of(name: str) -> str:
    return "multilabel" if name in MULTILABEL else "classification" if name in CLASSIFICATION else "regression"


def split(df: pd.DataFrame, label: str, seed: int, problem: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    from sklearn.model_selection import train_test_split

    tr, te = train_test_split(df, test_size=0.25, random_state=seed,
                              stratify=df[label] if problem == "classification" else None)
    return tr.reset_index(drop=True), te.reset_index(drop=True)


def scores(problem: str, y: pd.Series, probs: pd.DataFrame | None, values: np.ndarray | None) -> dict:
    """accuracy + log loss for classes (probabilities' columns = class names); F1 macro / micro (every label
    at threshold 0.5) + mean per-label log loss for multi-label ("a|b" strings; columns = labels); RMSE + R²
    for values."""
    from sklearn.metrics import accuracy_score, f1_score, log_loss, mean_squared_error, r2_score

    if problem == "multilabel":
        names = [str(c) for c in probs.columns]
        truth = np.array([[n in set(str(v).split("|")) for n in names] for v in y], np.int64)
        p = np.clip(probs.to_numpy(np.float64), 1e-15, 1 - 1e-15)
        pred = (p >= 0.5).astype(np.int64)
        return {"f1_macro": float(f1_score(truth, pred, average="macro", zero_division=0)),
                "f1_micro": float(f1_score(truth, pred, average="micro", zero_division=0)),
                "log_loss": float(np.mean(-(truth * np.log(p) + (1 - truth) * np.log(1 - p))))}
    if problem == "classification":
        classes = list(probs.columns)
        p = np.clip(probs.to_numpy(np.float64), 1e-15, 1)
        p = p / p.sum(1, keepdims=True)
        return {"accuracy": float(accuracy_score(y, np.asarray(classes)[p.argmax(1)])),
                "log_loss": float(log_loss(y, p, labels=classes))}
    return {"rmse": float(np.sqrt(mean_squared_error(y, values))), "r2": float(r2_score(y, values))}


METRIC = {"classification": "accuracy", "multilabel": "f1_macro", "regression": "rmse"}  # polymodal's defaults


def predicted(model, test: pd.DataFrame, problem: str) -> tuple[pd.DataFrame | None, np.ndarray | None]:
    if problem == "regression":
        return None, model.predict_proba(test, as_pandas=False)
    return model.predict_proba(test), None


def run_polymodal(train, test, label, problem, seed, limit, log, options: dict | None = None,
                  fast_limit: float | None = None) -> dict[str, dict]:
    """`options`: the table's MultimodalPredictor settings (encoders, grouping), the same for every system;
    `fast_limit`: a time limit for the `--preset fast` network too (None: it trains to its epoch cap)."""
    from polymodal.predictor import MultimodalPredictor

    out, options = {}, options or {}
    kind = {"problem_type": problem} if problem != "classification" else {}
    t0 = time.time()
    p = MultimodalPredictor(label=label, preset="best", time_limit=limit, seed=seed, verbose=False, **kind,
                            **options).fit(train)
    fit_s = time.time() - t0
    y = test[label]
    res = scores(problem, y, *predicted(p, test, problem))
    out["polymodal_best"] = {**res, "fit_seconds": round(fit_s, 1)}
    board = p.leaderboard(test)
    members = board[(board["model"] != "ensemble") & (board["status"] == "ok")]
    metric = METRIC[problem]
    best = members.sort_values("score_val", ascending=metric == "rmse").iloc[0]
    single = {"member": best["model"], metric: float(best["score_test"])}
    if problem == "regression":
        single["r2"] = float(1 - best["score_test"] ** 2 / np.var(y.to_numpy(np.float64)))
    out["polymodal_best_single"] = single
    out["polymodal_best"]["members"] = {r["model"]: {"weight": r["weight"], "score_val": r["score_val"],
                                                     "score_test": r["score_test"], "status": r["status"],
                                                     "repeats": r["repeats"]} for _, r in board.iterrows()}
    log(f"    polymodal best {res} in {fit_s:.0f}s; best single {single}")
    t0 = time.time()
    f = MultimodalPredictor(label=label, seed=seed, verbose=False, progress=False, **kind, **options,
                            **({"time_limit": fast_limit} if fast_limit else {})).fit(train)
    res = scores(problem, y, *predicted(f, test, problem))
    out["polymodal_fast"] = {**res, "fit_seconds": round(time.time() - t0, 1)}
    log(f"    polymodal fast {res}")
    return out


def run_autogluon(python: str, train, test, label, problem, limit, view, log) -> dict:
    """AutoGluon in its own interpreter: tables as Parquet, settings and predictions as JSON. `view(df)` →
    (the table as AutoGluon reads it, a line saying how). Multi-label: one binary predictor per label, each
    with `limit / labels` seconds (AutoGluon Tabular has no multi-label problem type)."""
    with tempfile.TemporaryDirectory(prefix="ag-") as tmp:
        tmp = Path(tmp)
        ag_train, reads = view(train)
        ag_test = view(test)[0].drop(columns=[label])
        spec = {"label": label, "time_limit": limit, "problem": problem, "dir": str(tmp)}
        if problem == "multilabel":
            names = sorted({t for v in train[label] for t in str(v).split("|")})
            tags = ag_train.pop(label).astype(str).str.split("|")
            for i, n in enumerate(names):
                ag_train[f"__tag{i}"] = tags.map(lambda ts, n=n: n in ts)
            spec.update(tags=names)
        ag_train.to_parquet(tmp / "train.parquet")
        ag_test.to_parquet(tmp / "test.parquet")
        (tmp / "in.json").write_text(json.dumps(spec))
        t0 = time.time()
        proc = subprocess.run([python, __file__, "--autogluon-worker", str(tmp / "in.json")], capture_output=True,
                              text=True)
        wall = time.time() - t0
        if proc.returncode:
            raise RuntimeError(f"AutoGluon worker failed:\n{proc.stderr[-3000:]}")
        out = json.loads((tmp / "out.json").read_text())
    y = test[label]
    if problem == "regression":
        res = scores(problem, y, None, np.asarray(out["values"]))
    else:
        res = scores(problem, y, pd.DataFrame(out["probs"], columns=out["classes"]), None)
    res.update(fit_seconds=round(out["fit_seconds"], 1), wall_seconds=round(wall, 1), best_model=out["best"],
               version=out["version"], note=out["note"], reads=reads, feature_types=out.get("feature_types"))
    log(f"    autogluon {res}")
    return res


def autogluon_worker(spec_path: str) -> None:
    """Runs inside the AutoGluon virtualenv (no polymodal import)."""
    import autogluon.tabular as agt

    spec = json.loads(Path(spec_path).read_text())
    tmp = Path(spec["dir"])
    train, test = pd.read_parquet(tmp / "train.parquet"), pd.read_parquet(tmp / "test.parquet")
    t0 = time.time()

    def fit(data: pd.DataFrame, label: str, path: str, limit: float, problem: str, **first) -> tuple:
        """best_quality within `limit` seconds → (predictor, note)."""
        start = time.time()

        def once(where: str, seconds: float, **extra):
            p = agt.TabularPredictor(label=label, path=where, verbosity=1,
                                     eval_metric={"classification": "accuracy", "binary": "f1",
                                                  "regression": "root_mean_squared_error"}[problem],
                                     problem_type=None if problem == "classification" else problem)
            return p.fit(data, presets="best_quality", time_limit=seconds, **extra)

        try:
            return once(path, limit, **first), ""
        except Exception as exc:  # noqa: BLE001 - AutoGluon's own failure, recorded and retried as below
            # Seen with 60 s on the shared 2-core machine: best_quality's dynamic-stacking check (DyStack) trains
            # no model in its share of the time and the main fit then raises "Learner is already fit". The same fit
            # without the check (dynamic_stacking=False, a documented fit argument) is the retry, noted in results.
            note = f"default best_quality failed ({type(exc).__name__}: {str(exc)[:120]}); retried with " \
                   "dynamic_stacking=False within the time left"
            left = max(5.0, limit - (time.time() - start))
            return once(path + "_retry", left, dynamic_stacking=False), note

    if spec["problem"] == "multilabel":
        # one binary predictor per label (AutoGluon's own multi-label recipe, its MultilabelPredictor tutorial),
        # F1 as each one's metric (polymodal selects by F1 macro; both are scored at probability 0.5)
        tags, cols, p = spec["tags"], [c for c in train.columns if c.startswith("__tag")], None
        features = train.drop(columns=cols)
        probs, notes, best = [], [], []
        for i, (tag, col) in enumerate(zip(tags, cols)):
            left = spec["time_limit"] - (time.time() - t0)
            data = features.assign(**{col: train[col].astype(int)})
            try:  # no dynamic-stacking check: its holdout sub-fit cannot train anything in a per-genre share
                p, note = fit(data, col, str(tmp / f"ag{i}"), max(1.0, left / (len(tags) - i)), "binary",
                              dynamic_stacking=False)
            except Exception as exc:  # noqa: BLE001 - no model in this genre's share: its training rate stands in
                probs.append(np.full(len(test), float(data[col].mean())))
                notes.append(f"{tag}: no model trained ({type(exc).__name__}); predicted its training rate")
                best.append(None)
                continue
            probs.append(p.predict_proba(test)[1].to_numpy())
            notes.append(f"{tag}: {note}" if note else "")
            best.append(p.model_best)
        out = {"classes": tags, "probs": np.stack(probs, 1).tolist(), "best": best,
               "note": "; ".join(n for n in notes if n)}
    else:
        p, note = fit(train, spec["label"], str(tmp / "ag"), spec["time_limit"], spec["problem"])
        out = {"best": p.model_best, "note": note}
        if spec["problem"] == "classification":
            probs = p.predict_proba(test)
            out.update(classes=[str(c) for c in probs.columns], probs=probs.to_numpy().tolist())
        else:
            out["values"] = p.predict(test).to_numpy().tolist()
    # column → (raw type, special types): whether it read a column as text
    out.update(fit_seconds=time.time() - t0, version=agt.__version__, feature_types=None if p is None else
               {k: str(v) for k, v in p.feature_metadata_in.to_dict().items()})
    (tmp / "out.json").write_text(json.dumps(out))


def warm(df: pd.DataFrame, label: str, problem: str, options: dict | None = None) -> float:
    """Fill the feature cache for every row (the fit pipeline's prepare stage, as a fit would); seconds."""
    from polymodal.ensemble.features import featurize
    from polymodal.training.config import FitConfig

    t0 = time.time()
    kind = {"problem_type": problem} if problem != "classification" else {}
    featurize(df, FitConfig(label=label, **kind, **(options or {})), lambda m: None)
    print(f"  feature cache warmed in {time.time() - t0:.0f}s (not counted in the fits' times)", flush=True)
    return time.time() - t0


def code_version() -> str:
    """The commit polymodal was imported from, with "+changes" when its files differ from it."""
    import polymodal

    root = Path(polymodal.__file__).resolve().parents[1]
    git = ["git", "-C", str(root)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run([*git, "status", "--porcelain", "--", "polymodal"], capture_output=True, text=True).stdout
    return f"{head or 'unknown'}{' +changes' if dirty.strip() else ''} ({root})"


def summary(runs: list[dict]) -> dict:
    """mean ± std (sample std, ddof=1) of every numeric score over seeds."""
    keys = [k for k, v in runs[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return {k: {"mean": float(np.mean([r[k] for r in runs])), "std": float(np.std([r[k] for r in runs], ddof=1))
                if len(runs) > 1 else 0.0, "values": [r[k] for r in runs]} for k in keys}


SYSTEMS = {"polymodal_best": "polymodal `--preset best`", "polymodal_best_single": "best single polymodal member",
           "polymodal_fast": "polymodal `--preset fast`", "autogluon_best_quality": "AutoGluon `best_quality`"}


SHOWN = {"classification": ("accuracy", "log_loss"), "regression": ("rmse", "r2"),
         "multilabel": ("f1_macro", "f1_micro")}


def markdown(results: dict) -> str:
    """The results as a Markdown table: mean ± std over seeds per table and system."""
    lines = ["| table | rows | system | " + " | ".join(["metric 1", "metric 2", "fit s", "limit s"]) + " |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for name, t in results["tables"].items():
        for key, label in SYSTEMS.items():
            if key not in t["systems"]:
                continue
            summ = t["systems"][key]["summary"]
            cells = [f"{m} {summ[m]['mean']:.4f} ± {summ[m]['std']:.4f}" if m in summ else "—"
                     for m in SHOWN[t["problem"]]]
            fit = f"{summ['fit_seconds']['mean']:.0f}" if "fit_seconds" in summ else "—"
            train = sorted(set(t.get("train_rows_per_seed", [t.get("train_rows")])))
            train = f"{train[0]}" if len(train) == 1 else f"{train[0]}-{train[-1]}"  # easy_vqa: a sample per seed
            rows = f"{train} / {t['test_rows']}" if "train_rows" in t else t["rows"]
            limit = t.get("fast_time_limit_s") if key == "polymodal_fast" else t["time_limit_s"]
            limit = f"{limit:.0f}" if limit and "fit_seconds" in summ else "—"
            lines.append(f"| {name} | {rows} | {label} | {cells[0]} | {cells[1]} | {fit} | {limit} |")
    return "\n".join(lines)


def save(out: Path, name: str, table: dict) -> None:
    """One table's results into `out` after every seed (partial results kept), merged into the file as it
    is now (two runs may share it)."""
    current = json.loads(out.read_text()) if out.exists() else {"tables": {}}
    current.setdefault("tables", {})[name] = table
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(current, indent=2, default=float))
    tmp.replace(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tables", nargs="+", default=["breast_cancer", "wine", "diabetes"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--time-limit", type=float, default=60.0)
    ap.add_argument("--autogluon-python", default="/tmp/agvenv/bin/python")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/presets.json"))
    ap.add_argument("--warm-cache", action="store_true", help="tables with media: compute the frozen encoders' "
                    "features once before the timed fits (a re-run's state); otherwise the first seed pays for them")
    ap.add_argument("--fast-time-limit", type=float, default=None, help="also stop the --preset fast network "
                    "after this many seconds (default: it trains to its epoch cap; FSDD's from-scratch audio CNN "
                    "would take about 15 min a seed)")
    ap.add_argument("--easy-vqa-images", type=int, default=EASY_VQA_IMAGES,
                    help="easy_vqa: training images sampled per seed (with all their questions)")
    ap.add_argument("--markdown", action="store_true", help="print --out's results as a Markdown table and exit")
    args = ap.parse_args()
    if args.markdown:
        print(markdown(json.loads(args.out.read_text())))
        return
    command = "nice -n 10 .venv/bin/python " + " ".join(sys.argv)  # every table keeps the command that made it
    machine = f"{os.cpu_count()} CPU cores, shared with other jobs; no GPU"
    for name in args.tables:
        problem = problem_of(name)
        per_system: dict[str, list[dict]] = {}
        extra: dict = {}
        if name not in MEDIA_TABLES:
            df, label, info = load_table(name)
            if args.warm_cache and info.get("media_columns"):
                warm(df, label, problem)
        for seed in args.seeds:
            if name in MEDIA_TABLES:
                train, test, label, info = media_split(name, seed, args.easy_vqa_images)
                extra.update(label_counts(train, test, label), note=info["note"])
                extra.setdefault("train_rows_per_seed", []).append(len(train))  # easy_vqa: a sample per seed
                if args.warm_cache:  # train and test rows: predicting reads the cache too
                    extra.setdefault("warm_seconds", []).append(round(
                        warm(pd.concat([train, test], ignore_index=True), label, problem,
                             info["fit_options"]), 1))
            else:
                train, test = split(df, label, seed, problem)
            print(f"{name} seed {seed}: {len(train)} training / {len(test)} test rows", flush=True)
            load0 = os.getloadavg()
            for system, res in run_polymodal(train, test, label, problem, seed, args.time_limit, print,
                                             info.get("fit_options"), args.fast_time_limit).items():
                per_system.setdefault(system, []).append(res)
            view = functools.partial(autogluon_view, name, media_columns=info.get("media_columns", []))
            per_system.setdefault("autogluon_best_quality", []).append(
                run_autogluon(args.autogluon_python, train, test, label, problem, args.time_limit, view,
                              print))
            extra.setdefault("load_average_1_5_15", []).append(
                {"before": [round(x, 2) for x in load0], "after": [round(x, 2) for x in os.getloadavg()]})
            done = args.seeds[:len(per_system["polymodal_best"])]
            save(args.out, name, {
                "rows": extra.get("train_rows", 0) + extra.get("test_rows", 0) or len(df), "command": command,
                "time_limit_s": args.time_limit, "fast_time_limit_s": args.fast_time_limit, "seeds": done,
                "machine": machine, "polymodal": code_version(),
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "problem": problem, **extra,
                "systems": {s: {"summary": summary(r), "runs": r} for s, r in per_system.items()}})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--autogluon-worker":
        autogluon_worker(sys.argv[2])
    else:
        main()
