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
and gets no poster column, since AutoGluon Tabular ignores images).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

CLASSIFICATION = {"breast_cancer", "wine"}


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
        sys.path.insert(0, str(Path(__file__).resolve().parent))
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
    raise SystemExit(f"unknown table {name!r}")


def split(df: pd.DataFrame, label: str, seed: int, classification: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    from sklearn.model_selection import train_test_split

    tr, te = train_test_split(df, test_size=0.25, random_state=seed,
                              stratify=df[label] if classification else None)
    return tr.reset_index(drop=True), te.reset_index(drop=True)


def scores(classification: bool, y: pd.Series, probs: pd.DataFrame | None, values: np.ndarray | None) -> dict:
    """accuracy + log loss for classes (probabilities' columns = class names), RMSE + R² for values."""
    from sklearn.metrics import accuracy_score, log_loss, mean_squared_error, r2_score

    if classification:
        classes = list(probs.columns)
        p = np.clip(probs.to_numpy(np.float64), 1e-15, 1)
        p = p / p.sum(1, keepdims=True)
        return {"accuracy": float(accuracy_score(y, np.asarray(classes)[p.argmax(1)])),
                "log_loss": float(log_loss(y, p, labels=classes))}
    return {"rmse": float(np.sqrt(mean_squared_error(y, values))), "r2": float(r2_score(y, values))}


def run_polymodal(train, test, label, classification, seed, limit, log) -> dict[str, dict]:
    from polymodal.predictor import MultimodalPredictor

    out = {}
    t0 = time.time()
    p = MultimodalPredictor(label=label, preset="best", time_limit=limit, seed=seed, verbose=False,
                            problem_type=None if classification else "regression").fit(train)
    fit_s = time.time() - t0
    y = test[label]
    res = scores(classification, y, p.predict_proba(test) if classification else None,
                 None if classification else p.predict_proba(test, as_pandas=False))
    out["polymodal_best"] = {**res, "fit_seconds": round(fit_s, 1)}
    board = p.leaderboard(test)
    members = board[(board["model"] != "ensemble") & (board["status"] == "ok")]
    higher = classification  # eval metric: accuracy (higher) or rmse (lower)
    best = members.sort_values("score_val", ascending=not higher).iloc[0]
    single = {"member": best["model"], ("accuracy" if classification else "rmse"): float(best["score_test"])}
    if not classification:
        single["r2"] = float(1 - best["score_test"] ** 2 / np.var(y.to_numpy(np.float64)))
    out["polymodal_best_single"] = single
    out["polymodal_best"]["members"] = {r["model"]: {"weight": r["weight"], "score_val": r["score_val"],
                                                     "score_test": r["score_test"]} for _, r in board.iterrows()}
    log(f"    polymodal best {res} in {fit_s:.0f}s; best single {single}")
    t0 = time.time()
    f = MultimodalPredictor(label=label, seed=seed, verbose=False, progress=False,
                            problem_type=None if classification else "regression").fit(train)
    res = scores(classification, y, f.predict_proba(test) if classification else None,
                 None if classification else f.predict_proba(test, as_pandas=False))
    out["polymodal_fast"] = {**res, "fit_seconds": round(time.time() - t0, 1)}
    log(f"    polymodal fast {res}")
    return out


def run_autogluon(python: str, train, test, label, classification, limit, drop: list[str], log) -> dict:
    """AutoGluon in its own interpreter: tables as Parquet, settings and predictions as JSON."""
    with tempfile.TemporaryDirectory(prefix="ag-") as tmp:
        tmp = Path(tmp)
        train.drop(columns=drop).to_parquet(tmp / "train.parquet")
        test.drop(columns=drop + [label]).to_parquet(tmp / "test.parquet")
        spec = {"label": label, "time_limit": limit, "classification": classification, "dir": str(tmp)}
        (tmp / "in.json").write_text(json.dumps(spec))
        t0 = time.time()
        proc = subprocess.run([python, __file__, "--autogluon-worker", str(tmp / "in.json")], capture_output=True,
                              text=True)
        wall = time.time() - t0
        if proc.returncode:
            raise RuntimeError(f"AutoGluon worker failed:\n{proc.stderr[-3000:]}")
        out = json.loads((tmp / "out.json").read_text())
    y = test[label]
    if classification:
        res = scores(True, y, pd.DataFrame(out["probs"], columns=out["classes"]), None)
    else:
        res = scores(False, y, None, np.asarray(out["values"]))
    res.update(fit_seconds=round(out["fit_seconds"], 1), wall_seconds=round(wall, 1), best_model=out["best"],
               version=out["version"], note=out["note"])
    log(f"    autogluon {res}")
    return res


def autogluon_worker(spec_path: str) -> None:
    """Runs inside the AutoGluon virtualenv (no polymodal import)."""
    import autogluon.tabular as agt

    spec = json.loads(Path(spec_path).read_text())
    tmp = Path(spec["dir"])
    train, test = pd.read_parquet(tmp / "train.parquet"), pd.read_parquet(tmp / "test.parquet")
    t0 = time.time()

    def fit(path: str, **extra):
        p = agt.TabularPredictor(label=spec["label"], path=path, verbosity=1,
                                 eval_metric="accuracy" if spec["classification"] else "root_mean_squared_error",
                                 problem_type=None if spec["classification"] else "regression")
        return p.fit(train, presets="best_quality", time_limit=spec["time_limit"], **extra)

    note = ""
    try:
        p = fit(str(tmp / "ag"))
    except Exception as exc:  # noqa: BLE001 - AutoGluon's own failure, recorded and retried as below
        # Seen with 60 s on the shared 2-core machine: best_quality's dynamic-stacking check (DyStack) trains no
        # model in its share of the time and the main fit then raises "Learner is already fit". The same fit
        # without the check (dynamic_stacking=False, a documented fit argument) is the retry, noted in the results.
        note = f"default best_quality failed ({type(exc).__name__}: {str(exc)[:120]}); retried with " \
               "dynamic_stacking=False within the time left"
        left = max(5.0, spec["time_limit"] - (time.time() - t0))
        spec = {**spec, "time_limit": left}
        p = fit(str(tmp / "ag_retry"), dynamic_stacking=False)
    out = {"fit_seconds": time.time() - t0, "best": p.model_best, "version": agt.__version__, "note": note}
    if spec["classification"]:
        probs = p.predict_proba(test)
        out.update(classes=[str(c) for c in probs.columns], probs=probs.to_numpy().tolist())
    else:
        out["values"] = p.predict(test).to_numpy().tolist()
    (tmp / "out.json").write_text(json.dumps(out))


def warm(df: pd.DataFrame, label: str, classification: bool) -> None:
    """Fill the feature cache for every row (the fit pipeline's prepare stage, as a fit would)."""
    from polymodal.ensemble.features import featurize
    from polymodal.training.config import FitConfig

    t0 = time.time()
    featurize(df, FitConfig(label=label, problem_type=None if classification else "regression"), lambda m: None)
    print(f"  feature cache warmed in {time.time() - t0:.0f}s (not counted in the fits' times)", flush=True)


def summary(runs: list[dict]) -> dict:
    """mean ± std (sample std, ddof=1) of every numeric score over seeds."""
    keys = [k for k, v in runs[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return {k: {"mean": float(np.mean([r[k] for r in runs])), "std": float(np.std([r[k] for r in runs], ddof=1))
                if len(runs) > 1 else 0.0, "values": [r[k] for r in runs]} for k in keys}


SYSTEMS = {"polymodal_best": "polymodal `--preset best`", "polymodal_best_single": "best single polymodal member",
           "polymodal_fast": "polymodal `--preset fast`", "autogluon_best_quality": "AutoGluon `best_quality`"}


def markdown(results: dict) -> str:
    """The results as a Markdown table: mean ± std over seeds per table and system."""
    lines = ["| table | rows | system | " + " | ".join(["metric 1", "metric 2", "fit s"]) + " |",
             "|---|---:|---|---:|---:|---:|"]
    for name, t in results["tables"].items():
        for key, label in SYSTEMS.items():
            if key not in t["systems"]:
                continue
            summ = t["systems"][key]["summary"]
            cells = [f"{m} {summ[m]['mean']:.4f} ± {summ[m]['std']:.4f}" if m in summ else "—"
                     for m in (("accuracy", "log_loss") if t["problem"] == "classification" else ("rmse", "r2"))]
            fit = f"{summ['fit_seconds']['mean']:.0f}" if "fit_seconds" in summ else "—"
            lines.append(f"| {name} | {t['rows']} | {label} | {cells[0]} | {cells[1]} | {fit} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tables", nargs="+", default=["breast_cancer", "wine", "diabetes"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--time-limit", type=float, default=60.0)
    ap.add_argument("--autogluon-python", default="/tmp/agvenv/bin/python")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/presets.json"))
    ap.add_argument("--warm-cache", action="store_true", help="tables with media: compute the frozen encoders' "
                    "features once before the timed fits (a re-run's state); otherwise the first seed pays for them")
    ap.add_argument("--markdown", action="store_true", help="print --out's results as a Markdown table and exit")
    args = ap.parse_args()
    if args.markdown:
        print(markdown(json.loads(args.out.read_text())))
        return
    results = json.loads(args.out.read_text()) if args.out.exists() else {"tables": {}}
    results.update(command="nice -n 10 .venv/bin/python " + " ".join(sys.argv),
                   time_limit_s=args.time_limit, seeds=args.seeds, machine=f"{os.cpu_count()} CPU cores, shared "
                   "with other jobs; no GPU")
    for name in args.tables:
        df, label, info = load_table(name)
        classification = name in CLASSIFICATION
        if args.warm_cache and info.get("media_columns"):
            warm(df, label, classification)
        per_system: dict[str, list[dict]] = {}
        for seed in args.seeds:
            print(f"{name} seed {seed}: {len(df)} rows", flush=True)
            train, test = split(df, label, seed, classification)
            for system, res in run_polymodal(train, test, label, classification, seed, args.time_limit,
                                             print).items():
                per_system.setdefault(system, []).append(res)
            per_system.setdefault("autogluon_best_quality", []).append(
                run_autogluon(args.autogluon_python, train, test, label, classification, args.time_limit,
                              info.get("media_columns", []), print))
        results["tables"][name] = {"rows": len(df), "command": results["command"], "time_limit_s": args.time_limit,
                                   "problem": "classification" if classification else "regression",
                                   "systems": {s: {"summary": summary(r), "runs": r} for s, r in per_system.items()}}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2, default=float))  # after every table: partial results kept
    print(f"wrote {args.out}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--autogluon-worker":
        autogluon_worker(sys.argv[2])
    else:
        main()
