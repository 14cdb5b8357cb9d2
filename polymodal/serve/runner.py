"""The model side of the server: Collator items → the predictor's `answer_batch` (the same inference loop as
`predict`) → per-row answers. Any `contracts.Predictor` works: a MultimodalPredictor (classifier, regressor,
multi-task or text generator) or an OnnxPredictor."""

from __future__ import annotations

from polymodal.contracts import Predictor
from polymodal.data.dataset import Collator


class ModelRunner:
    """Callable batch function for the micro-batcher; holds the loaded predictor (no Trainer, no DataLoader)."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor
        self.task, self.prep = predictor.task, predictor.prep
        self.collate = Collator(self.prep)

    def __call__(self, items: list[dict]) -> list[dict]:
        return self.predictor.answer_batch(self.collate(items))
