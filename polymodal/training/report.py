"""Run-folder report: plots and a model card README."""

from __future__ import annotations

import json
from pathlib import Path

from polymodal.training.artifacts import atomic_write_text


def write_plots(run: Path, predictor) -> None:
    from polymodal.training.metrics import confusion_matrix
    from polymodal.training.plots import plot_confusion, plot_curves

    res = predictor._result
    if res is None:
        return
    if len(res.history):
        plot_curves(res.history, run / "plots" / "training_curves.png", res.task.monitor[0])
    if res.val_probs is not None and res.task.problem_type in ("binary", "multiclass"):
        plot_confusion(confusion_matrix(res.val_probs, res.val_target), res.prep.classes,
                       run / "plots" / "confusion_matrix.png", "Confusion matrix (validation)")


def write_model_card(run: Path, predictor) -> None:
    prep, cfg, model = predictor.prep, predictor.config, predictor.model
    lines = [f"# polymodal model: predicts `{cfg.label}`", "",
             f"- problem type: **{prep.schema.problem_type}**"]
    if prep.classes:
        shown = ", ".join(map(str, prep.classes[:30])) + (" …" if len(prep.classes) > 30 else "")
        lines.append(f"- classes ({len(prep.classes)}): {shown}")
    lines += [f"- fusion: `{cfg.fusion}`; head hidden size {cfg.head_hidden}; dropout {cfg.dropout}",
              f"- model id (SHA-256 of model.safetensors, first 16 hex): `{getattr(predictor, 'model_id', '')}`",
              "", "## Inputs", "", "| input | modality | columns | encoder | frozen | out dim |",
              "|---|---|---|---|---|---|"]
    for key, spec in prep.inputs.items():
        enc = model.encoders[key]
        frozen = not any(p.requires_grad for p in enc.parameters())
        lines.append(f"| {key} | {spec.modality} | {', '.join(spec.columns)} | `{getattr(enc, 'cache_id', '')}` "
                     f"| {frozen} | {enc.out_dim} |")
    ignored = [c for c, m in prep.schema.columns.items() if m == "id"]
    if ignored:
        lines += ["", f"Ignored columns (ids, constant or empty): {', '.join(ignored)}"]
    lines += ["", "## Metrics", "", "```json", json.dumps(predictor.metrics, indent=2, default=str), "```", "",
              "## Training", "", "```json", json.dumps(cfg.to_dict(), indent=2, default=str), "```", "",
              "## Use", "", "```python", "from polymodal import MultimodalPredictor",
              f"p = MultimodalPredictor.load({str(run)!r})", "p.predict(df)  # or p.predict_proba(df)", "```",
              "", "Loads offline; a run trained on a GPU predicts on CPU.", ""]
    atomic_write_text(run / "README.md", "\n".join(lines))
