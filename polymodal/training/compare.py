"""`polymodal compare`: unimodal baselines and fusion strategies trained on the same splits and seeds.

Every model shares the frozen-feature cache, so after the first fit the encoders are not run again and
each further fit costs only the fusion and head. Robustness (as in MultiBench) evaluates every model with
each input removed (its presence bit cleared) or noised (Gaussian noise of the input's own scale added).
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from polymodal.data.schema import infer_schema
from polymodal.data.split import row_groups, split_rows
from polymodal.encoders.cache import precompute_features
from polymodal.model import move_batch
from polymodal.problem_types import MULTILABEL, MULTITASK, ONE_CLASS_PER_ROW, REGRESSION
from polymodal.training.build import frozen_keys
from polymodal.training.config import FitConfig
from polymodal.training.fit import fit
from polymodal.training.metrics import compute_metrics
from polymodal.training.pipeline import FitResult, Log, make_loader, predict_probs
from polymodal.types import ID, TABULAR


def input_groups(schema_columns: dict[str, str]) -> dict[str, list[str]]:
    """Model inputs → their columns (media/text columns alone, numeric + categorical together)."""
    groups: dict[str, list[str]] = {}
    for col, mod in schema_columns.items():
        if mod == ID:
            continue
        key = TABULAR if mod in ("numeric", "categorical") else col
        groups.setdefault(key, []).append(col)
    return groups


def _only(config: FitConfig, columns: dict[str, str], keep: list[str]) -> FitConfig:
    types = {c: (m if c in keep else ID) for c, m in columns.items()}
    return dataclasses.replace(config, column_types=types)


@torch.inference_mode()
def _probs(res: FitResult, df: pd.DataFrame, perturb: tuple[str, str] | None = None,
           seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities on `df`, optionally with one input removed or noised at the batch level."""
    model, prep, cfg = res.model.eval(), res.prep, res.config
    keys = frozen_keys(model, prep, cfg)
    feats, _, _ = precompute_features(df, prep, {k: model.encoders[k] for k in keys}, keys, cfg.cache_dir,
                                      cfg.batch_size, token_keys=[k for k in keys if k in model.token_inputs])
    loader = make_loader(df, prep, feats, dataclasses.replace(cfg, num_workers=0), train=False)
    gen = torch.Generator().manual_seed(seed)
    probs, targets = [], []
    for batch in loader:
        batch = move_batch(batch, "cpu")
        if perturb:
            key, how = perturb
            if how == "removed":
                batch["present"][key] = torch.zeros_like(batch["present"][key])
            else:
                _add_noise(batch, key, gen)
        probs.append(res.task.probabilities(model(batch)).numpy())
        targets.append(batch["target"].numpy())
    return np.concatenate(probs), np.concatenate(targets)


def _add_noise(batch: dict, key: str, gen: torch.Generator) -> None:
    def noisy(x: torch.Tensor) -> torch.Tensor:
        if not x.is_floating_point():
            return x
        scale = x.float().std().clamp(min=1e-6)
        return x + torch.randn(x.shape, generator=gen) * scale

    if key in batch["features"]:
        batch["features"][key] = noisy(batch["features"][key])
    elif key in batch["inputs"]:
        v = batch["inputs"][key]
        if isinstance(v, dict):  # tabular numerics are noised; token ids have no meaningful noise: dropped
            for part in ("numeric", "frames", "values"):  # tabular numerics, video frames, time-series values
                if part in v:
                    v[part] = noisy(v[part])
            if "input_ids" in v:
                batch["present"][key] = torch.zeros_like(batch["present"][key])
        else:
            batch["inputs"][key] = noisy(v)


def _latency_ms(res: FitResult, df: pd.DataFrame, repeats: int = 7) -> float:
    """Median single-row predict latency, encoders included (no cached features)."""
    row = df.head(1)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        predict_probs(res.model, res.task, res.prep, row, res.config, with_target=False)
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))


