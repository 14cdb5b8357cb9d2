"""LightningModule wrapping a MultimodalModel and a task: loss, optimiser, schedule, validation metrics."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch

from polymodal.training.metrics import compute_metrics


class FitModule(L.LightningModule):
    def __init__(self, model: torch.nn.Module, task, lr: float = 1e-3, weight_decay: float = 1e-2,
                 warmup_ratio: float = 0.05, encoder_lr_scale: float = 0.1) -> None:
        super().__init__()
        self.model, self.task = model, task
        self.lr, self.weight_decay = lr, weight_decay
        self.warmup_ratio, self.encoder_lr_scale = warmup_ratio, encoder_lr_scale
        self._val: list[tuple[np.ndarray, np.ndarray]] = []
        self.val_metrics: dict[str, float] = {}

    def forward(self, batch: dict) -> torch.Tensor:
        return self.model(batch)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.task.loss(self.model(batch), batch["target"])
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True,
                 batch_size=len(batch["target"]))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits = self.model(batch)
        loss = self.task.loss(logits, batch["target"])
        self.log("val_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(batch["target"]))
        probs = self.task.probabilities(logits)
        self._val.append((probs.detach().cpu().numpy(), batch["target"].cpu().numpy()))

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        probs = np.concatenate([p for p, _ in self._val])
        target = np.concatenate([t for _, t in self._val])
        self._val.clear()
        if self.task.problem_type == "regression":
            target = target * self.task.target_std + self.task.target_mean
        self.val_metrics = compute_metrics(self.task.problem_type, probs, target)
        name = self.task.monitor[0]
        for k, v in self.val_metrics.items():
            self.log(f"val_{k}", v, prog_bar=(k == name))

    def configure_optimizers(self):
        from transformers import get_cosine_schedule_with_warmup

        enc, rest = [], []
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            is_pretrained_encoder = name.startswith("encoders.") and getattr(
                self.model.encoders[name.split(".")[1]], "pretrained", False)
            (enc if is_pretrained_encoder else rest).append(p)
        groups = [{"params": rest, "lr": self.lr}]
        if enc:  # fine-tuned pretrained towers learn slower than the freshly initialised fusion and head
            groups.append({"params": enc, "lr": self.lr * self.encoder_lr_scale})
        fused = torch.cuda.is_available() and self.device.type == "cuda"
        opt = torch.optim.AdamW(groups, lr=self.lr, weight_decay=self.weight_decay, fused=fused)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        sched = get_cosine_schedule_with_warmup(opt, int(self.warmup_ratio * total), total)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Frozen encoder weights never change: keep them out of every checkpoint (smaller, faster writes).
        frozen = {n for n, p in self.named_parameters() if not p.requires_grad}
        frozen |= {n for n, _ in self.named_buffers() if n.startswith("model.encoders.")
                   and not any(p.requires_grad for p in self.model.encoders[n.split(".")[2]].parameters())}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k not in frozen}

    def load_trained_state(self, path: str) -> None:
        state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
        missing, unexpected = self.load_state_dict(state, strict=False)
        if unexpected:
            raise RuntimeError(f"checkpoint {path} has unexpected keys: {unexpected[:5]}")
