"""Golden outputs of a whole run: a small classifier is trained with a fixed seed on a generated table
(numbers, a category, small PNG images through the from-scratch `small-cnn` encoder, so the run folder stays
small), saved, and its `predict_proba` on fixed rows stored.

tests/test_golden.py checks two things against these files:
- the stored run folder (`run/`) loads and predicts the stored probabilities (rebuild + inference path);
- training again with the same seed gives the same probabilities (the fit pipeline: order of RNG draws,
  splits, preprocessing, model assembly).

Regenerate only when a change is meant to alter these numbers, and say why in the commit:
    .venv/bin/python tests/data/golden/make_golden_run.py
(it was first run on commit 60257a6, before the architecture refactor of issue 15).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

HERE = Path(__file__).resolve().parent
SETTINGS = dict(encoders={"image": "small-cnn"}, encoder_opts={"image": {"image_size": 32}}, max_epochs=3,
                batch_size=16, seed=0, progress=False, num_workers=0)


def make_table(root: Path, n: int = 48) -> pd.DataFrame:
    """A reproducible 3-class table: two numbers, a category and a 32x32 image whose colour carries signal."""
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        y = i % 3
        pix = np.zeros((32, 32, 3), np.uint8)
        pix[..., y] = 200
        pix = np.clip(pix + rng.integers(0, 40, pix.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pix).save(root / "img" / f"{i}.png")
        rows.append({"x1": float(y + rng.normal(0, 0.8)), "x2": float(rng.normal()),
                     "colour": ["red", "green", "blue", "grey"][int(rng.integers(0, 4))],
                     "photo": f"img/{i}.png", "label": f"c{y}"})
    return pd.DataFrame(rows)


def train_and_predict(root: Path, run: Path | None):
    """(probabilities on the table's first 12 rows, the predictor)."""
    from polymodal.predictor import MultimodalPredictor

    make_table(root).to_csv(root / "table.csv", index=False)
    p = MultimodalPredictor(label="label", path=run, verbose=False, **SETTINGS).fit(str(root / "table.csv"))
    rows = pd.read_csv(root / "table.csv").head(12)
    rows.attrs["source"] = str(root / "table.csv")
    rows["photo"] = [str(root / v) for v in rows["photo"]]
    return p.predict_proba(rows, as_pandas=False), p


if __name__ == "__main__":
    out = HERE / "run"
    shutil.rmtree(out, ignore_errors=True)
    data = HERE / "run_data"
    shutil.rmtree(data, ignore_errors=True)
    probs, _ = train_and_predict(data, out)
    for name in ("checkpoints", "logs", "fit_state.json", "plots", "README.md", "history.csv"):
        target = out / name
        shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
    shutil.rmtree(data)
    np.savez(HERE / "run-predict_proba.npz", probs=probs)
    print(f"wrote {out} and run-predict_proba.npz ({probs.shape})", file=sys.stderr)
