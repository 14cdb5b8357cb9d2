"""Run-folder report: plots and a model card README (classifier/regressor or text generator)."""

from __future__ import annotations

import json
from pathlib import Path

from polymodal.problem_types import ONE_CLASS_PER_ROW
from polymodal.tasks.generation import DecodeConfig
from polymodal.training.artifacts import atomic_write_text
from polymodal.training.build import GENERATION_RUN
from polymodal.training.metrics import confusion_matrix
from polymodal.training.pipeline import FitResult
from polymodal.training.plots import plot_confusion, plot_curves


def write_plots(run: Path, res: FitResult | None, kind: str) -> None:
    """Training curves of the monitored metric (generators: next-token accuracy) and, for single-label
    classifiers, the validation confusion matrix."""
    if res is None:
        return
    if len(res.history):
        metric = "token_accuracy" if kind == GENERATION_RUN else res.task.monitor[0]
        plot_curves(res.history, run / "plots" / "training_curves.png", metric)
    if res.val_probs is not None and res.task.problem_type in ONE_CLASS_PER_ROW:
        plot_confusion(confusion_matrix(res.val_probs, res.val_target), res.prep.classes,
                       run / "plots" / "confusion_matrix.png", "Confusion matrix (validation)")


def _inputs_table(prep, model, out_dim: bool) -> list[str]:
    lines = ["| input | modality | columns | encoder | frozen |" + (" out dim |" if out_dim else ""),
             "|---|---|---|---|---|" + ("---|" if out_dim else "")]
    for key, spec in prep.inputs.items():
        enc = model.encoders[key]
        frozen = not any(p.requires_grad for p in enc.parameters())
        lines.append(f"| {key} | {spec.modality} | {', '.join(spec.columns)} | `{getattr(enc, 'cache_id', '')}` "
                     f"| {frozen} |" + (f" {enc.out_dim} |" if out_dim else ""))
    return lines


def _tail(run: Path, metrics: dict, config, use: list[str]) -> list[str]:
    return ["", "## Metrics", "", "```json", json.dumps(metrics, indent=2, default=str), "```", "",
            "## Training", "", "```json", json.dumps(config.to_dict(), indent=2, default=str), "```", "",
            "## Use", "", "```python", "from polymodal import MultimodalPredictor",
            f"p = MultimodalPredictor.load({str(run)!r})", *use, "```",
            "", "Loads offline; a run trained on a GPU predicts on CPU.", ""]


def write_model_card(run: Path, predictor) -> None:
    """README.md of a run folder: what it predicts, its inputs and encoders, metrics and settings."""
    prep, cfg, model = predictor.prep, predictor.config, predictor.model
    model_id = f"- model id (SHA-256 of model.safetensors, first 16 hex): `{getattr(predictor, 'model_id', '')}`"
    if predictor.kind == GENERATION_RUN:
        dec = model.decoder
        params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("encoders."))
        lines = [f"# polymodal model: generates `{cfg.label}` (task {cfg.task})", "",
                 f"- decoder: {cfg.layers} layers, width {cfg.d_model}, {cfg.heads} heads, tied embeddings of width "
                 f"{dec.embed.weight.shape[1]}; {params:,} parameters besides the encoders",
                 f"- vocabulary: {len(predictor.task.vocab)} tokens of the `{cfg.decoder_tokenizer}` tokenizer "
                 f"({cfg.vocab})",
                 f"- memory: {'one pooled token' if cfg.tokens is False else 'token sequences'} per input",
                 f"- decoding: {DecodeConfig.from_dict(cfg.decode)}", model_id, "", "## Inputs", "",
                 *_inputs_table(prep, model, out_dim=False)]
        use = ["p.predict(df)                    # generated text per row",
               "p.predict(df, method='greedy')   # or num_beams=5, method='sample', top_p=0.9, ..."]
    else:
        lines = [f"# polymodal model: predicts `{cfg.label}`", "", f"- problem type: **{prep.schema.problem_type}**"]
        if prep.classes:
            shown = ", ".join(map(str, prep.classes[:30])) + (" …" if len(prep.classes) > 30 else "")
            lines.append(f"- classes ({len(prep.classes)}): {shown}")
        lines += [f"- fusion: `{cfg.fusion}`; head hidden size {cfg.head_hidden}; dropout {cfg.dropout}", model_id,
                  "", "## Inputs", "", *_inputs_table(prep, model, out_dim=True)]
        ignored = [c for c, m in prep.schema.columns.items() if m == "id"]
        if ignored:
            lines += ["", f"Ignored columns (ids, constant or empty): {', '.join(ignored)}"]
        use = ["p.predict(df)  # or p.predict_proba(df)"]
    atomic_write_text(run / "README.md", "\n".join(lines + _tail(run, predictor.metrics, cfg, use)))
