"""Serving an ensemble: `EnsemblePredictor.answer_batch` answers the rows the server collates (serve/runner.py
collates with the run's Preprocessor, the featurizer's, exactly as for a single model), so `polymodal serve`
works on an ensemble run unchanged.

From one collated batch:
- the featurizer's frozen encoders run on the decoded inputs once; with the batch's tabular arrays that is
  the Matrix the trees, linear and k-NN members read (the same assembly as for a table: Featurizer.assemble);
- each fusion-network fold standardises tabular values with its own fold's statistics, so the batch's
  tabular arrays are turned back into values (the inverse of Preprocessor.tabular_arrays) and encoded by the
  fold's Preprocessor; its frozen inputs reuse the featurizer's encoder output where the encoder is the same
  (equal cache ids), and run the fold's own encoder otherwise (token inputs, fine-tuned encoders).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from polymodal.data.preprocess import Preprocessor
from polymodal.ensemble.members import FusionMember, Rows
from polymodal.ensemble.run_folder import ensemble_output, fitted, fold_mean
from polymodal.model import per_row
from polymodal.problem_types import REGRESSION
from polymodal.types import TABULAR


def tabular_values(prep: Preprocessor, tab: dict[str, torch.Tensor]) -> pd.DataFrame:
    """Collated tabular arrays → the rows' values (numbers, NaN where missing; categories, None where missing or
    unseen): what each fold network's own Preprocessor encodes."""
    spec = prep.inputs[TABULAR].config
    num = tab["numeric"].double().numpy()
    miss = tab["numeric_missing"].numpy() > 0
    cols: dict[str, object] = {}
    for j, col in enumerate(spec["numeric"]):
        cols[col] = np.where(miss[:, j], np.nan, num[:, j] * prep.numeric_std[col] + prep.numeric_mean[col])
    cat = tab["categorical"].numpy()
    for j, col in enumerate(spec["categorical"]):
        vocab = prep.vocab[col]
        cols[col] = pd.Series([None if i == 0 else vocab[i - 1] for i in cat[:, j]], dtype=object)
    return pd.DataFrame(cols, index=range(len(num)))


@torch.no_grad()
def encoded(ens, batch: dict) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{input: (features, present)} of the featurizer's frozen inputs, as the feature cache holds them: the
    encoder's output (a partly fine-tuned one's frozen prefix, float16), zeros where the input is missing."""
    model, out = ens.featurizer.model, {}
    for key in ens.featurizer.keys:
        enc = model.encoders[key].eval()
        x = batch["inputs"][key]
        f = per_row((enc.prefix(x).half() if getattr(enc, "train_top", 0) else enc(x)).float(), batch, key).numpy()
        present = batch["present"][key].numpy().astype(bool)
        f[~present] = 0.0
        out[key] = (f, present)
    return out


@torch.no_grad()
def network_output(member: FusionMember, net, batch: dict, values: pd.DataFrame | None, shared: dict,
                   shared_ids: dict[str, str], problem) -> np.ndarray:
    """One fusion-network fold's output for a collated batch (see the module docstring)."""
    b = {"inputs": dict(batch["inputs"]), "features": {}, "present": dict(batch["present"]),
         "index": dict(batch.get("index", {}))}
    if values is not None and TABULAR in net.prep.inputs:
        b["inputs"][TABULAR] = {k: torch.from_numpy(v) for k, v in net.prep.tabular_arrays(values).items()}
    for key, enc in net.model.encoders.items():
        same = key in shared and getattr(enc, "cache_id", None) == shared_ids.get(key)
        if same and key not in net.model.token_inputs and not getattr(enc, "train_top", 0):
            b["features"][key] = torch.from_numpy(shared[key][0])  # per row already: no index for it
            b["index"].pop(key, None)
    probs = net.task.probabilities(net.model.eval()(b)).float().numpy()
    return member.outputs(net, probs, problem)


def batch_output(ens, batch: dict) -> np.ndarray:
    """The ensemble's calibrated output for a collated batch (as `EnsemblePredictor.predict_proba` gives)."""
    prep = ens.featurizer.prep
    n = len(next(iter(batch["present"].values())))
    tab = {k: v.numpy() for k, v in batch["inputs"][TABULAR].items()} if TABULAR in prep.inputs else None
    feats = encoded(ens, batch)
    rows = Rows(pd.DataFrame(index=range(n)), ens.featurizer.assemble(n, tab, feats))
    values = tabular_values(prep, batch["inputs"][TABULAR]) if TABULAR in prep.inputs else None
    ids = {k: getattr(ens.featurizer.model.encoders[k], "cache_id", None) for k in feats}
    preds = {}
    for name in [n for n, w in ens.weights.items() if w > 0]:
        member, models = ens.results[name].member, fitted(ens, name)
        if isinstance(member, FusionMember):
            preds[name] = fold_mean(models, lambda m, mb=member: network_output(mb, m, batch, values, feats, ids,
                                                                                ens.problem))
        else:
            preds[name] = fold_mean(models, lambda m, mb=member: mb.predict(m, rows, ens.problem))
    return ensemble_output(ens, preds)


def answers(task, probs: np.ndarray, label: str) -> list[dict]:
    """Per-row {"prediction", "probabilities"} in the server's format (contracts.outputs_to_answers's, from
    probabilities instead of logits): class names ("a|b" multi-label), values for regression."""
    if task.problem_type == REGRESSION:
        return [{"prediction": float(v), "probabilities": None} for v in np.asarray(probs).reshape(-1)]
    cols, labels = task.output_columns(label), task.labels(probs)
    if isinstance(labels, dict):  # multi-task: one prediction per label
        return [{"prediction": {k: labels[k][i] for k in labels},
                 "probabilities": {c: float(x) for c, x in zip(cols, row)}} for i, row in enumerate(probs)]
    return [{"prediction": lab, "probabilities": {c: float(x) for c, x in zip(cols, row)}}
            for lab, row in zip(labels, probs)]
