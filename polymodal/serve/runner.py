"""The model side of the server: Collator items → one forward in inference mode → per-row answers."""

from __future__ import annotations

import numpy as np
import torch

from polymodal.data.dataset import Collator
from polymodal.model import move_batch


class ModelRunner:
    """Callable batch function for the micro-batcher; holds the loaded model (no Trainer, no DataLoader)."""

    def __init__(self, predictor) -> None:
        self.task, self.prep = predictor.task, predictor.prep
        self.collate = Collator(self.prep)
        if hasattr(predictor, "session"):  # an OnnxPredictor (a compressed int8 / exported run): onnxruntime
            self.model, self.device = predictor.forward_batch, torch.device("cpu")
        else:
            predictor._require_model()
            self.model = predictor.model.eval()
            self.device = next(self.model.parameters()).device
        # a text generator (task caption / vqa-open) answers with generated text, decoded as the run stores it
        self.decode = predictor._decode({}) if self.task.problem_type == "generation" else None

    def probabilities(self, items: list[dict]) -> np.ndarray:
        batch = move_batch(self.collate(items), self.device)
        with torch.inference_mode():
            return self.task.probabilities(self.model(batch)).float().cpu().numpy()

    def __call__(self, items: list[dict]) -> list[dict]:
        if self.decode is not None:
            batch = move_batch(self.collate(items), self.device)
            with torch.inference_mode():
                texts = self.task.vocab.decode(self.model.generate(batch, self.task.vocab, self.decode))
            return [{"prediction": t, "probabilities": None} for t in texts]
        probs = self.probabilities(items)
        if self.task.problem_type == "regression":
            return [{"prediction": float(p), "probabilities": None} for p in probs]
        if self.task.problem_type == "multitask":  # one prediction per label; probabilities as "label:class"
            from polymodal.predictor import probability_columns

            labels = self.task.labels(probs)
            cols = probability_columns(self.task, None)
            return [{"prediction": {n: labels[n][i] for n in labels},
                     "probabilities": {c: float(x) for c, x in zip(cols, row)}} for i, row in enumerate(probs)]
        labels = self.task.labels(probs)
        return [{"prediction": label, "probabilities": {c: float(x) for c, x in zip(self.task.classes, row)}}
                for label, row in zip(labels, probs)]
