"""Run by tests/test_distributed.py in a subprocess: `fit` on a small tabular table, with 1 process or
with Lightning's CPU `ddp` (gloo), which re-runs this script for rank 1. Rank 0 writes the results."""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd

from polymodal.distributed import is_global_zero
from polymodal.training.config import FitConfig
from polymodal.training.fit import fit


def table(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=n), rng.normal(size=n)
    shop = rng.choice(["x", "y", "z"], size=n)
    y = (a + 0.5 * b + (shop == "x") > 0.3).astype(int)
    return pd.DataFrame({"a": a, "b": b, "shop": shop, "label": np.where(y, "yes", "no")})


def main(devices: int, batch_size: int, run_dir: str, out: str) -> None:
    config = FitConfig(label="label", problem_type="binary", batch_size=batch_size, max_epochs=5, patience=10,
                       lr=3e-3, dropout=0.0, encoder_opts={"tabular": {"dropout": 0.0}}, class_weighting=False,
                       augment=False, progress=False, accelerator="cpu", devices=devices,
                       strategy="ddp" if devices > 1 else "auto", cache_dir=run_dir + "/cache")
    result = fit(table(64, 0), table(24, 1), config, run_dir, log=lambda _: None)
    if is_global_zero():
        with open(out, "w") as f:
            json.dump({"val_metrics": result.val_metrics, "val_probs": result.val_probs.tolist(),
                       "history": result.history.to_dict("list")}, f)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
