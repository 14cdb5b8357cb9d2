"""A fit's output holds polymodal's own lines: Lightning's setup notes, logger advertisement and warnings about
polymodal's intended choices are silenced at their source (training/trainer.py), real warnings are not."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pandas as pd

from polymodal.predictor import MultimodalPredictor
from polymodal.training.trainer import quiet_lightning

NOISE = ("litlogger", "GPU available", "TPU available", "in eval mode", "LeafSpec", "logging interval",
         "Warning")


def test_fit_prints_only_polymodal_lines(tmp_path):
    rng = np.random.default_rng(0)
    pd.DataFrame({"a": rng.normal(size=40), "b": rng.normal(size=40), "y": ["p", "q"] * 20}).to_csv(
        tmp_path / "t.csv", index=False)
    r = subprocess.run([sys.executable, "-m", "polymodal", "fit", str(tmp_path / "t.csv"), "--label", "y", "--out",
                        str(tmp_path / "run"), "--epochs", "2"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout + r.stderr
    assert "problem type: binary" in out and "validation" in out
    assert [n for n in NOISE if n in out] == [], out[-3000:]


def test_other_warnings_still_show():
    quiet_lightning()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        quiet_lightning()  # filters added inside catch_warnings apply there too
        warnings.warn("Found 3 module(s) in eval mode at the start of training. ...", UserWarning, stacklevel=1)
        warnings.warn("something the user must see", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["something the user must see"]


def test_class_weighting_is_off_unless_asked(tmp_path):
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"a": rng.normal(size=80), "y": ["common"] * 70 + ["rare"] * 10})  # 7x imbalanced
    auto = MultimodalPredictor(label="y", verbose=False, progress=False, max_epochs=1).fit(df)
    assert auto.task.class_weights is None  # fit optimises accuracy: no inverse-frequency weights by default
    on = MultimodalPredictor(label="y", verbose=False, progress=False, max_epochs=1, class_weighting=True).fit(df)
    w = on.task.class_weights.numpy()
    assert w[list(on.prep.classes).index("rare")] > w[list(on.prep.classes).index("common")]
