"""Problem types, declared once: every module compares against these names, never against string literals.

| name | target | outputs | default metric (monitored) |
|---|---|---|---|
| binary | one of two classes | a probability per class | accuracy (max) |
| multiclass | one of C classes | a probability per class | accuracy (max) |
| multilabel | any subset of C labels | a probability per label | f1_macro (max) |
| regression | a number | the number | rmse (min) |
| multitask | several label columns, each with its own type | each label's outputs | mean score (max) |
| generation | free text (captions, open answers) | generated text | BLEU-4 / exact match |
"""

from __future__ import annotations

from dataclasses import dataclass

BINARY, MULTICLASS, MULTILABEL, REGRESSION = "binary", "multiclass", "multilabel", "regression"
MULTITASK = "multitask"  # several label columns; each has its own problem type in Schema.problem_types
GENERATION = "generation"  # the label is free text a decoder generates

# the single-label types schema inference chooses between
PROBLEM_TYPES = (BINARY, MULTICLASS, MULTILABEL, REGRESSION)
# one class per row (softmax outputs, a confusion matrix, class weights, threshold tuning for binary)
ONE_CLASS_PER_ROW = (BINARY, MULTICLASS)


@dataclass(frozen=True)
class ProblemType:
    name: str
    classification: bool  # the target is classes (probabilities come out)
    metric: str  # the validation metric a fit monitors by default
    mode: str  # "max" or "min": which way the metric improves


TABLE: dict[str, ProblemType] = {
    BINARY: ProblemType(BINARY, True, "accuracy", "max"),
    MULTICLASS: ProblemType(MULTICLASS, True, "accuracy", "max"),
    MULTILABEL: ProblemType(MULTILABEL, True, "f1_macro", "max"),
    REGRESSION: ProblemType(REGRESSION, False, "rmse", "min"),
    MULTITASK: ProblemType(MULTITASK, False, "score", "max"),
    GENERATION: ProblemType(GENERATION, False, "bleu4", "max"),
}


def one_class_per_row(problem_type: str | None) -> bool:
    return problem_type in ONE_CLASS_PER_ROW
