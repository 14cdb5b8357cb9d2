"""Golden outputs of a whole run (tests/data/golden/make_golden_run.py, first generated on commit 60257a6,
before the architecture refactor): a stored run folder must load and predict the stored probabilities, and
training again with the same seed must reproduce them — so a refactor of the fit pipeline, the rebuild path
or the inference loop that changes a number fails here.

Tolerance: atol 1e-6 on probabilities (one machine's float32 CPU runs are bit-identical; the slack absorbs a
different kernel choice on another CPU)."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from polymodal.runs import load_run

GOLDEN = Path(__file__).resolve().parent / "data" / "golden"
_spec = importlib.util.spec_from_file_location("make_golden_run", GOLDEN / "make_golden_run.py")
make_golden_run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_golden_run)
ATOL = 1e-6


def _rows(root: Path) -> pd.DataFrame:
    make_golden_run.make_table(root).to_csv(root / "table.csv", index=False)
    rows = pd.read_csv(root / "table.csv").head(12)
    rows["photo"] = [str(root / v) for v in rows["photo"]]
    return rows


def test_stored_run_predicts_the_stored_probabilities(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(GOLDEN / "run", run)
    p = load_run(run)
    got = p.predict_proba(_rows(tmp_path), as_pandas=False)
    np.testing.assert_allclose(got, np.load(GOLDEN / "run-predict_proba.npz")["probs"], atol=ATOL, rtol=0)


def test_training_again_reproduces_the_golden_run(tmp_path):
    probs, p = make_golden_run.train_and_predict(tmp_path, None)
    np.testing.assert_allclose(probs, np.load(GOLDEN / "run-predict_proba.npz")["probs"], atol=ATOL, rtol=0)
    # the same rows through the server's path (collated batch → answer_batch) give the same numbers
    from polymodal.data.dataset import Collator

    rows = _rows(tmp_path)
    answers = p.answer_batch(Collator(p.prep)([_item(p, rows, i) for i in range(len(rows))]))
    served = np.array([[a["probabilities"][c] for c in p.task.classes] for a in answers])
    np.testing.assert_allclose(served, probs, atol=ATOL, rtol=0)


def _item(p, rows: pd.DataFrame, i: int):
    from polymodal.data.dataset import TableDataset

    return TableDataset(rows.iloc[[i]], p.prep, {}, train=False, with_target=False)[0]
