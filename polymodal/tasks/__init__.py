"""Tasks: what a head predicts, its loss, metrics, and how outputs decode into predictions."""

from __future__ import annotations

import numpy as np

from polymodal.problem_types import MULTILABEL, MULTITASK, REGRESSION
from polymodal.tasks.classification import ClassificationTask, balanced_class_weights, tune_threshold
from polymodal.tasks.generation import GENERATION_TASKS, DecodeConfig, GenerationTask, generate
from polymodal.tasks.multitask import MultiTask
from polymodal.tasks.regression import RegressionTask

__all__ = ["GENERATION_TASKS", "ClassificationTask", "DecodeConfig", "GenerationTask", "MultiTask",
           "RegressionTask", "balanced_class_weights", "build_task", "generate", "task_from_prep", "tune_threshold"]


def build_task(problem_type: str, classes: list[str], target_mean: float = 0.0, target_std: float = 1.0,
               train_target: np.ndarray | None = None, class_weighting: bool = False,
               label_smoothing: float = 0.0, loss: str = "cross_entropy", focal_gamma: float = 2.0,
               threshold: float | None = None):
    """A single-label task object; class weights come from the training targets when asked."""
    if problem_type == REGRESSION:
        return RegressionTask(target_mean=target_mean, target_std=target_std)
    weights = None
    if class_weighting and train_target is not None:
        t = np.asarray(train_target)
        weights = balanced_class_weights(t if problem_type == MULTILABEL else t.astype(np.int64).reshape(-1),
                                         len(classes), multilabel=problem_type == MULTILABEL)
    return ClassificationTask(problem_type, list(classes), weights, label_smoothing, threshold or 0.5, loss,
                              focal_gamma)


def task_from_prep(prep, config=None, train_target: np.ndarray | None = None):
    """The task for a fitted Preprocessor (one label or several) and a FitConfig's loss settings.

    ``train_target``: the encoded training targets, for class weighting (``config.class_weighting``: True
    weighs each class by its inverse frequency; False or None (the default) does not).

    Why off by default: `fit` selects and reports accuracy, and inverse-frequency weights trade accuracy for
    recall on rare classes. Measured with the earlier default (on when the largest class was ≥ 3× the
    smallest): VQA-RAD (~500 long-tailed answers) 15.8 closed / 7.3 open accuracy against 56.3 / 8.9 without
    weights; a 3-class tweet table 0.671 / log loss 2.36 against 0.689 / 1.41. Users judged on balanced accuracy
    or macro F1 turn it on (`--class-weighting on`); the presets validate it as a portfolio choice.
    """
    get = (lambda k, d: getattr(config, k, d)) if config is not None else (lambda k, d: d)
    thresholds = get("decision_threshold", None) or {}

    def single(view, target):
        ptype = view.schema.problem_type
        weighting = get("class_weighting", None)
        if target is not None and target.dtype.kind == "f" and ptype != REGRESSION:
            target = target[~np.isnan(target).any(axis=1)] if target.ndim == 2 else target[~np.isnan(target)]
        return build_task(ptype, view.classes, view.target_mean, view.target_std, target, bool(weighting),
                          get("label_smoothing", 0.0), get("loss", "cross_entropy"), get("focal_gamma", 2.0),
                          thresholds.get(view.schema.label))

    if prep.schema.problem_type != MULTITASK:
        return single(prep, train_target)
    tasks, widths = {}, {}
    col = 0
    for label in prep.schema.labels:
        view = prep.label_view(label)
        widths[label] = prep.target_width(label)
        block = None
        if train_target is not None:
            block = train_target[:, col:col + widths[label]]
            block = block if view.schema.problem_type == MULTILABEL else block[:, 0]
        col += widths[label]
        tasks[label] = single(view, block)
    return MultiTask(tasks, widths, get("loss_weighting", "uniform"), get("task_weights", None))
