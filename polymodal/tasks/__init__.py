"""Tasks: what a head predicts, its loss, and how outputs decode into predictions."""

from __future__ import annotations

import numpy as np

from polymodal.tasks.classification import ClassificationTask, balanced_class_weights
from polymodal.tasks.regression import RegressionTask

__all__ = ["ClassificationTask", "RegressionTask", "build_task", "balanced_class_weights"]


def build_task(problem_type: str, classes: list[str], target_mean: float = 0.0, target_std: float = 1.0,
               train_target: np.ndarray | None = None, class_weighting: bool = False,
               label_smoothing: float = 0.0):
    """A task object for the problem type; class weights come from the training targets when asked."""
    if problem_type == "regression":
        return RegressionTask(target_mean=target_mean, target_std=target_std)
    weights = None
    if class_weighting and train_target is not None:
        weights = balanced_class_weights(train_target, len(classes), multilabel=problem_type == "multilabel")
    return ClassificationTask(problem_type, list(classes), weights, label_smoothing)
