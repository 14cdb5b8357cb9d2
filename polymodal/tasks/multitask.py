"""Multi-task: several labels predicted from one shared encoder + fusion trunk, one head per label.

Logits and encoded targets are the per-task blocks side by side (widths: a task's outputs; its target
columns). A row whose label is missing for a task (NaN in the target) does not count for that task's loss
or metrics, so partially labelled tables train every head on what they have.

Loss weighting: "uniform" (sum of task losses), "fixed" (user weights), or "uncertainty" (Kendall, Gal &
Cipolla 2018: each task loss L_i becomes exp(-s_i) L_i + s_i with a learned log-variance s_i, the
simplified form most implementations use for both classification and regression).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from polymodal.problem_types import MULTILABEL, MULTITASK, REGRESSION

WEIGHTINGS = ("uniform", "fixed", "uncertainty")


class MultiTask(nn.Module):
    """Composes single-label tasks; an nn.Module so that learned loss weights train and checkpoint with it."""

    problem_type = MULTITASK

    def __init__(self, tasks: dict[str, object], target_widths: dict[str, int], weighting: str = "uniform",
                 weights: dict[str, float] | None = None) -> None:
        super().__init__()
        if weighting not in WEIGHTINGS:
            raise ValueError(f"loss weighting must be one of {WEIGHTINGS}, not {weighting!r}")
        self.tasks = dict(tasks)
        self.names = list(tasks)
        self.weighting = weighting
        fixed = weights or {}
        unknown = set(fixed) - set(self.names)
        if unknown:
            raise ValueError(f"task weights name unknown labels {sorted(unknown)}")
        self.register_buffer("fixed_weights", torch.tensor([float(fixed.get(n, 1.0)) for n in self.names]),
                             persistent=False)
        self.log_vars = nn.Parameter(torch.zeros(len(self.names)), requires_grad=weighting == "uncertainty")
        self.out_slices, self.target_slices = {}, {}
        o = t = 0
        for n in self.names:
            self.out_slices[n] = slice(o, o + tasks[n].num_outputs)
            self.target_slices[n] = slice(t, t + target_widths[n])
            o += tasks[n].num_outputs
            t += target_widths[n]

    @property
    def num_outputs(self) -> int:
        return sum(t.num_outputs for t in self.tasks.values())

    @property
    def classes(self) -> list[str]:
        return []

    @property
    def monitor(self) -> tuple[str, str]:
        return ("score", "max")

    def task_losses(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each task's loss over the rows labelled for it (tasks with no labelled row are left out)."""
        out = {}
        for n in self.names:
            t = target[:, self.target_slices[n]]
            keep = ~torch.isnan(t).any(dim=1)
            if keep.any():
                t = t[keep] if self.tasks[n].problem_type == MULTILABEL else t[keep, 0]
                out[n] = self.tasks[n].loss(logits[keep][:, self.out_slices[n]], t)
        return out

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        losses = self.task_losses(logits, target.float())
        total = logits.new_zeros(())
        for i, n in enumerate(self.names):
            if n not in losses:
                continue
            if self.weighting == "uncertainty":
                total = total + torch.exp(-self.log_vars[i]) * losses[n] + self.log_vars[i]
            else:
                total = total + self.fixed_weights[i] * losses[n]
        return total

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        parts = [self.tasks[n].probabilities(logits[:, self.out_slices[n]]).reshape(len(logits), -1)
                 for n in self.names]
        return torch.cat(parts, dim=1)

    def split(self, probs: np.ndarray) -> dict[str, np.ndarray]:
        """Per-task probability blocks (a regression task's block is its (N,) predictions)."""
        out = {}
        o = 0
        for n in self.names:
            w = self.tasks[n].num_outputs
            block = probs[:, o:o + w]
            out[n] = block[:, 0] if self.tasks[n].problem_type == REGRESSION else block
            o += w
        return out

    def labels(self, probs: np.ndarray) -> dict[str, list]:
        return {n: self.tasks[n].labels(p) for n, p in self.split(probs).items()}

    def output_columns(self, label: str | None = None) -> list[str]:
        """predict_proba's columns, one block per label: "label:class" (a regression label: its name)."""
        return [c for name, t in self.tasks.items()
                for c in ([name] if t.problem_type == REGRESSION else [f"{name}:{c}" for c in t.classes])]

    def metrics(self, probs: np.ndarray, target: np.ndarray) -> dict[str, float]:
        """Each task's metrics as "label/metric" over the rows labelled for it, plus "score": the mean over
        tasks of accuracy (single-label), macro F1 (multi-label) or R² (regression)."""
        out, scores = {}, []
        target = np.asarray(target, dtype=np.float64)
        for n, p in self.split(np.asarray(probs)).items():
            t = target[:, self.target_slices[n]]
            keep = ~np.isnan(t).any(axis=1)
            if not keep.any():
                continue
            task = self.tasks[n]
            tt = t[keep] if task.problem_type == MULTILABEL else t[keep, 0]
            m = task.metrics(p[keep], tt if task.problem_type == REGRESSION else tt.astype(np.int64))
            out.update({f"{n}/{k}": v for k, v in m.items()})
            key = {REGRESSION: "r2", MULTILABEL: "f1_macro"}.get(task.problem_type, "accuracy")
            scores.append(m[key])
        out["score"] = float(np.mean(scores)) if scores else float("nan")
        return out

    def weights(self) -> dict[str, float]:
        """The current weight of each task's loss (exp(-s) for uncertainty weighting)."""
        if self.weighting == "uncertainty":
            return {n: float(torch.exp(-v)) for n, v in zip(self.names, self.log_vars.detach())}
        return {n: float(w) for n, w in zip(self.names, self.fixed_weights)}
