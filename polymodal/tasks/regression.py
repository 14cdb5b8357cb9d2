"""Regression on one standardised target (the preprocessor stores mean/std to undo it)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class RegressionTask:
    problem_type: str = "regression"
    target_mean: float = 0.0
    target_std: float = 1.0
    classes: tuple = ()

    num_outputs: int = 1

    @property
    def monitor(self) -> tuple[str, str]:
        return ("rmse", "min")

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(logits.float().squeeze(-1), target.float())

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        # "Probabilities" of a regressor are its predictions, in the original units.
        return logits.float().squeeze(-1) * self.target_std + self.target_mean

    def decode(self, probs: np.ndarray) -> np.ndarray:
        return probs