def compare(train_df: pd.DataFrame, config: FitConfig, fusions: list[str], seeds: list[int],
            valid_df: pd.DataFrame | None = None, test_df: pd.DataFrame | None = None, robustness: bool = False,
            unimodal: bool = True, log: Log = print) -> pd.DataFrame:
    """One row per (model, seed): test metric, parameters, train time, latency, robustness columns."""
    schema = infer_schema(train_df, config.label, config.column_types, config.problem_type)
    config = dataclasses.replace(config, column_types=dict(schema.columns), problem_type=schema.problem_type,
                                 progress=False)
    groups, note = row_groups(train_df, schema.columns, config.group_column)
    if note and (test_df is None or valid_df is None):
        log(f"  groups: {note}")
    if test_df is None:  # one held-out split shared by every model and seed
        train_df, test_df = split_rows(train_df, config.label, schema.problem_type, 0.2, 12345, groups)
        log(f"  test split: {len(test_df)} rows held out of the training table")
        groups = row_groups(train_df, schema.columns, config.group_column)[0]
    if valid_df is None:
        train_df, valid_df = split_rows(train_df, config.label, schema.problem_type, config.valid_fraction, 54321,
                                        groups)
    dropped = 0
    if schema.problem_type in ONE_CLASS_PER_ROW:  # a class training never saw cannot be predicted
        seen = set(train_df[config.label].astype(str))
        known = test_df[config.label].astype(str).isin(seen)
        dropped = int((~known).sum())
        if dropped:
            log(f"  {dropped} of {len(test_df)} test rows have a label that training never saw: scored without "
                "them (count them as wrong: multiply by the kept fraction)")
            kept = test_df[known]
            kept.attrs.update(test_df.attrs)
            test_df = kept
    groups = input_groups(schema.columns)
    candidates: list[tuple[str, FitConfig]] = []
    if unimodal:
        for key, cols in groups.items():
            candidates.append((f"only {key}", _only(config, schema.columns, cols)))
    for name in fusions:
        if len(groups) < 2 and name != "concat":
            continue
        candidates.append((f"fusion: {name}", dataclasses.replace(config, fusion=name)))
    metric = {REGRESSION: "rmse", MULTILABEL: "f1_macro", MULTITASK: "score"}.get(schema.problem_type,
                                                                                       "accuracy")
    rows = []
    unimodal_probs: dict[int, list[np.ndarray]] = {}
    for name, cfg in candidates:
        for seed in seeds:
            t0 = time.time()
            with tempfile.TemporaryDirectory(prefix="polymodal-compare-") as run_dir:
                res = fit(train_df, valid_df, dataclasses.replace(cfg, seed=seed), run_dir, log=lambda m: None)
            train_s = time.time() - t0
            probs, target = _probs(res, test_df)
            m = res.task.metrics(probs, target)
            n_params = sum(p.numel() for p in res.model.parameters())
            trainable = sum(p.numel() for p in res.model.parameters() if p.requires_grad)
            row = {"model": name, "seed": seed, metric: m[metric], "params": n_params, "trained params": trainable,
                   "train s": round(train_s, 1), "predict ms (1 row)": round(_latency_ms(res, test_df), 1)}
            if robustness and name.startswith("fusion"):
                for key in groups:
                    for how in ("removed", "noised"):
                        p, t = _probs(res, test_df, (key, how), seed)
                        row[f"{key} {how}"] = res.task.metrics(p, t)[metric]
            rows.append(row)
            if name.startswith("only") and schema.problem_type not in (REGRESSION, MULTITASK):
                unimodal_probs.setdefault(seed, []).append(probs)
            log(f"  {name} seed {seed}: {metric} {m[metric]:.4f} ({train_s:.0f} s)")
    for seed, plist in unimodal_probs.items():
        if len(plist) >= 2:
            p = np.mean(plist, axis=0)
            rows.append({"model": "ensemble of unimodal models", "seed": seed,
                         metric: compute_metrics(schema.problem_type, p, target)[metric]})
    out = pd.DataFrame(rows)
    out.attrs["metric"] = metric
    out.attrs["test_rows"], out.attrs["test_rows_dropped"] = len(test_df), dropped
    return out


def summarise(results: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std over seeds per model, best first."""
    metric = results.attrs.get("metric", "accuracy")
    agg = {metric: ["mean", "std"]}
    for c in results.columns:
        if c not in ("model", "seed", metric):
            agg[c] = ["mean"]
    g = results.groupby("model", sort=False).agg(agg)
    out = pd.DataFrame({"model": g.index})
    out[metric] = [f"{m:.4f} ± {0 if np.isnan(s) else s:.4f}"
                   for m, s in zip(g[(metric, "mean")], g[(metric, "std")])]
    out["_mean"] = g[(metric, "mean")].to_numpy()
    out["seeds"] = results.groupby("model", sort=False)["seed"].nunique().to_numpy()
    for c in results.columns:
        if c in ("model", "seed", metric):
            continue
        vals = g[(c, "mean")].to_numpy()
        out[c] = [("" if np.isnan(v) else (f"{v:.4f}" if abs(v) <= 1 and c not in ("params", "trained params")
                                            else f"{v:,.0f}" if "params" in c else f"{v:.1f}")) for v in vals]
    ascending = metric == "rmse"
    out = out.sort_values("_mean", ascending=ascending).drop(columns="_mean").reset_index(drop=True)
    return out


def plot_comparison(results: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = results.attrs.get("metric", "accuracy")
    g = results.groupby("model", sort=False)[metric].agg(["mean", "std"]).sort_values("mean")
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(g) + 1.2))
    colors = ["C1" if m.startswith("only") or m.startswith("ensemble") else "C0" for m in g.index]
    ax.barh(g.index, g["mean"], xerr=g["std"].fillna(0), color=colors)
    lo = max(0.0, float(g["mean"].min()) - 0.1) if metric != "rmse" else 0
    ax.set_xlim(left=lo)
    ax.set_xlabel(f"test {metric} (mean ± std over seeds)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
