"""Regression on one standardised target (the preprocessor stores mean/std to undo it)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from polymodal.problem_types import REGRESSION, TABLE
from polymodal.training.metrics import compute_metrics


@dataclass
class RegressionTask:
    problem_type: str = REGRESSION
    target_mean: float = 0.0
    target_std: float = 1.0
    classes: tuple = ()

    num_outputs: int = 1

    @property
    def monitor(self) -> tuple[str, str]:
        return TABLE[REGRESSION].metric, TABLE[REGRESSION].mode

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(logits.float().reshape(-1), target.float().reshape(-1))

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        # "Probabilities" of a regressor are its predictions, in the original units.
        return logits.float().squeeze(-1) * self.target_std + self.target_mean

    def decode(self, probs: np.ndarray) -> np.ndarray:
        return probs

    def labels(self, probs: np.ndarray) -> list:
        return np.asarray(probs, dtype=np.float64).reshape(-1).tolist()

    def output_columns(self, label: str) -> list[str]:
        """predict_proba's one column: the predicted value, named after the label."""
        return [label]

    def metrics(self, probs: np.ndarray, target: np.ndarray) -> dict[str, float]:
        """RMSE, MAE and R² in the label's units (``target`` is standardised, as the preprocessor encodes it)."""
        t = np.asarray(target, dtype=np.float64).reshape(-1) * self.target_std + self.target_mean
        return compute_metrics(self.problem_type, np.asarray(probs).reshape(-1), t)
