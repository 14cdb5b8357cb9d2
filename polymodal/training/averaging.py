"""`average_epochs K`: keep the uniform average of the trainable weights at the end of the last K completed epochs
instead of the best-validation checkpoint. Why: a small, noisy validation split (VQA-RAD's ~47 held-out images)
picks near-prior checkpoints; an average of the last epochs does not depend on which epoch scored best, and
early stopping still bounds the time.

Hand-written rather than Lightning's `StochasticWeightAveraging` or `torch.optim.swa_utils.AveragedModel`: both
keep one running mean from a start epoch fixed in advance (SWA also swaps the learning-rate schedule for its
own), while the last K epochs of a run that early stopping may end at any epoch are a sliding window, known
only once training has stopped. A window of K snapshots of the trainable parameters (frozen encoders never
change) gives that window, and is small enough to travel in the checkpoint, so `fit --resume` continues it.

Only parameters are averaged: buffers (BatchNorm running statistics of trained encoders) stay as the last epoch
left them. Recomputing them (`swa_utils.update_bn`) would run the whole model in train mode, which would also
reset and re-estimate the statistics of frozen encoders that a fit keeps in eval mode.
"""

from __future__ import annotations

import pandas as pd
import torch
from lightning.pytorch.callbacks import Callback


class EpochAverage(Callback):
    """The trainable parameters after each completed epoch (once its validation has run, so the snapshot is in
    the `last.ckpt` saved right after: Lightning runs checkpoint callbacks last), the last `k` kept."""

    def __init__(self, k: int) -> None:
        if k < 1:
            raise ValueError(f"average over at least one epoch, not {k}")
        self.k = k
        self.window: list[tuple[int, dict[str, torch.Tensor]]] = []  # (epoch, {name: weights on CPU})

    @property
    def epochs(self) -> list[int]:
        return [e for e, _ in self.window]

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._snapshot(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._snapshot(trainer, pl_module)  # epochs without a validation loop; a validated one is kept already

    def _snapshot(self, trainer, pl_module) -> None:
        epoch = trainer.current_epoch
        # an epoch cut short (--time-limit) is not a completed one
        if epoch in self.epochs or not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return
        state = {n: p.detach().to("cpu", copy=True) for n, p in pl_module.named_parameters() if p.requires_grad}
        # a resumed run re-running an epoch replaces what the checkpoint held for it and after it
        self.window = ([(e, s) for e, s in self.window if e < epoch] + [(epoch, state)])[-self.k:]

    def averaged(self) -> dict[str, torch.Tensor]:
        """The uniform mean of the window's snapshots (summed in float64, returned in each weight's dtype)."""
        if not self.window:
            return {}
        first = self.window[0][1]
        return {n: torch.stack([s[n].double() for _, s in self.window]).mean(0).to(first[n].dtype) for n in first}

    def apply(self, module: torch.nn.Module) -> list[int]:
        """Copy the averaged weights into `module` (the LightningModule); the averaged epochs (from 0)."""
        params = dict(module.named_parameters())
        with torch.no_grad():
            for name, value in self.averaged().items():
                params[name].copy_(value.to(params[name].device))
        return self.epochs

    def state_dict(self) -> dict:
        return {"k": self.k, "epochs": self.epochs, "weights": [s for _, s in self.window]}

    def load_state_dict(self, state_dict: dict) -> None:
        self.window = list(zip(state_dict["epochs"], state_dict["weights"], strict=True))[-self.k:]


def mark_averaged(history: pd.DataFrame, epochs: list[int]) -> pd.DataFrame:
    """history.csv with an `averaged` column: 1 on the epochs whose weights were averaged into the kept model."""
    if history.empty or "epoch" not in history:
        return history
    return history.assign(averaged=history["epoch"].isin(epochs).astype(int))
